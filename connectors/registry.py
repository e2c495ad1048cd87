"""Which connector class speaks for which vendor."""

from __future__ import annotations

from connectors.base import Connector
from connectors.echo import EchoConnector
from connectors.models import Connection

CONNECTORS: dict[str, type[Connector]] = {
    EchoConnector.vendor: EchoConnector,
}


def connector_for(connection: Connection) -> Connector:
    try:
        return CONNECTORS[connection.vendor](connection)
    except KeyError:
        raise LookupError(f"no connector is installed for vendor {connection.vendor!r}") from None
