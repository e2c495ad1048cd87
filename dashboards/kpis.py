"""The KPI registry: every business figure once — its key, its name, its definition in finance
words, its unit, the function that computes it, the records behind it (drill-down) and its SLA
rule. The tiles, the tables, the CSV exports, `GET /api/v1/metrics/` and the alerts read their
words and values from here, so a figure means the same everywhere.

Every figure also says how far it can be trusted (`Measurement`):
- **measured**: computed from a source read within its schedule; `as_of` says when.
- **stale**: its source was last read longer ago than its schedule allows (twice the schedule:
  one late run is tolerated), or one of the legal entities in scope was never read.
- **not measured**: the source was never read for the entities in scope (no PSA read, no complete
  reconciliation): the figure has no value, never a reassuring zero.

Figures built from handoffs (latencies, backlogs, exceptions) are kept as data arrives (facts and
rollups, dashboards.facts), so they are measured as of now.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any

from django.conf import settings
from django.db.models import Max
from django.db.models.functions import Coalesce

from dashboards import leaders, ledger, metrics, wip
from dashboards.facts import MEASURES, sla_for
from dashboards.metrics import Converter, Filters
from dashboards.money import Money
from pscsync import clock
from pscsync.models import LegalEntity, PsaAssignment, ReconciliationRun, UnbilledWork

MEASURED, STALE, NOT_MEASURED = "measured", "stale", "not_measured"
STATE_WORDS = {MEASURED: "measured", STALE: "stale", NOT_MEASURED: "not measured yet"}
# A source read on a schedule is stale once it is older than this many schedules.
STALE_AFTER_SCHEDULES = 2
HANDOFFS, PSA, RECONCILIATION, LEDGER = "handoffs", "psa", "reconciliation", "ledger"


@dataclass(frozen=True)
class Measurement:
    state: str
    as_of: dt.datetime | None
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.state != NOT_MEASURED

    @property
    def words(self) -> str:
        return STATE_WORDS[self.state]


def _schedule_seconds() -> int:
    return int(getattr(settings, "RECONCILE_SECONDS", 24 * 3600))


def _worst(parts: list[Measurement]) -> Measurement:
    order = {NOT_MEASURED: 0, STALE: 1, MEASURED: 2}
    worst = min(parts, key=lambda m: order[m.state])
    times = [m.as_of for m in parts if m.as_of]
    return Measurement(worst.state, min(times) if times else None, "; ".join(m.note for m in parts if m.note))


def _scope_entities(f: Filters) -> list[int]:
    """The legal entities a scheduled read must cover: those in scope that a connection serves."""
    qs = LegalEntity.objects.filter(connections__isnull=False).distinct()
    if f.entity_ids is not None:
        qs = qs.filter(pk__in=f.entity_ids)
    return list(qs.values_list("pk", flat=True))


def _from_reads(reads: dict[int, dt.datetime | None], what: str, never: str, now: dt.datetime) -> Measurement:
    """One measurement from each entity's last read: never read anywhere → not measured (`never`
    says so); never read for one entity or older than the schedule allows → stale; as of the
    oldest read."""
    times = [t for t in reads.values() if t]
    if not times:
        return Measurement(NOT_MEASURED, None, never)
    oldest = min(times)
    limit = dt.timedelta(seconds=_schedule_seconds() * STALE_AFTER_SCHEDULES)
    missing = [e for e, t in reads.items() if t is None]
    if missing:
        names = ", ".join(LegalEntity.objects.filter(pk__in=missing).order_by("code").values_list("name", flat=True))
        return Measurement(STALE, oldest, f"{what} not read yet for {names}")
    if now - oldest > limit:
        return Measurement(STALE, oldest, f"{what} last read longer ago than its schedule allows")
    return Measurement(MEASURED, oldest)


def _last_complete_runs(entities: list[int]) -> dict[int, dt.datetime]:
    """Each entity's last complete reconciliation run (its finish; its start if none recorded)."""
    return dict(
        ReconciliationRun.objects.filter(status=ReconciliationRun.Status.COMPLETE, legal_entity_id__in=entities)
        .values("legal_entity_id")
        .annotate(at=Max(Coalesce("finished_at", "started_at")))
        .values_list("legal_entity_id", "at")
    )


