"""Aggregates kept as data arrives: one FlowFact per business item, rebuilt from its handoffs when
one finishes, and DailyRollup / EntityDailyRollup / AttemptRollup rows kept INCREMENTALLY: a fact's
refresh adds its own delta (what the new fact counts minus what the old one counted) in the same
transaction, with set-based upserts, so a completion never re-reads the day and costs the same at
200 or 20,000 handoffs a day (bench/rollup). Pages read rollups, so their cost depends on the
number of days shown, not on the number of handoffs stored. Latencies are fixed-bucket histograms
(bucket -> count), which add and subtract exactly; percentiles are read from them lazily
(dashboards.metrics.percentile), exact to the bucket.

Entry points: `handoff_finished` (called after commit when a handoff reaches or leaves an end
state, see apps.py), `rollups_catch_up` (the beat job: anything finished recently; repeating a
refresh adds a zero delta), `rollup_rebuild` (a (flow, day) recomputed from the facts: the repair
and reference path the deltas must always agree with), `rollups_rebuild_all` (backfill, e.g.
after an SLA change or on a database loaded in bulk).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db import connection as db_connection
from django.db.models import BigIntegerField, Case, Max, Min, Q, Value, When

from dashboards import sla as sla_rule
from dashboards.models import (
    ATTEMPT_ROLLUP_KEY,
    DAILY_ROLLUP_KEY,
    ENTITY_ROLLUP_KEY,
    AttemptRollup,
    DailyRollup,
    EntityDailyRollup,
    FlowFact,
    FlowSla,
    RollupMark,
)
from pscsync import clock
from pscsync.lifecycle import repairs_note
from pscsync.models import (
    ATTEMPT_CLOCK_SLACK,
    Attempt,
    CrossReference,
    ErpInvoice,
    Handoff,
    InvoiceStatusChange,
    LegalEntity,
    Step,
)
from pscsync.partitions import attempt_months_dropped

log = logging.getLogger("dashboards.facts")

END_STATES = frozenset({"succeeded", "needs_attention", "resolved", "cancelled"})
EXCEPTION_OUTCOMES = ("validation", "mapping", "rejected")

# Two clocks per flow. `label`: the business cycle a leader manages (start -> end, business_times
# keys), measured against the flow's SLA. `sync`: the integration's own latency, from the source
# change that triggered a handoff to every target updated, against the flow's sync SLA.
# `extra`: a second business measure shown on the flow's page. `ends`: when the cycle's end
# needs more words than its label (the registry's definitions add them).
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
        "label": "Time approved in the PSA → invoice posted in the ERP",
        "sync": "Billing batch released in the PSA → invoice created in the ERP",
        "extra": "Billing batch released → invoice raised",
        "ends": "The invoice counts as posted at the later of the ERP ledger's posting date and the moment "
        "pscsync raised it (a back-dated transaction date is the accounting date, not when the bill went out); "
        "an invoice still a draft or pending approval leaves the cycle open.",
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
    return FlowSla.objects.filter(flow=flow).first() or _sla_default(flow)


def slas_for(flows: Iterable[str]) -> dict[str, FlowSla]:
    """sla_for of several flows in one query (a page that lists causes of every flow)."""
    wanted = set(flows)
    saved = {sla.flow: sla for sla in FlowSla.objects.filter(flow__in=wanted)}  # one per flow (unique)
    return {flow: saved.get(flow) or _sla_default(flow) for flow in wanted}


def _sla_default(flow: str) -> FlowSla:
    target, unit = DEFAULT_SLAS.get(flow, (Decimal("24"), FlowSla.Unit.HOURS))
    return FlowSla(flow=flow, target=target, unit=unit, note="default (no SLA set by an admin)")


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
@dataclass(frozen=True)
class Books:
    """What the ERP's ledger (pscsync.ledger) says of an item's invoice: the day it posted and the
    day it was paid in full (the payment application that cleared it), with its total. The money
    cycles end on these days, never on when a handoff ran."""

    posted_on: dt.date | None
    paid_on: dt.date | None = None
    total: Decimal | None = None
    currency: str = ""


def _midnight(day: dt.date | None) -> dt.datetime | None:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) if day else None


def bill_posted_at(posted_on: dt.date | None, raised_at: dt.datetime | None) -> dt.datetime | None:
    """When a billing batch's invoice was posted, the end of approved time -> invoice posted: the
    later of the ledger's posting date and the moment pscsync raised the invoice in the ERP. An
    ERP may date a transaction before it existed (NetSuite's `trandate` defaults to the billing
    event's date, and a person may back-date it to close a month): that is the accounting date,
    not the day the bill went out, and an invoice cannot be posted before it exists. Not posted
    (no posting date: a draft, pending approval, or not read from the ledger yet): None, open."""
    posted = _midnight(posted_on)
    if posted is None:
        return None
    return max(posted, raised_at) if raised_at else posted


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
    attempts_flagged: bool = False
    invoice: dict[str, Any] = field(default_factory=dict)
    deal: dict[str, Any] = field(default_factory=dict)
    # When the source system made the change that triggered this handoff: its event's changed_at,
    # else its occurred_at (pscsync.models.Event says when they differ).
    source_changed_at: dt.datetime | None = None
    # The ledger's record of the invoice this handoff raised (project-to-bill) or read (bill-to-cash).
    books: Books | None = None

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
    "attempts_flagged",
]


def handoff_values(qs: Any) -> Any:
    """The handoffs' HandoffRow fields, with their trigger event's source change time."""
    # Copied from the trigger event when the handoff opened: the event's row may have left with
    # its month's partition (pscsync.partitions).
    return qs.values(*HANDOFF_FIELDS, "source_changed_at")


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
        raised = parse_time(t.get("invoice_created"))
        books = next((r.books for r in reversed(rows) if r.books), None)
        # The batch counts in the period it was released in; its cycle starts when its last item
        # was approved (a PSA with no approval date: at the release) and ends when the invoice is
        # posted (bill_posted_at). Raised but still a draft or pending approval in the ERP: not
        # billed yet, the cycle is open (DOMAIN.md §2.2: "the posted ERP invoice").
        start = released or approved
        end = bill_posted_at(books.posted_on if books else None, raised)
        # The second measure is the integration's part: released -> invoice raised by pscsync.
        extra = _hours(released, raised)
        measure_start, measured_end = approved or released, end
        values["details"] = {
            "released": t.get("billing_released", ""),
            "approved": t.get("time_approved", ""),
            "posted": books.posted_on.isoformat() if books and books.posted_on else "",
        }
    elif flow == "bill-to-cash":
        # Days to pay, from the ledger alone: posted (its posting date) -> paid in full (the date of
        # the payment application that cleared it). Partly paid stays open. The handoffs' own times
        # say when pscsync heard of it, which is the sync clock's business, not the customer's.
        books = next((r.books for r in reversed(rows) if r.books), None)
        invoice = next((r.invoice for r in reversed(rows) if r.invoice), {})
        if books and books.total is not None:
            values["amount"], values["currency"] = books.total, books.currency or values["currency"]
        elif invoice:
            values["amount"] = Decimal(str(invoice.get("total") or values["amount"]))
            values["currency"] = invoice.get("currency") or values["currency"]
        start = _midnight(books.posted_on) if books else None
        end = _midnight(books.paid_on) if books and start else None
        measure_start, measured_end = start, end
        values["details"] = {"paid_on": books.paid_on.isoformat() if books and books.paid_on else ""}
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
    # Bounded by the oldest handoff's age: only the attempts partitions since then are read.
    since = min(r.created_at for r in rows) - ATTEMPT_CLOCK_SLACK
    flagged = set(
        Attempt.objects.filter(step__handoff_id__in=ids, outcome__in=EXCEPTION_OUTCOMES, started_at__gte=since)
        .order_by()
        .values_list("step__handoff_id", flat=True)
        .distinct()
    )
    for hid in flagged:
        by_id[hid].exception = True
    for r in rows:
        # Archived handoffs carry the flag themselves: their attempts' month may be dropped.
        r.exception = r.exception or r.attempts_flagged
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
    _books_attach(rows)
    return rows


def _books_attach(rows: list[HandoffRow]) -> None:
    """Each row's ledger record (Books): for project-to-bill the ERP invoice it raised (found by
    our invoice key, remembered in the cross reference its upsert wrote) once posted; for
    bill-to-cash the invoice it read (the ERP's id on its source connection). Two queries a kind."""
    raised = {r.id: r for r in rows if r.flow == "project-to-bill"}
    if raised:
        keys = dict(
            CrossReference.objects.filter(entity_type="invoice", handoff_id__in=list(raised)).values_list(
                "handoff_id", "canonical_id"
            )
        )
        posted = dict(
            ErpInvoice.objects.filter(key__in=set(keys.values()), status__in=ErpInvoice.POSTED_STATES)
            .values("key")
            .annotate(on=Min("posting_date"))
            .values_list("key", "on")
        )
        for hid, key in keys.items():
            if posted.get(key):
                raised[hid].books = Books(posted_on=posted[key])
    read = [r for r in rows if r.flow == "bill-to-cash" and r.invoice.get("id") and r.source_connection_id]
    by_connection: dict[int, set[str]] = defaultdict(set)
    for r in read:
        by_connection[r.source_connection_id].add(str(r.invoice["id"]))  # type: ignore[index]
    ledger: dict[tuple[int, str], Books] = {}
    for conn, ids in by_connection.items():
        for inv in ErpInvoice.objects.filter(connection_id=conn, vendor_id__in=ids).values(
            "vendor_id", "status", "posting_date", "paid_on", "total", "currency"
        ):
            is_posted = inv["status"] in ErpInvoice.POSTED_STATES
            ledger[(conn, inv["vendor_id"])] = Books(
                posted_on=inv["posting_date"] if is_posted else None,
                paid_on=inv["paid_on"] if inv["status"] == ErpInvoice.Status.PAID else None,
                total=inv["total"],
                currency=inv["currency"],
            )
    for r in read:
        r.books = ledger.get((r.source_connection_id, str(r.invoice["id"])))  # type: ignore[arg-type]


# The days a fact counts on: started, finished, cycle measured, synced.
FACT_DAYS = ("start_day", "end_day", "measured_day", "sync_day")


def _fact_lock(flow: str, key: str) -> None:
    """Serialise the refreshes of one business item: each reads the fact it replaces and takes its
    contribution out of the rollups, so two at once must not both take out the same old one.
    (SQLite runs one writing transaction at a time: nothing to take.)"""
    if db_connection.vendor == "postgresql":
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"fact:{flow}:{key}"])


