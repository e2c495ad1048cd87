"""bill-to-cash: an invoice posted or a payment received in the ERP is reflected on the CRM
opportunity (billing status, invoiced and paid to date) and on the PSA (project billing figures
in Certinia; the invoice marked paid in Kantata). It reads the ERP's current figures each time,
so events arriving out of order still leave the latest truth."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from connectors.base import InvoiceStatus
from connectors.canonical import KEYS, ON_BILLING_BATCH, PROJECT, capability
from connectors.errors import ValidationError
from connectors.models import Connection
from connectors.registry import connector_class, connector_for
from pscsync.flows.base import Flow, StepContext
from pscsync.flows.steps import ReadStep, Record, WriteStep, update_by_id, write_as_declared
from pscsync.ledger import ledger_record_invoices


def invoice_read(ctx: StepContext, erp: Connection) -> dict[str, Any]:
    """Read the invoice (and its project's other invoices) in canonical terms from the ERP, store
    them in the ledger, and work out what the CRM and PSA are told: invoiced = posted invoices'
    totals (a draft or an invoice pending approval is not invoiced), paid = the payments the ERP
    applied to them, open = the rest."""
    key = ctx.handoff.business_key
    connector = connector_for(erp)
    invoice_ids, paid_on = connector.ledger_locate(key=key)
    found = connector.ledger_invoices(invoice_id=invoice_ids[0]) if invoice_ids else []
    if not found:
        raise ValidationError(f"{erp.name} has no invoice for {key} (deleted, or a payment applied to nothing)")
    invoice = found[0]
    project_key = invoice.project_key
    invoices = connector.ledger_invoices(project_key=project_key) if project_key else found
    # One payment may settle several invoices: the ledger takes them all now; the CRM and PSA
    # are told about the first invoice's project (its own sync tells the others').
    seen = {i.id for i in invoices}
    for other in [invoice.id, *invoice_ids[1:]]:
        if other not in seen:
            invoices += [invoice] if other == invoice.id else connector.ledger_invoices(invoice_id=other)
            seen.add(other)
    entity = ctx.handoff.legal_entity or (erp.legal_entities.first() if erp.legal_entities.count() == 1 else None)
    if entity is not None:  # else the entity's reconciliation records them, knowing whose they are
        ledger_record_invoices(legal_entity=entity, connection=erp, invoices=invoices)
    # The write-back is about this invoice's project (or this invoice alone when it names none).
    mine = [i for i in invoices if (i.project_key == project_key if project_key else i.id == invoice.id)]
    posted = [i for i in mine if i.posted]
    invoiced = sum((i.total for i in posted), Decimal("0.00"))
    paid = min(invoiced, sum((i.paid_amount for i in posted), Decimal("0.00")))
    open_amount = invoiced - paid
    if posted and open_amount <= 0:
        status = "Paid"
    elif paid > 0:
        status = "Partly paid"
    elif posted:
        status = "Invoiced"
    elif any(i.status == InvoiceStatus.PENDING_APPROVAL for i in mine):
        status = "Invoice awaiting approval"
    else:
        status = "Invoice in draft"
    project = {
        "key": project_key,
        "opportunity_id": (KEYS[PROJECT].parse(project_key) or {}).get("deal", ""),
        "invoiced": str(invoiced),
        "paid": str(paid),
        "open": str(open_amount),
        "status": status,
        "invoice_count": len(posted),
    }
    posted_on = invoice.posting_date.isoformat() if invoice.posted and invoice.posting_date else ""
    paid_day = paid_on.isoformat() if paid_on else ""
    times = {"invoice_posted": posted_on} if posted_on else {}
    if paid_day:
        times["payment_applied"] = paid_day
    started = paid_day or posted_on
    facts = {"amount": str(invoice.total), "currency": invoice.currency, "business_times": times}
    if started:
        facts["started_at"] = started
    return {
        "id": invoice.id,
        "invoice": {
            "id": invoice.id,
            "key": invoice.key,
            "number": invoice.number,
            "project_key": project_key,
            "posted": invoice.posted,
            "status": InvoiceStatus.LABELS[invoice.status],
            "ledger_status": invoice.status,
            "total": str(invoice.total),
            "remaining": str(invoice.open_balance),
            "currency": invoice.currency,
            "date": (invoice.posting_date or invoice.invoice_date or "")
            and str(invoice.posting_date or invoice.invoice_date),
            "psa_batch": invoice.batch_key,
        },
        "project": project,
        "handoff_facts": facts,
    }


# Writing back ---------------------------------------------------------------------------------------
def opportunity_records(ctx: StepContext, crm: Connection) -> list[Record]:
    read = ctx.outputs["read_invoice"]
    opportunity = read["project"]["opportunity_id"]
    return [Record(key=opportunity, source=read)] if opportunity else []


def psa_records(ctx: StepContext, psa: Connection) -> list[Record]:
    """Where the PSA keeps billing figures (its declared capability): on the project, under our
    key (Certinia); or on the billing batch the invoice bills, by its own id, once it is paid
    (Kantata records payment only)."""
    read = ctx.outputs["read_invoice"]
    held = capability(psa, "project_billing")
    if held.held_on != ON_BILLING_BATCH:
        key = read["project"]["key"]
        return [Record(key=key, source=read)] if key else []
    parts = connector_class(psa.vendor).invoice_key.parse(read["invoice"]["key"])
    if not parts:
        return []  # an invoice this PSA did not bill
    if held.when_paid_only and read["invoice"].get("ledger_status") != InvoiceStatus.PAID:
        return []
    return [Record(key=parts["batch"], source=read)]


BILL_TO_CASH = Flow(
    name="bill-to-cash",
    label="Bill to cash",
    steps=(
        ReadStep(name="read_invoice", system=lambda ctx: ctx.handoff.source_connection, read=invoice_read),
        WriteStep(
            name="update_opportunity_billing",
            system="crm",
            purpose="deal_billing",
            records=opportunity_records,
            write=update_by_id,
        ),
        WriteStep(
            name="update_psa_billing",
            system="psa",
            purpose="project_billing",
            records=psa_records,
            write=write_as_declared("project_billing"),
        ),
    ),
    attempt_budget=8,
)
