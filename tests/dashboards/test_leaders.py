"""The leader figures against answers worked out by hand from the records: resource forecast
accuracy from weekly snapshots, revenue schedule accuracy from the latest reconciliation, and
reconciliation effort from the audit trail; the page and the metrics JSON show them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from dashboards import leaders, metrics
from dashboards.models import DemandMonth, DemandSnapshot
from pscsync import clock
from pscsync.audit import audit_record
from pscsync.models import Mismatch, PsaAssignment, PsaWorkedHours, ReconciliationRun
from tests.dashboards.builders import connection

pytestmark = pytest.mark.django_db
NOW = dt.datetime(2026, 11, 10, 12, tzinfo=dt.UTC)
OCT = metrics.Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31))


@pytest.fixture(autouse=True)
def _now(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: NOW)


def demand(entity, role: str, hours: float, service_line: str = "") -> DemandMonth:
    return DemandMonth.objects.update_or_create(
        legal_entity_id=entity.pk,
        service_line=service_line,
        connection_id=0,
        role=role,
        month="2026-10",
        defaults={"hours": hours},
    )[0]


def test_forecast_accuracy_by_lag_against_hours_assigned_and_worked(entities) -> None:
    us = entities["us"]
    # The forecast on 15 Aug: Consultant 100 + 20 (two service lines) = 120 h, Architect 50 h in October.
    demand(us, "Consultant", 100)
    demand(us, "Consultant", 20, service_line="Advisory")
    demand(us, "Architect", 50)
    assert leaders.demand_snapshot_take(dt.date(2026, 8, 15)) == 2
    assert leaders.demand_snapshot_take(dt.date(2026, 8, 20)) == 0  # one a week
    # A later forecast (10 Sep, 21 days before October) is too late for the 30-day lag.
    demand(us, "Consultant", 300)
    assert leaders.demand_snapshot_take(dt.date(2026, 9, 10)) == 2
    assert DemandSnapshot.objects.count() == 4
    # Assigned: Consultant 20 h/week, Architect 10 h/week through October, whose 22 weekdays (Thu 1,
    # Fri 2, then four full weeks) give 22 × 4 = 88 h and 22 × 2 = 44 h. Worked: 110 h and 40 h.
    read = {"legal_entity": us, "read_at": NOW, "starts_on": dt.date(2026, 10, 1), "ends_on": dt.date(2026, 10, 31)}
    PsaAssignment.objects.create(source_id="a1", role="Consultant", weekly_hours=20, **read)
    PsaAssignment.objects.create(source_id="a2", role="Architect", weekly_hours=10, **read)
    for role, hours in (("Consultant", 110), ("Architect", 40)):
        PsaWorkedHours.objects.create(legal_entity=us, role=role, month="2026-10", hours=hours, read_at=NOW)

    found = leaders.forecast_accuracy(OCT)

    # 30 days before 1 Oct is 1 Sep: the 15 Aug forecast. 60 and 90 days: no snapshot that old.
    assert set(found.lags) == {30}
    worked, assigned = found.lags[30]["worked"], found.lags[30]["assigned"]
    # vs worked: |120 − 110| + |50 − 40| = 20 of 150 -> WAPE 13.33 %, accuracy 86.67 %;
    # bias (170 − 150) ÷ 150 = +13.33 %.
    assert round(worked.wape, 2) == 13.33 and round(worked.accuracy, 2) == 86.67 and round(worked.bias, 2) == 13.33
    # vs assigned: |120 − 88| + |50 − 44| = 38 of 132 -> WAPE 28.79 %, accuracy 71.21 %; bias 38 ÷ 132.
    assert round(assigned.accuracy, 2) == 71.21 and round(assigned.bias, 2) == 28.79
    # The drill-down rows sum to the figure's totals.
    assert sum(r["forecast"] for r in found.rows) == worked.forecast == 170
    assert sum(r["worked"] for r in found.rows) == worked.actual == 150
    assert {r["snapshot"] for r in found.rows} == {dt.date(2026, 8, 15)}
    # The other entity's scope has no forecast snapshot: not measured (not 0 %, not 100 %).
    other = leaders.forecast_accuracy(metrics.Filters(OCT.start, OCT.end, entity_ids=(entities["uk"].pk,)))
    assert other.lags == {} and other.headline is None


def test_forecast_accuracy_is_not_measured_for_a_month_not_ended(entities) -> None:
    found = leaders.forecast_accuracy(metrics.Filters(dt.date(2026, 11, 1), dt.date(2026, 11, 30)))
    assert found.months == [] and found.headline is None


def run(entity, *, checked: int, matched: int, erp: str, minutes: int = 0) -> ReconciliationRun:
    at = NOW - dt.timedelta(hours=1) + dt.timedelta(minutes=minutes)
    summary = {"revenue": {"checked": checked, "matched": matched, "erp_total": {"USD": erp}}}
    return ReconciliationRun.objects.create(
        legal_entity=entity, status="complete", started_at=at, finished_at=at, summary=summary
    )


def mismatch(entity, key: str, difference: str, **kw) -> Mismatch:
    fields = {"comparison": "revenue", "status": "open", "cause": "unexplained", "period": "2026-10", **kw}
    return Mismatch.objects.create(
        legal_entity=entity,
        subject_key=key,
        explanation="",
        currency="USD",
        difference=Decimal(difference),
        amounts={"psa": "0", "erp": difference},
        first_seen_at=NOW,
        last_seen_at=NOW,
        **fields,
    )


def test_revenue_schedule_accuracy_from_the_latest_reconciliation(entities) -> None:
    us = entities["us"]
    run(us, checked=4, matched=1, erp="5000.00")  # an older run: not the latest
    run(us, checked=10, matched=8, erp="100000.00", minutes=30)
    mismatch(us, "P-1", "-1500.00")
    mismatch(us, "P-2", "500.00")
    mismatch(us, "P-3", "9999.00", status="cleared")  # gone: not counted
    mismatch(us, "P-4", "7777.00", comparison="billed_time")  # another comparison

    found = leaders.revenue_schedule_accuracy(OCT)

    # 1 − (|−1500| + |500|) ÷ 100,000 = 1 − 2,000 ÷ 100,000 = 98 %; rows 8 of 10 = 80 %.
    assert found["value_accuracy"] == 98.0 and found["match_rate"] == 80.0
    assert found["abs_difference"] == Decimal("2000.00") and found["erp_total"] == Decimal("100000.00")
    assert sum(r["abs_difference"] for r in found["rows"]) == found["abs_difference"]  # drill-down sums
    assert [r["mismatch"].subject_key for r in found["rows"]] == ["P-1", "P-2"]


@pytest.mark.parametrize(
    ("abs_difference", "erp", "checked", "want"),
    [
        # 1 − 2,000 ÷ 100,000 = 98 %.
        ("2000.00", "100000.00", 10, 98.0),
        # 1 − 19,700 ÷ 19,700 = 0 %: every unit the ERP recognised is in dispute.
        ("19700.00", "19700.00", 6, 0.0),
        # The PSA counts 3,000 more than the ERP posted: 1 − 22,700 ÷ 19,700 = −15.2 % → 0 %.
        ("22700.00", "19700.00", 6, 0.0),
        # The ERP recognised nothing, the PSA 500: nothing agrees, 0 %.
        ("500.00", "0", 1, 0.0),
        # Nothing recognised on either side: no ratio to give.
        ("0", "0", 3, None),
        # Nothing compared.
        ("0", "0", 0, None),
    ],
)
def test_value_accuracy_is_floored_at_zero(abs_difference, erp, checked, want) -> None:
    got = leaders.value_accuracy(Decimal(abs_difference), Decimal(erp), checked)
    assert got == want


def test_revenue_schedule_accuracy_says_when_it_is_floored(entities) -> None:
    us = entities["us"]
    # ERP recognised 1,000.00; the PSA recognises 2,500 on P-1 (Δ +1,500) and 0 on P-2 where the
    # ERP has 1,000 (Δ −1,000): 1 − 2,500 ÷ 1,000 = −150 % → 0 %, floored.
    run(us, checked=2, matched=0, erp="1000.00", minutes=30)
    mismatch(us, "P-1", "1500.00")
    mismatch(us, "P-2", "-1000.00")
    found = leaders.revenue_schedule_accuracy(OCT)
    assert (found["value_accuracy"], found["floored"]) == (0.0, True)
    assert (found["abs_difference"], found["erp_total"]) == (Decimal("2500.00"), Decimal("1000.00"))


def test_revenue_schedule_accuracy_is_not_measured_before_a_reconciliation(entities) -> None:
    found = leaders.revenue_schedule_accuracy(OCT)
    assert found["value_accuracy"] is None and found["match_rate"] is None and found["rows"] == []


def test_reconciliation_effort_counts_people_actions_and_sittings(entities, operator, admin, monkeypatch) -> None:
    us, uk = entities["us"], entities["uk"]

    def act(at: str, actor, action: str, obj) -> None:
        monkeypatch.setattr(clock, "now", lambda: dt.datetime.fromisoformat(at).replace(tzinfo=dt.UTC))
        audit_record(actor=actor, action=action, obj=obj, legal_entity=us)

    act("2026-10-05T09:00", operator, "handoff.resubmit", us)
    act("2026-10-05T09:10", operator, "mapping.publish", us)  # configuration, not effort
    act("2026-10-05T09:20", operator, "handoff.resolve", us)  # same sitting: 20 min + 10 = 0.5 h
    act("2026-10-05T10:30", operator, "exception.comment", us)  # 70 min later: new sitting, 10 min
    act("2026-10-06T14:00", admin, "handoff.cancel", uk)  # another person: 10 min
    act("2026-10-06T15:00", None, "handoff.resubmit", us)  # the system: not a person
    for minute in ("00", "25", "50"):  # the next week, one sitting: 50 + 10 min = 1 h
        act(f"2026-10-12T08:{minute}", operator, "handoff.resubmit", us)

    found = leaders.reconciliation_effort(OCT)

    # Week of 5 Oct: 4 actions, 2 people, 2 objects, 0.5 + 1/6 + 1/6 = 0.8333 h -> 0.83.
    # Week of 12 Oct: 3 actions, 1 person, 1 object, 1 h. Period: 7 actions, 1.83 h.
    assert found["weeks"] == [
        {"week": dt.date(2026, 10, 5), "actions": 4, "people": 2, "items": 2, "hours": 0.83},
        {"week": dt.date(2026, 10, 12), "actions": 3, "people": 1, "items": 1, "hours": 1.0},
    ]
    assert found["actions"] == 7 and found["hours"] == 1.83
    assert len(found["entries"]) == found["actions"]  # the drill-down lists every action counted


def test_the_leader_figures_are_on_the_pages_and_in_the_metrics(client, viewer, entities) -> None:
    # The revenue schedule's figures are as of the reconciliations of the entities a connection serves.
    connection("netsuite", [entities["us"]], kind="erp", vendor="netsuite")
    run(entities["us"], checked=10, matched=8, erp="100000.00")
    mismatch(entities["us"], "P-1", "-2000.00")
    client.force_login(viewer)
    page = client.get("/dashboards/leaders/?from=2026-10-01&to=2026-10-31").content.decode()
    assert "Resource forecast accuracy" in page and "98.0%" in page and "Reconciliation effort by week" in page
    overview = client.get("/dashboards/?from=2026-10-01&to=2026-10-31").content.decode()
    assert "Leader figures" in overview and "Revenue schedule accuracy" in overview
    from dashboards.views import metrics_payload

    figures = {m["key"]: m["value"] for m in metrics_payload(OCT)["metrics"]}
    assert figures["revenue.schedule_value_accuracy"] == 98.0 and figures["revenue.schedule_row_match_rate"] == 80.0
    assert figures["forecast.accuracy_30d_worked"] is None  # not measured yet: null, not 0
    assert figures["reconciliation.effort_actions"] == 0


def test_revenue_schedule_accuracy_in_the_entitys_currency_and_none_from_a_partial_sum(entities) -> None:
    """The UK alone is in GBP (its functional currency), not in the reporting currency's name; firm
    wide with no GBP rate the ratio is not computed from the USD part alone."""
    uk = entities["uk"]
    ReconciliationRun.objects.create(
        legal_entity=uk, status="complete", started_at=NOW - dt.timedelta(hours=1), finished_at=NOW,
        summary={"revenue": {"checked": 5, "matched": 4, "erp_total": {"GBP": "40000.00"}}},
    )  # fmt: skip
    Mismatch.objects.create(
        legal_entity=uk, subject_key="P-UK", explanation="", currency="GBP", difference=Decimal("-800.00"),
        amounts={"psa": "0", "erp": "-800.00"}, first_seen_at=NOW, last_seen_at=NOW, comparison="revenue",
        status="open", cause="unexplained", period="2026-10",
    )  # fmt: skip
    only_uk = metrics.Filters(start=OCT.start, end=OCT.end, entity_ids=(uk.pk,))
    found = leaders.revenue_schedule_accuracy(only_uk)
    # 1 − 800 ÷ 40,000 = 98 %, in GBP.
    assert found["value_accuracy"] == 98.0
    assert (found["abs_difference"].currency, found["abs_difference"].amount) == ("GBP", Decimal("800.00"))
    firm = leaders.revenue_schedule_accuracy(OCT)  # USD, and no GBP rate anywhere
    assert firm["abs_difference"].missing == {"GBP": Decimal("800.00")} and firm["value_accuracy"] is None
