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
