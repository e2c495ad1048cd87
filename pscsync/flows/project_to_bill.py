"""project-to-bill: a PSA billing batch (Certinia billing event, Kantata invoice) becomes one ERP
invoice whose lines each name the PSA item they bill; the PSA record is marked with the ERP
invoice. Each PSA item is claimed by exactly one invoice (BilledItem), so nothing is billed twice
and nothing silently left out. Time and materials lines carry the rate snapshotted in the PSA;
fixed fee bills the completed milestone's amount."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction

from connectors.errors import ValidationError
from connectors.models import Connection
from connectors.registry import connector_for
from pscsync import clock
from pscsync.flows.base import Flow, StepContext
from pscsync.flows.deals import now_iso
from pscsync.flows.steps import (
    CheckStep,
    Compensation,
    ReadStep,
    Record,
    WriteStep,
    mapping_for,
    systems,
    update_by_id,
)
from pscsync.models import BilledItem, CrossReference, Handoff, Step

CERTINIA_EVENT_FIELDS = (
    "Id",
    "Name",
    "pse__Project__c",
    "pse__Date__c",
    "pse__Summary_Amount__c",
    "pse__Project__r.Name",
    "pse__Project__r.pscsync_Key__c",
    "pse__Project__r.pse__Account__c",
    "pse__Project__r.pse__Currency__c",
)
CERTINIA_ITEM_FIELDS = (
    "Id",
    "pse__Category__c",
    "pse__Object_Id__c",
    "pse__Quantity__c",
    "pse__Unit_Price__c",
    "pse__Amount__c",
    "pse__Date__c",
    "CurrencyIsoCode",
)
KIND_CODES = {"Time": "TE", "Expense": "EX", "Milestone": "MS"}


def _money(value: Any) -> str:
    return str(Decimal(str(value or 0)).quantize(Decimal("0.01")))


# Reading the batch ---------------------------------------------------------------------------------
def billing_read(ctx: StepContext, psa: Connection) -> dict[str, Any]:
    batch = _certinia_batch(ctx, psa) if psa.vendor == "certinia" else _kantata_batch(ctx, psa)
    # The clock of approved-time-to-invoice starts when the last item of the batch was approved
    # (its approval date, not the day the work was done). Kantata's API gives no approval date
    # (a time entry carries only `approved: true`): its batches' clock starts at the release.
    approvals = sorted(i["approved"] for i in batch["items"] if i.get("approved"))
    facts = {
        "customer_name": batch.get("customer_name") or _deal_customer(batch.get("project_key", "")),
        "amount": batch["total"],
        "currency": batch["currency"],
        "business_times": {
            "billing_released": batch["date"],
            **({"time_approved": approvals[-1]} if approvals else {}),
        },
        # The batch's business starts when it was released (what it ages from, in the period it
        # counts in), not at its latest work date.
        "started_at": batch["date"],
    }
    return {"id": batch["id"], "billing": batch, "handoff_facts": facts}


def _deal_customer(project_key: str) -> str:
    """The customer's name as the deal that made the project knew it (the PSA batch has only ids),
    so billing failures in the workbench show whom they bill."""
    if not project_key.startswith("P-"):
        return ""
    names = Handoff.objects.filter(flow="quote-to-project", business_key=project_key.removeprefix("P-"))
    return names.exclude(customer_name="").values_list("customer_name", flat=True).first() or ""


def _certinia_batch(ctx: StepContext, psa: Connection) -> dict[str, Any]:
    event_id = ctx.handoff.business_key
    connector = connector_for(psa)
    events = list(connector.read("billing_event", where={"Id": event_id}, fields=list(CERTINIA_EVENT_FIELDS)))
    if not events:
        raise ValidationError(f"billing event {event_id} no longer exists in {psa.name}")
    event = events[0]
    project = event.get("pse__Project__r") or {}
    currency = (
        project.get("pse__Currency__c") or (ctx.handoff.legal_entity.currency if ctx.handoff.legal_entity else "") or ""
    ).upper()
    rows = list(
        connector.read(
            "billing_event_item", where={"pse__Billing_Event__c": event_id}, fields=list(CERTINIA_ITEM_FIELDS)
        )
    )
    approved_on = _certinia_approval_dates(connector, rows)
    items = []
    for row in rows:
        category = row.get("pse__Category__c") or "Time"
        kind = {"Timecard": "Time"}.get(category, category)
        items.append(
            {
                "id": row["Id"],
                "kind": kind,
                "source_id": row.get("pse__Object_Id__c") or row["Id"],
                "date": (row.get("pse__Date__c") or "")[:10],
                "quantity": _money(row.get("pse__Quantity__c")),
                "unit_price": _money(row.get("pse__Unit_Price__c")),
                "amount": _money(row.get("pse__Amount__c")),
                "currency": (row.get("CurrencyIsoCode") or currency).upper(),
                # When the source record was approved: the timecard's approval date; an expense or
                # milestone item, its own date (an expense's date, a milestone's actual date).
                "approved": approved_on.get(row.get("pse__Object_Id__c") or "", (row.get("pse__Date__c") or "")[:10]),
            }
        )
    account = project.get("pse__Account__c") or ""
    return {
        "id": event_id,
        "invoice_key": f"I-{event_id}",
        "name": event.get("Name") or event_id,
        "project_id": event.get("pse__Project__c"),
        "project_key": project.get("pscsync_Key__c") or "",
        "project_name": project.get("Name") or "",
        "date": (event.get("pse__Date__c") or clock.now().date().isoformat())[:10],
        "currency": currency,
        "customer_key": f"C-{account}" if account else "",
        "items": items,
        "total": _money(sum(Decimal(i["amount"]) for i in items)),
    }


def _certinia_approval_dates(connector: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Timecard id → its approval date (`pse__Approval_Date__c`), for the batch's time items."""
    ids = sorted(
        {r["pse__Object_Id__c"] for r in rows if r.get("pse__Category__c") == "Timecard" and r.get("pse__Object_Id__c")}
    )
    if not ids:
        return {}
    found = connector.read("timecard", where={"Id": ids}, fields=["Id", "pse__Approval_Date__c"])
    return {t["Id"]: (t.get("pse__Approval_Date__c") or "")[:10] for t in found if t.get("pse__Approval_Date__c")}


