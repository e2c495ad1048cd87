"""Pipeline-weighted resource demand (DOMAIN.md §2.8) kept as data arrives: each open deal's plan
hours × probability spread evenly over its contract months, summed per role and month in
`DemandMonth`, so the demand page reads a few hundred rows, not one fact per open deal.

A deal's demand comes from its pipeline-to-demand fact (the latest stage, probability, contract
dates and resource plan the CRM sent). When the fact is rewritten (dashboards.facts._fact_write,
under a lock on the deal), the deal's old demand is taken out and its new demand put in;
`demand_rebuild` recomputes everything from the facts (after a bulk load or an upgrade).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Sum

from dashboards.backlog import add_to_groups
from dashboards.facts import parse_time
from dashboards.models import DemandMonth, FlowFact

FLOW = "pipeline-to-demand"
KEY_FIELDS = ("legal_entity_id", "service_line", "connection_id", "role", "month")
SUM_FIELDS = ("hours", "deals_ending", "default_plan_ending")


@dataclass
class DealDemand:
    """One open deal's weighted hours by (role, month); its contract's last month; whether it has
    a plan of its own (else its service line's default plan applies, held in the PSA mapping)."""

    hours: dict[tuple[str, str], float] = field(default_factory=dict)
    end_month: str = ""
    has_plan: bool = False


_SPANS: dict[tuple[dt.date, dt.date], tuple[str, ...]] = {}


def _months(first: dt.date, last: dt.date) -> tuple[str, ...]:
    span = _SPANS.get((first, last))
    if span is None:  # many deals share their contract months: build each span once
        out, day = [], first
        while day <= last:
            out.append(day.strftime("%Y-%m"))
            day = (day + dt.timedelta(days=32)).replace(day=1)
        span = _SPANS[(first, last)] = tuple(out)
    return span


def deal_demand(details: dict[str, Any] | None) -> DealDemand | None:
    """The demand of one pipeline fact's details; None for a closed deal or one without dates."""
    d = details or {}
    if d.get("is_closed") or not d.get("contract_start") or not d.get("contract_end"):
        return None
    start, end = parse_time(d["contract_start"]), parse_time(d["contract_end"])
    if not start or not end or end < start:
        return None
    try:
        plan = json.loads(d.get("resource_plan_text") or "null")
    except ValueError:
        plan = None
    out = DealDemand(end_month=end.strftime("%Y-%m"), has_plan=bool(plan))
    if not plan:
        return out
    span = _months(start.date().replace(day=1), end.date())
    prob = float(d.get("probability") or 0) / 100
    for item in plan:
        for month in span:
            key = (str(item.get("role")), month)
            out.hours[key] = out.hours.get(key, 0.0) + float(item.get("hours") or 0) * prob / len(span)
    return out


def _dims(fact: dict[str, Any]) -> tuple[int, str, int]:
    return (fact.get("legal_entity_id") or 0, fact.get("service_line") or "", fact.get("connection_id") or 0)


def add_deal(deltas: dict[tuple, list], fact: dict[str, Any] | None, sign: int) -> None:
    if not fact:
        return
    demand = deal_demand(fact.get("details"))
    if demand is None:
        return
    dims = _dims(fact)
    for (role, month), hours in demand.hours.items():
        deltas[(*dims, role, month)][0] += sign * hours
    ending = deltas[(*dims, "", demand.end_month)]
    ending[1 if demand.has_plan else 2] += sign


def demand_move(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    """Replace a deal's old demand by its new one (fact values as dicts: legal_entity_id,
    service_line, connection_id, details). Called inside the fact's locked write."""
    deltas: dict[tuple, list] = defaultdict(lambda: [0.0, 0, 0])
    add_deal(deltas, old, -1)
    add_deal(deltas, new, +1)
    add_to_groups(DemandMonth, KEY_FIELDS, SUM_FIELDS, deltas)


FACT_FIELDS = ("legal_entity_id", "service_line", "connection_id", "details")


def demand_rebuild() -> int:
    """Recompute every month's demand from the pipeline facts; returns the rows written."""
    deltas: dict[tuple, list] = defaultdict(lambda: [0.0, 0, 0])
    with transaction.atomic():
        DemandMonth.objects.all().delete()
        facts = FlowFact.objects.filter(flow=FLOW).exclude(details__is_closed=True).values(*FACT_FIELDS)
        for fact in facts.iterator(chunk_size=5000):
            add_deal(deltas, fact, +1)
        DemandMonth.objects.bulk_create(
            [
                DemandMonth(**dict(zip(KEY_FIELDS, k, strict=True)), **dict(zip(SUM_FIELDS, v, strict=True)))
                for k, v in deltas.items()
                if any(v)
            ],
            batch_size=5000,
        )
    return len(deltas)


@dataclass
class Demand:
    hours: dict[tuple[str, str], float]  # (role, month) -> weighted hours, months from the period's
    deals: int  # open deals with a plan whose contract runs into the period's month or later
    default_plan: int  # the same without a plan of their own


def demand_for(f: Any) -> Demand:
    """Weighted demand from the period's first month on, under filters `f` (metrics.Filters):
    from the kept months, or, for one customer (the months have none), from that customer's
    open deals' facts."""
    first = f.start.strftime("%Y-%m")
    hours: dict[tuple[str, str], float] = defaultdict(float)
    deals = default_plan = 0
    if f.customer:
        facts = (
            f.apply(FlowFact.objects.filter(flow=FLOW))
            .exclude(details__is_closed=True)
            .filter(details__contract_end__gte=first)  # ISO dates compare as text: ends this month or later
            .values_list("details", flat=True)
        )
        for details in facts.iterator():
            demand = deal_demand(details)
            if demand is None or demand.end_month < first:
                continue
            deals += demand.has_plan
            default_plan += not demand.has_plan
            for (role, month), h in demand.hours.items():
                if month >= first:
                    hours[(role, month)] += h
        return Demand(dict(hours), deals, default_plan)
    rows = (
        f.apply(DemandMonth.objects.filter(month__gte=first))
        .values("role", "month")
        .annotate(h=Sum("hours"), d=Sum("deals_ending"), p=Sum("default_plan_ending"))
        .order_by()
    )
    for row in rows:
        if row["role"] == "":
            deals += row["d"]
            default_plan += row["p"]
        elif row["h"] and row["h"] > 1e-6:  # deltas leave float dust where a deal moved away
            hours[(row["role"], row["month"])] += row["h"]
    return Demand(dict(hours), deals, default_plan)
