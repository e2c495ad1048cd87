"""bill-to-cash: an invoice posted or a payment received in the ERP is reflected on the CRM
opportunity (billing status, invoiced and paid to date) and on the PSA (project billing figures
in Certinia; the invoice marked paid in Kantata). It reads the ERP's current figures each time,
so events arriving out of order still leave the latest truth."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from connectors.base import WriteResult
from connectors.errors import ValidationError
from connectors.models import Connection
from connectors.registry import connector_for
from pscsync.flows.base import Flow, StepContext
from pscsync.flows.steps import ReadStep, Record, WriteStep, update_by_id


def _money(value: Any) -> Decimal:
    return Decimal(str(value or 0)).quantize(Decimal("0.01"))


def invoice_read(ctx: StepContext, erp: Connection) -> dict[str, Any]:
    key = ctx.handoff.business_key
    invoice, paid_on = (_netsuite_invoice if erp.vendor == "netsuite" else _bc_invoice)(erp, key)
    if invoice is None:
        raise ValidationError(f"{erp.name} has no invoice for {key} (deleted, or a payment applied to nothing)")
    project_key = invoice["project_key"]
    invoices = _project_invoices(erp, project_key) if project_key else [invoice]
    posted = [i for i in invoices if i["posted"]]
    invoiced = sum((i["total"] for i in posted), Decimal("0.00"))
    open_amount = sum((i["remaining"] for i in posted), Decimal("0.00"))
    paid = invoiced - open_amount
    if posted and open_amount <= 0:
        status = "Paid"
    elif paid > 0:
        status = "Partly paid"
    elif posted:
        status = "Invoiced"
    else:
        status = "Invoice in draft"
    project = {
        "key": project_key,
        "opportunity_id": project_key.removeprefix("P-") if project_key.startswith("P-") else "",
        "invoiced": str(invoiced),
        "paid": str(paid),
        "open": str(open_amount),
        "status": status,
        "invoice_count": len(posted),
    }
    times = {"invoice_posted": invoice["date"]} if invoice["posted"] else {}
    if paid_on:
        times["payment_applied"] = paid_on
    started = paid_on or (invoice["date"] if invoice["posted"] else "")
    facts = {"amount": str(invoice["total"]), "currency": invoice["currency"], "business_times": times}
    if started:
        facts["started_at"] = started
    return {
        "id": invoice["id"],
        "invoice": {**invoice, "total": str(invoice["total"]), "remaining": str(invoice["remaining"])},
        "project": project,
        "handoff_facts": facts,
    }


# NetSuite's currency internal ids (its reference data): the ISO code of each.
NETSUITE_CURRENCIES = {"1": "USD", "2": "GBP", "3": "CAD", "4": "EUR", "5": "JPY"}


def _netsuite_invoice(erp: Connection, key: str) -> tuple[dict[str, Any] | None, str]:
    connector = connector_for(erp)
    paid_on = ""
    if key.startswith("payment:"):
        payment = connector.get(entity="payment", record_id=key.removeprefix("payment:"))
        lines = ((payment or {}).get("apply") or {}).get("items", [])
        if not lines:
            return None, ""
        paid_on = (payment or {}).get("tranDate", "")
        record = connector.get(entity="invoice", record_id=str(lines[0]["doc"]["id"]))
    elif key.startswith("invoice:"):
        record = connector.get(entity="invoice", record_id=key.removeprefix("invoice:"))
    else:
        found = connector.lookup(entity="invoice", key=key)
        record = found.response if found else None
    return (_netsuite_shape(record) if record else None), paid_on


def _netsuite_shape(record: dict[str, Any]) -> dict[str, Any]:
    currency = record.get("currency") or {}
    if isinstance(currency, dict):
        # NetSuite references a currency by internal id; its ISO code is the mapping's business.
        currency = {"refName": NETSUITE_CURRENCIES.get(str(currency.get("id")), "")}
    return {
        "id": str(record["id"]),
        "key": record.get("externalId") or "",
        "number": record.get("tranId") or str(record["id"]),
        "project_key": record.get("custbody_project_key") or record.get("custbodyprojectkey") or "",
        "posted": True,  # a NetSuite invoice is posted when saved
        "status": record.get("status") or "Open",
        "total": _money(record.get("total")),
        "remaining": _money(record.get("amountRemaining", record.get("amountremaining", record.get("total")))),
        "currency": currency.get("refName", "") if isinstance(currency, dict) else str(currency),
        "date": str(record.get("tranDate") or record.get("trandate") or "")[:10],
        "psa_batch": record.get("custbody_psa_batch") or "",
    }


def _bc_invoice(erp: Connection, key: str) -> tuple[dict[str, Any] | None, str]:
    connector = connector_for(erp)
    paid_on = ""
    if key.startswith("bc-payment:"):
        payments = list(connector.read("customerPayments", where={"id": key.removeprefix("bc-payment:")}))
        if not payments or not payments[0].get("appliesToInvoiceId"):
            return None, ""
        paid_on = payments[0].get("postingDate", "")
        invoice_id = payments[0]["appliesToInvoiceId"]
    else:
        invoice_id = key.removeprefix("bc-invoice:")
    found = list(connector.read("salesInvoices", where={"id": invoice_id}))
    return (_bc_shape(found[0]) if found else None), paid_on


def _bc_shape(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(record["id"]),
        "key": record.get("externalDocumentNumber") or "",
        "number": record.get("number") or "",
        "project_key": record.get("customerPurchaseOrderReference") or "",
        "posted": record.get("status") not in ("Draft", "Canceled"),
        "status": record.get("status") or "",
        "total": _money(record.get("totalAmountIncludingTax")),
        "remaining": _money(record.get("remainingAmount")),
        "currency": record.get("currencyCode") or "",
        "date": str(record.get("postingDate") or record.get("invoiceDate") or "")[:10],
        "psa_batch": (record.get("externalDocumentNumber") or "").removeprefix("I-K"),
    }


def _project_invoices(erp: Connection, project_key: str) -> list[dict[str, Any]]:
    connector = connector_for(erp)
    if erp.vendor == "netsuite":
        rows = connector.read("invoice", where={"custbody_project_key": project_key})
        return [_netsuite_shape(r) for r in rows]
    rows = connector.read("salesInvoices", where={"customerPurchaseOrderReference": project_key})
    return [_bc_shape(r) for r in rows]


# Writing back ---------------------------------------------------------------------------------------
def opportunity_records(ctx: StepContext, crm: Connection) -> list[Record]:
    read = ctx.outputs["read_invoice"]
    opportunity = read["project"]["opportunity_id"]
    return [Record(key=opportunity, source=read)] if opportunity else []


def psa_records(ctx: StepContext, psa: Connection) -> list[Record]:
    read = ctx.outputs["read_invoice"]
    if psa.vendor == "certinia":
        key = read["project"]["key"]
        return [Record(key=key, source=read)] if key else []
    batch = read["invoice"]["key"].removeprefix("I-K") if read["invoice"]["key"].startswith("I-K") else ""
    if not batch or read["invoice"]["status"] != "Paid":
        return []  # Kantata records payment only: its invoice is marked when fully paid
    return [Record(key=batch, source=read)]


def psa_write(ctx: StepContext) -> Any:
    """Certinia: the project carries its billing figures (upsert by our key); Kantata: the
    invoice it raised is updated by its own id."""

    def write(psa: Connection, entity: str, record: Record, fields: dict[str, Any]) -> WriteResult:
        connector = connector_for(psa)
        if psa.vendor == "certinia":
            return connector.upsert(entity=entity, key=record.key, fields=fields)
        return connector.update(entity=entity, record_id=record.key, fields=fields)

    return write


BILL_TO_CASH = Flow(
    name="bill-to-cash",
    label="Bill to cash",
    steps=(
        ReadStep(name="read_invoice", system=lambda ctx: ctx.handoff.source_connection, read=invoice_read),
        WriteStep(
            name="update_opportunity_billing",
            system="crm",
            purpose="deal_billing",
            entity=lambda crm: "opportunity",
            records=opportunity_records,
            write=update_by_id,
        ),
        WriteStep(
            name="update_psa_billing",
            system="psa",
            purpose="project_billing",
            entity=lambda psa: "project" if psa.vendor == "certinia" else "invoices",
            records=psa_records,
            write=psa_write,
        ),
    ),
    attempt_budget=8,
)