def fact_refresh(handoff_id: int) -> tuple[str, set[dt.date]] | None:
    """Rebuild the fact of the item a handoff is about and move its contribution in the daily
    rollups from what the old fact counted to what the new one counts, in one transaction under a
    lock on the item: the work is the item's own handoffs and a few rollup rows, whatever the
    day's volume. Returns (flow, the days whose rollups it touched)."""
    base = handoff_values(Handoff.objects.filter(pk=handoff_id)).first()
    if base is None:
        return None
    row = HandoffRow(**base)
    if row.flow == "bill-to-cash":
        (row,) = _rows_for([base])  # its item is the invoice its read step names
    key = item_key(row)
    try:
        return row.flow, _fact_move(row, key, add=True)
    except IntegrityError as error:
        # RollupDrift, or a count that would go below zero: the rollups had drifted from the facts
        # (a bulk load without the backfill, a hand edit). Write the fact, rebuild its days.
        days = _fact_move(row, key, add=False)
        log.warning(
            "rollups of %s on %s disagreed with the facts (%s); rebuilt them",
            row.flow,
            ", ".join(d.isoformat() for d in sorted(days)),
            error,
        )
        repairs_note("rollups", 1)
        rollup_rebuild(row.flow, days)
        return row.flow, days


def _fact_move(row: HandoffRow, key: str, *, add: bool) -> set[dt.date]:
    """Recompute and store the item's fact; with `add`, add its delta to the rollups in the same
    transaction. Returns the days the delta touches."""
    with transaction.atomic():
        # The lock comes before the item's handoffs are read: the last refresh to take it reads
        # the latest committed state, so concurrent refreshes converge.
        _fact_lock(row.flow, key)
        if row.flow == "bill-to-cash":
            existing = FlowFact.objects.filter(flow=row.flow, key=key).values_list("details", flat=True).first() or {}
            ids = set(existing.get("handoffs", [])) | {row.id}
            siblings = handoff_values(Handoff.objects.filter(pk__in=ids))
        else:
            siblings = handoff_values(Handoff.objects.filter(flow=row.flow, business_key=row.business_key))
        rows = _rows_for(list(siblings))
        entity = _item_entity(rows)
        country = LegalEntity.objects.filter(pk=entity).values_list("country", flat=True).first() or ""
        values = fact_values(row.flow, key, rows, sla_for(row.flow), country)
        if row.flow == "bill-to-cash":
            values["details"]["handoffs"] = sorted(r.id for r in rows)
        # As the column stores it, so the amount added now is the amount taken out later.
        values["amount"] = _cents(values["amount"])
        old = FlowFact.objects.filter(flow=row.flow, key=key).values(*FACT_FIELDS, "details").first()
        deltas = rollup_deltas(old, values)
        days = {d.day for d in deltas}
        if add:
            _lock(row.flow, days, shared=True)
        FlowFact.objects.bulk_create(
            [FlowFact(**values)],
            update_conflicts=True,
            unique_fields=["flow", "key"],
            update_fields=[name for name in values if name not in ("flow", "key")],
        )
        if row.flow == "pipeline-to-demand":
            from dashboards.demand import demand_move  # it reads this module: import here

            demand_move(old, values)
        if add:
            rollups_add(deltas)
    return days