def reconciliation_measurement(f: Filters, now: dt.datetime | None = None) -> Measurement:
    """Mismatch figures are as of each entity's last complete reconciliation run."""
    now = now or clock.now()
    entities = _scope_entities(f)
    last = _last_complete_runs(entities)
    never = "No reconciliation has completed yet, so mismatches are not known"
    return _from_reads({e: last.get(e) for e in entities}, "Reconciliation", never, now)


def psa_measurement(f: Filters, now: dt.datetime | None = None) -> Measurement:
    """The PSA snapshots (unbilled work, assignments) are as of each entity's last PSA read: the
    snapshot's read time, or the last complete reconciliation (which reads the PSA) when the PSA
    held nothing unbilled."""
    now = now or clock.now()
    entities = _scope_entities(f)
    reads: dict[int, dt.datetime | None] = dict.fromkeys(entities)
    for model in (UnbilledWork, PsaAssignment):
        for entity, at in (
            model.objects.filter(legal_entity_id__in=entities)
            .values("legal_entity_id")
            .annotate(at=Max("read_at"))
            .values_list("legal_entity_id", "at")
        ):
            reads[entity] = max(filter(None, [reads[entity], at]))
    for entity, at in _last_complete_runs(entities).items():
        reads[entity] = max(filter(None, [reads[entity], at]))
    never = "The PSA has not been read yet: reconciliation reads its unbilled work on its schedule"
    return _from_reads(reads, "The PSA", never, now)


def ledger_measurement(f: Filters, now: dt.datetime | None = None) -> Measurement:
    """Ledger figures (receivables, DSO, invoiced, cash) are as of the last ERP invoice read in
    scope (each bill-to-cash sync and each reconciliation reads them): none yet is not measured."""
    now = now or clock.now()
    at = ledger.ledger_read_at(f)
    if at is None:
        return Measurement(
            NOT_MEASURED,
            None,
            "No ERP invoice has been read yet (each bill-to-cash sync and reconciliation reads them)",
        )
    if now - at > dt.timedelta(seconds=_schedule_seconds() * STALE_AFTER_SCHEDULES):
        return Measurement(STALE, at, "The ERP ledger was last read longer ago than its schedule allows")
    return Measurement(MEASURED, at)


class Reading:
    """One request's reads, each done once and shared by every figure built from it."""

    def __init__(self, f: Filters, conv: Converter | None = None, *, with_previous: bool = False) -> None:
        self.f = f
        # The figures' currency: the filter's ?currency=, else the entity's functional currency, else
        # the reporting currency (metrics.figure_currency).
        self.conv = conv or metrics.converter_for(f)
        self.now = clock.now()
        self.with_previous = with_previous

    @cached_property
    def stats(self) -> dict[str, metrics.FlowStats]:
        return {
            flow: metrics.flow_stats(self.f, flow, conv=self.conv, with_previous=self.with_previous)
            for flow in metrics.FLOWS
        }

    @cached_property
    def blocked(self) -> dict[str, Any]:
        return metrics.blocked_billing(self.f, self.conv, with_rows=False)

    @cached_property
    def unbilled(self) -> dict[str, Any]:
        return wip.unbilled_wip(self.f, self.conv, detail=False, released=self.blocked)

    @cached_property
    def exceptions(self) -> dict[str, Any]:
        return metrics.billing_exceptions(self.f, self.conv, rows=self.stats["project-to-bill"].rows)

    @cached_property
    def revenue(self) -> dict[str, Any]:
        return metrics.revenue_accuracy(self.f, self.conv)

    @cached_property
    def dso(self) -> dict[str, Any]:
        # Sums only: the tiles and the JSON need no customer rows or invoice list.
        return ledger.dso(self.f, self.conv, detail=False)

    @cached_property
    def invoiced(self) -> dict[str, Any]:
        return ledger.invoiced(self.f, self.conv)

    @cached_property
    def cash(self) -> dict[str, Any]:
        return ledger.cash_collected(self.f, self.conv)

    @cached_property
    def books(self) -> Measurement:
        return ledger_measurement(self.f, self.now)

    @cached_property
    def won(self) -> dict[str, Any]:
        return metrics.won_not_activated(self.f, self.conv, with_rows=False)

    @cached_property
    def opened(self) -> dict[str, Any]:
        return metrics.open_exceptions(self.f, self.conv)

    @cached_property
    def risk(self) -> dict[str, Any]:
        return metrics.money_at_risk(self.f, self.conv, blocked=self.blocked, won=self.won)

    @cached_property
    def forecast(self) -> Any:
        return leaders.forecast_accuracy(self.f)

    @cached_property
    def schedule(self) -> dict[str, Any]:
        return leaders.revenue_schedule_accuracy(self.f, self.conv, with_rows=False)

    @cached_property
    def effort(self) -> dict[str, Any]:
        return leaders.reconciliation_effort(self.f, with_entries=False)

    @cached_property
    def psa(self) -> Measurement:
        return psa_measurement(self.f, self.now)

    @cached_property
    def reconciliation(self) -> Measurement:
        return reconciliation_measurement(self.f, self.now)

    def measurement(self, source: str) -> Measurement:
        if source == PSA:
            return _worst([self.psa, Measurement(MEASURED, self.now)])
        if source == RECONCILIATION:
            return self.reconciliation
        if source == LEDGER:
            return self.books
        if source == f"{HANDOFFS}+{RECONCILIATION}":
            return _worst([Measurement(MEASURED, self.now), self.reconciliation])
        return Measurement(MEASURED, self.now)

    def figure(self, key: str) -> Figure:
        kpi = KPIS[key]
        value, count = kpi.compute(self)
        m = self.measurement(kpi.source)
        if not m.measured:
            value = None
        return Figure(kpi, value, count, m)


