"""The KPIs (DOMAIN.md §2), as query functions with explicit arguments (`Filters`): pages, CSV
exports and the JSON endpoint all read these, so a figure means the same everywhere.

Latencies come from DailyRollup histograms (facts.py), reported as nearest-rank median and p90,
exact to the histogram bucket (1 h up to 3 days, 6 h up to 14 days, 1 day up to 120 days). Items
not finished yet are censored: left out of latencies, counted as open. Money is converted to the
reporting currency by `Converter` (FxRate: flows at the month's average rate, balances at the
period-end rate); an amount with no rate is left out and counted in `unconverted`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Abs

from dashboards import sla as sla_rule
from dashboards.facts import FACT_FIELDS, HOUR_EDGES, MEASURES, MS_EDGES, parse_time, rollup_rows, sla_for
from dashboards.models import AttemptRollup, DailyRollup, EntityDailyRollup, FlowFact, FxRate, OpenItem
from dashboards.money import Money
from pscsync import clock
from pscsync.models import Handoff, LegalEntity, Mismatch, ReconciliationRun

FLOWS = list(MEASURES)
AGE_BUCKETS_DAYS = [(0, 30, "0–30 days"), (31, 60, "31–60 days"), (61, 90, "61–90 days"), (91, None, "over 90 days")]
# Calendar days, lo <= age < hi (see age_days).
EXCEPTION_AGE_BUCKETS = [(0, 1, "today"), (1, 7, "1–6 days"), (7, 30, "7–29 days"), (30, None, "30 days or more")]


def reporting_currency() -> str:
    return getattr(settings, "PSCSYNC_REPORTING_CURRENCY", "USD")


@dataclass(frozen=True)
class Filters:
    """What a figure is about. `entity_ids` is already limited to the user's scope (None = all)."""

    start: dt.date
    end: dt.date
    entity_ids: tuple[int, ...] | None = None
    service_line: str = ""
    customer: str = ""
    connection_id: int | None = None
    currency: str = ""  # the figures' currency chosen by the reader; "" = the rule of figure_currency
    # Per-request memo for link(): the entity codes of entity_ids (a table links every row).
    memo: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def previous(self) -> Filters:
        """The period of the same length just before this one (for trends)."""
        return replace(self, start=self.start - dt.timedelta(days=self.days), end=self.start - dt.timedelta(days=1))

    def apply(self, qs: QuerySet, *, entity: str = "legal_entity_id", connection: str = "connection_id") -> QuerySet:
        if self.entity_ids is not None:
            qs = qs.filter(**{f"{entity}__in": self.entity_ids})
        if self.service_line:
            qs = qs.filter(service_line=self.service_line)
        if self.customer:
            qs = qs.filter(customer_name=self.customer)
        if self.connection_id:
            qs = qs.filter(**{connection: self.connection_id})
        return qs


# Currency ---------------------------------------------------------------------------------------
_UNSEEN = object()


