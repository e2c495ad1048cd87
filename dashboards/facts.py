"""Aggregates kept as data arrives: one FlowFact per business item, rebuilt from its handoffs when
one finishes, and DailyRollup / AttemptRollup rows rebuilt from the facts. Pages read rollups, so
their cost depends on the number of days shown, not on the number of handoffs stored.

Entry points: `handoff_finished` (called after commit when a handoff reaches an end state, see
apps.py), `rollups_catch_up` (the beat job: anything finished recently), `rollups_rebuild_all`
(backfill, e.g. after an SLA change or on a database loaded in bulk).
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F, Max, Q

from dashboards import sla as sla_rule
from dashboards.models import AttemptRollup, DailyRollup, EntityDailyRollup, FlowFact, FlowSla, RollupMark
from pscsync import clock
from pscsync.lifecycle import repairs_note
from pscsync.models import Attempt, Handoff, LegalEntity, Step

log = logging.getLogger("dashboards.facts")

END_STATES = frozenset({"succeeded", "needs_attention", "resolved", "cancelled"})
EXCEPTION_OUTCOMES = ("validation", "mapping", "rejected")

# Two clocks per flow. `label`: the business cycle a leader manages (start -> end, business_times
# keys), measured against the flow's SLA. `sync`: the integration's own latency, from the source
# change that triggered a handoff to every target updated, against the flow's sync SLA.
# `extra`: a second business measure shown on the flow's page.
SYNC = "Source change → every target system updated"
MEASURES: dict[str, dict[str, str]] = {
    "quote-to-project": {
        "title": "Quote to project",
        "label": "Deal closed won → project active in the PSA",
        "sync": "Deal change in the CRM → customer, project and write-back done in ERP, PSA and CRM",
        "extra": "",
    },
    "project-to-bill": {
        "title": "Project to bill",
        "label": "Time approved in the PSA → invoice raised in the ERP",
        "sync": "Billing batch released in the PSA → invoice created in the ERP",
        "extra": "Billing batch released → invoice raised",
    },
    "bill-to-cash": {
        "title": "Bill to cash",
        "label": "Invoice posted in the ERP → paid in full",
        "sync": "Invoice posted or payment applied in the ERP → status written back to CRM and PSA",
        "extra": "",
    },
    "contract-change": {
        "title": "Contract change",
        "label": "Amendment in the CRM → PSA budget and ERP contract updated",
        "sync": "Amendment in the CRM → PSA budget and ERP contract updated",
        "extra": "",
    },
    "pipeline-to-demand": {
        "title": "Pipeline to demand",
        "label": "Stage or probability change → forecast demand in the PSA",
        "sync": "Stage or probability change in the CRM → forecast demand in the PSA",
        "extra": "",
    },
}

# Default SLAs (proposal) until an admin sets one: the examples and a day for the rest.
# Bill to cash's cycle is the customer's payment: 30 days, common payment terms.
DEFAULT_SLAS: dict[str, tuple[Decimal, str]] = {
    "quote-to-project": (Decimal("1"), FlowSla.Unit.BUSINESS_DAYS),
    "project-to-bill": (Decimal("5"), FlowSla.Unit.BUSINESS_DAYS),
    "bill-to-cash": (Decimal("720"), FlowSla.Unit.HOURS),
    "contract-change": (Decimal("1"), FlowSla.Unit.BUSINESS_DAYS),
    "pipeline-to-demand": (Decimal("24"), FlowSla.Unit.HOURS),
}

# Latency histogram edges in hours, buckets (previous edge, edge]: 1 h up to 3 days, 6 h up to
# 14 days, 1 day up to 120 days, then a quarter and a year. Percentiles are reported as the upper
# edge of the bucket holding the nearest rank, so they are exact to the bucket.
HOUR_EDGES: list[float] = (
    [float(h) for h in range(1, 73)]
    + [float(h) for h in range(78, 337, 6)]
    + [float(h) for h in range(360, 2881, 24)]
    + [4320.0, 8760.0, float("inf")]
)
# Sync latency edges in minutes (the integration's own clock is minutes, not days).
MINUTE_EDGES: list[float] = [
    *(float(x) for x in (1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 360, 480, 720)),
    *(float(x) for x in (1080, 1440, 2880, 4320, 10080, 20160, 43200)),
    float("inf"),
]
# Attempt duration edges in ms.
MS_EDGES: list[float] = [
    *(float(x) for x in (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750)),
    *(float(x) for x in (1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000)),
    float("inf"),
]


def bucket_of(value: float, edges: Sequence[float]) -> str:
    edge = edges[bisect.bisect_left(edges, value)]
    return "inf" if edge == float("inf") else f"{edge:g}"


def sla_for(flow: str) -> FlowSla:
    """The admin's SLA for a flow, or the default (an unsaved row) when none is set."""
    sla = FlowSla.objects.filter(flow=flow).first()
    if sla is None:
        target, unit = DEFAULT_SLAS.get(flow, (Decimal("24"), FlowSla.Unit.HOURS))
        sla = FlowSla(flow=flow, target=target, unit=unit, note="default (no SLA set by an admin)")
    return sla


