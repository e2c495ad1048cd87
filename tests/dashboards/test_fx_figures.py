"""Every money figure knows what it could not convert: the tile says so and turns amber, the JSON
gives `complete: false` with the amount per currency; one entity is shown in its own currency."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from dashboards import metrics
from dashboards.facts import rollups_rebuild_all
from dashboards.models import FxRate
from dashboards.money import Money, money_text
from pscsync import clock
from pscsync.models import ReconciliationRun
from tests.dashboards.builders import T0, connection, handoff

PERIOD = "from=2026-10-01&to=2026-10-31"


@pytest.fixture
def blocked(entities, monkeypatch, django_capture_on_commit_callbacks):
    """Two billing batches released and not invoiced: USD 412,000 (US) and GBP 44,632 (UK)."""
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    crm = connection("salesforce", list(entities.values()))
    with django_capture_on_commit_callbacks(execute=True):
        for code, amount, currency in (("us", "412000.00", "USD"), ("uk", "44632.00", "GBP")):
            handoff(
                flow="project-to-bill",
                conn=crm,
                entity=entities[code],
                key=f"BE-{code}",
                status="running",
                amount=amount,
                currency=currency,
                times={"billing_released": T0, "time_approved": T0},
            )
    rollups_rebuild_all()
    return entities


def test_money_names_what_it_misses() -> None:
    total = Money("USD", Decimal("412000")) + Money("USD", Decimal("0"), {"GBP": Decimal("44632")})
    assert money_text(total) == "USD 412,000 + GBP 44,632 not converted"
    assert money_text(Money("USD", Decimal("0"), {"GBP": Decimal("44632.4")})) == "GBP 44,632 not converted"
    assert money_text(Money("JPY", Decimal("1234567")), decimals=None) == "JPY 1,234,567"
    assert not total.complete and total != Decimal("412000")


@pytest.mark.django_db
def test_a_figure_without_a_rate_is_incomplete_with_its_own_missing_amount(blocked) -> None:
    f = metrics.Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31))
    value = metrics.blocked_billing(f, with_rows=False)["value"]
    # No GBP rate: USD 412,000 converted, GBP 44,632 missing, for this figure alone.
    assert (value.amount, value.missing, value.complete) == (Decimal("412000.00"), {"GBP": Decimal("44632.00")}, False)
    # With October's closing rate 1.26: 412,000 + 44,632 × 1.26 = 412,000 + 56,236.32 = USD 468,236.32.
    FxRate.objects.create(currency="GBP", to_currency="USD", month="2026-10", kind="closing", rate=Decimal("1.26"))
    value = metrics.blocked_billing(f, with_rows=False)["value"]
    assert value == Decimal("468236.32") and value.complete


@pytest.mark.django_db
def test_the_tile_headline_says_not_converted_and_turns_amber(client, admin, blocked) -> None:
    client.force_login(admin)
    page = client.get(f"/dashboards/?{PERIOD}").content.decode()
    assert "USD 412,000 + GBP 44,632 not converted" in page
    assert 'class="tile incomplete"' in page
    # The JSON: the same figure, complete false, the missing amount per currency.
    data = client.get(f"/api/v1/metrics/?{PERIOD}").json()
    figure = {m["key"]: m for m in data["metrics"]}["billing.released_not_invoiced"]
    assert (figure["value"], figure["unit"], figure["complete"], figure["missing"]) == (
        "412000.00",
        "USD",
        False,
        {"GBP": "44632.00"},
    )


@pytest.mark.django_db
def test_one_entity_is_shown_in_its_own_currency_unless_one_is_chosen(client, admin, blocked) -> None:
    client.force_login(admin)
    # Money at risk includes mismatches, so it is measured once the UK was reconciled (nothing found).
    at = clock.now()
    ReconciliationRun.objects.create(legal_entity=blocked["uk"], status="complete", started_at=at, finished_at=at)
    page = client.get(f"/dashboards/?{PERIOD}&legal_entity=uk").content.decode()
    # The UK in GBP: nothing to convert, money at risk is the GBP 44,632 waiting.
    assert "GBP 44,632" in page and "not converted" not in page
    data = client.get(f"/api/v1/metrics/?{PERIOD}&legal_entity=uk").json()
    risk = {m["key"]: m for m in data["metrics"]}["money_at_risk"]
    assert (data["currency"], risk["value"], risk["complete"]) == ("GBP", "44632.00", True)
    # Chosen reporting currency USD, with a GBP → USD closing rate of 1.25: 44,632 × 1.25 = 55,790.
    FxRate.objects.create(currency="GBP", to_currency="USD", month="2026-10", kind="closing", rate=Decimal("1.25"))
    data = client.get(f"/api/v1/metrics/?{PERIOD}&legal_entity=uk&currency=USD").json()
    risk = {m["key"]: m for m in data["metrics"]}["money_at_risk"]
    assert (data["currency"], risk["value"], risk["complete"]) == ("USD", "55790.00", True)
    # A currency nobody holds is a 422, not an empty answer.
    assert client.get(f"/api/v1/metrics/?{PERIOD}&currency=XYZ").status_code == 422


@pytest.mark.django_db
def test_cross_rates_go_through_the_reporting_currency(entities) -> None:
    FxRate.objects.create(currency="GBP", to_currency="USD", month="2026-10", kind="average", rate=Decimal("1.25"))
    FxRate.objects.create(currency="CAD", to_currency="USD", month="2026-10", kind="average", rate=Decimal("0.80"))
    # GBP → CAD = 1.25 USD per GBP ÷ 0.80 USD per CAD = 1.5625: GBP 100 = CAD 156.25.
    assert metrics.Converter(target="CAD").money(Decimal("100"), "GBP", dt.date(2026, 10, 9)) == Decimal("156.25")
    # And the inverse of a stored pair: USD 125 = GBP 100.
    assert metrics.Converter(target="GBP").money(Decimal("125"), "USD", dt.date(2026, 10, 9)) == Decimal("100.00")
