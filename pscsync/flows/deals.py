"""A deal as the flows see it: the opportunity and its account read from the CRM, the checks a
deal must pass before anything is written elsewhere, and the plans derived from it (phases and
milestones, resource requests). The deal is the canonical one (docs/canonical.md) its CRM
connector reads."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from connectors.errors import MappingError, ValidationError
from connectors.models import Connection
from connectors.registry import connector_for
from pscsync import clock
from pscsync.flows.base import StepContext
from pscsync.flows.steps import mapping_for, systems_of

BILLING_MODELS = ("Time and Materials", "Fixed Fee")


def _resource_plan(value: Any) -> list[dict[str, Any]] | None:
    """The deal's own plan (JSON text on the opportunity), or None to use the service line's."""
    if value in (None, ""):
        return None
    try:
        plan = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise ValidationError(
            "the opportunity's Resource Plan is not valid JSON: write it as "
            '[{"role": "Senior Consultant", "hours": 320}] or leave it empty'
        ) from None
    if not isinstance(plan, list) or not all(isinstance(i, dict) and i.get("role") for i in plan):
        raise ValidationError('the opportunity\'s Resource Plan must be a list of {"role": ..., "hours": ...}')
    return plan


def deal_read(ctx: StepContext, connection: Connection) -> dict[str, Any]:
    """Read the opportunity and its account in one query: the document every later step maps from."""
    opportunity_id = ctx.handoff.business_key
    found = connector_for(connection).deal_read(opportunity_id)
    if found is None:
        raise ValidationError(f"opportunity {opportunity_id} no longer exists in {connection.name} (deleted?)")
    deal, account_doc = found
    closed_at = deal["closed_at"]
    facts: dict[str, Any] = {
        "customer_name": account_doc["name"],
        "service_line": deal["service_line"],
        "amount": deal["amount"],
        "currency": deal["currency"],
        "legal_entity": deal["legal_entity"],
    }
    if deal["is_won"] and closed_at:
        facts["business_times"] = {"deal_closed": closed_at}
        if ctx.handoff.flow == "quote-to-project":
            facts["started_at"] = closed_at
    return {"id": deal["id"], "deal": deal, "account": account_doc, "handoff_facts": facts}


def deal_validate(ctx: StepContext) -> dict[str, Any]:
    """Everything that must be true before any system is written to. All problems are reported
    together, each naming the record and the fix, so one correction pass is enough."""
    document = ctx.outputs["read_deal"]
    deal, account = document["deal"], document["account"]
    subject = f"opportunity {deal['name']!r} ({deal['id']})"
    problems: list[str] = []
    # The read document's fields each problem is about (its paths, as the edit form names them):
    # stored with the failure, so the resubmit page marks them without reading the message.
    fields: list[str] = []
    if not deal["legal_entity"]:
        problems.append(f"{subject} has no Legal Entity — fix: set Legal Entity on the opportunity")
        fields.append("deal.legal_entity")
    else:
        try:
            systems_of(ctx, deal["legal_entity"])
        except MappingError as exc:
            problems.append(f"{subject}: {exc}")
            fields.append("deal.legal_entity")
    if not account["id"]:
        problems.append(f"{subject} has no account — fix: set the Account on the opportunity")
        fields.append("account.id")
    else:
        who = f"account {account['name']!r} ({account['id']})"
        if not account["tax_profile"]:
            problems.append(f"{who} has no Tax Profile — fix: set Tax Profile on the account in Salesforce")
            fields.append("account.tax_profile")
        if not account["country"]:
            problems.append(f"{who} has no Billing Country — fix: set the billing address on the account")
            fields.append("account.country")
        if account["parent_id"] and not _parent_exists(ctx, account["parent_id"]):
            problems.append(
                f"{who} points to parent account {account['parent_id']}, which does not exist — fix: "
                "correct or clear Parent Account so the customer hierarchy is right in the ERP"
            )
            fields.append("account.parent_id")
    if not deal["service_line"]:
        problems.append(f"{subject} has no Service Line — fix: set Service Line on the opportunity")
        fields.append("deal.service_line")
    if deal["billing_model"] not in BILLING_MODELS:
        problems.append(
            f"{subject} has billing model {deal['billing_model'] or 'empty'!r}; it must be one of "
            f"{', '.join(BILLING_MODELS)} — fix: set Billing Model on the opportunity"
        )
        fields.append("deal.billing_model")
    if deal["amount"] is None or Decimal(deal["amount"]) <= 0:
        problems.append(f"{subject} has no positive Amount — fix: enter the contract value")
        fields.append("deal.amount")
    if not deal["currency"]:
        problems.append(f"{subject} has no currency — fix: set the opportunity currency")
        fields.append("deal.currency")
    start, end = _date(deal["contract_start"]), _date(deal["contract_end"])
    if start is None or end is None:
        problems.append(f"{subject} needs Contract Start and Contract End dates (YYYY-MM-DD)")
        fields += [name for name, day in (("deal.contract_start", start), ("deal.contract_end", end)) if day is None]
    elif end < start:
        problems.append(f"{subject}: Contract End {end} is before Contract Start {start}")
        fields += ["deal.contract_start", "deal.contract_end"]
    try:
        _resource_plan(deal["resource_plan_text"])
    except ValidationError as exc:
        problems.append(f"{subject}: {exc.message}")
        fields.append("deal.resource_plan_text")
    if problems:
        raise ValidationError("; ".join(problems), fields=tuple(fields))
    # The service line must be known to the ERP contract mapping before anything is written.
    if deal["service_line"]:
        _check_value_mapped(ctx, "contract", "service_line", deal["service_line"], subject)
    return {"checked": True}


def _parent_exists(ctx: StepContext, parent_id: str) -> bool:
    return connector_for(ctx.handoff.source_connection).account_exists(parent_id)


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text[:10]) if text else None
    except ValueError:
        return None


def _check_value_mapped(ctx: StepContext, purpose: str, table: str, value: str, subject: str) -> None:
    erp = systems_of(ctx, ctx.outputs["read_deal"]["deal"]["legal_entity"]).erp
    version = mapping_for(ctx, erp, purpose)
    values = version.value_maps.get(table, {})
    if value.strip().lower() not in {str(k).strip().lower() for k in values}:
        raise MappingError(
            f"service line {value!r} of {subject} is not in the {table!r} value map of mapping "
            f"{version.label} (known: {', '.join(sorted(values)) or 'none'}) — fix: an admin adds it "
            "in Mappings, or correct the opportunity; then resubmit",
            mapping_version=version.pk,
            fields=("deal.service_line",),
            value_map=table,
        )


def phase_plan(ctx: StepContext, connection: Connection) -> list[dict[str, Any]]:
    """Phases and milestones from the service line's template (the milestone mapping's
    `phase_plan` value map: service line -> [[phase name, share of the fee, share of the term]]).
    For fixed fee each milestone bills its share of the deal; for time and materials it bills 0."""
    deal = ctx.outputs["read_deal"]["deal"]
    version = mapping_for(ctx, connection, "milestone")
    plans = {str(k).strip().lower(): v for k, v in version.value_maps.get("phase_plan", {}).items()}
    plan = plans.get(deal["service_line"].lower()) or plans.get("default") or [["Delivery", 1, 1]]
    start, end = _date(deal["contract_start"]), _date(deal["contract_end"])
    term = max((end - start).days, 0) if start and end else 0
    amount = Decimal(deal["amount"] or "0")
    fixed_fee = deal["billing_model"] == "Fixed Fee"
    items, billed, elapsed = [], Decimal("0"), Decimal("0")
    for number, (name, fee_share, term_share) in enumerate(plan, start=1):
        elapsed += Decimal(str(term_share))
        last = number == len(plan)
        share = (amount * Decimal(str(fee_share))).quantize(Decimal("0.01"))
        value = (amount - billed) if last else share  # the last milestone takes the rounding
        billed += value
        due = start + dt.timedelta(days=int(term * elapsed)) if start else None
        items.append(
            {
                "number": number,
                "name": f"{name}",
                "amount": str(value if fixed_fee else Decimal("0.00")),
                "due_date": due.isoformat() if due else "",
                "billable": fixed_fee,
            }
        )
    return items


def resource_plan(ctx: StepContext, connection: Connection) -> list[dict[str, Any]]:
    """Roles and hours: the deal's own plan, else the service line's default (the
    resource_request mapping's `default_plan` value map: service line -> [[role, hours]])."""
    deal = ctx.outputs["read_deal"]["deal"]
    own = _resource_plan(deal["resource_plan_text"])
    if own is None:
        version = mapping_for(ctx, connection, "resource_request")
        plans = {str(k).strip().lower(): v for k, v in version.value_maps.get("default_plan", {}).items()}
        own = [{"role": r, "hours": h} for r, h in plans.get(deal["service_line"].lower(), [])]
    return [
        {
            "number": n,
            "role": str(item["role"]),
            "hours": str(item.get("hours") or 0),
            "start_date": deal["contract_start"],
            "end_date": deal["contract_end"],
        }
        for n, item in enumerate(own, start=1)
    ]


def now_iso() -> str:
    return clock.now().isoformat()