def parse_time(value: Any) -> dt.datetime | None:
    """A source timestamp (ISO datetime or date) as an aware UTC datetime; dates are midnight UTC."""
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    text = str(value).strip().replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = dt.datetime.combine(dt.date.fromisoformat(text[:10]), dt.time())
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _hours(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() / 3600


# Building facts -----------------------------------------------------------------------------------
@dataclass
class HandoffRow:
    """The fields of a handoff a fact is built from (also built in bulk without model instances)."""

    id: int
    flow: str
    business_key: str
    status: str
    legal_entity_id: int | None
    source_connection_id: int | None
    customer_name: str
    service_line: str
    amount: Decimal | None
    currency: str
    business_times: dict[str, Any]
    business_started_at: dt.datetime | None
    business_finished_at: dt.datetime | None
    created_at: dt.datetime
    exception: bool = False
    invoice: dict[str, Any] = field(default_factory=dict)
    deal: dict[str, Any] = field(default_factory=dict)
    # When the source system made the change that triggered this handoff (its event's time).
    source_changed_at: dt.datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.status in Handoff.OPEN


HANDOFF_FIELDS = [
    "id",
    "flow",
    "business_key",
    "status",
    "legal_entity_id",
    "source_connection_id",
    "customer_name",
    "service_line",
    "amount",
    "currency",
    "business_times",
    "business_started_at",
    "business_finished_at",
    "created_at",
]


def handoff_values(qs: Any) -> Any:
    """The handoffs' HandoffRow fields, with their trigger event's source time."""
    return qs.values(*HANDOFF_FIELDS, source_changed_at=F("trigger_event__occurred_at"))


def item_key(row: HandoffRow) -> str:
    """The business item a handoff is about: for bill-to-cash the invoice (a payment names it)."""
    if row.flow == "bill-to-cash" and row.invoice.get("id"):
        return f"invoice:{row.invoice['id']}"
    return row.business_key


def fact_values(flow: str, key: str, rows: list[HandoffRow], sla: FlowSla, country: str = "") -> dict[str, Any]:
    """The fact of one business item from all its handoffs (oldest first). Pure: no queries.
    Two clocks: the business cycle (start/end, latency against the flow's SLA on the business
    calendar of the entity's `country`) and the sync latency of its last finished handoff."""
    rows = sorted(rows, key=lambda r: r.created_at)
    latest = rows[-1]
    known = [r for r in rows if r.amount is not None]
    money = known[-1] if known else latest
    values: dict[str, Any] = {
        "flow": flow,
        "key": key,
        "legal_entity_id": next((r.legal_entity_id for r in reversed(rows) if r.legal_entity_id), None),
        "service_line": next((r.service_line for r in reversed(rows) if r.service_line), ""),
        "customer_name": next((r.customer_name for r in reversed(rows) if r.customer_name), ""),
        "connection_id": latest.source_connection_id,
        "currency": money.currency or "",
        "amount": money.amount if money.amount is not None else Decimal("0"),
        "handoff_id": latest.id,
        "handoff_count": len(rows),
        "status": latest.status,
        "exception": any(r.exception or r.status in {"needs_attention", "resolved", "cancelled"} for r in rows),
        "details": {},
    }
    start = end = measured_end = None
    measure_start = None
    extra = None
    times = [r.business_times or {} for r in rows]
    if flow == "quote-to-project":
        closes = [t for t in (parse_time(x.get("deal_closed")) for x in times) if t]
        activations = sorted(t for t in (parse_time(x.get("project_activated")) for x in times) if t)
        # Re-opened deal: the last closed-won counts; several projects: the first activation after it.
        start = max(closes) if closes else None
        if start is not None:
            after = [a for a in activations if a >= start]
            if after:
                end = after[0]
            elif activations and not latest.is_open:
                end = activations[-1]  # activated before the (last) close: an at-risk start, negative
        values["details"] = {"closes": len(closes), "projects_activated": len(activations)}
        measure_start, measured_end = start, end
    elif flow == "project-to-bill":
        t = times[-1]
        released = parse_time(t.get("billing_released"))
        approved = parse_time(t.get("time_approved"))
        # The batch counts in the period it was released in; its cycle starts when its last item
        # was approved (a PSA with no approval date: at the release).
        start = released or approved
        end = parse_time(t.get("invoice_created"))
        extra = _hours(released, end)
        measure_start, measured_end = approved or released, end
        values["details"] = {"released": t.get("billing_released", ""), "approved": t.get("time_approved", "")}
    elif flow == "bill-to-cash":
        posted = [p for p in (parse_time(x.get("invoice_posted")) for x in times) if p]
        start = min(posted) if posted else None
        invoice = next((r.invoice for r in reversed(rows) if r.invoice), {})
        if invoice:
            values["amount"] = Decimal(str(invoice.get("total") or values["amount"]))
            values["currency"] = invoice.get("currency") or values["currency"]
        remaining = Decimal(str(invoice.get("remaining", "1") or "0")) if invoice else None
        payments = [p for p in (parse_time(x.get("payment_applied")) for x in times) if p]
        if payments and remaining is not None and remaining <= 0:
            end = max(payments)
        # The business cycle: posted -> paid in full (the customer's payment, not the integration).
        measure_start, measured_end = start, end
        values["details"] = {"remaining": str(remaining) if remaining is not None else ""}
    else:
        start = rows[0].business_started_at
        end = latest.business_finished_at
        measure_start, measured_end = latest.business_started_at, latest.business_finished_at
        if flow == "pipeline-to-demand" and latest.deal:
            deal = latest.deal
            values["details"] = {
                k: deal.get(k) for k in ("probability", "contract_start", "contract_end", "resource_plan_text", "stage")
            }
            values["details"]["is_closed"] = bool(deal.get("is_closed"))
    latency = _hours(measure_start, measured_end)
    bdays = None
    if measure_start is not None and measured_end is not None:
        bdays = sla_rule.business_days_between(measure_start, measured_end, country)
    within = None
    if measure_start is not None and measured_end is not None and latency is not None and latency >= 0:
        within = sla_rule.within_sla(measure_start, measured_end, sla, country)
    values.update(sync_values(rows, sla))
    values.update(
        start_at=start,
        end_at=end,
        start_day=start.date() if start else None,
        end_day=end.date() if end else None,
        measured_day=measured_end.date() if latency is not None and measured_end else None,
        latency_hours=latency,
        latency_business_days=bdays,
        extra_hours=extra,
        within_sla=within,
    )
    return values


def sync_values(rows: list[HandoffRow], sla: FlowSla) -> dict[str, Any]:
    """The integration's clock for an item: its last handoff that updated every target, from the
    source change that triggered it to its finish, in minutes, against the flow's sync SLA."""
    done = [r for r in rows if r.business_finished_at and r.source_changed_at]
    if not done:
        return {"sync_minutes": None, "sync_within_sla": None, "sync_day": None}
    last = max(done, key=lambda r: r.business_finished_at)
    minutes = (last.business_finished_at - last.source_changed_at).total_seconds() / 60
    if minutes < 0:  # the source's clock ahead of ours: no honest measure
        return {"sync_minutes": None, "sync_within_sla": None, "sync_day": None}
    return {
        "sync_minutes": minutes,
        "sync_within_sla": minutes <= sla.sync_target_minutes,
        "sync_day": last.business_finished_at.astimezone(dt.UTC).date(),
    }


def _rows_for(handoffs: Iterable[dict[str, Any]]) -> list[HandoffRow]:
    """HandoffRows with their exception flag and the step outputs facts need, in three queries."""
    rows = [HandoffRow(**h) for h in handoffs]
    ids = [r.id for r in rows]
    if not ids:
        return rows
    by_id = {r.id: r for r in rows}
    flagged = set(
        Attempt.objects.filter(step__handoff_id__in=ids, outcome__in=EXCEPTION_OUTCOMES)
        .values_list("step__handoff_id", flat=True)
        .distinct()
    )
    for hid in flagged:
        by_id[hid].exception = True
    wanted = [r.id for r in rows if r.flow in {"bill-to-cash", "pipeline-to-demand"}]
    if wanted:
        for hid, name, output in Step.objects.filter(
            handoff_id__in=wanted, name__in=["read_invoice", "read_deal"]
        ).values_list("handoff_id", "name", "output"):
            output = output or {}
            if name == "read_invoice":
                by_id[hid].invoice = output.get("invoice") or {}
            else:
                by_id[hid].deal = output.get("deal") or {}
    return rows


# The days a fact counts on: started, finished, cycle measured, synced.
FACT_DAYS = ("start_day", "end_day", "measured_day", "sync_day")


def _fact_write(values: dict[str, Any]) -> tuple[set[dt.date], set[dt.date]]:
    """Upsert a fact; return the days it touched before and after (for the rollup rebuild). A
    pipeline fact also moves its deal's demand (dashboards.demand), under a lock on the deal so
    two refreshes of one deal cannot both take out the same old demand."""
    demand = values["flow"] == "pipeline-to-demand"
    fields = list(FACT_DAYS)
    if not demand:
        old = FlowFact.objects.filter(flow=values["flow"], key=values["key"]).values(*fields).first()
        FlowFact.objects.update_or_create(flow=values["flow"], key=values["key"], defaults=values)
    else:
        from dashboards.demand import demand_move  # it reads this module: import here

        fields += ["legal_entity_id", "service_line", "connection_id", "details"]
        with transaction.atomic():
            if db_connection.vendor == "postgresql":
                with db_connection.cursor() as cursor:
                    lock = f"fact:{values['flow']}:{values['key']}"
                    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [lock])
            old = FlowFact.objects.filter(flow=values["flow"], key=values["key"]).values(*fields).first()
            FlowFact.objects.update_or_create(flow=values["flow"], key=values["key"], defaults=values)
            demand_move(old, values)
    before = {(old or {}).get(k) for k in FACT_DAYS} - {None}
    after = {values[k] for k in FACT_DAYS if values.get(k)}
    return before, after