def _item_entity(rows: list[HandoffRow]) -> int | None:
    """The legal entity whose business calendar an item is measured on: its newest handoff that
    names one (as fact_values and the rebuild, which reads in creation order, choose it)."""
    newest_first = sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)
    return next((r.legal_entity_id for r in newest_first if r.legal_entity_id), None)


def facts_refresh(handoff_ids: Iterable[int]) -> dict[str, set[dt.date]]:
    """fact_refresh for the handoffs of a worker's batch, set-based: each item they are about is
    rebuilt once, in one transaction (the items' locks in one statement, in lock order; their
    handoffs, old facts, countries and SLAs read once for all), and the items' rollup deltas are
    merged per group and added with one upsert per table. Returns {flow: the days touched}.

    A delta that finds the rollups drifted from the facts rolls the batch back and refreshes its
    handoffs one by one (fact_refresh rebuilds the days it finds drifted)."""
    ids = sorted(set(handoff_ids))
    bases = list(handoff_values(Handoff.objects.filter(pk__in=ids))) if ids else []
    if not bases:
        return {}
    rows = [HandoffRow(**base) for base in bases]
    paid = [base for base in bases if base["flow"] == "bill-to-cash"]
    if paid:  # their item is the invoice their read step names
        read = {r.id: r for r in _rows_for(paid)}
        rows = [read.get(r.id, r) for r in rows]
    items: dict[tuple[str, str], set[int]] = defaultdict(set)
    for row in rows:
        items[(row.flow, item_key(row))].add(row.id)
    try:
        return _facts_move(items)
    except IntegrityError as error:
        log.warning("a batch's rollup deltas disagreed with the facts (%s); refreshing it one by one", error)
        touched: dict[str, set[dt.date]] = defaultdict(set)
        for hid in ids:
            done = fact_refresh(hid)
            if done is not None:
                touched[done[0]] |= done[1]
        return dict(touched)


