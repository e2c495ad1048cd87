"""Which flow a change in a source system starts (docs/flows.md, "Triggers").

Connectors report what changed in the vendor's words and leave `flow` empty; this module decides,
from the change alone (intake never calls a vendor), which flow runs and under which business key.
A change no flow handles is stored and marked ignored; so is an echo of pscsync's own write.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from connectors.base import InboundChange
from connectors.models import Connection

OWN_CLIENT = "client=pscsync"
PIPELINE_FIELDS = {"StageName", "Probability", "Amount", "CloseDate"}
AMENDMENT_FIELDS = {"Contract_Version__c", "Contract_End__c"}


def change_route(connection: Connection, change: InboundChange) -> InboundChange:
    """The change with its flow and business key set ("" flow when nothing handles it)."""
    if change.flow:
        return change  # the source said (echo target, tests)
    vendor_route = ROUTES.get(connection.vendor)
    flow, key = vendor_route(change) if vendor_route else ("", "")
    return dataclasses.replace(change, flow=flow, business_key=key or change.business_key)


def _salesforce_payload(change: InboundChange) -> tuple[dict[str, Any], dict[str, Any]]:
    payload = (change.payload.get("data") or {}).get("payload") or {}
    return payload, payload.get("ChangeEventHeader") or {}


def _salesforce(change: InboundChange) -> tuple[str, str]:
    """The CRM's changes. A Certinia org is the same Salesforce org: its pse__ objects are
    handled through the PSA connection only, so one change never starts two handoffs."""
    payload, header = _salesforce_payload(change)
    if OWN_CLIENT in str(header.get("changeOrigin", "")):
        return "", ""  # our own write-back: acting on it would loop
    entity, kind = header.get("entityName"), header.get("changeType")
    changed = set(header.get("changedFields") or []) | (set(payload) if kind == "CREATE" else set())
    if entity == "Opportunity" and kind in {"CREATE", "UPDATE"}:
        if payload.get("StageName") == "Closed Won":
            return "quote-to-project", change.business_key
        if changed & AMENDMENT_FIELDS:
            return "contract-change", change.business_key
        if changed & PIPELINE_FIELDS:
            return "pipeline-to-demand", change.business_key
    return "", ""


def _certinia(change: InboundChange) -> tuple[str, str]:
    _, header = _salesforce_payload(change)
    if OWN_CLIENT in str(header.get("changeOrigin", "")):
        return "", ""
    if header.get("entityName") == "pse__Billing_Event__c" and header.get("changeType") == "CREATE":
        return "project-to-bill", change.business_key
    return "", ""


def _kantata(change: InboundChange) -> tuple[str, str]:
    event = change.payload.get("event") or {}
    if event.get("subject_type") == "Invoice" and str(event.get("event_type", "")).endswith("created"):
        return "project-to-bill", f"kantata-invoice:{event.get('subject_id')}"
    return "", ""


def _netsuite(change: InboundChange) -> tuple[str, str]:
    record_type = change.payload.get("record_type")
    if record_type == "invoice":
        key = change.payload.get("external_id") or f"invoice:{change.payload.get('id')}"
        return "bill-to-cash", key
    if record_type == "customerPayment":
        return "bill-to-cash", f"payment:{change.payload.get('id')}"
    return "", ""


def _businesscentral(change: InboundChange) -> tuple[str, str]:
    entity = change.event_type.split(".", 1)[0]
    if entity == "salesInvoices":
        return "bill-to-cash", f"bc-invoice:{change.business_key}"
    if entity == "customerPayments":
        return "bill-to-cash", f"bc-payment:{change.business_key}"
    return "", ""


ROUTES = {
    "salesforce": _salesforce,
    "certinia": _certinia,
    "kantata": _kantata,
    "netsuite": _netsuite,
    "businesscentral": _businesscentral,
}