def fact_refresh(handoff_id: int) -> tuple[str, set[dt.date]] | None:
    """Rebuild the fact of the item a handoff is about; returns (flow, days to rebuild)."""
    base = handoff_values(Handoff.objects.filter(pk=handoff_id)).first()
    if base is None:
        return None
    (row,) = _rows_for([base])
    key = item_key(row)
    if row.flow == "bill-to-cash":
        existing = FlowFact.objects.filter(flow=row.flow, key=key).values_list("details", flat=True).first() or {}
        ids = set(existing.get("handoffs", [])) | {row.id}
        siblings = handoff_values(Handoff.objects.filter(pk__in=ids))
    else:
        siblings = handoff_values(Handoff.objects.filter(flow=row.flow, business_key=row.business_key))
    rows = _rows_for(list(siblings))
    entity = next((r.legal_entity_id for r in reversed(rows) if r.legal_entity_id), None)
    country = LegalEntity.objects.filter(pk=entity).values_list("country", flat=True).first() or ""
    values = fact_values(row.flow, key, rows, sla_for(row.flow), country)
    if row.flow == "bill-to-cash":
        values["details"]["handoffs"] = sorted(r.id for r in rows)
    before, after = _fact_write(values)
    return row.flow, before | after


# Rollups ------------------------------------------------------------------------------------------
def _lock(flow: str, day: dt.date) -> None:
    """Serialise rebuilds of one (flow, day): the aggregate read must see every committed fact."""
    if db_connection.vendor == "postgresql":
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"rollup:{flow}:{day.isoformat()}"])