@dataclass(frozen=True)
class Kpi:
    key: str
    name: str
    definition: str  # may name {sla} (the flow's SLA) and {sync_sla}
    unit: str  # count | hours | minutes | percent | days | money
    compute: Callable[[Reading], tuple[Any, int]]  # (value, how many records it is built from)
    drill: str = ""  # URL name of the list of records behind it
    drill_params: tuple[tuple[str, str], ...] = ()
    sla: str = ""  # the flow whose SLA applies ("" none); sync figures use its sync SLA
    source: str = HANDOFFS  # what must have been read for the figure to be measured

    def describe(self) -> str:
        if not self.sla:
            return self.definition
        sla = sla_for(self.sla)
        return self.definition.format(sla=sla.target_label, sync_sla=sla.sync_label)


@dataclass
class Figure:
    kpi: Kpi
    value: Any
    count: int
    measurement: Measurement
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return self.measurement.state

    def as_json(self, currency: str) -> dict[str, Any]:
        value = self.value
        definition = self.kpi.describe()
        unit = currency if self.kpi.unit == "money" else self.kpi.unit
        extra: dict[str, Any] = {}
        if isinstance(value, Money):
            # Each money figure says what it could not convert, per currency, for that figure alone.
            money = value.as_dict()
            value, unit = money["value"], money["currency"]
            extra = {"complete": money["complete"], "missing": money["missing"]}
        elif isinstance(value, Decimal):
            value = str(value)
        if isinstance(value, float) and not math.isfinite(value):
            # A percentile in the histogram's open last bucket: over a year. JSON has no infinity.
            value = None
            definition += " Null: longer than the histograms resolve (over a year)."
        m = self.measurement
        return {
            "key": self.kpi.key,
            "name": self.kpi.name,
            "value": value,
            "unit": unit,
            "count": self.count,
            "definition": definition,
            "state": m.state,
            "as_of": m.as_of,
            "state_note": m.note,
            "drill_down": self.kpi.drill,
            "sla": sla_for(self.kpi.sla).target_label if self.kpi.sla else "",
            **extra,
        }


KPIS: dict[str, Kpi] = {}


def register(kpi: Kpi) -> Kpi:
    if kpi.key in KPIS:
        raise ValueError(f"KPI {kpi.key} defined twice")
    KPIS[kpi.key] = kpi
    return kpi


