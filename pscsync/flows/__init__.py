"""Flows: ordered steps, each idempotent by a key derived from business data.

A flow is data (a name, its steps, its attempt budget); the runner (pscsync.runner) does the
rest: leases, attempts, retries, recovery. Flows call other systems only through the connector
interface (connectors.base.Connector).
"""

from __future__ import annotations

from pscsync.flows.base import Flow, StepContext, StepDef, UpsertStep
from pscsync.flows.bill_to_cash import BILL_TO_CASH
from pscsync.flows.deal_changes import CONTRACT_CHANGE, PIPELINE_TO_DEMAND
from pscsync.flows.echo import ECHO_FLOW
from pscsync.flows.project_to_bill import PROJECT_TO_BILL
from pscsync.flows.quote_to_project import QUOTE_TO_PROJECT

FLOWS: dict[str, Flow] = {
    flow.name: flow
    for flow in (
        ECHO_FLOW,
        QUOTE_TO_PROJECT,
        PROJECT_TO_BILL,
        BILL_TO_CASH,
        CONTRACT_CHANGE,
        PIPELINE_TO_DEMAND,
    )
}


def flow_get(name: str) -> Flow | None:
    return FLOWS.get(name)


__all__ = ["FLOWS", "Flow", "StepContext", "StepDef", "UpsertStep", "flow_get"]
