"""The echo flow: three upserts against the echo target, to exercise the engine end to end
(customer, then project, then invoice, each keyed by the business key, as the real flows are)."""

from __future__ import annotations

from pscsync.flows.base import Flow, StepContext, UpsertStep


def _fields(ctx: StepContext, **extra: object) -> dict[str, object]:
    return {"version": ctx.payload["version"], "data": ctx.payload["data"], **extra}


ECHO_FLOW = Flow(
    name="echo",
    label="Echo (engine self-test)",
    steps=(
        UpsertStep(
            name="upsert_customer",
            entity="customer",
            key=lambda ctx: f"CUST-{ctx.handoff.business_key}",
            fields=lambda ctx: _fields(ctx),
        ),
        UpsertStep(
            name="upsert_project",
            entity="project",
            key=lambda ctx: f"PRJ-{ctx.handoff.business_key}",
            fields=lambda ctx: _fields(ctx, customer=ctx.results["upsert_customer"]),
        ),
        UpsertStep(
            name="upsert_invoice",
            entity="invoice",
            key=lambda ctx: f"INV-{ctx.handoff.business_key}",
            fields=lambda ctx: _fields(ctx, project=ctx.results["upsert_project"]),
        ),
    ),
    attempt_budget=8,
)