def rollup_rows(facts: Iterable[dict[str, Any]], days: Container[dt.date] | None = None) -> list[DailyRollup]:
    """DailyRollup rows from fact values: started on start_day, finished on end_day, measured on
    measured_day. Pure: the same function serves the rebuild and the per-customer live path."""
    acc: dict[tuple, dict[str, Any]] = {}

    def slot(day: dt.date, f: dict[str, Any]) -> dict[str, Any]:
        k = (day, f["flow"], f["legal_entity_id"], f["service_line"], f["connection_id"], f["currency"])
        if k not in acc:
            acc[k] = {
                "started": 0,
                "started_amount": Decimal("0"),
                "finished": 0,
                "finished_amount": Decimal("0"),
                "measured": 0,
                "negative": 0,
                "within_sla": 0,
                "exceptions": 0,
                "exception_amount": Decimal("0"),
                "hist": defaultdict(int),
                "extra_hist": defaultdict(int),
                "synced": 0,
                "sync_within_sla": 0,
                "sync_hist": defaultdict(int),
            }
        return acc[k]

    for f in facts:
        amount = f["amount"] or Decimal("0")
        if f["start_day"] and (days is None or f["start_day"] in days):
            s = slot(f["start_day"], f)
            s["started"] += 1
            s["started_amount"] += amount
            if f["exception"]:
                s["exceptions"] += 1
                s["exception_amount"] += amount
        if f["end_day"] and (days is None or f["end_day"] in days):
            s = slot(f["end_day"], f)
            s["finished"] += 1
            s["finished_amount"] += amount
            if f["extra_hours"] is not None and f["extra_hours"] >= 0:
                s["extra_hist"][bucket_of(f["extra_hours"], HOUR_EDGES)] += 1
        if f["measured_day"] and (days is None or f["measured_day"] in days):
            s = slot(f["measured_day"], f)
            if f["latency_hours"] < 0:
                s["negative"] += 1
            else:
                s["measured"] += 1
                s["hist"][bucket_of(f["latency_hours"], HOUR_EDGES)] += 1
                if f["within_sla"]:
                    s["within_sla"] += 1
        if f.get("sync_day") and f.get("sync_minutes") is not None and (days is None or f["sync_day"] in days):
            s = slot(f["sync_day"], f)
            s["synced"] += 1
            s["sync_hist"][bucket_of(f["sync_minutes"], MINUTE_EDGES)] += 1
            if f["sync_within_sla"]:
                s["sync_within_sla"] += 1
    out = []
    for (day, flow, entity, service_line, conn, currency), s in acc.items():
        out.append(
            DailyRollup(
                day=day,
                flow=flow,
                legal_entity_id=entity,
                service_line=service_line,
                connection_id=conn,
                currency=currency,
                **{
                    **s,
                    "hist": dict(s["hist"]),
                    "extra_hist": dict(s["extra_hist"]),
                    "sync_hist": dict(s["sync_hist"]),
                },
            )
        )
    return out


