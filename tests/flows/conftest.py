"""Flow tests: the firm's five connections on real sandboxes over HTTP, mappings as shipped."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import pytest

from connectors import base
from connectors.base import InboundChange
from connectors.models import Connection
from connectors.registry import connector_for
from pscsync.models import Handoff
from tests.connectors.conftest import sandbox_factory  # noqa: F401  (the fixture, shared)
from tests.helpers import moves_told


@dataclass
class Firm:
    connections: dict[str, Connection]
    sandboxes: dict[str, Any]

    def connector(self, slug: str) -> Any:
        return connector_for(self.connections[slug])

    @property
    def salesforce(self) -> Any:
        """Salesforce as a salesperson edits it: their changes are not pscsync's own echoes."""
        connector = self.connector("salesforce")
        connector.call_options_client = "salesforce-ui"
        return connector


@pytest.fixture
def firm(sandbox_factory, entities, monkeypatch):  # noqa: F811
    from demo.firm import firm_connections_save

    monkeypatch.setattr(base, "_tokens", {})
    sandboxes = {name: sandbox_factory(name) for name in ("salesforce", "kantata", "netsuite", "businesscentral")}
    connections = firm_connections_save(
        us=entities["us"], uk=entities["uk"], sandbox_urls={name: s.url for name, s in sandboxes.items()}
    )
    return Firm(connections=connections, sandboxes=sandboxes)


def won_deal(firm: Firm, *, entity: str = "us", key: str = "1", **overrides: Any) -> dict[str, str]:
    """An account and a Closed Won opportunity, created in Salesforce as a salesperson would."""
    sf = firm.salesforce
    account_fields = {
        "Name": overrides.pop("account_name", f"Globex {key}"),
        "BillingCountry": "US" if entity == "us" else "GB",
        "Tax_Profile__c": "US-STANDARD" if entity == "us" else "GB-VAT20",
        "AccountNumber": f"A-{key}",
    }
    account_fields.update(overrides.pop("account", {}))
    account = sf.send("POST", sf.api_path("sobjects/Account/"), json=account_fields).body["id"]
    fields = {
        "Name": f"Globex {key} rollout",
        "AccountId": account,
        "StageName": "Closed Won",
        "CloseDate": "2026-11-20",
        "Closed_At__c": "2026-11-20T15:04:00+00:00",
        "Amount": 120000,
        "CurrencyIsoCode": "USD" if entity == "us" else "GBP",
        "Legal_Entity__c": entity,
        "Service_Line__c": "Implementation",
        "Billing_Model__c": "Fixed Fee",
        "Contract_Start__c": "2026-12-01",
        "Contract_End__c": "2027-05-31",
        "Contract_Version__c": 1,
        "PO_Number__c": f"PO-{key}",
        **overrides,
    }
    opportunity = sf.send("POST", sf.api_path("sobjects/Opportunity/"), json=fields).body["id"]
    return {"account": account, "opportunity": opportunity}


def trigger(
    firm: Firm, flow: str, key: str, *, slug: str = "salesforce", event_id: str = "", minutes_later: int = 0
) -> Handoff:
    """Store the change as intake would and return its handoff (not yet run)."""
    from pscsync.intake import event_receive

    change = InboundChange(
        source_event_id=event_id or f"test:{flow}:{key}:{minutes_later}",
        event_type="test",
        flow=flow,
        business_key=key,
        occurred_at=dt.datetime(2026, 11, 20, 15, 4, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes_later),
        payload={"key": key},
    )
    result = event_receive(connection=firm.connections[slug], change=change, headers={}, raw_body=json.dumps({}))
    assert result.handoff is not None
    return result.handoff


def run(handoff: Handoff) -> Handoff:
    from pscsync.runner import handoff_run

    with moves_told():  # the workbench and dashboards follow the moves, as after a worker's commits
        handoff_run(handoff_id=handoff.pk, worker="test-worker")
    handoff.refresh_from_db()
    return handoff
