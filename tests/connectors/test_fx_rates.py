"""Exchange rates read from both ERP sandboxes over real HTTP, stored, and turned into month rates.

Both sandboxes publish from one market; the test writes that market itself (POST /_sandbox/rates),
so every expected rate below is worked out by hand from the table written here."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import httpx
import pytest

from dashboards import metrics
from dashboards.fx import fx_rate_override, fx_rates_read
from dashboards.models import ExchangeRate, FxRate
from demo.firm import firm_connections_save
from pscsync.models import AuditEntry

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 2, 8, tzinfo=dt.UTC)
# USD per one unit, as the sandboxes' market: the only rates either ERP will publish.
MARKET = [
    ("GBP", "2026-09-30", "1.20"),
    ("GBP", "2026-10-01", "1.25"),
    ("EUR", "2026-10-01", "1.00"),
    ("CAD", "2026-10-01", "0.80"),
    ("GBP", "2026-10-15", "1.27"),
    ("GBP", "2026-10-30", "1.29"),
    ("EUR", "2026-10-30", "1.10"),
]


@pytest.fixture
def erps(sandbox_factory, entities):
    """The demo firm's two ERP connections (NetSuite for the US, Business Central for the UK)."""
    netsuite, bc = sandbox_factory("netsuite"), sandbox_factory("businesscentral")
    for sandbox in (netsuite, bc):
        body = {"rates": [{"currency": c, "date": d, "usd": u} for c, d, u in MARKET]}
        httpx.post(f"{sandbox.url}/_sandbox/rates", json=body, timeout=5).raise_for_status()
    unused = "http://127.0.0.1:9"  # the CRM and PSAs are not called here
    urls = {"salesforce": unused, "kantata": unused, "netsuite": netsuite.url, "businesscentral": bc.url}
    return firm_connections_save(us=entities["us"], uk=entities["uk"], sandbox_urls=urls)


def rate(slug: str, pair: str, rate_type: str, day: str) -> Decimal:
    cur, to = pair.split("/")
    return ExchangeRate.objects.get(
        connection__slug=slug, from_currency=cur, to_currency=to, rate_type=rate_type, effective_date=day
    ).rate


def month_rate(pair: str, month: str, kind: str) -> FxRate:
    cur, to = pair.split("/")
    return FxRate.objects.select_related("connection").get(currency=cur, to_currency=to, month=month, kind=kind)


def test_rates_are_read_from_both_erps_and_stored_with_source_and_time(erps) -> None:
    summary = fx_rates_read(now=NOW)
    assert summary["connections"] == 2 and summary["failed"] == {}
    # NetSuite's currency rate table: 1 GBP = 1.27 USD from 15 Oct, as written.
    assert rate("netsuite-us", "GBP/USD", "daily", "2026-10-15") == Decimal("1.27")
    assert rate("netsuite-us", "CAD/USD", "daily", "2026-10-01") == Decimal("0.80")
    # NetSuite OneWorld's consolidated rates (Ltd. GBP → parent USD) for October:
    # average (1.25 + 1.27 + 1.29) / 3 = 1.27, current = the rate on 30 Oct, 1.29.
    assert rate("netsuite-us", "GBP/USD", "average", "2026-10-01") == Decimal("1.27")
    assert rate("netsuite-us", "GBP/USD", "closing", "2026-10-01") == Decimal("1.29")
    # Business Central UK (local currency GBP): 100 USD = 80 GBP on 1 Oct (1 / 1.25 = 0.8);
    # 100 EUR = 85.2713 GBP on 30 Oct (1.10 / 1.29 = 0.852713, six places).
    assert rate("businesscentral-uk", "USD/GBP", "daily", "2026-10-01") == Decimal("0.8")
    assert rate("businesscentral-uk", "EUR/GBP", "daily", "2026-10-30") == Decimal("0.852713")
    stored = ExchangeRate.objects.filter(connection=erps["netsuite-us"]).first()
    assert stored is not None and stored.read_at == NOW

    # Month rates: NetSuite gives its own for GBP → USD (source "erp") ...
    october = month_rate("GBP/USD", "2026-10", "average")
    assert (october.rate, october.source, october.connection.slug) == (Decimal("1.27"), "erp", "netsuite-us")
    assert month_rate("GBP/USD", "2026-10", "closing").rate == Decimal("1.29")
    assert month_rate("GBP/USD", "2026-09", "average").rate == Decimal("1.20")
    # ... BC only daily ones, so they are derived: USD → GBP in October published 0.8 (1 Oct),
    # 0.787402 (1/1.27, 15 Oct), 0.775194 (1/1.29, 30 Oct): mean 2.362596 / 3 = 0.787532;
    # closing = the rate in effect on 31 Oct = 0.775194.
    usd_gbp = month_rate("USD/GBP", "2026-10", "average")
    assert (usd_gbp.rate, usd_gbp.source) == (Decimal("0.787532"), "derived")
    assert month_rate("USD/GBP", "2026-10", "closing").rate == Decimal("0.775194")
    # EUR → GBP: 0.8 (1 Oct) and 0.852713 (30 Oct): average 0.8263565.
    assert month_rate("EUR/GBP", "2026-10", "average").rate == Decimal("0.8263565")
    # CAD was published once (1 Oct: 0.80 / 1.25 = 0.64); November has no publication yet, so
    # both its rates are the one in effect.
    assert month_rate("CAD/GBP", "2026-11", "average").rate == Decimal("0.64")

    # Reading again changes nothing (rows are keyed by connection, pair, type and day).
    count = ExchangeRate.objects.count()
    fx_rates_read(now=NOW + dt.timedelta(hours=6))
    assert ExchangeRate.objects.count() == count


