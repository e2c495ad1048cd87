"""quote-to-project: a deal won in the CRM becomes an ERP customer, a PSA project with its work
breakdown and budget, an ERP contract (billing setup and revenue method), PSA resource requests,
and the ids written back to the opportunity. Keys: docs/flows.md."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from connectors.base import WriteResult
from connectors.errors import ValidationError
from connectors.models import Connection
from connectors.registry import connector_for
from pscsync.flows.base import Flow, StepContext
from pscsync.flows.deals import deal_read, deal_validate, now_iso, phase_plan, resource_plan
from pscsync.flows.steps import CheckStep, ReadStep, Record, WriteStep, update_by_id
from pscsync.models import CrossReference

# The connector's name for each thing, per vendor.
ENTITY_NAMES: dict[str, dict[str, str]] = {
    "customer": {"netsuite": "customer", "businesscentral": "customers"},
    "project": {"certinia": "project", "kantata": "workspaces"},
    "milestone": {"certinia": "milestone", "kantata": "stories"},
    "budget": {"certinia": "budget", "kantata": "workspaces"},
    "contract": {"netsuite": "sales_order", "businesscentral": "projects"},
    "resource_request": {"certinia": "resource_request", "kantata": "stories"},
    "deal_status": {"salesforce": "opportunity"},
}


def entity_name(purpose: str) -> Any:
    def name(connection: Connection) -> str:
        try:
            return ENTITY_NAMES[purpose][connection.vendor]
        except KeyError:
            raise ValidationError(f"{connection.name} ({connection.vendor}) cannot hold a {purpose}") from None

    return name


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
    return [Record(key=f"C-{account['id']}", source=document(ctx))]


def customer_guard(ctx: StepContext) -> Any:
    """Before creating an ERP customer for the first time, make sure the ERP has no customer of
    that name that someone keyed by hand: syncing would create a second one (DOMAIN.md §3, #6)."""

    def guard(erp: Connection, entity: str, record: Record, fields: dict[str, Any]) -> WriteResult:
        connector = connector_for(erp)
        known = CrossReference.objects.filter(entity_type="customer", canonical_id=record.key, connection=erp).exists()
        if not known:
            name = record.source["account"]["name"]
            others = [c for c in _customers_named(connector, erp, name) if c["key"] != record.key]
            for other in others:
                raise ValidationError(
                    f"{erp.name} already has a customer named {name!r} (internal id {other['id']}"
                    f"{', external id ' + other['key'] if other['key'] else ', keyed by hand'}) that is not linked "
                    f"to Salesforce account {record.source['account']['id']} — fix: in {erp.name} set that "
                    f"customer's external id to {record.key} (or merge the duplicate), then resubmit"
                )
        return connector.upsert(entity=entity, key=record.key, fields=fields)

    return guard


def _customers_named(connector: Any, erp: Connection, name: str) -> list[dict[str, str]]:
    if erp.vendor == "netsuite":
        rows = connector.read("customer", where={"companyname": name})
        return [{"id": str(r.get("id")), "key": r.get("externalid") or ""} for r in rows]
    rows = connector.read("customers", where={"displayName": name})
    return [{"id": str(r.get("id")), "key": r.get("number") or ""} for r in rows]


def project_records(ctx: StepContext, psa: Connection) -> list[Record]:
    # Kantata: a won deal's workspace is open even if it was archived as a lost estimate before.
    references = {"archived": False} if psa.vendor == "kantata" else {}
    return [Record(key=f"P-{opportunity_id(ctx)}", source=document(ctx), references=references)]


def milestone_records(ctx: StepContext, psa: Connection) -> list[Record]:
    project = ctx.results["upsert_project"]
    refs = {"pse__Project__c": project} if psa.vendor == "certinia" else {"workspace_id": project}
    if psa.vendor == "kantata":
        refs["story_type"] = "milestone"
    return [
        Record(key=f"M-{opportunity_id(ctx)}-{item['number']}", source=document(ctx, item=item), references=refs)
        for item in phase_plan(ctx, psa)
    ]


def budget_records(ctx: StepContext, psa: Connection) -> list[Record]:
    """Certinia keeps budgets as records (one per contract version); Kantata holds the budget as
    the project's price, written with the project."""
    if psa.vendor != "certinia":
        return []
    deal = ctx.outputs["read_deal"]["deal"]
    key = f"B-{deal['id']}-v{deal['contract_version']}"
    source = document(ctx, item={"amount": deal["amount"]})
    return [Record(key=key, source=source, references={"pse__Project__c": ctx.results["upsert_project"]})]


def contract_records(ctx: StepContext, erp: Connection) -> list[Record]:
    deal = ctx.outputs["read_deal"]["deal"]
    if erp.vendor == "netsuite":
        return [
            Record(
                key=f"SO-{deal['id']}",
                source=document(ctx),
                references={"entity": {"id": ctx.results["upsert_customer"]}},
            )
        ]
    return [Record(key=f"P-{deal['id']}", source=document(ctx))]


def contract_shape(fields: dict[str, Any]) -> dict[str, Any]:
    """NetSuite: the contract value goes on one line of the service item the mapping chose."""
    fields.pop("service_line_check", None)  # Business Central: checked by the mapping, not stored
    item_id = fields.pop("service_item", None)
    amount = fields.pop("contract_amount", None)
    if item_id is not None and amount is not None:
        fields["item"] = {
            "items": [
                {
                    "item": {"id": str(item_id)},
                    "quantity": 1,
                    "rate": float(Decimal(amount)),
                    "amount": float(Decimal(amount)),
                }
            ]
        }
    return fields


def resource_request_records(
    ctx: StepContext, psa: Connection, *, status: str = "Ready to Staff", probability: Decimal | None = None
) -> list[Record]:
    """Resource requests from the plan: firm ("Ready to Staff") for a won deal; for pipeline,
    tentative and weighted by the deal's probability (forecast demand)."""
    project = ctx.results.get("upsert_project", "")
    records = []
    for item in resource_plan(ctx, psa):
        if psa.vendor == "certinia":
            refs: dict[str, Any] = {"pse__Opportunity__c": opportunity_id(ctx), "pse__Status__c": status}
            if project:
                refs["pse__Project__c"] = project
        else:
            refs = {"workspace_id": project, "story_type": "task"}
        extra: dict[str, Any] = {"status": status}
        if probability is not None:
            weighted = (Decimal(item["hours"]) * probability / 100).quantize(Decimal("0.01"))
            extra.update(probability=str(probability), weighted_hours=str(weighted))
        source = document(ctx, item={**item, **extra})
        records.append(Record(key=f"RR-{opportunity_id(ctx)}-{item['number']}", source=source, references=refs))
    return records


def deal_status_records(ctx: StepContext, crm: Connection) -> list[Record]:
    return [Record(key=opportunity_id(ctx), source=document(ctx, provisioned_at=now_iso()))]


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
            entity=entity_name("customer"),
            records=customer_records,
            write=customer_guard,
        ),
        WriteStep(
            name="upsert_project",
            system="psa",
            purpose="project",
            entity=entity_name("project"),
            records=project_records,
            facts=lambda ctx: {"business_times": {"project_activated": now_iso()}},
        ),
        WriteStep(
            name="upsert_milestones",
            system="psa",
            purpose="milestone",
            entity=entity_name("milestone"),
            records=milestone_records,
        ),
        WriteStep(
            name="upsert_budget", system="psa", purpose="budget", entity=entity_name("budget"), records=budget_records
        ),
        WriteStep(
            name="upsert_contract",
            system="erp",
            purpose="contract",
            entity=entity_name("contract"),
            records=contract_records,
            shape=contract_shape,
        ),
        WriteStep(
            name="upsert_resource_requests",
            system="psa",
            purpose="resource_request",
            entity=entity_name("resource_request"),
            records=resource_request_records,
        ),
        WriteStep(
            name="update_opportunity",
            system="crm",
            purpose="deal_status",
            entity=entity_name("deal_status"),
            records=deal_status_records,
            write=update_by_id,
        ),
    ),
    attempt_budget=8,
)