@dataclass
class Converter:
    """Conversion to one currency (`target`) with the stated policy. `money()` gives a figure its
    own record of what it could not convert (a `Money`); `convert()` is the plain amount, for
    charts and callers that keep no such record. `unconverted` keeps the sum over all calls.

    A rate is looked up as the ERPs gave it (from → to), else inverted (to → from), else crossed
    through the reporting currency (from → USD → to), so UK figures in GBP need only rates to and
    from USD. A month with no rate uses the latest earlier month of the same kind."""

    target: str = field(default_factory=reporting_currency)
    unconverted: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    _rates: dict[tuple[str, str, str], list[tuple[str, Decimal]]] | None = None
    _memo: dict[tuple[str, str, str, str], Decimal | None] = field(default_factory=dict)

    def _load(self) -> dict[tuple[str, str, str], list[tuple[str, Decimal]]]:
        if self._rates is None:
            rates: dict[tuple[str, str, str], list[tuple[str, Decimal]]] = defaultdict(list)
            rows = FxRate.objects.order_by("month").values_list("currency", "to_currency", "month", "kind", "rate")
            for cur, to, month, kind, rate in rows:
                if rate:
                    rates[(cur, to, kind)].append((month, rate))
            self._rates = rates
        return self._rates

    def _stored(self, source: str, target: str, month: str, kind: str) -> Decimal | None:
        """The stored rate source → target for the month (or the latest earlier one), or its inverse."""
        found = None
        for m, r in self._load().get((source, target, kind), []):
            if m <= month:
                found = r
        if found is None:
            for m, r in self._load().get((target, source, kind), []):
                if m <= month:
                    found = Decimal(1) / r
        return found

    def rate(self, currency: str, month: str, kind: str, target: str | None = None) -> Decimal | None:
        target = target or self.target
        if not currency or currency == target:
            return Decimal("1")
        # Pages convert thousands of rollup rows with a handful of distinct (currency, month, kind):
        # look each up once (the scan walks every month on record).
        key = (currency, target, month, kind)
        memo = self._memo.get(key, _UNSEEN)
        if memo is not _UNSEEN:
            return memo
        found = self._stored(currency, target, month, kind)
        pivot = reporting_currency()
        if found is None and pivot not in (currency, target):
            to_pivot = self._stored(currency, pivot, month, kind)
            from_pivot = self._stored(pivot, target, month, kind)
            if to_pivot is not None and from_pivot is not None:
                found = to_pivot * from_pivot
        self._memo[key] = found
        return found

    def money(self, amount: Decimal, currency: str, day: dt.date, kind: str = "average") -> Money:
        """`amount` in the target currency as a figure: converted, or named as missing."""
        if not amount:
            return Money(self.target)
        rate = self.rate(currency, f"{day.year:04d}-{day.month:02d}", kind)  # strftime costs 3x (per row)
        if rate is None:
            self.unconverted[currency] += amount
            return Money(self.target, Decimal("0"), {currency: amount})
        return Money(self.target, (amount * rate).quantize(Decimal("0.01")))

    def zero(self) -> Money:
        return Money(self.target)

    def total(self, items: Iterable[tuple[Decimal, str, dt.date]], kind: str = "average") -> Money:
        """Σ money(amount, currency, day) over `items`, to the cent as that sum gives it (each item
        converted and rounded), with plain decimals and one rate lookup per (currency, month): the
        overview converts ~1,000 rollup rows, and a Money per row and per addition cost more than
        the rows' query."""
        amount, missing = Decimal("0"), {}
        rates: dict[tuple[str, int, int], Decimal | None] = {}
        cent = Decimal("0.01")
        for value, currency, day in items:
            if not value:
                continue
            key = (currency, day.year, day.month)
            rate = (
                rates[key]
                if key in rates
                else rates.setdefault(key, self.rate(currency, f"{day.year:04d}-{day.month:02d}", kind))
            )
            if rate is None:
                self.unconverted[currency] += value
                missing[currency] = missing.get(currency, Decimal("0")) + value
            else:
                amount += (value * rate).quantize(cent)
        return Money(self.target, amount, missing)

    def convert(self, amount: Decimal, currency: str, day: dt.date, kind: str = "average") -> Decimal:
        return self.money(amount, currency, day, kind).amount


POLICY = (
    "Amounts are shown in {cur}. Flows (billings, payments, exception value) are converted at the "
    "average rate of the month they happened in; balances (receivables, blocked value, money at "
    "risk) at the closing rate of the period's last month. Rates are read daily from the ERPs "
    "(an admin's override wins, under Dashboards → SLAs and rates); a figure with an amount that "
    "has no rate says so on its face and names the amount."
)


def policy_text(currency: str | None = None) -> str:
    return POLICY.format(cur=currency or reporting_currency())


def figure_currency(f: Filters) -> str:
    """The currency a page's figures are in: the one chosen (`?currency=`), else the functional
    currency of the one legal entity in scope (the UK in GBP), else the reporting currency."""
    if f.currency:
        return f.currency
    if f.entity_ids is not None and len(f.entity_ids) == 1:
        from pscsync.models import LegalEntity

        code = LegalEntity.objects.filter(pk=f.entity_ids[0]).values_list("currency", flat=True).first()
        if code:
            return code
    return reporting_currency()


def converter_for(f: Filters) -> Converter:
    """A converter to the currency of the filter's figures (see figure_currency)."""
    return Converter(target=figure_currency(f))


# Histograms -------------------------------------------------------------------------------------
def _edge(label: str) -> float:
    return float("inf") if label == "inf" else float(label)


