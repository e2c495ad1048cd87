"""The connector interface flows rely on: every vendor's `read` takes `fields` (flows pass it to
whichever CRM, PSA or ERP connector a connection has; before, only Salesforce's accepted it and
any other vendor raised TypeError)."""

from __future__ import annotations

import inspect

import pytest

from connectors.base import Connector
from connectors.registry import CONNECTORS, connector_class


@pytest.mark.parametrize("vendor", sorted(CONNECTORS))
def test_every_connectors_read_takes_the_interfaces_arguments(vendor: str) -> None:
    cls = connector_class(vendor)
    wanted = inspect.signature(Connector.read).parameters
    have = inspect.signature(cls.read).parameters
    for name in ("entity", "since", "where", "fields"):
        assert name in have, f"{cls.__name__}.read lacks {name!r}"
        assert have[name].kind == wanted[name].kind, f"{cls.__name__}.read: {name} is {have[name].kind}"


@pytest.mark.parametrize("vendor", ["kantata", "salesforce", "certinia"])
def test_update_by_id_has_one_signature_where_a_vendor_offers_it(vendor: str) -> None:
    # Flows change records a person made in the target by the target's own id through the interface.
    cls = connector_class(vendor)
    assert cls.update is not Connector.update, f"{cls.__name__} should override update"
    assert list(inspect.signature(cls.update).parameters) == list(inspect.signature(Connector.update).parameters)


@pytest.mark.django_db
def test_a_reader_for_one_vendor_refuses_another_vendors_connection_by_name() -> None:
    from connectors.businesscentral import BusinessCentralConnector
    from connectors.models import Connection
    from connectors.netsuite import NetSuiteConnector
    from connectors.registry import connector_of

    erp = Connection.objects.create(
        slug="ns", name="NetSuite US", vendor="netsuite", kind="erp", base_url="https://ns.example.com"
    )
    assert isinstance(connector_of(erp, NetSuiteConnector), NetSuiteConnector)
    with pytest.raises(LookupError, match="NetSuite US is a netsuite connection, not BusinessCentralConnector's"):
        connector_of(erp, BusinessCentralConnector)
