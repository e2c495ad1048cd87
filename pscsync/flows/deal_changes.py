"""Changes to a deal after it is won (contract change) and before (pipeline to demand).

contract-change: an amendment (new contract version, value or end date) adds a budget for the
change in the PSA (Certinia keeps one budget record per change order; Kantata holds the project
price), updates the ERP contract, and writes the synced version back to the opportunity.

pipeline-to-demand: an open deal's stage or probability moves; the PSA's forecast demand (soft,
tentative resource requests weighted by probability) follows. A lost deal cancels its demand; a
won deal is quote-to-project's business.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from connectors.canonical import ON_PROJECT, capability
from connectors.errors import TransientError
from connectors.models import Connection
from connectors.registry import connector_for
from pscsync.flows.base import Flow, StepContext
from pscsync.flows.deals import deal_read, now_iso
from pscsync.flows.quote_to_project import (
    contract_records,
    document,
    opportunity_id,
    project_records,
    read_crm,
    resource_request_records,
)
from pscsync.flows.steps import CheckStep, ReadStep, Record, WriteStep, find_by_key, key_of, systems, update_by_id
from pscsync.lifecycle import handoff_values_changed
from pscsync.models import Handoff

# contract-change ---------------------------------------------------------------------------------
# A deal's quote-to-project that no worker is running: one waiting to run, to retry, or for a person.
_WAITING = (Handoff.Status.PENDING, Handoff.Status.WAITING_RETRY, Handoff.Status.NEEDS_ATTENTION)


def deal_value_carry(deal: dict[str, Any]) -> int:
    """Give a won deal's waiting quote-to-project handoff the deal's latest value: "won, not yet a
    project" counts that handoff, and an amendment that arrives before the project exists must not
    leave it at the value the deal closed with. A running one reads the deal itself. The lifecycle's
    listeners (the open backlog) are told after commit. Returns how many."""
    if deal.get("amount") in (None, ""):
        return 0
    amount, currency = Decimal(str(deal["amount"])), str(deal.get("currency") or "")[:3]
    carried = 0
    for handoff in Handoff.objects.filter(flow="quote-to-project", business_key=deal["id"], status__in=_WAITING):
        if handoff.amount == amount and (not currency or handoff.currency == currency):
            continue
        handoff.amount, handoff.currency = amount, currency or handoff.currency
        handoff.save(update_fields=["amount", "currency"])
        handoff_values_changed(handoff, fields=("amount", "currency"), reason="deal amended")
        carried += 1
    return carried


def amendment_validate(ctx: StepContext) -> dict[str, Any]:
    deal = ctx.outputs["read_deal"]["deal"]
    subject = f"opportunity {deal['name']!r} ({deal['id']})"
    if deal["is_won"]:
        deal_value_carry(deal)
    if not deal["is_won"]:
        # An open deal's terms move with the pipeline (pipeline-to-demand); a lost one has none.
        return {"action": "none", "why": f"{subject} is not Closed Won: its terms are not a contract yet"}
    if deal["contract_version"] <= 1:
        # The original contract's terms, set as the deal closed: quote-to-project provisions them
        # from the deal as it reads it, so there is nothing to amend.
        return {"action": "none", "why": "contract version 1 is the original contract, provisioned by quote-to-project"}
    psa = systems(ctx).psa
    project = find_by_key(psa, "project", deal=deal["id"])
    if project is None:
        # The deal's quote-to-project has not provisioned it yet: wait for it rather than fail.
        raise TransientError(f"the project for {subject} is not provisioned yet; the amendment waits for it")
    customer = ctx.outputs["read_deal"]["account"]["id"]
    erp = systems(ctx).erp
    found = find_by_key(erp, "customer", account=customer)
    if found is None:
        raise TransientError(f"the ERP customer for {subject} is not created yet; the amendment waits for it")
    return {"action": "amend", "project_id": project.external_id, "erp_customer_id": found.external_id}


def _amending(ctx: StepContext) -> bool:
    return ctx.outputs["validate_amendment"].get("action", "amend") == "amend"


def amendment_budget_records(ctx: StepContext, psa: Connection) -> list[Record]:
    """Certinia: a budget record for this version holding the change in value (earlier versions
    keep theirs). Kantata: the project's price is the contract value."""
    if not _amending(ctx):
        return []
    deal = ctx.outputs["read_deal"]["deal"]
    project = ctx.outputs["validate_amendment"]["project_id"]
    if capability(psa, "budget").held_on == ON_PROJECT:
        return [Record(key=key_of(psa, "budget", deal=deal["id"]), source=document(ctx))]
    key = key_of(psa, "budget", deal=deal["id"], version=deal["contract_version"])
    connector = connector_for(psa)
    before = sum(amount for other, amount in connector.budgets(project) if other != key)
    change = (Decimal(deal["amount"] or "0") - before).quantize(Decimal("0.01"))
    refs = connector.references("budget", project_id=project)
    return [Record(key=key, source=document(ctx, item={"amount": str(change)}), references=refs)]


