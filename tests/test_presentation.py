"""One presentation layer: money, durations, moments, counts and names in words a person reads;
styled error pages with the navigation and a way back."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest

from pscsync import glossary

RAW = re.compile(r"\d+ days?, \d+:\d\d:\d\d|\{'|\.\d{6}\+00:00")


def test_money_has_its_currency_symbol_and_decimals() -> None:
    assert glossary.money_words(Decimal("12435.00"), "GBP") == "£12,435.00"
    assert glossary.money_words(Decimal("-5"), "USD") == "−$5.00"
    assert glossary.money_words(1200, "JPY") == "¥1,200"
    assert glossary.money_words("10.5", "SEK") == "10.50 SEK"


def test_durations_read_in_two_units_at_most() -> None:
    # 16 days 6:42:43 is 16 days and 6.7 hours: "16 days 7 h", never the timedelta's repr.
    assert glossary.duration_words(dt.timedelta(days=16, hours=6, minutes=42, seconds=43)) == "16 days 7 h"
    assert glossary.duration_words(dt.timedelta(hours=3, minutes=20)) == "3 h 20 min"
    assert glossary.duration_words(45) == "45 s"
    assert glossary.sla_words(-3 * 3600) == "3 h over"
    assert glossary.sla_words(2 * 3600) == "due in 2 h"


def test_moments_counts_and_names() -> None:
    moment = dt.datetime(2026, 12, 3, 10, 6, 0, 670853, tzinfo=dt.UTC)
    assert glossary.when_words(moment) == "3 Dec 2026 10:06 UTC"
    assert glossary.when_words("2026-12-03T10:06:00.670853+00:00") == "3 Dec 2026 10:06 UTC"
    assert glossary.count_words(1, "deal") == "1 deal"
    assert glossary.count_words(2, "batch", "batches") == "2 batches"
    assert glossary.flow_name("quote-to-project") == "Quote to project"
    assert glossary.step_name("read_deal") == "Read the deal"
    assert glossary.state_name("needs_attention") == "Needs attention"
    for text in ("3 Dec 2026 10:06 UTC", glossary.duration_words(dt.timedelta(days=16, hours=6))):
        assert not RAW.search(text)


@pytest.mark.django_db
def test_a_missing_page_is_styled_with_the_navigation_and_a_way_back(client, operator, settings) -> None:
    settings.DEBUG = False
    client.force_login(operator)
    response = client.get("/workbench/causes/999999/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "There is nothing here" in page and 'aria-label="Main"' in page and "Go to your start page" in page