def _kantata_batch(ctx: StepContext, psa: Connection) -> dict[str, Any]:
    invoice_id = ctx.handoff.business_key.removeprefix("kantata-invoice:")
    connector = connector_for(psa)
    invoices = list(connector.read("invoices", where={"only": invoice_id}))
    if not invoices:
        raise ValidationError(f"Kantata invoice {invoice_id} no longer exists in {psa.name}")
    invoice = invoices[0]
    workspace_id = str(invoice.get("workspace_id"))
    workspace = next(iter(connector.read("workspaces", where={"only": workspace_id, "include_archived": "true"})), {})
    currency = (workspace.get("currency") or "").upper()
    items = []
    time_ids = [str(i) for i in invoice.get("time_entry_ids") or []]
    expense_ids = [str(i) for i in invoice.get("expense_ids") or []]
    if time_ids:
        for entry in connector.read("time_entries", where={"only": ",".join(time_ids)}):
            hours = Decimal(entry.get("time_in_minutes") or 0) / 60
            rate = Decimal(entry.get("rate_in_cents") or 0) / 100
            items.append(
                {
                    "id": f"TE-{entry['id']}",
                    "kind": "Time",
                    "source_id": f"time_entry:{entry['id']}",
                    "date": entry.get("date_performed") or "",
                    "quantity": _money(hours),
                    "unit_price": _money(rate),
                    "amount": _money(hours * rate),
                    "currency": currency,
                }
            )
    if expense_ids:
        for expense in connector.read("expenses", where={"only": ",".join(expense_ids)}):
            amount = Decimal(expense.get("amount_in_cents") or 0) / 100
            items.append(
                {
                    "id": f"EX-{expense['id']}",
                    "kind": "Expense",
                    "source_id": f"expense:{expense['id']}",
                    "date": expense.get("date") or "",
                    "quantity": "1.00",
                    "unit_price": _money(amount),
                    "amount": _money(amount),
                    "currency": (expense.get("currency") or currency).upper(),
                }
            )
    project_key, account = _kantata_project_origin(psa, workspace_id)
    return {
        "id": invoice_id,
        "invoice_key": f"I-K{invoice_id}",
        "name": invoice.get("title") or f"Kantata invoice {invoice_id}",
        "project_id": workspace_id,
        "project_key": project_key,
        "project_name": workspace.get("title") or "",
        "date": (invoice.get("invoice_date") or clock.now().date().isoformat())[:10],
        "currency": currency,
        "customer_key": f"C-{account}" if account else "",
        "items": items,
        "total": _money(sum(Decimal(i["amount"]) for i in items)),
    }


