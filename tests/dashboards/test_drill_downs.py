"""Property: every registered figure that has a drill-down is made of its drill-down's rows. Over
generated firms (handoffs of every flow with random business times, outcomes and amounts, and ERP
ledgers with random states and payments, written as records), each figure of the KPI registry
equals what its records give: counts are the number of rows the drill-down lists, money the sum of
their amounts, percentiles the nearest-rank row's bucket, shares the rows that qualify.

Covered: every flow figure (items lists), billing exceptions, released not invoiced, unbilled WIP,
won not yet a project (count, value), need a person, receivables and each ageing band, revenue
mismatches, revenue schedule accuracy, forecast accuracy and bias at every lag. Not here: DSO,
invoiced and cash collected (their drill-down is the bill-to-cash page as a whole; the known-answer
firm checks Invoiced against its items list), the match rates (counts each run reports, not rows),
money at risk (a sum of three figures checked here), won past SLA and reconciliation effort (the
known-answer firm checks them by hand).

One currency (USD) so no rate enters; FX has its own tests (test_fx_figures) and the known-answer
firm (tests/flows/test_known_answer_firm.py) converts with the sandboxes' rates."""

from __future__ import annotations

import bisect
import datetime as dt
import math
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dashboards import leaders, ledger, metrics, pages, wip
from dashboards.facts import HOUR_EDGES, MEASURES, MINUTE_EDGES, rollups_rebuild_all
from dashboards.kpis import KPIS, Reading
from dashboards.metrics import Filters
from dashboards.models import DemandSnapshot
from pscsync import clock
from pscsync.models import (
    ErpInvoice,
    Handoff,
    Mismatch,
    PaymentApplication,
    PsaAssignment,
    PsaWorkedHours,
    ReconciliationRun,
    UnbilledWork,
)
from tests.dashboards.builders import connection, handoff

pytestmark = pytest.mark.django_db

ORIGIN = dt.datetime(2026, 9, 20, 9, tzinfo=dt.UTC)  # handoffs start from here, some before October
NOW = dt.datetime(2026, 11, 3, 12, tzinfo=dt.UTC)
OCT = Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31))
H = dt.timedelta(hours=1)

# One business item: its flow, start (hours after ORIGIN), cycle (hours; None: still open), how
# long the integration took (minutes), whether a step was refused once, its amount, its status.
_item = st.fixed_dictionaries(
    {
        "flow": st.sampled_from(sorted(MEASURES)),
        "start": st.integers(min_value=200, max_value=700),
        "cycle": st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
        "sync": st.integers(min_value=1, max_value=3000),
        "refused": st.booleans(),
        "amount": st.integers(min_value=1, max_value=500_000).map(lambda c: Decimal(c) / 100),
        "stuck": st.sampled_from(["needs_attention", "waiting_retry", "pending"]),
        "entity": st.sampled_from(["us", "uk"]),
    }
)
# One ERP invoice: posted (or not) on a day around October, due 30 days later, payments on days.
_invoice = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["draft", "pending_approval", "posted", "voided"]),
        "day": st.integers(min_value=-120, max_value=40),  # days after 1 Oct
        "total": st.integers(min_value=100, max_value=2_000_000).map(lambda c: Decimal(c) / 100),
        "paid": st.lists(
            st.tuples(st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=100)), max_size=3
        ),
        "customer": st.sampled_from(["Initech", "Hooli", "Umbrella"]),
        "entity": st.sampled_from(["us", "uk"]),
    }
)

# Approved work the PSA holds unbilled: kind, work day (days after 1 Oct), amount, project.
_work = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["time", "expense", "milestone"]),
        "day": st.integers(min_value=-150, max_value=30),
        "amount": st.integers(min_value=100, max_value=1_000_000).map(lambda c: Decimal(c) / 100),
        "project": st.sampled_from(["P-1", "P-2", "P-3"]),
        "entity": st.sampled_from(["us", "uk"]),
    }
)