def _facts_move(items: dict[tuple[str, str], set[int]]) -> dict[str, set[dt.date]]:
    """Recompute and store the facts of these items ({(flow, key): the batch's handoffs of it})
    and add their merged deltas to the rollups, in one transaction."""
    with transaction.atomic():
        # The locks before the items' handoffs are read, as _fact_move takes its one.
        _locks_take([f"fact:{flow}:{key}" for flow, key in items], shared=False)
        paid_keys = [key for flow, key in items if flow == "bill-to-cash"]
        counted = (
            dict(FlowFact.objects.filter(flow="bill-to-cash", key__in=paid_keys).values_list("key", "details"))
            if paid_keys
            else {}
        )
        # A bill-to-cash item is the handoffs its fact already counts and the batch's own; any
        # other item is its flow's handoffs of the business key.
        members = {
            key: set((counted.get(key) or {}).get("handoffs", [])) | items[("bill-to-cash", key)] for key in paid_keys
        }
        keys_by_flow: dict[str, list[str]] = defaultdict(list)
        for flow, key in sorted(items):
            keys_by_flow[flow].append(key)
        wanted = Q(pk__in=sorted(set().union(*members.values()))) if members else Q(pk__in=[])
        for flow, keys in keys_by_flow.items():
            if flow != "bill-to-cash":
                wanted |= Q(flow=flow, business_key__in=keys)
        by_item: dict[tuple[str, str], list[HandoffRow]] = defaultdict(list)
        for row in _rows_for(list(handoff_values(Handoff.objects.filter(wanted).order_by("pk")))):
            if row.flow == "bill-to-cash":
                for key, ids in members.items():
                    if row.id in ids:
                        by_item[(row.flow, key)].append(row)
            elif (row.flow, row.business_key) in items:
                by_item[(row.flow, row.business_key)].append(row)
        entities = {item: _item_entity(rows) for item, rows in by_item.items()}
        countries = dict(
            LegalEntity.objects.filter(pk__in={e for e in entities.values() if e}).values_list("pk", "country")
        )
        slas = slas_for(flow for flow, _key in by_item)
        olds_wanted = Q(pk__in=[])
        for flow, keys in keys_by_flow.items():
            olds_wanted |= Q(flow=flow, key__in=keys)
        olds = {
            (old["flow"], old["key"]): old
            for old in FlowFact.objects.filter(olds_wanted).values(*FACT_FIELDS, "key", "details")
        }
        facts: list[dict[str, Any]] = []
        deltas: list[DailyRollup] = []
        days: dict[str, set[dt.date]] = defaultdict(set)
        demand: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []
        for (flow, key), rows in sorted(by_item.items()):
            values = fact_values(flow, key, rows, slas[flow], countries.get(entities[(flow, key)], ""))
            if flow == "bill-to-cash":
                values["details"]["handoffs"] = sorted(r.id for r in rows)
            values["amount"] = _cents(values["amount"])  # as the column stores it
            old = olds.get((flow, key))
            if old is not None:
                old = {name: value for name, value in old.items() if name != "key"}
            item_deltas = rollup_deltas(old, values)
            days[flow] |= {d.day for d in item_deltas}
            deltas += item_deltas
            facts.append(values)
            if flow == "pipeline-to-demand":
                demand.append((old, values))
        _locks_take([f"rollup:{flow}:{day.isoformat()}" for flow, on in days.items() for day in on], shared=True)
        for names in sorted({tuple(v) for v in facts}):
            FlowFact.objects.bulk_create(
                [FlowFact(**v) for v in facts if tuple(v) == names],
                update_conflicts=True,
                unique_fields=["flow", "key"],
                update_fields=[name for name in names if name not in ("flow", "key")],
            )
        if demand:
            from dashboards.demand import demand_move  # it reads this module: import here

            for old, values in demand:
                demand_move(old, values)
        rollups_add(rollup_deltas_merged(deltas))
    return dict(days)


def rollup_deltas_merged(deltas: Iterable[DailyRollup]) -> list[DailyRollup]:
    """Signed deltas (rollup_deltas of several items) summed per rollup group, histograms bucket
    by bucket; groups whose sum is nothing are left out. Pure."""
    acc: dict[tuple, DailyRollup] = {}
    for r in deltas:
        k = tuple(getattr(r, name) for name in DAILY_ROLLUP_KEY)
        t = acc.get(k)
        if t is None:
            acc[k] = DailyRollup(**_as_dict(r))
            continue
        for name in ENTITY_SUMS:
            setattr(t, name, getattr(t, name) + getattr(r, name))
        for name in HISTOGRAMS:
            hist = dict(getattr(t, name) or {})
            for bucket, n in (getattr(r, name) or {}).items():
                hist[bucket] = hist.get(bucket, 0) + n
            setattr(t, name, {b: n for b, n in hist.items() if n})
    return [
        t for t in acc.values() if any(getattr(t, n) for n in ENTITY_SUMS) or any(getattr(t, n) for n in HISTOGRAMS)
    ]