def _kantata_project_origin(psa: Connection, workspace_id: str) -> tuple[str, str]:
    """The project's key and its CRM account, from the quote-to-project run that created it."""
    reference = (
        CrossReference.objects.filter(entity_type="project", connection=psa, external_id=workspace_id)
        .select_related("handoff")
        .first()
    )
    if reference is None or reference.handoff is None:
        return "", ""
    read = Step.objects.filter(handoff=reference.handoff, name="read_deal").values_list("output", flat=True).first()
    return reference.canonical_id, ((read or {}).get("account") or {}).get("id", "")


# Checking and claiming ------------------------------------------------------------------------------
def billing_validate(ctx: StepContext) -> dict[str, Any]:
    batch = ctx.outputs["read_billing"]["billing"]
    erp = systems(ctx).erp
    subject = (
        f"billing batch {batch['name']} ({batch['id']}) for project {batch['project_name'] or batch['project_id']}"
    )
    if not batch["items"]:
        raise ValidationError(f"{subject} has no items to bill")
    currencies = sorted({i["currency"] for i in batch["items"]})
    if len(currencies) > 1:
        by = ", ".join(f"{c}: {sum(1 for i in batch['items'] if i['currency'] == c)} items" for c in currencies)
        raise ValidationError(
            f"{subject} mixes currencies ({by}); an invoice has one currency — fix: split the batch by currency "
            "in the PSA (or correct the odd items' currency), then resubmit"
        )
    if not batch["customer_key"]:
        raise ValidationError(
            f"{subject}: the project was not provisioned by pscsync, so its ERP customer is unknown — fix: run "
            "the deal's quote-to-project handoff (or link the project's account), then resubmit"
        )
    customer = connector_for(erp).lookup(entity=_customer_entity(erp), key=batch["customer_key"])
    if customer is None:
        raise ValidationError(
            f"{subject}: {erp.name} has no customer {batch['customer_key']} to bill — fix: resubmit the deal's "
            "quote-to-project handoff so the customer is created, then resubmit this one"
        )
    _claim(ctx, batch)
    return {"erp_customer_id": customer.external_id}


def _customer_entity(erp: Connection) -> str:
    return "customer" if erp.vendor == "netsuite" else "customers"


def _claim(ctx: StepContext, batch: dict[str, Any]) -> None:
    """Claim every item for this invoice. An item claimed by another invoice stops the handoff:
    billing it again would bill the customer twice."""
    handoff, psa = ctx.handoff, systems(ctx).psa
    clashes = []
    for item in batch["items"]:
        try:
            with transaction.atomic():
                BilledItem.objects.get_or_create(
                    psa_connection=psa,
                    source_id=item["source_id"],
                    defaults={
                        "item_id": item["id"],
                        "item_kind": item["kind"],
                        "invoice_key": batch["invoice_key"],
                        "amount": Decimal(item["amount"]),
                        "currency": item["currency"],
                        "work_date": dt.date.fromisoformat(item["date"]) if item["date"] else None,
                        "legal_entity": handoff.legal_entity,
                        "handoff": handoff,
                        "created_at": clock.now(),
                    },
                )
        except IntegrityError:  # pragma: no cover - get_or_create raced another claim
            pass
        owner = BilledItem.objects.filter(psa_connection=psa, source_id=item["source_id"]).values_list(
            "invoice_key", flat=True
        )
        if owner and owner[0] != batch["invoice_key"]:
            clashes.append(f"{item['kind'].lower()} {item['source_id']} (already on invoice {owner[0]})")
    if clashes:
        raise ValidationError(
            f"billing batch {batch['name']} would bill again: {', '.join(clashes[:5])}"
            f"{' and more' if len(clashes) > 5 else ''} — fix: remove these items from the batch in the PSA "
            "(they are billed), then resubmit; nothing was sent to the ERP"
        )