# The demand forecast as snapshots taken before October, and October's supply: assignments (weekly
# hours over a span) and approved hours worked, per role.
ROLES = ("Architect", "Consultant", "Project Manager")
_snapshot = st.tuples(st.integers(min_value=0, max_value=100), st.sampled_from(ROLES), st.integers(0, 400))
_assignment = st.tuples(
    st.sampled_from(ROLES), st.integers(min_value=-40, max_value=40), st.integers(1, 60), st.integers(1, 40)
)
_worked = st.dictionaries(st.sampled_from(ROLES), st.integers(min_value=0, max_value=500))


def _supply(entities: dict, snapshots: list, assignments: list, worked: dict[str, int]) -> None:
    us = entities["us"]
    for taken, role, hours in snapshots:  # taken N days before 1 Oct
        DemandSnapshot.objects.get_or_create(
            taken_on=dt.date(2026, 10, 1) - dt.timedelta(days=taken),
            legal_entity_id=us.pk,
            role=role,
            month="2026-10",
            defaults={"hours": float(hours)},
        )
    for n, (role, start, days, weekly) in enumerate(assignments):
        starts = dt.date(2026, 10, 1) + dt.timedelta(days=start)
        PsaAssignment.objects.create(
            legal_entity=us,
            source_id=f"A-{n}",
            role=role,
            starts_on=starts,
            ends_on=starts + dt.timedelta(days=days),
            weekly_hours=weekly,
            read_at=NOW,
        )
    for role, hours in worked.items():
        PsaWorkedHours.objects.create(legal_entity=us, role=role, month="2026-10", hours=hours, read_at=NOW)


# Reconciliation: each entity's latest complete run (project-months checked, ERP total) and the
# open or cleared mismatches it left, by comparison and month.
_mismatch = st.tuples(
    st.sampled_from(["us", "uk"]),
    st.sampled_from(["revenue", "billed_time"]),
    st.sampled_from(["open", "open", "cleared"]),
    st.sampled_from(["2026-09", "2026-10", "2026-11"]),
    st.integers(min_value=-500_000, max_value=500_000).map(lambda c: Decimal(c) / 100),
)


def _reconciled(entities: dict, mismatches: list) -> None:
    for code, entity in entities.items():
        erp = Decimal("1000000.00") if code == "us" else Decimal("250000.00")
        summary = {"revenue": {"checked": 20, "matched": 20 - len(mismatches), "erp_total": {"USD": str(erp)}}}
        ReconciliationRun.objects.create(
            legal_entity=entity, status="complete", started_at=NOW, finished_at=NOW, summary=summary
        )
    for n, (code, comparison, status, period, difference) in enumerate(mismatches):
        Mismatch.objects.create(
            legal_entity=entities[code],
            comparison=comparison,
            status=status,
            cause="unexplained",
            period=period,
            subject_key=f"P-{n}",
            explanation="",
            currency="USD",
            difference=difference,
            amounts={"psa": "0", "erp": str(difference)},
            first_seen_at=NOW,
            last_seen_at=NOW,
        )


def _handoff(crm: Any, entities: dict, n: int, it: dict[str, Any]) -> None:
    start = ORIGIN + it["start"] * H
    end = None if it["cycle"] is None else start + it["cycle"] * H
    flow = it["flow"]
    times: dict[str, Any] = {}
    outputs: dict[str, dict[str, Any]] = {}
    if flow == "quote-to-project":
        times = {"deal_closed": start, **({"project_activated": end} if end else {})}
    elif flow == "project-to-bill":
        times = {"billing_released": start.date().isoformat(), "time_approved": start.date().isoformat()}
        if end:
            times["invoice_created"] = end
    elif flow == "bill-to-cash":
        times = {
            "invoice_posted": start.date().isoformat(),
            **({"payment_applied": end.date().isoformat()} if end else {}),
        }
        invoice = {"id": f"INV-{n}", "total": str(it["amount"]), "currency": "USD", "remaining": "0" if end else "1"}
        outputs = {"read_invoice": {"invoice": invoice}}
    finished = None if end is None else end + it["sync"] * dt.timedelta(minutes=1)
    handoff(
        flow=flow,
        conn=crm,
        entity=entities[it["entity"]],
        key=f"K-{n}",
        status="succeeded" if end is not None else it["stuck"],
        started=start if flow != "bill-to-cash" else (end or start),
        finished=finished,
        times=times,
        amount=it["amount"],
        outputs=outputs,
        attempts=[{"outcome": "validation"}, {"outcome": "succeeded"}] if it["refused"] else None,
        error_class="validation" if end is None and it["stuck"] == "needs_attention" else "",
    )