def _flow_figures(flow: str) -> None:
    cycle = MEASURES[flow]["label"]
    ends = f" {MEASURES[flow]['ends']}" if MEASURES[flow].get("ends") else ""
    sync = MEASURES[flow]["sync"]
    items = (("flow", flow), ("measure", "measured"))
    register(
        Kpi(
            f"{flow}.finished",
            f"{MEASURES[flow]['title']}: items completed",
            f"Business items of this flow whose cycle ({cycle}) completed in the period.{ends}",
            "count",
            lambda r: (r.stats[flow].finished, r.stats[flow].finished),
            "dashboards:items",
            (("flow", flow), ("measure", "finished")),
        )
    )
    register(
        Kpi(
            f"{flow}.latency_median",
            f"{MEASURES[flow]['title']}: business cycle (median)",
            f"Nearest-rank median of the business cycle: {cycle}, for items that completed it in the period; "
            f"items still open are not in the median.{ends}",
            "hours",
            lambda r: (r.stats[flow].median_hours, r.stats[flow].measured),
            "dashboards:items",
            items,
            sla=flow,
        )
    )
    register(
        Kpi(
            f"{flow}.latency_p90",
            f"{MEASURES[flow]['title']}: business cycle (p90)",
            f"Nearest-rank 90th percentile of: {cycle}.",
            "hours",
            lambda r: (r.stats[flow].p90_hours, r.stats[flow].measured),
            "dashboards:items",
            items,
            sla=flow,
        )
    )
    register(
        Kpi(
            f"{flow}.within_sla",
            f"{MEASURES[flow]['title']}: within SLA",
            "Share of items that completed the business cycle within the SLA ({sla}; business days are the "
            "legal entity's working days: weekends and its country's public holidays do not count).",
            "percent",
            lambda r: (r.stats[flow].pct_within_sla, r.stats[flow].measured),
            "dashboards:items",
            (("flow", flow), ("measure", "breached")),
            sla=flow,
        )
    )
    register(
        Kpi(
            f"{flow}.sync_median",
            f"{MEASURES[flow]['title']}: sync latency (median)",
            f"The integration's own time: {sync}, median in minutes over the handoffs that finished in the period.",
            "minutes",
            lambda r: (r.stats[flow].sync_median_minutes, r.stats[flow].synced),
            "dashboards:items",
            (("flow", flow), ("measure", "synced")),
            sla=flow,
        )
    )
    register(
        Kpi(
            f"{flow}.sync_within_sla",
            f"{MEASURES[flow]['title']}: sync within SLA",
            "Share of those handoffs that updated every target within the sync SLA ({sync_sla}).",
            "percent",
            lambda r: (r.stats[flow].pct_sync_within_sla, r.stats[flow].synced),
            "dashboards:items",
            (("flow", flow), ("measure", "sync_breached")),
            sla=flow,
        )
    )


for _flow in MEASURES:
    _flow_figures(_flow)

register(
    Kpi(
        "billing.released_not_invoiced",
        "Released, not invoiced",
        "Billing batches released in the PSA that have no ERP invoice yet (open project-to-bill handoffs), "
        "valued at the period-end rate.",
        "money",
        lambda r: (r.blocked["value"], r.blocked["count"]),
        "dashboards:project_to_bill",
    )
)
register(
    Kpi(
        "billing.unbilled_wip",
        "Unbilled WIP",
        "Work in progress not yet billed: approved billable time and expenses and completed milestones the PSA "
        "has not put in a billing batch (as of the last PSA read), plus batches released with no ERP invoice, "
        "plus invoices the ERP holds but has not posted (draft or pending approval, net of tax); aged by work, "
        "release and invoice date; valued at the period-end rate.",
        "money",
        lambda r: (r.unbilled["value"], r.unbilled["count"]),
        "dashboards:project_to_bill",
        source=PSA,
    )
)
register(
    Kpi(
        "billing.unbilled_wip_over_60_days",
        "Unbilled WIP over 60 days",
        "The part of unbilled WIP whose work (or release, for batches) is more than 60 days old.",
        "money",
        lambda r: (r.unbilled["over_60"], r.unbilled["count"]),
        "dashboards:project_to_bill",
        source=PSA,
    )
)
register(
    Kpi(
        "billing.exception_rate",
        "Billing exceptions",
        "Billing batches released in the period (by release date) that needed a person or were rejected at "
        "least once (validation, mapping, vendor rejection) ÷ batches released in the period. First-pass "
        "yield is 100% minus this rate.",
        "percent",
        lambda r: (r.exceptions["rate"], r.exceptions["attempted"]),
        "dashboards:items",
        (("flow", "project-to-bill"), ("measure", "exceptions")),
    )
)
register(
    Kpi(
        "billing.exception_value",
        "Billing exception value",
        "Value of the billing batches released in the period that needed a person or were rejected, at each "
        "month's average rate.",
        "money",
        lambda r: (r.exceptions["exception_value"], r.exceptions["exceptions"]),
        "dashboards:items",
        (("flow", "project-to-bill"), ("measure", "exceptions")),
    )
)
register(
    Kpi(
        "revenue.mismatch_value",
        "Revenue mismatches",
        "Sum of the absolute differences between PSA and ERP recognised revenue (invoices the ERP posted; "
        "drafts, pending approval, voided and cancelled are no revenue) in open revenue mismatches for the "
        "period's months, as of each entity's last complete reconciliation, at the period-end rate.",
        "money",
        lambda r: (r.revenue["value"], r.revenue["open"]),
        "dashboards:exceptions",
        source=RECONCILIATION,
    )
)
register(
    Kpi(
        "revenue.match_rate",
        "Revenue match rate",
        "Subjects whose PSA and ERP recognised revenue agree within tolerance ÷ subjects checked, in each "
        "entity's last complete reconciliation.",
        "percent",
        lambda r: (r.revenue["match_rate"], r.revenue["checked"]),
        "dashboards:exceptions",
        source=RECONCILIATION,
    )
)
register(
    Kpi(
        "cash.dso",
        "DSO",
        ledger.DSO_DEFINITION,
        "days",
        lambda r: (r.dso["days"], r.dso["invoices"]),
        "dashboards:bill_to_cash",
        source=LEDGER,
    )
)
register(
    Kpi(
        "cash.receivables",
        "Receivables",
        "What customers owe at the period end: posted invoices' totals less the payments the ERP applied up to "
        "that day, at the period-end rate.",
        "money",
        lambda r: (r.dso["ageing"]["value"], r.dso["ageing"]["count"]),
        "dashboards:bill_to_cash",
        source=LEDGER,
    )
)


