"""Which connector class speaks for which vendor. Imported lazily: a vendor's module loads only
when a connection of that vendor is used (the Healthchecks TRANSPORTS idea)."""

from __future__ import annotations

import importlib
from typing import TypeVar

from connectors.base import Connector
from connectors.models import Connection

CONNECTORS: dict[str, str] = {
    "echo": "connectors.echo.EchoConnector",
    "salesforce": "connectors.salesforce.SalesforceConnector",
    "certinia": "connectors.certinia.CertiniaConnector",
    "kantata": "connectors.kantata.KantataConnector",
    "netsuite": "connectors.netsuite.NetSuiteConnector",
    "businesscentral": "connectors.businesscentral.BusinessCentralConnector",
    "dynamicsfinance": "connectors.dynamicsfinance.DynamicsFinanceConnector",
}


def connector_class(vendor: str) -> type[Connector]:
    try:
        module_name, _, class_name = CONNECTORS[vendor].rpartition(".")
    except KeyError:
        raise LookupError(f"no connector is installed for vendor {vendor!r}") from None
    return getattr(importlib.import_module(module_name), class_name)


def connector_for(connection: Connection) -> Connector:
    return connector_class(connection.vendor)(connection)


C = TypeVar("C", bound=Connector)


def connector_of(connection: Connection, kind: type[C]) -> C:
    """The connector of a connection that must be of one vendor's kind (a reader written for
    Certinia's objects, Business Central's company paths): typed as that kind, and a clear error,
    not an AttributeError half-way through, when the connection is of another vendor."""
    connector = connector_for(connection)
    if not isinstance(connector, kind):
        raise LookupError(f"{connection.name} is a {connection.vendor} connection, not {kind.__name__}'s")
    return connector