def _ledger(erp: Any, entities: dict, n: int, inv: dict[str, Any]) -> None:
    day = dt.date(2026, 10, 1) + dt.timedelta(days=inv["day"])
    posted = inv["status"] in ("posted", "voided")
    row = ErpInvoice.objects.create(
        legal_entity=entities[inv["entity"]],
        connection=erp,
        vendor_id=f"V-{n}",
        number=f"INV-{n}",
        customer_name=inv["customer"],
        currency="USD",
        total=inv["total"],
        open_balance=inv["total"],
        status=inv["status"],
        invoice_date=day,
        due_date=day + dt.timedelta(days=30),
        posting_date=day if posted else None,
        first_seen_at=NOW,
        read_at=NOW,
    )
    if inv["status"] != "posted":
        return
    left = inv["total"]
    for i, (after, share) in enumerate(inv["paid"]):
        amount = min(left, (inv["total"] * share / 100).quantize(Decimal("0.01")))
        if amount <= 0:
            break
        PaymentApplication.objects.create(
            invoice=row, payment_id=f"P-{n}-{i}", amount=amount, applied_on=day + dt.timedelta(days=after), read_at=NOW
        )
        left -= amount
    row.open_balance = left
    row.status = "paid" if left == 0 else "partly_paid" if left < inv["total"] else "posted"
    row.save(update_fields=["open_balance", "status"])


def _unbilled(entities: dict, n: int, w: dict[str, Any]) -> None:
    UnbilledWork.objects.create(
        legal_entity=entities[w["entity"]],
        kind=w["kind"],
        source_id=f"W-{n}",
        project_key=w["project"],
        project_name=w["project"],
        customer_name="Initech",
        work_date=dt.date(2026, 10, 1) + dt.timedelta(days=w["day"]),
        amount=w["amount"],
        currency="USD",
        read_at=NOW,
    )


def _edge(value: float, edges: list[float]) -> float:
    return edges[bisect.bisect_left(edges, value)]


def _nearest_rank(values: list[float], p: float, edges: list[float]) -> float | None:
    """The figure as its rows give it: the bucket edge of the value at rank ceil(p x n)."""
    if not values:
        return None
    ordered = sorted(values)
    return _edge(ordered[max(1, math.ceil(p * len(ordered) - 1e-9)) - 1], edges)