def amendment_contract_records(ctx: StepContext, erp: Connection) -> list[Record]:
    if not _amending(ctx):
        return []
    ctx.results.setdefault("upsert_customer", ctx.outputs["validate_amendment"]["erp_customer_id"])
    return contract_records(ctx, erp)


def amendment_status_records(ctx: StepContext, crm: Connection) -> list[Record]:
    if not _amending(ctx):
        return []
    return [
        Record(key=key_of(crm, "deal_amendment", deal=opportunity_id(ctx)), source=document(ctx, synced_at=now_iso()))
    ]


CONTRACT_CHANGE = Flow(
    name="contract-change",
    label="Contract change",
    steps=(
        ReadStep(name="read_deal", system=read_crm, read=deal_read),
        CheckStep(name="validate_amendment", check=amendment_validate),
        WriteStep(
            name="upsert_budget",
            system="psa",
            purpose="budget",
            records=amendment_budget_records,
        ),
        WriteStep(
            name="upsert_contract",
            system="erp",
            purpose="contract",
            records=amendment_contract_records,
        ),
        WriteStep(
            name="update_opportunity",
            system="crm",
            purpose="deal_amendment",
            records=amendment_status_records,
            write=update_by_id,
        ),
    ),
    attempt_budget=12,
)


# pipeline-to-demand ------------------------------------------------------------------------------
def demand_decide(ctx: StepContext) -> dict[str, Any]:
    deal = ctx.outputs["read_deal"]["deal"]
    if deal["is_won"]:
        return {"action": "none", "why": "the deal is won: quote-to-project turns its demand into firm requests"}
    if deal["is_closed"]:
        return {"action": "cancel", "why": f"the deal is closed ({deal['stage']}): its forecast demand is cancelled"}
    if not deal["legal_entity"] or not deal["contract_start"] or not deal["contract_end"]:
        return {"action": "none", "why": "no legal entity or contract dates yet: nothing to forecast"}
    return {"action": "forecast", "probability": str(deal["probability"] or 0)}


def _decision(ctx: StepContext) -> dict[str, Any]:
    return ctx.outputs["decide_demand"]


def demand_project_records(ctx: StepContext, psa: Connection) -> list[Record]:
    """A PSA that holds demand on a project (Kantata) gets the deal's future project (same key) as
    an estimate the won deal later turns into the real project. Others' requests need none."""
    if not capability(psa, "resource_request").needs_project or _decision(ctx)["action"] == "none":
        return []
    # A lost deal's estimate is archived (Kantata's closed state; archived workspaces drop out of
    # its project lists and reports), so no PSA backlog report counts work that will never come.
    # A deal back in the pipeline reopens it.
    return project_records(ctx, psa, archived=_decision(ctx)["action"] == "cancel")


def demand_records(ctx: StepContext, psa: Connection) -> list[Record]:
    decision = _decision(ctx)
    if decision["action"] == "none":
        return []
    if capability(psa, "resource_request").needs_project:
        ctx.results.setdefault("upsert_project", ctx.results.get("upsert_estimate", ""))
    if decision["action"] == "cancel":
        return resource_request_records(ctx, psa, status="Cancelled", probability=Decimal("0"))
    return resource_request_records(ctx, psa, status="Tentative", probability=Decimal(decision["probability"]))


PIPELINE_TO_DEMAND = Flow(
    name="pipeline-to-demand",
    label="Pipeline to demand",
    steps=(
        ReadStep(name="read_deal", system=read_crm, read=deal_read),
        CheckStep(name="decide_demand", check=demand_decide),
        WriteStep(
            name="upsert_estimate",
            system="psa",
            purpose="project",
            records=demand_project_records,
        ),
        WriteStep(
            name="upsert_forecast_demand",
            system="psa",
            purpose="resource_request",
            records=demand_records,
        ),
    ),
    attempt_budget=8,
)
