"""The leader figures finance and delivery leaders of a services firm track beyond the flows
(docs/dashboards.md "Leader figures"), each one function returning the figure and the rows it is
built from (its drill-down):

- resource forecast accuracy (DOMAIN.md §2.8): the weighted demand forecast made N days before a
  month (a weekly DemandSnapshot) against the hours later assigned (PsaAssignment) and worked
  (PsaWorkedHours), by role and month: WAPE, accuracy = 1 − WAPE, bias, per lag;
- revenue schedule accuracy (§2.5) as one figure: value accuracy = 1 − Σ|Δ| ÷ Σ|ERP recognised|
  and the row match rate, from each entity's latest complete reconciliation;
- reconciliation effort: people's actions on exceptions and mismatches (the audit trail) and the
  hours they spent, per week.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q, Sum
from django.db.models.functions import Abs

from dashboards import wip
from dashboards.metrics import Converter, Filters, converter_for
from dashboards.models import DemandMonth, DemandSnapshot
from pscsync import clock
from pscsync.models import AuditEntry, Mismatch, PsaWorkedHours, ReconciliationRun

# Resource forecast accuracy ------------------------------------------------------------------------
LAGS_DAYS = (30, 60, 90)  # how long before the month's first day the forecast was made
SNAPSHOT_EVERY = dt.timedelta(days=7)


def demand_snapshot_take(today: dt.date | None = None) -> int:
    """Keep today's weighted demand forecast (from DemandMonth, summed over service lines and
    connections) for this month on, unless one was taken in the last 7 days. Returns rows written."""
    today = today or clock.now().date()
    if DemandSnapshot.objects.filter(taken_on__gt=today - SNAPSHOT_EVERY).exists():
        return 0
    rows = (
        DemandMonth.objects.exclude(role="")
        .filter(month__gte=today.strftime("%Y-%m"))
        .values("legal_entity_id", "role", "month")
        .annotate(h=Sum("hours"))
        .order_by()
    )
    snapshot = [
        DemandSnapshot(
            taken_on=today, legal_entity_id=r["legal_entity_id"], role=r["role"], month=r["month"], hours=r["h"]
        )
        for r in rows
        if r["h"] and r["h"] > 1e-6  # deltas leave float dust where a deal moved away
    ]
    with transaction.atomic():
        DemandSnapshot.objects.bulk_create(snapshot, ignore_conflicts=True)
    return len(snapshot)


@dataclass
class Accuracy:
    """WAPE, accuracy and bias of one lag against one actual (percent; None when nothing to compare)."""

    forecast: float = 0.0
    actual: float = 0.0
    abs_error: float = 0.0

    def add(self, forecast: float, actual: float) -> None:
        self.forecast += forecast
        self.actual += actual
        self.abs_error += abs(forecast - actual)

    @property
    def wape(self) -> float | None:
        return 100.0 * self.abs_error / self.actual if self.actual else None

    @property
    def accuracy(self) -> float | None:
        # max(0, 1 − WAPE): a forecast off by more than the actual hours has no accuracy left, and a
        # negative percentage reads as nonsense; WAPE and bias still say by how much.
        return None if self.wape is None else max(0.0, 100.0 - self.wape)

    @property
    def bias(self) -> float | None:
        return 100.0 * (self.forecast - self.actual) / self.actual if self.actual else None


@dataclass
class ForecastAccuracy:
    months: list[str]  # the period's months that have ended
    lags: dict[int, dict[str, Accuracy]] = field(default_factory=dict)  # lag -> {"assigned"|"worked": ...}
    rows: list[dict[str, Any]] = field(default_factory=list)  # lag, month, snapshot, role, forecast, assigned, worked

    @property
    def headline(self) -> Accuracy | None:
        """At the shortest lag measured, against hours worked."""
        for lag in LAGS_DAYS:
            if lag in self.lags:
                return self.lags[lag]["worked"]
        return None


def _months_ended(f: Filters, today: dt.date) -> list[str]:
    out, day = [], f.start.replace(day=1)
    while day <= f.end and day.strftime("%Y-%m") < today.strftime("%Y-%m"):
        out.append(day.strftime("%Y-%m"))
        day = (day + dt.timedelta(days=32)).replace(day=1)
    return out


def forecast_accuracy(f: Filters) -> ForecastAccuracy:
    """Per lag L: for each month of the period that has ended, the latest snapshot taken on or
    before (the month's first day − L days) is the forecast F(role, month); the actuals are the
    hours assigned in the PSA for that month and the approved hours worked. A month with no
    snapshot that old is not measured at that lag. Supply is the firm's, so only the legal-entity
    scope applies (as on the demand page)."""
    months = _months_ended(f, clock.now().date())
    out = ForecastAccuracy(months=months)
    if not months:
        return out
    snaps = DemandSnapshot.objects.filter(month__in=months)
    worked_qs = PsaWorkedHours.objects.filter(month__in=months)
    if f.entity_ids is not None:
        snaps = snaps.filter(legal_entity_id__in=f.entity_ids)
        worked_qs = worked_qs.filter(legal_entity_id__in=f.entity_ids)
    forecast: dict[tuple[dt.date, str, str], float] = defaultdict(float)  # (taken_on, role, month)
    for taken_on, role, month, hours in snaps.values_list("taken_on", "role", "month", "hours").iterator():
        forecast[(taken_on, role, month)] += hours
    taken = sorted({k[0] for k in forecast})
    assigned = wip.assigned_hours(f, months)
    worked: dict[tuple[str, str], float] = defaultdict(float)
    for role, month, hours in worked_qs.values_list("role", "month", "hours"):
        worked[(role or "—", month)] += float(hours)
    for lag in LAGS_DAYS:
        for month in months:
            cutoff = dt.date.fromisoformat(f"{month}-01") - dt.timedelta(days=lag)
            made = max((t for t in taken if t <= cutoff), default=None)
            if made is None:
                continue
            per_lag = out.lags.setdefault(lag, {"assigned": Accuracy(), "worked": Accuracy()})
            roles = {r for t, r, m in forecast if t == made and m == month}
            roles |= {r for r, m in assigned if m == month} | {r for r, m in worked if m == month}
            for role in sorted(roles):
                fc = forecast.get((made, role, month), 0.0)
                a, w = assigned.get((role, month), 0.0), worked.get((role, month), 0.0)
                per_lag["assigned"].add(fc, a)
                per_lag["worked"].add(fc, w)
                out.rows.append(
                    {
                        "lag": lag,
                        "month": month,
                        "snapshot": made,
                        "role": role,
                        "forecast": fc,
                        "assigned": a,
                        "worked": w,
                    }
                )
    return out


# Revenue schedule accuracy --------------------------------------------------------------------------
def _latest_runs(f: Filters) -> list[ReconciliationRun]:
    runs = ReconciliationRun.objects.filter(status=ReconciliationRun.Status.COMPLETE)
    if f.entity_ids is not None:
        runs = runs.filter(legal_entity_id__in=f.entity_ids)
    latest: dict[int, ReconciliationRun] = {}
    for run in runs.order_by("-started_at").only("legal_entity_id", "summary", "finished_at")[:200]:
        latest.setdefault(run.legal_entity_id, run)
    return list(latest.values())


def value_accuracy(abs_difference: Decimal, erp_recognised: Decimal, checked: int) -> float | None:
    """DOMAIN.md §2.5's value accuracy, 1 − Σ|PSA − ERP| ÷ Σ|ERP recognised|, in percent, floored at
    0 %: when the PSA counts more than the ERP posted, Σ|Δ| can exceed Σ|ERP| and the formula goes
    negative, a reading no accuracy has (docs/dashboards.md, "Revenue schedule accuracy"). Also
    0 % when the ERP recognised nothing and the PSA something; None when nothing was compared."""
    if not checked:
        return None
    if not erp_recognised:
        return 0.0 if abs_difference else None
    return max(0.0, float(100 * (1 - abs_difference / erp_recognised)))


def revenue_schedule_accuracy(f: Filters, conv: Converter | None = None, *, with_rows: bool = True) -> dict[str, Any]:
    """As of each entity's latest complete reconciliation (the period filter does not apply: it
    compares every month the systems hold): value accuracy = 1 − Σ|Δ| of the open revenue
    mismatches ÷ Σ|ERP recognised| of every project-month checked, at the closing rate of the
    period's last month; differences within tolerance count as agreement. Row match rate =
    matched ÷ checked. `rows` are the open revenue mismatches: their |Δ| sum to the numerator."""
    conv = conv or converter_for(f)
    runs = _latest_runs(f)
    checked = matched = 0
    erp_total = conv.zero()
    for run in runs:
        part = (run.summary or {}).get("revenue", {})
        checked += part.get("checked", 0)
        matched += part.get("matched", 0)
        for currency, total in (part.get("erp_total") or {}).items():
            erp_total += conv.money(Decimal(total), currency, f.end, "closing")
    qs = Mismatch.objects.filter(
        comparison=Mismatch.Comparison.REVENUE,
        status=Mismatch.Status.OPEN,
        legal_entity_id__in=[r.legal_entity_id for r in runs],
    ).select_related("legal_entity")
    # Summed in the database per currency (there can be thousands); the rows only for the drill-down.
    totals = qs.values("currency").annotate(total=Sum(Abs("difference"))).order_by()
    abs_difference = sum(
        (conv.money(t["total"] or Decimal("0"), t["currency"], f.end, "closing") for t in totals), conv.zero()
    )
    rows = []
    if with_rows:
        for m in qs.order_by("legal_entity__code", "subject_key", "period"):
            rows.append({"mismatch": m, "abs_difference": conv.money(abs(m.difference), m.currency, f.end, "closing")})
    # A ratio of partly converted sums would be a wrong number: none until every amount converts.
    complete = abs_difference.complete and erp_total.complete
    accuracy = value_accuracy(abs_difference.amount, erp_total.amount, checked) if complete else None
    return {
        "as_of": max((r.finished_at for r in runs if r.finished_at), default=None),
        "checked": checked,
        "matched": matched,
        "match_rate": 100.0 * matched / checked if checked else None,
        "erp_total": erp_total,
        "abs_difference": abs_difference,
        "value_accuracy": accuracy,
        # At 0 % the differences reach everything the ERP recognised: the tile says so (Σ|Δ| and
        # Σ|ERP| beside it keep the size of the gap).
        "floored": accuracy == 0.0 and abs_difference.amount > 0,
        "rows": rows,
    }


# Reconciliation effort --------------------------------------------------------------------------------
# People's actions on exceptions (handoffs, their exception records, causes, bulk jobs) and mismatches.
EFFORT_ACTIONS = ("handoff.", "exception.", "cause.", "bulk.", "mismatch.")
SESSION_GAP = dt.timedelta(minutes=30)  # actions closer than this are one sitting
SESSION_LEAD = dt.timedelta(minutes=10)  # reading the exception before the first action of a sitting
EFFORT_ENTRY_FIELDS = (
    "created_at",
    "actor_id",
    "actor_label",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "comment",
)


def _week_of(moment: dt.datetime) -> dt.date:
    day = moment.astimezone(dt.UTC).date()
    return day - dt.timedelta(days=day.weekday())


def reconciliation_effort(f: Filters, *, with_entries: bool = True) -> dict[str, Any]:
    """Per ISO week of the period: people's audited actions on exceptions and mismatches, the
    people and items they worked, and their hours. Hours are sittings: one person's actions no more
    than 30 minutes apart are one sitting, lasting from its first action to its last plus 10
    minutes of reading before the first; a sitting counts in the week it began."""
    start = dt.datetime.combine(f.start, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    kinds = Q()
    for prefix in EFFORT_ACTIONS:
        kinds |= Q(action__startswith=prefix)
    qs = AuditEntry.objects.filter(kinds, created_at__gte=start, created_at__lt=end, actor__isnull=False)
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    ordered = qs.order_by("actor_id", "created_at", "pk")
    # The page lists the entries; a tile or the JSON needs only their times, people and items
    # (plain rows: thousands of model instances a month cost more than the rest of the figure).
    entries: list[Any] = (
        list(ordered.only(*EFFORT_ENTRY_FIELDS))
        if with_entries
        else list(ordered.values_list("created_at", "actor_id", "object_type", "object_id", named=True))
    )
    weeks: dict[dt.date, dict[str, Any]] = defaultdict(
        lambda: {"actions": 0, "people": set(), "items": set(), "hours": 0.0}
    )
    sitting: list[Any] = []

    def close(sitting: list[Any]) -> None:
        if sitting:
            span = sitting[-1].created_at - sitting[0].created_at + SESSION_LEAD
            weeks[_week_of(sitting[0].created_at)]["hours"] += span.total_seconds() / 3600

    for e in entries:
        if sitting and (e.actor_id != sitting[-1].actor_id or e.created_at - sitting[-1].created_at > SESSION_GAP):
            close(sitting)
            sitting = []
        sitting.append(e)
        week = weeks[_week_of(e.created_at)]
        week["actions"] += 1
        week["people"].add(e.actor_id)
        week["items"].add((e.object_type, e.object_id))
    close(sitting)
    rows = [
        {
            "week": week,
            "actions": w["actions"],
            "people": len(w["people"]),
            "items": len(w["items"]),
            "hours": round(w["hours"], 2),
        }
        for week, w in sorted(weeks.items())
    ]
    return {
        "actions": len(entries),
        "hours": round(sum(r["hours"] for r in rows), 2),
        "weeks": rows,
        "entries": entries if with_entries else [],
    }
