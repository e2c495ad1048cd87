"""Pipeline-weighted demand by role and month, kept as deals change: known answers, a deal whose
probability moves, a deal that closes, scope, and the same figures from a rebuild and from the
per-customer path that reads the facts."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from dashboards import metrics
from dashboards.demand import demand_for, demand_rebuild
from dashboards.models import DemandMonth
from pscsync import clock
from tests.dashboards.builders import handoff

NOW = dt.datetime(2026, 10, 20, 12, tzinfo=dt.UTC)
OCT = metrics.Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31))


@pytest.fixture(autouse=True)
def _now(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: NOW)


def pipeline(crm, entity, key: str, *, customer: str = "Contoso", minutes: int = 0, **deal):
    at = NOW - dt.timedelta(days=1) + dt.timedelta(minutes=minutes)
    return handoff(
        flow="pipeline-to-demand",
        conn=crm,
        entity=entity,
        key=key,
        started=at,
        finished=at + dt.timedelta(minutes=2),
        customer=customer,
        outputs={"read_deal": {"deal": {"is_closed": False, **deal}}},
    )


def plan(*items: tuple[str, int]) -> str:
    return json.dumps([{"role": role, "hours": hours} for role, hours in items])


def deal_a(crm, entity, probability: int, minutes: int = 0):
    """300 h of a consultant over October to December."""
    return pipeline(
        crm,
        entity,
        "OPP-A",
        minutes=minutes,
        probability=probability,
        contract_start="2026-10-01",
        contract_end="2026-12-31",
        resource_plan_text=plan(("Consultant", 300)),
    )


def deal_b(crm, entity, minutes: int = 0, **change):
    """90 h of an architect over November to January, for Fabrikam in the UK."""
    deal = {"probability": 100, "contract_start": "2026-11-15", "contract_end": "2027-01-10", **change}
    return pipeline(
        crm, entity, "OPP-B", minutes=minutes, customer="Fabrikam", resource_plan_text=plan(("Architect", 90)), **deal
    )


@pytest.mark.django_db
def test_demand_by_role_and_month_follows_each_deal(crm, entities, django_capture_on_commit_callbacks) -> None:
    us, uk = entities["us"], entities["uk"]
    with django_capture_on_commit_callbacks(execute=True):  # each finished handoff refreshes its deal
        deal_a(crm, us, 50)  # 300 h × 50% over October to December: 50 h a month
        deal_b(crm, uk)  # 90 h × 100% over November to January: 30 h a month; the UK's
        # No plan of its own: counted, its hours are its service line's default plan (in the PSA).
        pipeline(crm, us, "OPP-C", probability=40, contract_start="2026-10-01", contract_end="2026-11-30")
        # Ended before the period: not in October's view.
        pipeline(
            crm,
            us,
            "OPP-D",
            probability=90,
            contract_start="2026-01-01",
            contract_end="2026-06-30",
            resource_plan_text=plan(("Consultant", 1000)),
        )
    found = demand_for(OCT)
    assert found.hours == pytest.approx(
        {
            ("Consultant", "2026-10"): 50.0,
            ("Consultant", "2026-11"): 50.0,
            ("Consultant", "2026-12"): 50.0,
            ("Architect", "2026-11"): 30.0,
            ("Architect", "2026-12"): 30.0,
            ("Architect", "2027-01"): 30.0,
        }
    )
    assert (found.deals, found.default_plan) == (2, 1)

    # The probability of A rises to 100% and B is lost (closed): A doubles, B's hours go.
    with django_capture_on_commit_callbacks(execute=True):
        deal_a(crm, us, 100, minutes=30)
        deal_b(crm, uk, minutes=30, probability=0, is_closed=True)
    found = demand_for(OCT)
    assert found.hours == pytest.approx({("Consultant", m): 100.0 for m in ("2026-10", "2026-11", "2026-12")})
    assert (found.deals, found.default_plan) == (1, 1)

    # A viewer of the UK alone sees none of it; the per-customer path agrees with the kept months.
    assert demand_for(metrics.Filters(start=OCT.start, end=OCT.end, entity_ids=(uk.pk,))).hours == {}
    contoso = demand_for(metrics.Filters(start=OCT.start, end=OCT.end, customer="Contoso"))
    assert contoso.hours == pytest.approx(found.hours) and (contoso.deals, contoso.default_plan) == (1, 1)

    # A rebuild from the facts gives the same figures as the changes applied one by one.
    before = demand_for(OCT)
    demand_rebuild()
    after = demand_for(OCT)
    assert after.hours == pytest.approx(before.hours) and (after.deals, after.default_plan) == (1, 1)
    assert DemandMonth.objects.filter(role="Architect").count() == 0  # nothing left of the lost deal


@pytest.mark.django_db
def test_demand_page_shows_the_kept_figures(client, viewer, crm, entities, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        deal_a(crm, entities["us"], 50)
    client.force_login(viewer)
    csv = client.get("/dashboards/demand/?from=2026-10-01&to=2026-10-31&csv=demand").content.decode()
    assert csv.splitlines()[1] == "Consultant,50,50,50"