ENTITY_SUMS = (
    "started",
    "started_amount",
    "finished",
    "finished_amount",
    "measured",
    "negative",
    "within_sla",
    "exceptions",
    "exception_amount",
    "synced",
    "sync_within_sla",
)
HISTOGRAMS = ("hist", "extra_hist", "sync_hist")


def entity_rollup_values(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """DailyRollup rows (objects) summed over service line and connection: the values of the
    EntityDailyRollup rows of the same days (histograms merged bucket by bucket)."""
    acc: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        k = (r.day, r.flow, r.legal_entity_id, r.currency)
        t = acc.get(k)
        if t is None:
            t = acc[k] = {
                "day": r.day,
                "flow": r.flow,
                "legal_entity_id": r.legal_entity_id,
                "currency": r.currency,
                **{name: 0 for name in ENTITY_SUMS},
                **{name: defaultdict(int) for name in HISTOGRAMS},
            }
        for name in ENTITY_SUMS:
            t[name] += getattr(r, name)
        for name in HISTOGRAMS:
            for bucket, n in (getattr(r, name) or {}).items():
                t[name][bucket] += n
    return [{**t, **{name: dict(t[name]) for name in HISTOGRAMS}} for t in acc.values()]


FACT_FIELDS = [
    "flow",
    "legal_entity_id",
    "service_line",
    "connection_id",
    "currency",
    "amount",
    "start_day",
    "end_day",
    "measured_day",
    "latency_hours",
    "extra_hours",
    "within_sla",
    "exception",
    "sync_day",
    "sync_minutes",
    "sync_within_sla",
]


def rollup_rebuild(flow: str, days: Iterable[dt.date]) -> None:
    """Recompute the DailyRollup rows of one flow for these days from the facts."""
    for day in sorted(set(days)):
        with transaction.atomic():
            _lock(flow, day)
            on_day = Q(start_day=day) | Q(end_day=day) | Q(measured_day=day) | Q(sync_day=day)
            facts = FlowFact.objects.filter(on_day, flow=flow).values(*FACT_FIELDS)
            DailyRollup.objects.filter(flow=flow, day=day).delete()
            rows = DailyRollup.objects.bulk_create(rollup_rows(facts, {day}))
            EntityDailyRollup.objects.filter(flow=flow, day=day).delete()
            EntityDailyRollup.objects.bulk_create([EntityDailyRollup(**v) for v in entity_rollup_values(rows)])


def attempt_rollup_rows(attempts: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    acc: dict[tuple, dict[str, Any]] = {}
    for a in attempts:
        hour = a["started_at"].replace(minute=0, second=0, microsecond=0)
        k = (hour, a["flow"], a["step"], a["connection_id"], a["legal_entity_id"])
        s = acc.setdefault(
            k, {"attempts": 0, "failures": 0, "transient": 0, "rate_limited": 0, "retry_after_seconds": 0, "hist": {}}
        )
        s["attempts"] += 1
        if a["outcome"] not in ("succeeded", "adopted", "in_flight"):
            s["failures"] += 1
        if a["outcome"] in ("transient", "unknown", "worker_lost"):
            s["transient"] += 1
        if a["http_status"] == 429:
            s["rate_limited"] += 1
        s["retry_after_seconds"] += a["retry_after_seconds"] or 0
        if a["duration_ms"] is not None:
            b = bucket_of(float(a["duration_ms"]), MS_EDGES)
            s["hist"][b] = s["hist"].get(b, 0) + 1
    return acc


ATTEMPT_FIELDS = {
    "id": "id",
    "handoff_id": "step__handoff_id",
    "started_at": "started_at",
    "flow": "step__handoff__flow",
    "step": "step__name",
    "connection_id": "step__target_connection_id",
    "legal_entity_id": "step__handoff__legal_entity_id",
    "outcome": "outcome",
    "http_status": "http_status",
    "retry_after_seconds": "retry_after_seconds",
    "duration_ms": "duration_ms",
}


def _attempt_dicts(qs: Any) -> list[dict[str, Any]]:
    names = list(ATTEMPT_FIELDS)
    return [dict(zip(names, row, strict=True)) for row in qs.values_list(*ATTEMPT_FIELDS.values())]


def attempts_roll(handoff_id: int) -> None:
    """Add a handoff's attempts not yet counted to AttemptRollup (each attempt counted once)."""
    with transaction.atomic():
        mark, _ = RollupMark.objects.select_for_update().get_or_create(handoff_id=handoff_id)
        attempts = _attempt_dicts(
            Attempt.objects.filter(step__handoff_id=handoff_id, pk__gt=mark.attempts_through).exclude(
                outcome="in_flight"
            )
        )
        if not attempts:
            return
        for (hour, flow, step, conn, entity), s in attempt_rollup_rows(attempts).items():
            row, _ = AttemptRollup.objects.select_for_update().get_or_create(
                hour=hour, flow=flow, step=step, connection_id=conn, legal_entity_id=entity
            )
            row.attempts += s["attempts"]
            row.failures += s["failures"]
            row.transient += s["transient"]
            row.rate_limited += s["rate_limited"]
            row.retry_after_seconds += s["retry_after_seconds"]
            hist = dict(row.duration_hist)
            for b, n in s["hist"].items():
                hist[b] = hist.get(b, 0) + n
            row.duration_hist = hist
            row.save()
        mark.attempts_through = max(a["id"] for a in attempts)
        mark.save(update_fields=["attempts_through"])


def handoff_finished(handoff_id: int) -> None:
    """A handoff reached an end state: refresh its item's fact, the rollups, the attempt counts."""
    result = fact_refresh(handoff_id)
    if result is not None:
        flow, days = result
        rollup_rebuild(flow, days)
    attempts_roll(handoff_id)


def handoff_finished_safely(handoff_id: int) -> None:
    """Called after a runner's commit: a failure here must never fail the handoff; the beat job
    (`rollups_catch_up`) repairs whatever was missed."""
    try:
        handoff_finished(handoff_id)
    except Exception:  # logged and repaired by the beat job
        log.exception("dashboard rollups not updated for handoff %s; the catch-up job will retry", handoff_id)


def rollups_catch_up(window: dt.timedelta = dt.timedelta(minutes=30)) -> int:
    """The beat job: refresh every handoff that reached an end state recently (finished_at, or
    needs attention and created recently). Safe to repeat: rebuilds are idempotent."""
    since = clock.now() - window
    ids = list(
        Handoff.objects.filter(
            Q(finished_at__gte=since) | Q(status="needs_attention", created_at__gte=since)
        ).values_list("pk", flat=True)
    )
    repairs_note("rollups", _listener_missed(ids))
    for hid in ids:
        handoff_finished(hid)
    return len(ids)


def _listener_missed(ids: list[int]) -> int:
    """Of these finished handoffs, how many the lifecycle listener missed: no RollupMark (never
    rolled) or a finished attempt past the mark (a later end not rolled)."""
    marks = dict(RollupMark.objects.filter(handoff_id__in=ids).values_list("handoff_id", "attempts_through"))
    latest = dict(
        Attempt.objects.filter(step__handoff_id__in=ids)
        .exclude(outcome="in_flight")
        .values("step__handoff_id")
        .annotate(last=Max("pk"))
        .values_list("step__handoff_id", "last")
    )
    return sum(1 for hid in ids if hid not in marks or latest.get(hid, 0) > marks[hid])


def rollups_rebuild_all(batch: int = 20000) -> dict[str, int]:
    """Rebuild every fact and rollup from the handoffs and attempts (backfill, SLA change)."""
    stats = {"handoffs": 0, "facts": 0, "rollups": 0, "attempt_rollups": 0}
    slas = {flow: sla_for(flow) for flow in MEASURES}
    countries = dict(LegalEntity.objects.values_list("pk", "country"))
    FlowFact.objects.all().delete()
    DailyRollup.objects.all().delete()
    EntityDailyRollup.objects.all().delete()
    AttemptRollup.objects.all().delete()
    RollupMark.objects.all().delete()
    # One flow at a time: a flow's items never span flows, so only one flow's handoffs (a third of
    # the history at most) are held at once, not all of them with all their facts.
    for flow in sorted(set(Handoff.objects.values_list("flow", flat=True).distinct())):
        groups: dict[str, list[HandoffRow]] = defaultdict(list)
        last_id = 0
        while True:
            chunk = list(handoff_values(Handoff.objects.filter(flow=flow, pk__gt=last_id).order_by("pk"))[:batch])
            if not chunk:
                break
            last_id = chunk[-1]["id"]
            for row in _rows_for(chunk):
                groups[item_key(row)].append(row)
            stats["handoffs"] += len(chunk)
        facts = []
        sla = slas.get(flow) or sla_for(flow)
        for key in list(groups):
            rows = groups.pop(key)
            entity = next((r.legal_entity_id for r in reversed(rows) if r.legal_entity_id), None)
            values = fact_values(flow, key, rows, sla, countries.get(entity, ""))
            if flow == "bill-to-cash":
                values["details"]["handoffs"] = sorted(r.id for r in rows)
            facts.append(values)
        for i in range(0, len(facts), batch):
            FlowFact.objects.bulk_create([FlowFact(**v) for v in facts[i : i + batch]])
        stats["facts"] += len(facts)
        rollups = rollup_rows(facts)
        del facts
        DailyRollup.objects.bulk_create(rollups, batch_size=batch)
        stats["rollups"] += len(rollups)
        EntityDailyRollup.objects.bulk_create(
            [EntityDailyRollup(**v) for v in entity_rollup_values(rollups)], batch_size=batch
        )
    acc: dict[tuple, dict[str, Any]] = {}
    last_attempt = 0
    marks: dict[int, int] = {}
    while True:
        chunk = _attempt_dicts(
            Attempt.objects.filter(pk__gt=last_attempt).exclude(outcome="in_flight").order_by("pk")[: batch * 5]
        )
        if not chunk:
            break
        last_attempt = chunk[-1]["id"]
        for k, s in attempt_rollup_rows(chunk).items():
            t = acc.setdefault(
                k,
                {"attempts": 0, "failures": 0, "transient": 0, "rate_limited": 0, "retry_after_seconds": 0, "hist": {}},
            )
            for name in ("attempts", "failures", "transient", "rate_limited", "retry_after_seconds"):
                t[name] += s[name]
            for b, n in s["hist"].items():
                t["hist"][b] = t["hist"].get(b, 0) + n
        for a in chunk:
            marks[a["handoff_id"]] = max(marks.get(a["handoff_id"], 0), a["id"])
    AttemptRollup.objects.bulk_create(
        [
            AttemptRollup(
                hour=hour,
                flow=flow,
                step=step,
                connection_id=conn,
                legal_entity_id=entity,
                duration_hist=s.pop("hist"),
                **s,
            )
            for (hour, flow, step, conn, entity), s in acc.items()
        ],
        batch_size=batch,
    )
    RollupMark.objects.bulk_create(
        [RollupMark(handoff_id=h, attempts_through=a) for h, a in marks.items()], batch_size=batch
    )
    stats["attempt_rollups"] = len(acc)
    from dashboards.backlog import backlog_rebuild  # these read this module: import here
    from dashboards.demand import demand_rebuild

    stats["open_items"] = backlog_rebuild()["items"]
    stats["demand_rows"] = demand_rebuild()
    return stats
