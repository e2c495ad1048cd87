"""The one SLA rule on each legal entity's business calendar: the facts (within SLA), the tile
(won deals past SLA), the alert (SLA breach) and the API agree, with a Friday close, a weekend, US
Thanksgiving and UK bank holidays. Every expected value is worked out by hand in the comments."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from alerts.models import AlertSubscription
from alerts.services import _sla_breaches
from dashboards import metrics
from dashboards.facts import rollups_rebuild_all, sla_for
from dashboards.models import FlowSla
from dashboards.sla import business_days_between, is_business_day, past_sla, sla_deadline, within_sla
from pscsync import clock
from tests.dashboards.builders import connection, handoff


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


ONE_DAY = FlowSla(flow="quote-to-project", target=Decimal("1"), unit=FlowSla.Unit.BUSINESS_DAYS)


def test_a_friday_close_is_late_on_monday_afternoon_not_on_sunday() -> None:
    closed = utc(2026, 10, 2, 15)  # Friday 2 October 2026, 15:00
    # Friday 15:00 -> midnight = 9 h = 0.375 day; Saturday and Sunday count nothing.
    assert business_days_between(closed, utc(2026, 10, 4, 23), "US") == pytest.approx(0.375)
    assert not past_sla(closed, utc(2026, 10, 4, 23), ONE_DAY, "US")  # Sunday night: not late
    # Monday 14:00: 0.375 + 14/24 = 0.9583; Monday 16:00: 0.375 + 16/24 = 1.0417.
    assert not past_sla(closed, utc(2026, 10, 5, 14), ONE_DAY, "US")
    assert past_sla(closed, utc(2026, 10, 5, 16), ONE_DAY, "US")
    # At Monday 16:00 the deadline is one business day back: Monday's 16 h, then 8 h of Friday
    # (the weekend skipped): Friday 16:00. Closed at 15:00, before it: late.
    assert sla_deadline(ONE_DAY, utc(2026, 10, 5, 16), "US") == utc(2026, 10, 2, 16)


def test_us_thanksgiving_is_not_a_working_day_in_the_us_but_is_in_the_uk() -> None:
    closed = utc(2026, 11, 25, 15)  # Wednesday before Thanksgiving (Thursday 26 November 2026)
    assert not is_business_day(dt.date(2026, 11, 26), "US") and is_business_day(dt.date(2026, 11, 26), "GB")
    at = utc(2026, 11, 27, 14)  # Friday 14:00
    # US: Wed 9 h (0.375) + Thu holiday 0 + Fri 14 h (0.5833) = 0.9583: within one business day.
    assert business_days_between(closed, at, "US") == pytest.approx(0.375 + 14 / 24)
    assert within_sla(closed, at, ONE_DAY, "US")
    # UK: Thursday is a working day: 0.375 + 1 + 0.5833 = 1.9583: late.
    assert business_days_between(closed, at, "GB") == pytest.approx(0.375 + 1 + 14 / 24)
    assert not within_sla(closed, at, ONE_DAY, "GB")


def test_uk_bank_holidays_are_not_working_days() -> None:
    # Spring bank holiday, Monday 25 May 2026: a Friday 15:00 close is late on Tuesday 15:00.
    closed = utc(2026, 5, 22, 15)
    assert business_days_between(closed, utc(2026, 5, 26, 14), "GB") == pytest.approx(0.375 + 14 / 24)
    assert not past_sla(closed, utc(2026, 5, 26, 14), ONE_DAY, "GB")
    assert past_sla(closed, utc(2026, 5, 26, 16), ONE_DAY, "GB")
    # Christmas 2026: Friday 25 December, Boxing Day observed Monday 28 December. A deal won on
    # Thursday 24 December 10:00: Thu 14 h (0.5833) + Fri, Sat, Sun, Mon 0 + Tue 9 h (0.375) = 0.9583.
    xmas = utc(2026, 12, 24, 10)
    assert business_days_between(xmas, utc(2026, 12, 29, 9), "GB") == pytest.approx(14 / 24 + 9 / 24)
    # In the US only the 25th is a holiday: 0.5833 + Mon 1 + Tue 0.375 = 1.9583.
    assert business_days_between(xmas, utc(2026, 12, 29, 9), "US") == pytest.approx(14 / 24 + 1 + 9 / 24)
    # An hour SLA is calendar hours whatever the calendar: 119 h.
    hours = FlowSla(flow="bill-to-cash", target=Decimal("120"), unit=FlowSla.Unit.HOURS)
    assert within_sla(xmas, utc(2026, 12, 29, 9), hours, "GB")


def test_a_country_the_package_does_not_know_counts_weekends_only() -> None:
    assert is_business_day(dt.date(2026, 12, 25), "") and is_business_day(dt.date(2026, 12, 25), "ZZ")
    assert not is_business_day(dt.date(2026, 12, 26), "ZZ")  # a Saturday


@pytest.mark.django_db
def test_facts_tile_and_alert_agree_on_each_entitys_calendar(entities, monkeypatch) -> None:
    crm = connection("salesforce", list(entities.values()))
    # Finished deals, the same times in both entities (default SLA: 1 business day).
    deals = {
        # Thanksgiving: closed Wed 25 Nov 15:00, active Fri 27 Nov 14:00 = 47 calendar hours.
        "TG": (utc(2026, 11, 25, 15), utc(2026, 11, 27, 14)),
        # Christmas: closed Thu 24 Dec 10:00, active Tue 29 Dec 09:00 = 119 calendar hours.
        "XM": (utc(2026, 12, 24, 10), utc(2026, 12, 29, 9)),
    }
    for code in ("us", "uk"):
        for name, (closed, active) in deals.items():
            handoff(
                flow="quote-to-project",
                conn=crm,
                entity=entities[code],
                key=f"{name}-{code}",
                started=closed,
                finished=active,
                times={"deal_closed": closed, "project_activated": active},
            )
    # An open deal won on Friday 2 October 2026 at 15:00 in the US.
    friday = utc(2026, 10, 2, 15)
    handoff(
        flow="quote-to-project",
        conn=crm,
        entity=entities["us"],
        key="FRI-us",
        status="pending",
        started=friday,
        amount="5000.00",
        times={"deal_closed": friday},
    )
    rollups_rebuild_all()
    period = dict(start=dt.date(2026, 11, 1), end=dt.date(2026, 12, 31))
    us = metrics.flow_stats(metrics.Filters(**period, entity_ids=(entities["us"].pk,)), "quote-to-project")
    uk = metrics.flow_stats(metrics.Filters(**period, entity_ids=(entities["uk"].pk,)), "quote-to-project")
    # US: Thanksgiving 0.9583 bd within; Christmas 1.9583 bd (Boxing Day is no US holiday) late.
    # UK: Thanksgiving 1.9583 bd late; Christmas 0.9583 bd within.
    assert (us.measured, us.within_sla) == (2, 1) and (uk.measured, uk.within_sla) == (2, 1)

    sub = AlertSubscription(all_entities=True)
    oct_ = metrics.Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31))
    for now, late in (
        (utc(2026, 10, 4, 12), 0),  # Sunday noon: 0.375 bd (calendar days said 2 > 1: late)
        (utc(2026, 10, 5, 14), 0),  # Monday 14:00: 0.9583 bd
        (utc(2026, 10, 5, 16), 1),  # Monday 16:00: 1.0417 bd
    ):
        monkeypatch.setattr(clock, "now", lambda now=now: now)
        won = metrics.won_not_activated(oct_, with_rows=False)
        signals = _sla_breaches(sub, now)
        assert (won["count"], won["over_sla_count"]) == (1, late), now
        assert sum(s.count for s in signals) == late, now
        if late:
            assert won["over_sla_value"] == Decimal("5000.00")
    assert sla_for("quote-to-project").target_label == "1 business day"