def _ageing_figures() -> None:
    for index, (low, high, label) in enumerate(ledger.AGEING_BUCKETS):
        band = "current" if low is None else f"{low}_{high}_days" if high else f"over_{low - 1}_days"
        register(
            Kpi(
                f"cash.receivables_{band}",
                f"Receivables {label.lower()}",
                f"Receivables {label.lower()} at the period end, by the invoice's due date.",
                "money",
                lambda r, i=index: (r.dso["ageing"]["buckets"][i], r.dso["ageing"]["counts"][i]),
                "dashboards:bill_to_cash",
                source=LEDGER,
            )
        )


_ageing_figures()
register(
    Kpi(
        "billing.invoiced",
        "Invoiced",
        "Invoices the ERP posted in the period, by posting date, totals with tax, at the month's average rate. "
        "Drafts, invoices pending approval, voided and credited invoices are not invoiced.",
        "money",
        lambda r: (r.invoiced["value"], r.invoiced["count"]),
        "dashboards:bill_to_cash",
        source=LEDGER,
    )
)
register(
    Kpi(
        "cash.collected",
        "Cash collected",
        "Customer payments the ERP applied to invoices, by the date of the application, at the month's average "
        "rate (NetSuite payment apply lines; Business Central customer payments).",
        "money",
        lambda r: (r.cash["value"], r.cash["count"]),
        "dashboards:bill_to_cash",
        source=LEDGER,
    )
)
register(
    Kpi(
        "bill-to-cash.days_to_pay_median",
        "Days to pay (median)",
        "Invoice posted in the ERP → paid in full, from the ERP's ledger: its posting date to the date of the "
        "payment application that cleared it; nearest-rank median for invoices paid in full in the period (the "
        "bill-to-cash business cycle's median under its finance name); partly paid invoices stay open.",
        "hours",
        lambda r: (r.stats["bill-to-cash"].median_hours, r.stats["bill-to-cash"].measured),
        "dashboards:items",
        (("flow", "bill-to-cash"), ("measure", "measured")),
        sla="bill-to-cash",
    )
)
register(
    Kpi(
        "deals.won_not_activated",
        "Won, not yet a project",
        "Deals closed won in the CRM whose project is not active in the PSA yet (open quote-to-project handoffs).",
        "count",
        lambda r: (r.won["count"], r.won["count"]),
        "dashboards:quote_to_project",
    )
)
register(
    Kpi(
        "deals.won_not_activated_value",
        "Won, not yet a project: value",
        "Value of those deals, at the period-end rate.",
        "money",
        lambda r: (r.won["value"], r.won["count"]),
        "dashboards:quote_to_project",
    )
)
register(
    Kpi(
        "deals.won_not_activated_past_sla",
        "Won, not yet a project: past SLA",
        "Those of them open for longer than the quote-to-project SLA ({sla}), counted in the legal entity's "
        "business days (weekends and public holidays do not count).",
        "count",
        lambda r: (r.won["over_sla_count"], r.won["count"]),
        "dashboards:quote_to_project",
        sla="quote-to-project",
    )
)
register(
    Kpi(
        "exceptions.open",
        "Needs attention",
        "Handoffs waiting in the workbench for a person, whatever their age.",
        "count",
        lambda r: (r.opened["count"], r.opened["count"]),
        "handoffs:list",
        (("status", "needs_attention"),),
    )
)
register(
    Kpi(
        "money_at_risk",
        "Money at risk",
        "Billing released but not invoiced + value of won deals not activated past their SLA + what open "
        "billed-time and revenue mismatches put at stake, at the period-end rate. A batch's money counts once: "
        "per project the larger of its billed-time and revenue differences (two views of the same money), less "
        "the batches in it already counted as released and not invoiced.",
        "money",
        lambda r: (r.risk["value"], len(r.risk["parts"])),
        "dashboards:exceptions",
        source=f"{HANDOFFS}+{RECONCILIATION}",
    )
)