def test_an_override_wins_over_the_erp_is_audited_and_survives_the_next_read(erps, admin) -> None:
    fx_rates_read(now=NOW)
    fx_rate_override(
        actor=admin, currency="GBP", to_currency="USD", month="2026-10", kind="average", rate=Decimal("1.30"),
        reason="Board's budget rate",
    )  # fmt: skip
    row = month_rate("GBP/USD", "2026-10", "average")
    assert (row.rate, row.erp_rate, row.overridden_by) == (Decimal("1.30"), Decimal("1.27"), admin)
    entry = AuditEntry.objects.get(action="fx_rate.override")
    assert entry.before["rate"] == "1.27000000" and entry.after["override_rate"] == "1.30"
    # The next read refreshes the ERP's rate but keeps the override in use.
    fx_rates_read(now=NOW + dt.timedelta(days=1))
    assert month_rate("GBP/USD", "2026-10", "average").rate == Decimal("1.30")
    # Figures convert with it: GBP 1000 of October billings = USD 1300.
    assert metrics.Converter().money(Decimal("1000"), "GBP", dt.date(2026, 10, 9)) == Decimal("1300.00")
    fx_rate_override(
        actor=admin, currency="GBP", to_currency="USD", month="2026-10", kind="average", rate=None
    )  # fmt: skip
    assert month_rate("GBP/USD", "2026-10", "average").rate == Decimal("1.27")
    assert AuditEntry.objects.filter(action="fx_rate.override_cleared").count() == 1


def test_the_settings_page_overrides_a_rate_and_refuses_a_bad_one(client, admin, erps) -> None:
    fx_rates_read(now=NOW)
    client.force_login(admin)
    form = {"fx-currency": "GBP", "fx-to_currency": "USD", "fx-month": "2026-10", "fx-kind": "closing"}
    response = client.post("/dashboards/settings/", {**form, "fx-rate": "1.31", "fx-reason": "audit"})
    assert response.status_code == 302
    assert month_rate("GBP/USD", "2026-10", "closing").rate == Decimal("1.31")
    page = client.get("/dashboards/settings/").content.decode()
    assert "Override" in page and "the ERP gives 1.290000" in page
    # Same currency on both sides: 400, nothing changed.
    response = client.post("/dashboards/settings/", {**form, "fx-to_currency": "GBP", "fx-rate": "2"})
    assert response.status_code == 400 and "two different currencies" in response.content.decode()
    assert month_rate("GBP/USD", "2026-10", "closing").rate == Decimal("1.31")


def test_an_erp_that_cannot_be_reached_leaves_the_other_erps_rates(erps) -> None:
    bc = erps["businesscentral-uk"]
    bc.base_url = "http://127.0.0.1:9"
    bc.save(update_fields=["base_url"])
    summary = fx_rates_read(now=NOW)
    assert list(summary["failed"]) == ["businesscentral-uk"] and summary["connections"] == 1
    assert month_rate("GBP/USD", "2026-10", "closing").rate == Decimal("1.29")


def test_the_generated_market_is_daily_on_business_days_with_plausible_drift(sandbox_factory, entities) -> None:
    """Without a test's table the sandboxes publish their generated market (connectors/sandboxes/fx.py)."""
    from connectors.registry import connector_for

    bc = sandbox_factory("businesscentral")
    unused = "http://127.0.0.1:9"
    urls = {
        "salesforce": unused,
        "kantata": unused,
        "netsuite": sandbox_factory("netsuite").url,
        "businesscentral": bc.url,
    }
    connections = firm_connections_save(us=entities["us"], uk=entities["uk"], sandbox_urls=urls)
    rates = connector_for(connections["netsuite-us"]).exchange_rates(since=dt.date(2026, 10, 1))
    gbp = {r.effective_date: r.rate for r in rates if r.rate_type == "daily" and r.from_currency == "GBP"}
    # The table's value for Thursday 15 October 2026, as the generator writes it (six decimals).
    assert gbp[dt.date(2026, 10, 15)] == Decimal("1.292123")
    assert not any(day.weekday() >= 5 for day in gbp)  # business days only
    days = sorted(gbp)
    assert all(abs(gbp[b] / gbp[a] - 1) < Decimal("0.02") for a, b in zip(days, days[1:], strict=False))
    # Business Central (UK, GBP) publishes the same market against its own currency: USD = 1 / GBP.
    uk = connector_for(connections["businesscentral-uk"]).exchange_rates(since=dt.date(2026, 10, 15))
    usd = next(r for r in uk if r.from_currency == "USD" and r.effective_date == dt.date(2026, 10, 15))
    assert (usd.to_currency, usd.rate) == ("GBP", (Decimal(1) / Decimal("1.292123")).quantize(Decimal("0.000001")))