def _share(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _flow_checks(reading: Reading, flow: str) -> dict[str, tuple[Any, Any]]:
    """Each figure of a flow: (the registry's value and count, what its drill-down rows give)."""

    def rows(measure: str) -> list[Any]:
        return list(pages.items(OCT, flow, measure)[1])

    measured, breached = rows("measured"), rows("breached")
    synced, late = rows("synced"), rows("sync_breached")
    latencies = [r.latency_hours for r in measured]
    syncs = [r.sync_minutes for r in synced]
    gives = {
        "finished": (len(rows("finished")), len(rows("finished"))),
        "latency_median": (_nearest_rank(latencies, 0.5, HOUR_EDGES), len(measured)),
        "latency_p90": (_nearest_rank(latencies, 0.9, HOUR_EDGES), len(measured)),
        "within_sla": (_share(len(measured) - len(breached), len(measured)), len(measured)),
        "sync_median": (_nearest_rank(syncs, 0.5, MINUTE_EDGES), len(synced)),
        "sync_within_sla": (_share(len(synced) - len(late), len(synced)), len(synced)),
    }
    out = {}
    for name, expected in gives.items():
        figure = reading.figure(f"{flow}.{name}")
        out[f"{flow}.{name}"] = ((figure.value, figure.count), expected)
    return out


def _value(figure: Any) -> Any:
    value = figure.value
    return value.amount if hasattr(value, "amount") else value


def _checks(reading: Reading) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for flow in MEASURES:
        out.update(_flow_checks(reading, flow))
    # Billing exceptions: the project-to-bill items started (released) in the period, and those of
    # them that needed a person; their value is the exception rows' amounts.
    started = list(pages.items(OCT, "project-to-bill", "started")[1])
    refused = list(pages.items(OCT, "project-to-bill", "exceptions")[1])
    rate = reading.figure("billing.exception_rate")
    out["billing.exception_rate"] = ((rate.value, rate.count), (_share(len(refused), len(started)), len(started)))
    value = reading.figure("billing.exception_value")
    out["billing.exception_value"] = (
        (_value(value), value.count),
        (sum((r.amount for r in refused), Decimal("0")), len(refused)),
    )
    days = reading.figure("bill-to-cash.days_to_pay_median")
    out["bill-to-cash.days_to_pay_median"] = ((days.value, days.count), out["bill-to-cash.latency_median"][1])
    # Released, not invoiced and won, not yet a project: the open items listed on their pages.
    blocked = metrics.blocked_billing(OCT, with_rows=True, limit=None)["rows"]
    figure = reading.figure("billing.released_not_invoiced")
    out["billing.released_not_invoiced"] = (
        (_value(figure), figure.count),
        (sum((r["amount"] or Decimal("0") for r in blocked), Decimal("0")), len(blocked)),
    )
    won = metrics.won_not_activated(OCT, with_rows=True, limit=None)["rows"]
    for key, expected in (
        ("deals.won_not_activated", (len(won), len(won))),
        ("deals.won_not_activated_value", (sum((r["amount"] or Decimal("0") for r in won), Decimal("0")), len(won))),
    ):
        figure = reading.figure(key)
        out[key] = ((_value(figure), figure.count), expected)
    needs = Handoff.objects.filter(status=Handoff.Status.NEEDS_ATTENTION).count()  # the workbench list
    figure = reading.figure("exceptions.open")
    out["exceptions.open"] = ((figure.value, figure.count), (needs, needs))
    # Receivables and their ageing: the bill-to-cash page's rows per customer and legal entity.
    # No ERP invoice read at all: not measured (no value), whatever the rows.
    read = ErpInvoice.objects.exists()
    owed = ledger.receivables(OCT)
    figure = reading.figure("cash.receivables")
    total = sum((r["total"].amount for r in owed["rows"]), Decimal("0"))
    out["cash.receivables"] = ((_value(figure), figure.count), (total if read else None, len(owed["invoices"])))
    for index, key in enumerate(k for k in KPIS if k.startswith("cash.receivables_")):
        figure = reading.figure(key)
        in_bucket = [i for i in owed["invoices"] if i["bucket"] == index]
        total = sum((r["buckets"][index].amount for r in owed["rows"]), Decimal("0"))
        out[key] = ((_value(figure), figure.count), (total if read else None, len(in_bucket)))
    # Forecast accuracy and bias per lag: the leaders page's rows (lag, month, role: forecast vs
    # assigned and worked) give WAPE = Σ|F − A| ÷ Σ A, accuracy = max(0, 1 − WAPE), bias = Σ(F − A) ÷ Σ A.
    forecast_rows = reading.forecast.rows
    for lag in (30, 60, 90):
        mine = [r for r in forecast_rows if r["lag"] == lag]
        for actual in ("worked", "assigned"):
            total = sum(r[actual] for r in mine)
            error = sum(abs(r["forecast"] - r[actual]) for r in mine)
            over = sum(r["forecast"] - r[actual] for r in mine)
            accuracy = max(0.0, 100 - 100 * error / total) if total else None
            bias = 100 * over / total if total else None
            for name, want in (("accuracy", accuracy), ("bias", bias)):
                figure = reading.figure(f"forecast.{name}_{lag}d_{actual}")
                got = figure.value if figure.value is None or want is None else pytest.approx(figure.value, abs=1e-6)
                out[f"forecast.{name}_{lag}d_{actual}"] = ((got, figure.count), (want, len(mine)))
    # Revenue mismatches: the exceptions page's open revenue mismatches of the period's months; the
    # revenue schedule's accuracy: the leaders page's mismatch rows against the ERP total compared.
    listed = list(metrics.mismatches(OCT).filter(comparison="revenue"))
    figure = reading.figure("revenue.mismatch_value")
    out["revenue.mismatch_value"] = (
        (_value(figure), figure.count),
        (sum((abs(m.difference) for m in listed), Decimal("0")), len(listed)),
    )
    schedule = leaders.revenue_schedule_accuracy(OCT)
    figure = reading.figure("revenue.schedule_value_accuracy")
    # The rows' differences and the ERP total are Money in the figure's currency (dashboards.money).
    gap = sum((r["abs_difference"].amount for r in schedule["rows"]), Decimal("0"))
    erp_total = schedule["erp_total"].amount
    want = float(100 * (1 - gap / erp_total)) if erp_total else None
    got = figure.value if figure.value is None or want is None else pytest.approx(figure.value, abs=1e-9)
    out["revenue.schedule_value_accuracy"] = ((got, figure.count), (want, schedule["checked"]))
    # Unbilled WIP: the project-to-bill page's table by legal entity (every part, by age) sums to it;
    # before any PSA read (unbilled work or assignments read, or a complete reconciliation) no value.
    psa_read = UnbilledWork.objects.exists() or PsaAssignment.objects.exists() or ReconciliationRun.objects.exists()
    detail = wip.unbilled_wip(OCT, detail=True, released=metrics.blocked_billing(OCT, with_rows=False))
    rows = list(detail["by_entity"].values())
    for key, first in (("billing.unbilled_wip", 0), ("billing.unbilled_wip_over_60_days", 2)):
        figure = reading.figure(key)
        total = sum((b.amount for r in rows for b in r[first:]), Decimal("0"))
        out[key] = ((_value(figure), figure.count), (total if psa_read else None, detail["count"]))
    return out


@pytest.fixture(autouse=True)
def _frozen(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: NOW)


def test_every_drilled_figure_is_the_sum_or_count_of_its_rows(entities, settings) -> None:
    settings.PSCSYNC_REPORTING_CURRENCY = "USD"
    entities["uk"].currency = "USD"  # one currency: no rate enters (see the module docstring)
    entities["uk"].save(update_fields=["currency"])
    crm = connection("crm", list(entities.values()))
    erp = connection("erp", list(entities.values()), kind="erp", vendor="netsuite")

    @hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        items=st.lists(_item, min_size=20, max_size=30),
        invoices=st.lists(_invoice, min_size=1, max_size=12),
        work=st.lists(_work, max_size=10),
        supply=st.tuples(st.lists(_snapshot, max_size=8), st.lists(_assignment, max_size=5), _worked),
        mismatches=st.lists(_mismatch, max_size=8),
    )
    def firm(items: list, invoices: list, work: list, supply: tuple, mismatches: list) -> None:
        with transaction.atomic():
            _reconciled(entities, mismatches)
            _supply(entities, *supply)
            for n, w in enumerate(work):
                _unbilled(entities, n, w)
            for n, it in enumerate(items):
                _handoff(crm, entities, n, it)
            for n, inv in enumerate(invoices):
                _ledger(erp, entities, n, inv)
            rollups_rebuild_all()
            checks = _checks(Reading(OCT))
            wrong = {k: v for k, v in checks.items() if v[0] != v[1]}
            transaction.set_rollback(True)
        assert wrong == {}

    firm()