def percentile(hist: dict[str, int], p: float) -> float | None:
    """Nearest-rank percentile of a histogram: the upper edge of the bucket holding rank ⌈p·n⌉."""
    n = sum(hist.values())
    if not n:
        return None
    rank = max(1, -(-int(p * n * 1000) // 1000))  # ceil without float drift for p*n integers
    seen = 0
    for label in sorted(hist, key=_edge):
        seen += hist[label]
        if seen >= rank:
            return _edge(label)
    return None


def merge(hists: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for h in hists:
        for k, v in h.items():
            out[k] += v
    return dict(out)


# Rollup reads -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DayRange:
    """[start, end] as a container of days: `day in DayRange(...)` without building every date
    (DSO asks for all history, from date.min)."""

    start: dt.date
    end: dt.date

    def __contains__(self, day: object) -> bool:
        return isinstance(day, dt.date) and self.start <= day <= self.end


def _rollup_model(f: Filters, *, by_line: bool = False) -> type[DailyRollup] | type[EntityDailyRollup]:
    """The per-entity rollups serve every read that neither filters nor groups by service line or
    connection (a sixth of the rows at 1M); the detailed ones the rest."""
    return DailyRollup if (by_line or f.service_line or f.connection_id) else EntityDailyRollup


def rollups(
    f: Filters, flow: str, start: dt.date | None = None, end: dt.date | None = None, *, by_line: bool = False
) -> list[Any]:
    """Rollup rows of one flow in [start, end] (default: the filter's period). With a customer
    filter the rows are built on the fly from that customer's facts (rollups have no customer);
    without a service-line or connection filter, and unless the caller groups by service line
    (`by_line`), they come from the per-entity rollups (service line empty, connection None)."""
    start = start or f.start
    end = end or f.end
    if f.customer:
        facts = f.apply(FlowFact.objects.filter(flow=flow)).filter(
            Q(start_day__range=(start, end))
            | Q(end_day__range=(start, end))
            | Q(measured_day__range=(start, end))
            | Q(sync_day__range=(start, end))
        )
        return rollup_rows(facts.values(*FACT_FIELDS), DayRange(start, end))
    model = _rollup_model(f, by_line=by_line)
    per_entity = model is EntityDailyRollup
    qs = model.objects.filter(flow=flow)
    if start != dt.date.min:
        qs = qs.filter(day__gte=start)
    qs = qs.filter(day__lte=end)
    # Plain rows, not model instances: a quarter is thousands of rows per flow and the overview
    # reads ten flow periods (building model instances was most of its time at 1M handoffs).
    if per_entity:
        fields = [name for name in ROLLUP_ROW_FIELDS if name not in ("service_line", "connection_id")]
        at = ROLLUP_ROW_FIELDS.index("service_line")
        return [
            RollupRow(*values[:at], "", None, *values[at:]) for values in f.apply(qs).values_list(*fields).order_by()
        ]
    return [RollupRow(*values) for values in f.apply(qs).values_list(*ROLLUP_ROW_FIELDS).order_by()]


@dataclass(slots=True)
class RollupRow:
    """A DailyRollup's values, read-only (what `rollups` returns from the database)."""

    day: dt.date
    flow: str
    legal_entity_id: int | None
    service_line: str
    connection_id: int | None
    currency: str
    started: int
    started_amount: Decimal
    finished: int
    finished_amount: Decimal
    measured: int
    negative: int
    within_sla: int
    exceptions: int
    exception_amount: Decimal
    hist: dict[str, int]
    extra_hist: dict[str, int]
    synced: int
    sync_within_sla: int
    sync_hist: dict[str, int]


ROLLUP_ROW_FIELDS = [name for name in RollupRow.__dataclass_fields__]


@dataclass
class FlowStats:
    flow: str
    label: str
    measure: str
    finished: int
    measured: int
    negative: int
    median_hours: float | None
    p90_hours: float | None
    within_sla: int
    sla_label: str
    started: int
    started_value: Decimal
    hist: dict[str, int]
    extra_hist: dict[str, int]
    synced: int = 0
    sync_within_sla: int = 0
    sync_hist: dict[str, int] = field(default_factory=dict)
    sync_sla_label: str = ""
    previous: FlowStats | None = None
    rows: list[Any] = field(default_factory=list, repr=False)  # the rollup rows read (for other KPIs)

    @property
    def pct_within_sla(self) -> float | None:
        return 100.0 * self.within_sla / self.measured if self.measured else None

    @property
    def sync_median_minutes(self) -> float | None:
        return percentile(self.sync_hist, 0.5)

    @property
    def sync_p90_minutes(self) -> float | None:
        return percentile(self.sync_hist, 0.9)

    @property
    def pct_sync_within_sla(self) -> float | None:
        return 100.0 * self.sync_within_sla / self.synced if self.synced else None

    @property
    def breaches(self) -> int:
        return self.measured - self.within_sla

    @property
    def extra_median_hours(self) -> float | None:
        return percentile(self.extra_hist, 0.5)

    @property
    def extra_p90_hours(self) -> float | None:
        return percentile(self.extra_hist, 0.9)


def flow_stats(f: Filters, flow: str, *, with_previous: bool = True, conv: Converter | None = None) -> FlowStats:
    """Volume, median and p90 business latency, % within SLA for one flow, measured in the period."""
    conv = conv or converter_for(f)
    rows = rollups(f, flow)
    measured_rows = rows
    hist = merge(r.hist for r in measured_rows)
    sla = sla_for(flow)
    stats = FlowStats(
        flow=flow,
        label=flow.replace("-", " ").capitalize(),
        measure=MEASURES[flow]["label"],
        finished=sum(r.finished for r in rows),
        measured=sum(r.measured for r in rows),
        negative=sum(r.negative for r in rows),
        median_hours=percentile(hist, 0.5),
        p90_hours=percentile(hist, 0.9),
        within_sla=sum(r.within_sla for r in rows),
        sla_label=sla.target_label,
        started=sum(r.started for r in rows),
        started_value=conv.total((r.started_amount, r.currency, r.day) for r in rows),
        hist=hist,
        extra_hist=merge(r.extra_hist for r in rows),
        synced=sum(r.synced for r in rows),
        sync_within_sla=sum(r.sync_within_sla for r in rows),
        sync_hist=merge(r.sync_hist for r in rows),
        sync_sla_label=sla.sync_label,
        rows=rows,
    )
    if with_previous:
        stats.previous = flow_stats(f.previous(), flow, with_previous=False, conv=Converter(target=conv.target))
    return stats


def weekly_latency(f: Filters, flow: str) -> list[dict[str, Any]]:
    """Per ISO week in the period: items measured, median and p90 hours, % within SLA."""
    weeks: dict[dt.date, list[DailyRollup]] = defaultdict(list)
    for r in rollups(f, flow):
        weeks[r.day - dt.timedelta(days=r.day.weekday())].append(r)
    out = []
    for week in sorted(weeks):
        rows = weeks[week]
        hist = merge(r.hist for r in rows)
        measured = sum(r.measured for r in rows)
        out.append(
            {
                "week": week,
                "measured": measured,
                "median_hours": percentile(hist, 0.5),
                "p90_hours": percentile(hist, 0.9),
                "pct_within_sla": 100.0 * sum(r.within_sla for r in rows) / measured if measured else None,
            }
        )
    return out


def latency_by(f: Filters, flow: str, dimension: str) -> list[dict[str, Any]]:
    """Median/p90 and % within SLA per legal entity or service line."""
    groups: dict[Any, list[DailyRollup]] = defaultdict(list)
    for r in rollups(f, flow, by_line=dimension == "service_line"):
        groups[getattr(r, dimension)].append(r)
    out = []
    for key, rows in groups.items():
        hist = merge(r.hist for r in rows)
        measured = sum(r.measured for r in rows)
        if not measured:
            continue
        out.append(
            {
                dimension: key,
                "measured": measured,
                "median_hours": percentile(hist, 0.5),
                "p90_hours": percentile(hist, 0.9),
                "pct_within_sla": 100.0 * sum(r.within_sla for r in rows) / measured,
            }
        )
    return sorted(out, key=lambda x: -x["measured"])


# Open (censored) items: from the backlog kept as handoffs change (dashboards.backlog) ------------
def open_handoffs(f: Filters, flow: str | None = None, statuses: Iterable[str] = Handoff.OPEN) -> QuerySet[Handoff]:
    qs = Handoff.objects.filter(status__in=list(statuses))
    if flow:
        qs = qs.filter(flow=flow)
    return f.apply(qs, connection="source_connection_id")


def age_days(since: dt.datetime | dt.date, now: dt.datetime) -> int:
    """Age in calendar days (UTC), as finance ages an item: released yesterday is 1 day old,
    whatever the hour. The backlog counts by day, so every page and export uses this rule."""
    day = since.astimezone(dt.UTC).date() if isinstance(since, dt.datetime) else since
    return max(0, (now.astimezone(dt.UTC).date() - day).days)


def bucket_index(age: int, buckets: list[tuple[int, int | None, str]]) -> int:
    """AGE_BUCKETS_DAYS style: lo <= age <= hi (the last bucket open)."""
    for index, (lo, hi, _label) in enumerate(buckets):
        if age >= lo and (hi is None or age <= hi):
            return index
    return len(buckets) - 1


def _open_rows(f: Filters, flow: str, now: dt.datetime, limit: int | None) -> list[dict[str, Any]]:
    from dashboards.backlog import open_items

    rows = open_items(f, flow, limit=limit)
    for r in rows:
        r["age"] = age_days(r.pop("aged_day"), now)
    return rows


def blocked_billing(
    f: Filters, conv: Converter | None = None, *, with_rows: bool = True, limit: int | None = 200
) -> dict[str, Any]:
    """Billing batches released in the PSA with no ERP invoice yet (open project-to-bill handoffs),
    aged by release date: the part of unbilled WIP pscsync can see. Counted from the backlog's
    groups (converted per release day and currency, rounded once per group); with rows, the
    `limit` oldest batches (None: all of them, for a CSV). `by_entity`: legal entity id → value
    per age bucket."""
    from dashboards.backlog import backlog_groups

    conv = conv or converter_for(f)
    now = clock.now()
    buckets = _empty_buckets(AGE_BUCKETS_DAYS, conv.zero())
    by_entity: dict[int, list[Money]] = defaultdict(lambda: [conv.zero()] * len(AGE_BUCKETS_DAYS))
    groups = backlog_groups(f, flow="project-to-bill", by=("legal_entity_id", "currency", "aged_day"))
    # A batch whose handoff has not read it from the PSA yet has no value or currency: counted, and
    # said apart, so its zero is not taken for nothing waiting.
    unread = sum(g["n"] for g in groups if not g["currency"])
    for g in groups:
        index = bucket_index(age_days(g["aged_day"], now), AGE_BUCKETS_DAYS)
        value = conv.money(g["total"] or Decimal("0"), g["currency"], f.end, "closing")
        buckets[index]["count"] += g["n"]
        buckets[index]["value"] += value
        by_entity[g["legal_entity_id"]][index] += value
    return {
        "count": sum(b["count"] for b in buckets),
        "unread": unread,
        "value": sum((b["value"] for b in buckets), conv.zero()),
        "buckets": buckets,
        "by_entity": dict(by_entity),
        "rows": _open_rows(f, "project-to-bill", now, limit) if with_rows else [],
    }


def _empty_buckets(
    buckets: list[tuple[int, int | None, str]], zero: Money | Decimal = Decimal("0")
) -> list[dict[str, Any]]:
    return [{"label": label, "low": lo, "high": hi, "count": 0, "value": zero} for lo, hi, label in buckets]


def won_not_activated(
    f: Filters, conv: Converter | None = None, *, with_rows: bool = True, limit: int | None = 200
) -> dict[str, Any]:
    """Won deals whose project is not active yet (open quote-to-project handoffs), with value and
    age since the deal closed, counted from the backlog's groups; with rows, the `limit` oldest.
    Past SLA by the one SLA rule (dashboards.sla) on each entity's business calendar: a day wholly
    before the entity's deadline is late, a day wholly after is not, and only the deals of the
    deadline's own day are read one by one."""
    from dashboards.backlog import backlog_groups

    conv = conv or converter_for(f)
    now = clock.now()
    sla = sla_for("quote-to-project")
    countries = dict(LegalEntity.objects.values_list("pk", "country"))
    deadlines: dict[int, dt.datetime] = {}
    count = over_count = 0
    value = over_value = conv.zero()
    for g in backlog_groups(f, flow="quote-to-project", by=("legal_entity_id", "currency", "aged_day")):
        entity = g["legal_entity_id"]
        if entity not in deadlines:
            deadlines[entity] = sla_rule.sla_deadline(sla, now, countries.get(entity, ""))
        deadline = deadlines[entity]
        converted = conv.money(g["total"] or Decimal("0"), g["currency"], f.end, "closing")
        count += g["n"]
        value += converted
        if g["aged_day"] < deadline.date():
            over_count += g["n"]
            over_value += converted
        elif g["aged_day"] == deadline.date():
            for amount in _closed_before(f, entity, g["currency"], g["aged_day"], deadline):
                over_count += 1
                over_value += conv.money(amount, g["currency"], f.end, "closing")
    rows = _open_rows(f, "quote-to-project", now, limit) if with_rows else []
    for r in rows:
        r["value"] = conv.money(r["amount"] or Decimal("0"), r["currency"], f.end, "closing")
    return {
        "count": count,
        "value": value,
        "rows": rows,
        "over_sla_count": over_count,
        "over_sla_value": over_value,
    }


def _closed_before(f: Filters, entity: int, currency: str, day: dt.date, deadline: dt.datetime) -> list[Decimal]:
    """Amounts of the open won deals of one entity, currency and close day that closed before the
    deadline instant (the backlog ages from the close, else from the handoff's business start)."""
    qs = f.apply(OpenItem.objects.filter(flow="quote-to-project", legal_entity_id=entity, currency=currency))
    out = []
    for amount, times, started in qs.filter(aged_day=day).values_list(
        "amount", "handoff__business_times", "handoff__business_started_at"
    ):
        closed = parse_time((times or {}).get("deal_closed")) or started
        if closed < deadline:
            out.append(amount or Decimal("0"))
    return out


def open_exceptions(f: Filters, conv: Converter | None = None) -> dict[str, Any]:
    """Handoffs that need a person, by age in days since their business started, with the value
    they carry, from the backlog's groups (values converted per currency and day)."""
    from dashboards.backlog import backlog_groups

    conv = conv or converter_for(f)
    now = clock.now()
    n = len(EXCEPTION_AGE_BUCKETS)
    # Thousands of groups at the 1M-handoff firm: each converted as before (one rounding per group),
    # summed as plain decimals, a Money made once per bucket.
    counts, amounts = [0] * n, [Decimal("0")] * n
    gaps: list[dict[str, Decimal]] = [{} for _ in range(n)]
    by_flow: dict[str, int] = defaultdict(int)
    # Every group at the closing rate of the period's month: one lookup per currency, not a Money per group.
    month = f"{f.end.year:04d}-{f.end.month:02d}"
    rates: dict[str, Decimal | None] = {}
    cent = Decimal("0.01")
    for g in backlog_groups(f, needs_person=True, by=("flow", "currency", "started_day")):
        age = age_days(g["started_day"], now)
        for index, (lo, hi, _label) in enumerate(EXCEPTION_AGE_BUCKETS):
            if age >= lo and (hi is None or age < hi):
                counts[index] += g["n"]
                total, cur = g["total"] or Decimal("0"), g["currency"]
                if total:
                    if cur not in rates:
                        rates[cur] = conv.rate(cur, month, "closing")
                    rate = rates[cur]
                    if rate is None:
                        conv.unconverted[cur] += total  # named as missing on the figure, as Converter.money does
                        gaps[index][cur] = gaps[index].get(cur, Decimal("0")) + total
                    else:
                        amounts[index] += (total * rate).quantize(cent)
                break
        by_flow[g["flow"]] += g["n"]
    buckets = [
        {"label": label, "count": counts[i], "value": Money(conv.target, amounts[i], gaps[i])}
        for i, (_lo, _hi, label) in enumerate(EXCEPTION_AGE_BUCKETS)
    ]
    return {"count": sum(counts), "buckets": buckets, "by_flow": dict(by_flow)}


# Billing exceptions, mismatches (receivables, cash, DSO: dashboards.ledger) ------------------------------
def billing_exceptions(f: Filters, conv: Converter | None = None, rows: list[Any] | None = None) -> dict[str, Any]:
    """Billing batches released in the period that needed a person or were rejected at least once,
    ÷ batches released, by count and by value. First-pass yield = 1 − rate. `rows`: the period's
    project-to-bill rollup rows when the caller has read them already (FlowStats.rows)."""
    conv = conv or converter_for(f)
    rows = rollups(f, "project-to-bill") if rows is None else rows
    started = sum(r.started for r in rows)
    exceptions = sum(r.exceptions for r in rows)
    value = conv.total((r.started_amount, r.currency, r.day) for r in rows)
    exc_value = conv.total((r.exception_amount, r.currency, r.day) for r in rows)
    return {
        "attempted": started,
        "exceptions": exceptions,
        "value": value,
        "exception_value": exc_value,
        "rate": 100.0 * exceptions / started if started else None,
        "value_rate": float(100 * exc_value.amount / value.amount) if value.amount else None,
    }


def _months(f: Filters) -> list[str]:
    months, day = [], f.start.replace(day=1)
    while day <= f.end:
        months.append(day.strftime("%Y-%m"))
        day = (day + dt.timedelta(days=32)).replace(day=1)
    return months


def mismatches(f: Filters) -> QuerySet[Mismatch]:
    """Open reconciliation mismatches of the period's months (and contract-level ones)."""
    qs = Mismatch.objects.filter(status=Mismatch.Status.OPEN).filter(Q(period__in=_months(f)) | Q(period=""))
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    if f.customer:
        qs = qs.filter(customer_name=f.customer)
    return qs


def revenue_accuracy(f: Filters, conv: Converter | None = None) -> dict[str, Any]:
    """Revenue schedule accuracy (§2.5): open revenue mismatches (value = Σ|Δ|), and the row match
    rate = matched ÷ checked of each entity's latest complete reconciliation run."""
    conv = conv or converter_for(f)
    # Grouped in the database by currency and cause: a month can hold thousands of mismatches.
    rows = list(
        mismatches(f)
        .filter(comparison="revenue")
        .values("currency", "cause")
        .annotate(n=Count("id"), total=Sum(Abs("difference")))
        .order_by()
    )
    value = sum((conv.money(r["total"] or Decimal("0"), r["currency"], f.end, "closing") for r in rows), conv.zero())
    runs = ReconciliationRun.objects.filter(status="complete")
    if f.entity_ids is not None:
        runs = runs.filter(legal_entity_id__in=f.entity_ids)
    checked = matched = 0
    seen = set()
    for run in runs.order_by("-started_at").only("legal_entity_id", "summary")[:200]:
        if run.legal_entity_id in seen:
            continue
        seen.add(run.legal_entity_id)
        part = (run.summary or {}).get("revenue", {})
        checked += part.get("checked", 0)
        matched += part.get("matched", 0)
    by_cause: dict[str, int] = defaultdict(int)
    for r in rows:
        by_cause[r["cause"]] += r["n"]
    return {
        "open": sum(r["n"] for r in rows),
        "value": value,
        "checked": checked,
        "matched": matched,
        "match_rate": 100.0 * matched / checked if checked else None,
        "by_cause": dict(by_cause),
    }


def money_at_risk(
    f: Filters,
    conv: Converter | None = None,
    *,
    blocked: dict[str, Any] | None = None,
    won: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Money at risk at the period end = billing released but not invoiced + won deals not yet a
    project past their SLA + what open billed-time and revenue mismatches put at stake, each
    batch's money once (mismatch_at_stake). A page that already has `blocked_billing` and
    `won_not_activated` passes them in rather than reading them twice."""
    conv = conv or converter_for(f)
    blocked = (blocked or blocked_billing(f, conv, with_rows=False))["value"]
    won = won or won_not_activated(f, conv, with_rows=False)
    late_deals = won["over_sla_value"]
    at_stake, n = mismatch_at_stake(f)
    mm_value = sum((conv.money(v, currency, f.end, "closing") for currency, v in at_stake.items()), conv.zero())
    return {
        "value": blocked + late_deals + mm_value,
        "parts": [
            {"label": "Billing released, not invoiced", "value": blocked},
            {"label": "Won deals not activated past SLA", "value": late_deals, "count": won["over_sla_count"]},
            {"label": "Open billing and revenue mismatches", "value": mm_value, "count": n},
        ],
    }


def mismatch_at_stake(f: Filters) -> tuple[dict[str, Decimal], int]:
    """The money open billed-time and revenue mismatches of the period put at stake, per currency,
    with the number of mismatches. One batch's money is counted once:
    - billed time (the batch's items) and revenue (the batch's total) are two comparisons of the
      same money, so per project the larger of its two sums of |Δ| counts, not both;
    - a batch released and not invoiced is already in money at risk at its own value (its open
      project-to-bill handoff): the mismatches naming it (`details["batches"]`, written by
      reconciliation) count what is left after its value, never below zero.
    So a batch the ERP refused counts once, not once as a stuck batch and once per comparison."""
    per_project: dict[tuple[int, str, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    named: dict[tuple[int, str, str], set[str]] = defaultdict(set)
    n = 0
    for entity, subject, comparison, currency, difference, batches in (
        mismatches(f)
        .filter(comparison__in=["billed_time", "revenue"])
        .values_list("legal_entity_id", "subject_key", "comparison", "currency", "difference", "details__batches")
        .order_by()
    ):
        n += 1
        project = (entity, subject, currency)
        per_project[project][comparison] += abs(difference or Decimal("0"))
        named[project].update(batches or [])
    keys = set().union(*named.values()) if named else set()
    stuck: dict[tuple[int | None, str], tuple[Decimal, str]] = {
        (entity, key): (amount or Decimal("0"), currency)
        for entity, key, amount, currency in Handoff.objects.filter(
            flow="project-to-bill", status__in=Handoff.OPEN, business_key__in=keys
        ).values_list("legal_entity_id", "business_key", "amount", "currency")
    }
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for project, by_comparison in per_project.items():
        entity, _subject, currency = project
        counted = sum(
            (
                stuck[(entity, key)][0]
                for key in named[project]
                if (entity, key) in stuck and stuck[(entity, key)][1] == currency
            ),
            Decimal("0"),
        )
        totals[currency] += max(max(by_comparison.values()) - counted, Decimal("0"))
    return dict(totals), n


# Integration health -----------------------------------------------------------------------------
def attempt_stats(f: Filters, since: dt.datetime, group: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Attempts, failure rate, rate-limit waits and p95 duration since a time, optionally grouped."""
    qs = AttemptRollup.objects.filter(hour__gte=since.replace(minute=0, second=0, microsecond=0))
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    if f.connection_id:
        qs = qs.filter(connection_id=f.connection_id)
    groups: dict[tuple, list[AttemptRollup]] = defaultdict(list)
    for row in qs:
        groups[tuple(getattr(row, g) for g in group)].append(row)
    out = []
    for key, rows in groups.items():
        attempts = sum(r.attempts for r in rows)
        failures = sum(r.failures for r in rows)
        out.append(
            {
                **dict(zip(group, key, strict=True)),
                "attempts": attempts,
                "failures": failures,
                "failure_rate": 100.0 * failures / attempts if attempts else None,
                "transient": sum(r.transient for r in rows),
                "rate_limited": sum(r.rate_limited for r in rows),
                "retry_after_seconds": sum(r.retry_after_seconds for r in rows),
                "p95_ms": percentile(merge(r.duration_hist for r in rows), 0.95),
            }
        )
    return sorted(out, key=lambda x: -x["attempts"])


def health_line(f: Filters, *, dead_lettered: int | None = None) -> dict[str, Any]:
    """One line: attempts and failure rate over 24 h, dead-lettered backlog, oldest unfinished."""
    now = clock.now()
    # Summed in the database: the line needs no percentile, so no histogram is read.
    qs = AttemptRollup.objects.filter(hour__gte=(now - dt.timedelta(days=1)).replace(minute=0, second=0, microsecond=0))
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    if f.connection_id:
        qs = qs.filter(connection_id=f.connection_id)
    totals = qs.aggregate(attempts=Sum("attempts"), failures=Sum("failures"), rate_limited=Sum("rate_limited"))
    totals = {k: v or 0 for k, v in totals.items()}
    totals["failure_rate"] = 100.0 * totals["failures"] / totals["attempts"] if totals["attempts"] else None
    backlog = dead_lettered  # the caller's open_exceptions() count, when it has one
    if backlog is None:
        from dashboards.backlog import backlog_groups

        backlog = sum(g["n"] for g in backlog_groups(f, needs_person=True, by=("needs_person",)))
    oldest = (
        open_handoffs(f, statuses=["pending", "running", "waiting_retry"])
        .order_by("created_at")
        .values("id", "created_at")
        .first()
    )
    return {
        **totals,
        "dead_lettered": backlog,
        "oldest_unfinished_id": oldest["id"] if oldest else None,
        "oldest_unfinished_age": (now - oldest["created_at"]) if oldest else None,
    }


__all__ = ["HOUR_EDGES", "MS_EDGES"]