# Writing the invoice --------------------------------------------------------------------------------
def invoice_records(ctx: StepContext, erp: Connection) -> list[Record]:
    batch = ctx.outputs["read_billing"]["billing"]
    customer_id = ctx.outputs["validate_billing"]["erp_customer_id"]
    lines = _lines(ctx, erp, batch)
    if erp.vendor == "netsuite":
        references: dict[str, Any] = {"entity": {"id": customer_id}, "item": {"items": lines}}
    else:
        references = {"customerNumber": batch["customer_key"], "salesInvoiceLines": lines}
    source = {"billing": batch, "legal_entity": ctx.handoff.legal_entity.code if ctx.handoff.legal_entity else ""}
    return [Record(key=batch["invoice_key"], source=source, references=references)]


def _lines(ctx: StepContext, erp: Connection, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One ERP line per PSA item, naming the item it bills."""
    tables = mapping_for(ctx, erp, "invoice").value_maps
    lines = []
    for item in batch["items"]:
        code = KIND_CODES.get(item["kind"], "IT")
        label = f"[{code}-{item['source_id'].rsplit(':', 1)[-1]}] {item['kind']} {item['date']}"
        if erp.vendor == "netsuite":
            lines.append(
                {
                    "item": {"id": str(tables.get("line_item", {}).get(item["kind"], "55"))},
                    "quantity": float(item["quantity"]),
                    "rate": float(item["unit_price"]),
                    "amount": float(item["amount"]),
                    "description": label,
                    "custcol_source_ref": item["id"],
                    "custcol_source_record": item["source_id"],
                    "revRecStartDate": item["date"] or batch["date"],
                    "revRecEndDate": item["date"] or batch["date"],
                }
            )
        else:
            lines.append(
                {
                    "lineType": "Account",
                    "lineObjectNumber": str(tables.get("gl_account", {}).get(item["kind"], "40100")),
                    "description": label[:100],
                    "quantity": float(item["quantity"]),
                    "unitPrice": float(item["unit_price"]),
                }
            )
    return lines


def billing_source_records(ctx: StepContext, psa: Connection) -> list[Record]:
    batch = ctx.outputs["read_billing"]["billing"]
    invoice_id = ctx.results["upsert_invoice"]
    source = {"billing": batch, "refs": {"erp_invoice_id": invoice_id}, "invoiced_at": now_iso()}
    return [Record(key=batch["id"], source=source)]


def _psa_entity(psa: Connection) -> str:
    return "billing_event" if psa.vendor == "certinia" else "invoices"


def _erp_invoice_entity(erp: Connection) -> str:
    return "invoice" if erp.vendor == "netsuite" else "salesInvoices"


def invoice_claims_release(handoff: Handoff, invoice_keys: list[str]) -> dict[str, Any]:
    """The invoice is gone from the ERP: its PSA items are no longer billed, so their claims go
    (the next run of the batch claims them again for its new invoice; until then no other batch
    can bill them twice because nothing bills them at all)."""
    claims = BilledItem.objects.filter(psa_connection=handoff.source_connection, invoice_key__in=invoice_keys)
    released = [
        {
            "item": c.source_id,
            "kind": c.item_kind,
            "amount": str(c.amount),
            "currency": c.currency,
            "invoice": c.invoice_key,
        }
        for c in claims.order_by("source_id")
    ]
    claims.delete()
    return {"released_items": released}


INVOICE_COMPENSATION = Compensation(
    label="Delete the invoice from the ERP",
    explain=(
        "Removes the ERP invoice this handoff created, while nobody has paid it (NetSuite) or posted "
        "it (Business Central); the ERP refuses otherwise and nothing changes. Its PSA items are "
        "released, the handoff is cancelled, and the batch can be billed again (reopen and "
        "resubmit, or a new billing run) without billing anything twice."
    ),
    release=invoice_claims_release,
)


PROJECT_TO_BILL = Flow(
    name="project-to-bill",
    label="Project to bill",
    steps=(
        ReadStep(name="read_billing", system=lambda ctx: ctx.handoff.source_connection, read=billing_read),
        CheckStep(name="validate_billing", check=billing_validate),
        WriteStep(
            name="upsert_invoice",
            system="erp",
            purpose="invoice",
            entity=_erp_invoice_entity,
            records=invoice_records,
            facts=lambda ctx: {"business_times": {"invoice_created": now_iso()}},
            compensation=INVOICE_COMPENSATION,
        ),
        WriteStep(
            name="mark_billed_in_psa",
            system="psa",
            purpose="billing_status",
            entity=_psa_entity,
            records=billing_source_records,
            write=update_by_id,
        ),
    ),
    attempt_budget=8,
)