def _cents(amount: Decimal | None) -> Decimal:
    return Decimal(amount or 0).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


# Rollups ------------------------------------------------------------------------------------------
def _lock(flow: str, days: Iterable[dt.date], *, shared: bool = False) -> None:
    """Rollup rows of a (flow, day): a rebuild takes the day alone (exclusive), so it reads every
    committed fact and no delta lands between its read and its write; deltas take it shared, so
    they never wait for one another. Days in order, so two lockers cannot deadlock."""
    if db_connection.vendor != "postgresql":
        return
    keys = [f"rollup:{flow}:{day.isoformat()}" for day in sorted(set(days))]
    if not keys:
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    sql = f"SELECT {function}(hashtext(k)) FROM unnest(%s::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n"  # noqa: S608  # nosec B608  # one of two names
    with db_connection.cursor() as cursor:
        cursor.execute(sql, [keys])


def _locks_take(keys: Iterable[str], *, shared: bool) -> None:
    """Advisory locks on many keys (a batch's items, or its rollup days) in one statement, taken
    in the order of their hashes, the numbers actually locked: two batches that share keys take
    them in the same order and cannot deadlock, even when two keys hash alike. (SQLite runs one
    writing transaction at a time: nothing to take.)"""
    wanted = sorted(set(keys))
    if db_connection.vendor != "postgresql" or not wanted:
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    sql = f"SELECT {function}(h) FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(%s::text[]) AS k) AS t ORDER BY h"  # noqa: S608  # nosec B608  # one of two names
    with db_connection.cursor() as cursor:
        cursor.execute(sql, [wanted])


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
            # The second measure counts with the items started in the period (project to bill:
            # batches released then, released -> raised), whether or not their cycle has ended.
            if f["extra_hours"] is not None and f["extra_hours"] >= 0:
                s["extra_hist"][bucket_of(f["extra_hours"], HOUR_EDGES)] += 1
        if f["end_day"] and (days is None or f["end_day"] in days):
            s = slot(f["end_day"], f)
            s["finished"] += 1
            s["finished_amount"] += amount
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