def _leader_figures() -> None:
    """The leader figures (dashboards.leaders): forecast accuracy and bias per lag, the revenue
    schedule's accuracy, and the people's reconciliation effort."""
    for lag in leaders.LAGS_DAYS:
        for actual in ("worked", "assigned"):
            what = f"the demand forecast made {lag} days before each ended month of the period vs hours {actual}"

            def read(r: Reading, attr: str, lag: int = lag, actual: str = actual) -> tuple[Any, int]:
                a = r.forecast.lags.get(lag, {}).get(actual)
                return (a and getattr(a, attr), sum(1 for row in r.forecast.rows if row["lag"] == lag))

            register(
                Kpi(
                    f"forecast.accuracy_{lag}d_{actual}",
                    f"Forecast accuracy, {lag} days ahead, vs hours {actual}",
                    f"1 − WAPE of {what}, by role and month (null: not measured yet).",
                    "percent",
                    lambda r, read=read: read(r, "accuracy"),
                    "dashboards:leaders",
                )
            )
            register(
                Kpi(
                    f"forecast.bias_{lag}d_{actual}",
                    f"Forecast bias, {lag} days ahead, vs hours {actual}",
                    f"Σ(forecast − actual) ÷ Σ actual of {what} (positive: over-forecast).",
                    "percent",
                    lambda r, read=read: read(r, "bias"),
                    "dashboards:leaders",
                )
            )


_leader_figures()
register(
    Kpi(
        "revenue.schedule_value_accuracy",
        "Revenue schedule accuracy",
        "1 − Σ|PSA − ERP| of open revenue mismatches ÷ Σ|ERP recognised| of every project-month compared, "
        "as of each entity's latest complete reconciliation; 0 % when the differences reach what the ERP "
        "recognised (never below).",
        "percent",
        lambda r: (r.schedule["value_accuracy"], r.schedule["checked"]),
        "dashboards:leaders",
        source=RECONCILIATION,
    )
)
register(
    Kpi(
        "revenue.schedule_row_match_rate",
        "Revenue schedule rows matching",
        "Project-months whose PSA and ERP revenue agree within tolerance ÷ compared.",
        "percent",
        lambda r: (r.schedule["match_rate"], r.schedule["checked"]),
        "dashboards:leaders",
        source=RECONCILIATION,
    )
)
register(
    Kpi(
        "reconciliation.effort_actions",
        "Reconciliation effort: actions",
        "People's audited actions on exceptions and mismatches in the period.",
        "count",
        lambda r: (r.effort["actions"], r.effort["actions"]),
        "dashboards:leaders",
    )
)
register(
    Kpi(
        "reconciliation.effort_hours",
        "Reconciliation effort: hours",
        "Hours of those actions: sittings of one person's actions ≤ 30 min apart, first to last action + 10 min each.",
        "hours",
        lambda r: (r.effort["hours"], r.effort["actions"]),
        "dashboards:leaders",
    )
)


def payload(f: Filters) -> dict[str, Any]:
    """Every registered figure with value, unit, count, definition, state and as-of time; money
    figures in the filter's currency, each saying whether it is complete and what it is missing."""
    reading = Reading(f)
    cur = reading.conv.target
    figures = [reading.figure(key).as_json(cur) for key in KPIS]
    return {
        "from": f.start.isoformat(),
        "to": f.end.isoformat(),
        "reporting_currency": metrics.reporting_currency(),
        "currency": cur,
        "currency_policy": metrics.policy_text(cur),
        "metrics": figures,
    }
