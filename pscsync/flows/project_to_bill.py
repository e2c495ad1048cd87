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

from connectors.canonical import CUSTOMER, KEYS, PROJECT, capability
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

KIND_CODES = {"Time": "TE", "Expense": "EX", "Milestone": "MS"}


def _money(value: Any) -> str:
    return str(Decimal(str(value or 0)).quantize(Decimal("0.01")))


# Reading the batch ---------------------------------------------------------------------------------
def billing_read(ctx: StepContext, psa: Connection) -> dict[str, Any]:
    batch = _batch(ctx, psa)
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
    deal = KEYS[PROJECT].parse(project_key)
    if deal is None:
        return ""
    names = Handoff.objects.filter(flow="quote-to-project", business_key=deal["deal"])
    return names.exclude(customer_name="").values_list("customer_name", flat=True).first() or ""


def _batch(ctx: StepContext, psa: Connection) -> dict[str, Any]:
    """The canonical billing batch its PSA connector reads (docs/canonical.md), completed from our
    own records where the PSA does not carry them (the project's key and its CRM account)."""
    key = ctx.handoff.business_key
    entity = ctx.handoff.legal_entity
    batch = connector_for(psa).billing_batch(key, currency=entity.currency if entity else "")
    if batch is None:
        named = (capability(psa, "billing_batch").key_format.parse(key) or {"batch": key})["batch"]
        raise ValidationError(f"billing batch {named} no longer exists in {psa.name}")
    if not batch["project_key"]:
        project_key, account = _project_origin(psa, batch["project_id"])
        batch["project_key"] = project_key
        batch["customer_key"] = batch["customer_key"] or (KEYS[CUSTOMER](account=account) if account else "")
    batch["date"] = batch["date"] or clock.now().date().isoformat()
    batch["total"] = _money(sum(Decimal(i["amount"]) for i in batch["items"]))
    return batch


def _project_origin(psa: Connection, project_id: str) -> tuple[str, str]:
    """The project's key and its CRM account, from the quote-to-project run that created it."""
    reference = (
        CrossReference.objects.filter(entity_type="project", connection=psa, external_id=project_id)
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
    customer = connector_for(erp).lookup(entity=capability(erp, "customer").entity, key=batch["customer_key"])
    if customer is None:
        raise ValidationError(
            f"{subject}: {erp.name} has no customer {batch['customer_key']} to bill — fix: resubmit the deal's "
            "quote-to-project handoff so the customer is created, then resubmit this one",
            key=batch["customer_key"],  # the workbench finds the deal that failed to create it (root causes)
        )
    _claim(ctx, batch)
    return {"erp_customer_id": customer.external_id}


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
    references = connector_for(erp).references(
        "invoice", customer_id=customer_id, customer_key=batch["customer_key"], lines=lines
    )
    source = {"billing": batch, "legal_entity": ctx.handoff.legal_entity.code if ctx.handoff.legal_entity else ""}
    return [Record(key=batch["invoice_key"], source=source, references=references)]


def _lines(ctx: StepContext, erp: Connection, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One ERP line per PSA item, naming the item it bills."""
    tables = mapping_for(ctx, erp, "invoice").value_maps
    items = []
    for item in batch["items"]:
        code = KIND_CODES.get(item["kind"], "IT")
        label = f"[{code}-{item['source_id'].rsplit(':', 1)[-1]}] {item['kind']} {item['date']}"
        items.append({**item, "label": label})
    return connector_for(erp).invoice_lines(items, batch_date=batch["date"], value_maps=tables)


def billing_source_records(ctx: StepContext, psa: Connection) -> list[Record]:
    batch = ctx.outputs["read_billing"]["billing"]
    invoice_id = ctx.results["upsert_invoice"]
    source = {"billing": batch, "refs": {"erp_invoice_id": invoice_id}, "invoiced_at": now_iso()}
    return [Record(key=batch["id"], source=source)]


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
            records=invoice_records,
            facts=lambda ctx: {"business_times": {"invoice_created": now_iso()}},
            compensation=INVOICE_COMPENSATION,
        ),
        WriteStep(
            name="mark_billed_in_psa",
            system="psa",
            purpose="billing_status",
            records=billing_source_records,
            write=update_by_id,
        ),
    ),
    attempt_budget=8,
)
