"""Which flow a vendor's change starts, from the change alone."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors.base import InboundChange
from connectors.models import Connection
from pscsync.flows.triggers import change_route

WHEN = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


def sf_change(entity: str, kind: str, origin: str = "com/salesforce/api/rest/62.0", **fields: object) -> InboundChange:
    header = {"entityName": entity, "changeType": kind, "changeOrigin": origin, "changedFields": list(fields)}
    message = {"data": {"payload": {"ChangeEventHeader": header, **fields}, "event": {"replayId": 1}}}
    return InboundChange("e1", f"{entity}.{kind}", "", "006000000000001AAA", WHEN, message)


@pytest.mark.parametrize(
    ("vendor", "change", "flow"),
    [
        ("salesforce", sf_change("Opportunity", "UPDATE", StageName="Closed Won"), "quote-to-project"),
        ("salesforce", sf_change("Opportunity", "CREATE", StageName="Closed Won", Amount=10), "quote-to-project"),
        ("salesforce", sf_change("Opportunity", "UPDATE", Contract_Version__c=2), "contract-change"),
        ("salesforce", sf_change("Opportunity", "UPDATE", Probability=60), "pipeline-to-demand"),
        ("salesforce", sf_change("Opportunity", "UPDATE", StageName="Negotiation"), "pipeline-to-demand"),
        ("salesforce", sf_change("Opportunity", "UPDATE", Description="note"), ""),
        # pscsync's own write-back is an echo, never a trigger
        ("salesforce", sf_change("Opportunity", "UPDATE", "x;client=pscsync", StageName="Closed Won"), ""),
        # a Certinia object on the CRM connection is the PSA connection's business
        ("salesforce", sf_change("pse__Billing_Event__c", "CREATE"), ""),
        ("certinia", sf_change("pse__Billing_Event__c", "CREATE"), "project-to-bill"),
        ("certinia", sf_change("Opportunity", "UPDATE", StageName="Closed Won"), ""),
    ],
)
def test_salesforce_changes_start_the_right_flow(vendor: str, change: InboundChange, flow: str) -> None:
    assert change_route(Connection(vendor=vendor), change).flow == flow


def test_erp_invoices_and_payments_start_bill_to_cash_keyed_by_the_invoice() -> None:
    invoice = InboundChange(
        "i", "x", "", "I-a3B1", WHEN, {"record_type": "invoice", "id": "5", "external_id": "I-a3B1"}
    )
    payment = InboundChange("p", "x", "", "p", WHEN, {"record_type": "customerPayment", "id": "9", "external_id": ""})
    netsuite = Connection(vendor="netsuite")
    assert (change_route(netsuite, invoice).flow, change_route(netsuite, invoice).business_key) == (
        "bill-to-cash",
        "I-a3B1",
    )
    assert change_route(netsuite, payment).business_key == "payment:9"
    kantata = InboundChange(
        "k",
        "invoice:created",
        "",
        "Invoice:4",
        WHEN,
        {"event": {"subject_type": "Invoice", "subject_id": 4, "event_type": "invoice:created"}},
    )
    assert change_route(Connection(vendor="kantata"), kantata).business_key == "kantata-invoice:4"
