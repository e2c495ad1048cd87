"""quote-to-project: a deal won in the CRM becomes an ERP customer, a PSA project with its work
breakdown and budget, an ERP contract (billing setup and revenue method), PSA resource requests,
and the ids written back to the opportunity. Keys: docs/flows.md."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from connectors.base import WriteResult
from connectors.canonical import OWN_RECORD as ON_OWN_RECORD
from connectors.canonical import capability
from connectors.errors import ValidationError
from connectors.models import Connection
from connectors.registry import connector_for
from pscsync.flows.base import Flow, StepContext
from pscsync.flows.deals import deal_read, deal_validate, now_iso, phase_plan, resource_plan
from pscsync.flows.steps import CheckStep, ReadStep, Record, WriteStep, key_of, update_by_id
from pscsync.models import CrossReference


def document(ctx: StepContext, **extra: Any) -> dict[str, Any]:
    """What mappings read: the deal, its account, ids written by earlier steps, and the item."""
    read = ctx.outputs["read_deal"]
    refs = {
        "erp_customer_id": ctx.results.get("upsert_customer", ""),
        "psa_project_id": ctx.results.get("upsert_project", ""),
        "erp_contract_id": ctx.results.get("upsert_contract", ""),
    }
    return {"deal": read["deal"], "account": read["account"], "refs": refs, **extra}


def opportunity_id(ctx: StepContext) -> str:
    return ctx.outputs["read_deal"]["deal"]["id"]


# Records per step ------------------------------------------------------------------------------
def customer_records(ctx: StepContext, erp: Connection) -> list[Record]:
    account = ctx.outputs["read_deal"]["account"]
    return [Record(key=key_of(erp, "customer", account=account["id"]), source=document(ctx))]


def customer_guard(ctx: StepContext) -> Any:
    """Before creating an ERP customer for the first time, make sure the ERP has no customer of
    that name that someone keyed by hand: syncing would create a second one (DOMAIN.md §3, #6)."""

    def guard(erp: Connection, entity: str, record: Record, fields: dict[str, Any]) -> WriteResult:
        connector = connector_for(erp)
        known = CrossReference.objects.filter(entity_type="customer", canonical_id=record.key, connection=erp).exists()
        if not known:
            name = record.source["account"]["name"]
            others = [c for c in connector.customers_named(name) if c["key"] != record.key]
            for other in others:
                raise ValidationError(
                    f"{erp.name} already has a customer named {name!r} (internal id {other['id']}"
                    f"{', external id ' + other['key'] if other['key'] else ', keyed by hand'}) that is not linked "
                    f"to Salesforce account {record.source['account']['id']} — fix: in {erp.name} set that "
                    f"customer's external id to {record.key} (or merge the duplicate), then resubmit"
                )
        return connector.upsert(entity=entity, key=record.key, fields=fields)

    return guard


def project_records(ctx: StepContext, psa: Connection, *, archived: bool = False) -> list[Record]:
    # A won deal's project is open, even if the PSA archived it as a lost estimate before.
    references = connector_for(psa).references("project", archived=archived)
    return [Record(key=key_of(psa, "project", deal=opportunity_id(ctx)), source=document(ctx), references=references)]


def milestone_records(ctx: StepContext, psa: Connection) -> list[Record]:
    refs = connector_for(psa).references("milestone", project_id=ctx.results["upsert_project"])
    return [
        Record(
            key=key_of(psa, "milestone", deal=opportunity_id(ctx), number=item["number"]),
            source=document(ctx, item=item),
            references=refs,
        )
        for item in phase_plan(ctx, psa)
    ]


def budget_records(ctx: StepContext, psa: Connection) -> list[Record]:
    """A PSA that keeps budgets as records gets one per contract version; one that holds the
    budget on the project (its price) has it written with the project."""
    if capability(psa, "budget").held_on != ON_OWN_RECORD:
        return []
    deal = ctx.outputs["read_deal"]["deal"]
    key = key_of(psa, "budget", deal=deal["id"], version=deal["contract_version"])
    source = document(ctx, item={"amount": deal["amount"]})
    refs = connector_for(psa).references("budget", project_id=ctx.results["upsert_project"])
    return [Record(key=key, source=source, references=refs)]


def contract_records(ctx: StepContext, erp: Connection) -> list[Record]:
    deal = ctx.outputs["read_deal"]["deal"]
    refs = connector_for(erp).references("contract", customer_id=ctx.results["upsert_customer"])
    return [Record(key=key_of(erp, "contract", deal=deal["id"]), source=document(ctx), references=refs)]


def resource_request_records(
    ctx: StepContext, psa: Connection, *, status: str = "Ready to Staff", probability: Decimal | None = None
) -> list[Record]:
    """Resource requests from the plan: firm ("Ready to Staff") for a won deal; for pipeline,
    tentative and weighted by the deal's probability (forecast demand)."""
    project = ctx.results.get("upsert_project", "")
    refs = connector_for(psa).references(
        "resource_request", opportunity_id=opportunity_id(ctx), status=status, project_id=project
    )
    records = []
    for item in resource_plan(ctx, psa):
        extra: dict[str, Any] = {"status": status}
        if probability is not None:
            weighted = (Decimal(item["hours"]) * probability / 100).quantize(Decimal("0.01"))
            extra.update(probability=str(probability), weighted_hours=str(weighted))
        source = document(ctx, item={**item, **extra})
        key = key_of(psa, "resource_request", deal=opportunity_id(ctx), number=item["number"])
        records.append(Record(key=key, source=source, references=refs))
    return records


def deal_status_records(ctx: StepContext, crm: Connection) -> list[Record]:
    return [
        Record(key=key_of(crm, "deal_status", deal=opportunity_id(ctx)), source=document(ctx, provisioned_at=now_iso()))
    ]


def read_crm(ctx: StepContext) -> Connection:
    return ctx.handoff.source_connection


# No step here declares a compensation (steps.Compensation). Every write is an upsert by a key of
# ours, so a wrong record is corrected by fixing the deal and resubmitting, never by removing it;
# and removing them would destroy what people build on them: the ERP customer is shared by every
# deal of the account, and the PSA project collects time, assignments and staffing from day one.
QUOTE_TO_PROJECT = Flow(
    name="quote-to-project",
    label="Quote to project",
    steps=(
        ReadStep(name="read_deal", system=read_crm, read=deal_read),
        CheckStep(name="validate_deal", check=deal_validate),
        WriteStep(
            name="upsert_customer",
            system="erp",
            purpose="customer",
            records=customer_records,
            write=customer_guard,
        ),
        WriteStep(
            name="upsert_project",
            system="psa",
            purpose="project",
            records=project_records,
            facts=lambda ctx: {"business_times": {"project_activated": now_iso()}},
        ),
        WriteStep(
            name="upsert_milestones",
            system="psa",
            purpose="milestone",
            records=milestone_records,
        ),
        WriteStep(name="upsert_budget", system="psa", purpose="budget", records=budget_records),
        WriteStep(
            name="upsert_contract",
            system="erp",
            purpose="contract",
            records=contract_records,
        ),
        WriteStep(
            name="upsert_resource_requests",
            system="psa",
            purpose="resource_request",
            records=resource_request_records,
        ),
        WriteStep(
            name="update_opportunity",
            system="crm",
            purpose="deal_status",
            records=deal_status_records,
            write=update_by_id,
        ),
    ),
    attempt_budget=8,
)