def rollup_deltas(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[DailyRollup]:
    """What replacing fact `old` by `new` (FACT_FIELDS values; None: no fact) changes in the daily
    rollups: the rows `new` counts in, minus the rows `old` counted in, as unsaved DailyRollups
    with signed counts and histograms (a bucket's -1 takes the item out). Groups left unchanged
    are not returned. Pure: the same `rollup_rows` that the rebuild uses, so the two agree."""
    acc: dict[tuple, DailyRollup] = {}
    for sign, fact in ((-1, old), (1, new)):
        if fact is None:
            continue
        for r in rollup_rows([fact]):
            k = tuple(getattr(r, name) for name in DAILY_ROLLUP_KEY)
            t = acc.setdefault(k, DailyRollup(**dict(zip(DAILY_ROLLUP_KEY, k, strict=True))))
            for name in ENTITY_SUMS:
                setattr(t, name, (getattr(t, name) or 0) + sign * getattr(r, name))
            for name in HISTOGRAMS:
                hist = dict(getattr(t, name) or {})
                for bucket, n in getattr(r, name).items():
                    hist[bucket] = hist.get(bucket, 0) + sign * n
                setattr(t, name, {b: n for b, n in hist.items() if n})
    return [
        t for t in acc.values() if any(getattr(t, n) for n in ENTITY_SUMS) or any(getattr(t, n) for n in HISTOGRAMS)
    ]


def rollups_add(deltas: list[DailyRollup]) -> None:
    """Add signed deltas to the daily rollups and to the per-entity rollups summed from them, one
    set-based upsert per table, then drop groups left with nothing (as a rebuild would not write
    them). The caller holds the days' shared locks (`_lock`) and the facts' own."""
    if not deltas:
        return
    rollup_add(DailyRollup, DAILY_ROLLUP_KEY, ENTITY_SUMS, HISTOGRAMS, [_as_dict(r) for r in deltas])
    rollup_add(EntityDailyRollup, ENTITY_ROLLUP_KEY, ENTITY_SUMS, HISTOGRAMS, entity_rollup_values(deltas))


def _as_dict(row: DailyRollup) -> dict[str, Any]:
    return {name: getattr(row, name) for name in (*DAILY_ROLLUP_KEY, *ENTITY_SUMS, *HISTOGRAMS)}


# Histograms add bucket by bucket inside the statement (JSON has no "+"); a bucket that reaches 0
# goes, so an item taken out leaves the histogram as a rebuild would write it.
_HIST_ADD = {
    "postgresql": (
        "(SELECT COALESCE(jsonb_object_agg(k, n), '{{}}'::jsonb) FROM (SELECT k, SUM(v::bigint) AS n FROM "
        "(SELECT key AS k, value AS v FROM jsonb_each_text({table}.{name}) UNION ALL "
        "SELECT key, value FROM jsonb_each_text({source}.{name})) AS a GROUP BY k HAVING SUM(v::bigint) <> 0) AS b)"
    ),
    "sqlite": (
        "(SELECT COALESCE(json_group_object(k, n), '{{}}') FROM (SELECT k, SUM(v) AS n FROM "
        "(SELECT key AS k, value AS v FROM json_each({table}.{name}) UNION ALL "
        "SELECT key, value FROM json_each({source}.{name})) GROUP BY k HAVING SUM(v) <> 0))"
    ),
}
_NULLABLE_KEYS = {"legal_entity_id", "connection_id"}


class RollupDrift(IntegrityError):
    """A delta that takes something out of a group the rollups do not hold: they had drifted from
    the facts (a bulk load without the backfill, a hand edit). The caller rebuilds from the facts."""


def rollup_add(
    model: Any, key: Sequence[str], sums: Sequence[str], hists: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    """Add each row's signed `sums` and `hists` to its group of `model` (keyed by `key`, the
    model's unique constraint: nullable ids as COALESCE(id, 0)). Rows that only add go in one
    INSERT … ON CONFLICT DO UPDATE SET n = n + EXCLUDED.n (a new group is created); a row that
    takes something out is an UPDATE of its group, which must exist (else RollupDrift), and the
    group is deleted if that leaves it empty, as a rebuild would not write it. (The proposed row
    of an upsert is checked before its conflict is found, so a negative count cannot go through
    one.) Groups are written in key order, so two transactions cannot deadlock on them."""
    rows = sorted(rows, key=lambda r: tuple(str(r[name]) for name in key))
    adding: list[dict[str, Any]] = []
    with db_connection.cursor() as cursor:
        for r in rows:
            if all(r[n] >= 0 for n in sums) and all(v >= 0 for h in hists for v in (r[h] or {}).values()):
                adding.append(r)
                continue
            _groups_upsert(cursor, model, key, sums, hists, adding)
            adding = []
            _group_update(cursor, model, key, sums, hists, r)
        _groups_upsert(cursor, model, key, sums, hists, adding)


def _values(r: dict[str, Any], key: Sequence[str], sums: Sequence[str], hists: Sequence[str]) -> list[Any]:
    return [*(_adapt(r[name]) for name in (*key, *sums)), *(json.dumps(r[name] or {}) for name in hists)]


def _hist_add(table: str, name: str, source: str) -> str:
    return _HIST_ADD[db_connection.vendor].format(table=table, name=name, source=source)


def _groups_upsert(
    cursor: Any, model: Any, key: Sequence[str], sums: Sequence[str], hists: Sequence[str], rows: list[dict]
) -> None:
    if not rows:
        return
    table = db_connection.ops.quote_name(model._meta.db_table)
    target = ", ".join(f"COALESCE({name}, 0)" if name in _NULLABLE_KEYS else name for name in key)
    json_mark = "%s::jsonb" if db_connection.vendor == "postgresql" else "%s"
    row_marks = "(" + ", ".join(["%s"] * (len(key) + len(sums)) + [json_mark] * len(hists)) + ")"
    adds = [f"{name} = {table}.{name} + EXCLUDED.{name}" for name in sums]
    adds += [f"{name} = {_hist_add(table, name, 'EXCLUDED')}" for name in hists]
    # Table and column names are the model's own; every value is bound.
    sql = (
        f"INSERT INTO {table} ({', '.join([*key, *sums, *hists])}) VALUES {', '.join([row_marks] * len(rows))} "  # noqa: S608  # nosec B608  # names from the model, values bound
        f"ON CONFLICT ({target}) DO UPDATE SET {', '.join(adds)}"
    )
    cursor.execute(sql, [value for r in rows for value in _values(r, key, sums, hists)])


def _group_update(
    cursor: Any, model: Any, key: Sequence[str], sums: Sequence[str], hists: Sequence[str], r: dict[str, Any]
) -> None:
    table = db_connection.ops.quote_name(model._meta.db_table)
    postgres = db_connection.vendor == "postgresql"
    fields = {f.column: f for f in model._meta.concrete_fields}
    # PostgreSQL types the bound values from the columns' own types; SQLite needs no cast.
    marks = [
        f"%s::{fields[name].cast_db_type(db_connection)} AS {name}" if postgres else f"%s AS {name}"
        for name in (*key, *sums, *hists)
    ]
    match = " AND ".join(
        f"COALESCE({table}.{name}, 0) = COALESCE(d.{name}, 0)"
        if name in _NULLABLE_KEYS
        else f"{table}.{name} = d.{name}"
        for name in key
    )
    adds = [f"{name} = {table}.{name} + d.{name}" for name in sums]
    adds += [f"{name} = {_hist_add(table, name, 'd')}" for name in hists]
    sql = f"UPDATE {table} SET {', '.join(adds)} FROM (SELECT {', '.join(marks)}) AS d WHERE {match}"  # noqa: S608  # nosec B608  # model's names
    cursor.execute(sql, _values(r, key, sums, hists))
    if cursor.rowcount != 1:
        raise RollupDrift(f"{model.__name__} has no group {tuple(r[name] for name in key)} to take a delta out of")
    _group_drop_if_empty(cursor, table, key, sums, r)


def _group_drop_if_empty(cursor: Any, table: str, key: Sequence[str], sums: Sequence[str], r: dict[str, Any]) -> None:
    """Delete the group if every count is now 0 (its last item moved to another day)."""
    match = " AND ".join(
        f"COALESCE({name}, 0) = COALESCE(%s, 0)" if name in _NULLABLE_KEYS else f"{name} = %s" for name in key
    )
    empty = " AND ".join(f"{name} = 0" for name in sums)
    sql = f"DELETE FROM {table} WHERE {match} AND {empty}"  # noqa: S608  # nosec B608  # model's names
    cursor.execute(sql, [_adapt(r[name]) for name in key])


def _adapt(value: Any) -> Any:
    """A value as the database driver takes it (SQLite wants dates and decimals as text)."""
    ops = db_connection.ops
    if isinstance(value, dt.datetime):
        return ops.adapt_datetimefield_value(value)
    if isinstance(value, dt.date):
        return ops.adapt_datefield_value(value)
    if isinstance(value, Decimal):
        return ops.adapt_decimalfield_value(value)
    return value


def rollup_rebuild(flow: str, days: Iterable[dt.date]) -> None:
    """Recompute the DailyRollup rows of one flow for these days from the facts: the repair and
    reference path (the incremental deltas must always leave the rows equal to this)."""
    for day in sorted(set(days)):
        with transaction.atomic():
            _lock(flow, [day])
            on_day = Q(start_day=day) | Q(end_day=day) | Q(measured_day=day) | Q(sync_day=day)
            facts = FlowFact.objects.filter(on_day, flow=flow).values(*FACT_FIELDS)
            DailyRollup.objects.filter(flow=flow, day=day).delete()
            rows = DailyRollup.objects.bulk_create(rollup_rows(facts, {day}))
            EntityDailyRollup.objects.filter(flow=flow, day=day).delete()
            EntityDailyRollup.objects.bulk_create([EntityDailyRollup(**v) for v in entity_rollup_values(rows)])


def attempt_rollup_rows(attempts: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    acc: dict[tuple, dict[str, Any]] = {}
    for a in attempts:
        if a["outcome"] == "deferred":
            continue  # nothing was sent: the limiter held the call for its slot; no attempt, no failure
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


ATTEMPT_SUMS = ("attempts", "failures", "transient", "rate_limited", "retry_after_seconds")


def attempts_roll(handoff_id: int) -> None:
    """Add a handoff's attempts not yet counted to AttemptRollup (each attempt counted once: the
    handoff's RollupMark, locked, says how far it is counted): the batch path for one."""
    attempts_roll_many([handoff_id])


def attempts_roll_many(handoff_ids: Iterable[int]) -> None:
    """attempts_roll for a batch's handoffs at once: their marks created or locked (in id order,
    so two batches cannot deadlock) and read in one statement, their new attempts read in one
    query and added with one upsert, their marks moved in one UPDATE."""
    ids = sorted(set(handoff_ids))
    if not ids:
        return
    table = db_connection.ops.quote_name(RollupMark._meta.db_table)
    with transaction.atomic():
        with db_connection.cursor() as cursor:
            rows_sql = ", ".join(["(%s, 0)"] * len(ids))
            upsert = (
                f"INSERT INTO {table} (handoff_id, attempts_through) VALUES {rows_sql} ON CONFLICT (handoff_id) "  # noqa: S608  # nosec B608  # model's name
                f"DO UPDATE SET attempts_through = {table}.attempts_through RETURNING handoff_id, attempts_through"
            )
            if db_connection.vendor == "postgresql":
                # ... with the handoffs' ages, which bound the attempts partitions read below.
                handoffs = db_connection.ops.quote_name(Handoff._meta.db_table)
                cursor.execute(
                    f"WITH m AS ({upsert}) SELECT m.handoff_id, m.attempts_through, h.created_at "  # noqa: S608  # nosec B608  # models' names
                    f"FROM m JOIN {handoffs} h ON h.id = m.handoff_id",
                    ids,
                )
            else:  # SQLite: no partitions to bound, and no INSERT inside WITH
                cursor.execute(upsert, ids)
            marks = cursor.fetchall()
        through = {row[0]: row[1] for row in marks}
        if not through:  # none of them is stored any more
            return
        ages = [row[2] for row in marks if len(row) > 2]
        bound = {"started_at__gte": min(ages) - ATTEMPT_CLOCK_SLACK} if ages else {}
        # From the least counted on: a handoff's attempts counted already are dropped below.
        attempts = [
            a
            for a in _attempt_dicts(
                Attempt.objects.filter(step__handoff_id__in=list(through), pk__gt=min(through.values()), **bound)
                .exclude(outcome="in_flight")
                .order_by()
            )
            if a["id"] > through[a["handoff_id"]]
        ]
        if not attempts:
            return
        rows = [
            {
                **dict(zip(ATTEMPT_ROLLUP_KEY, k, strict=True)),
                **{n: s[n] for n in ATTEMPT_SUMS},
                "duration_hist": s["hist"],
            }
            for k, s in attempt_rollup_rows(attempts).items()
        ]
        rollup_add(AttemptRollup, ATTEMPT_ROLLUP_KEY, ATTEMPT_SUMS, ("duration_hist",), rows)
        last: dict[int, int] = {}
        for a in attempts:
            last[a["handoff_id"]] = max(last.get(a["handoff_id"], 0), a["id"])
        RollupMark.objects.filter(handoff_id__in=list(last)).update(
            attempts_through=Case(
                *(When(handoff_id=hid, then=Value(n)) for hid, n in sorted(last.items())),
                output_field=BigIntegerField(),
            )
        )


def handoffs_finished(handoff_ids: Iterable[int]) -> None:
    """handoff_finished for a worker's batch: the items' facts and rollup deltas, then the
    attempts' hourly counts, each set-based for the whole batch."""
    ids = sorted(set(handoff_ids))
    facts_refresh(ids)
    attempts_roll_many(ids)


def handoffs_finished_safely(handoff_ids: Iterable[int]) -> None:
    """The lifecycle listener's call (after commit): a failure here must never fail the handoffs;
    the beat job (`rollups_catch_up`) repairs whatever was missed."""
    ids = sorted(set(handoff_ids))
    try:
        handoffs_finished(ids)
    except Exception:  # logged and repaired by the beat job
        log.exception(
            "dashboard rollups not updated for handoffs %s; the catch-up job will retry", ", ".join(map(str, ids))
        )


def handoff_finished(handoff_id: int) -> None:
    """A handoff reached an end state: refresh its item's fact (which moves the item's own delta
    in the daily rollups) and add its attempts to the hourly counts. Its cost does not grow with
    the day's volume: nothing here reads other items' facts."""
    fact_refresh(handoff_id)
    attempts_roll(handoff_id)


def ledger_moved(invoice_id: int) -> int:
    """The ERP's ledger moved an invoice (posted, paid, voided; pscsync.ledger tells after its
    commit): refresh the facts whose cycle ends on it, the project-to-bill batch that raised it
    and the bill-to-cash item that reads it (each refresh moves its delta in the rollups).
    Returns the facts refreshed."""
    invoice = ErpInvoice.objects.filter(pk=invoice_id).values("key", "connection_id", "vendor_id").first()
    if invoice is None:
        return 0
    ids: set[int] = set()
    if invoice["key"]:
        ids |= set(
            CrossReference.objects.filter(
                entity_type="invoice", canonical_id=invoice["key"], handoff__isnull=False
            ).values_list("handoff_id", flat=True)
        )
    ids |= set(
        FlowFact.objects.filter(flow="bill-to-cash", key=f"invoice:{invoice['vendor_id']}").values_list(
            "handoff_id", flat=True
        )
    )
    # Each refresh moves its fact's own delta in the rollups: no day is re-read.
    return sum(1 for hid in sorted(ids) if fact_refresh(hid) is not None)


def ledger_moved_safely(invoice_id: int) -> None:
    """The ledger's listener: a failure must not fail the ledger's write; the catch-up job repairs."""
    try:
        ledger_moved(invoice_id)
    except Exception:
        log.exception("facts not refreshed for ERP invoice %s; the catch-up job will retry", invoice_id)


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
    # Ledger moves seen recently (a posting or payment read after the handoffs finished).
    moved = InvoiceStatusChange.objects.filter(seen_at__gte=since).values_list("invoice_id", flat=True).distinct()
    for invoice_id in moved:
        ledger_moved(invoice_id)
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
    # Months whose attempts were dropped (pscsync.partitions) keep their attempt rollups, and
    # archived handoffs their marks: what they counted is no longer there to count again.
    dropped = attempt_months_dropped()

    def in_dropped(name: str) -> Q:
        q = Q(pk__in=[])
        for start, end in dropped:
            q |= Q(**{f"{name}__gte": start, f"{name}__lt": end})
        return q

    FlowFact.objects.all().delete()
    DailyRollup.objects.all().delete()
    EntityDailyRollup.objects.all().delete()
    AttemptRollup.objects.exclude(in_dropped("hour")).delete()
    RollupMark.objects.filter(handoff__archive__isnull=True).delete()
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
            Attempt.objects.filter(pk__gt=last_attempt)
            .exclude(outcome="in_flight")
            .exclude(in_dropped("started_at"))
            .order_by("pk")[: batch * 5]
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
        [RollupMark(handoff_id=h, attempts_through=a) for h, a in marks.items()],
        batch_size=batch,
        ignore_conflicts=True,
    )
    stats["attempt_rollups"] = len(acc)
    from dashboards.backlog import backlog_rebuild  # these read this module: import here
    from dashboards.demand import demand_rebuild

    stats["open_items"] = backlog_rebuild()["items"]
    stats["demand_rows"] = demand_rebuild()
    return stats
