"""Every dashboard page in headless Chromium on the seeded firm; screenshots in docs/screenshots/."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from pscsync import clock
from tests.dashboards.seed import NOW, seed_firm
from tests.helpers import ROOT

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "docs" / "screenshots"
PAGES = {
    "dashboards-overview": "/dashboards/",
    "dashboards-quote-to-project": "/dashboards/quote-to-project/",
    "dashboards-project-to-bill": "/dashboards/project-to-bill/",
    "dashboards-bill-to-cash": "/dashboards/bill-to-cash/",
    "dashboards-exceptions": "/dashboards/exceptions/",
    "dashboards-health": "/dashboards/health/",
    "dashboards-demand": "/dashboards/demand/",
    "dashboards-leaders": "/dashboards/leaders/?from=2026-09-01&to=2026-10-31",
    "dashboards-items": "/dashboards/items/?flow=quote-to-project&measure=breached",
    "dashboards-settings": "/dashboards/settings/",
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM) and not os.getenv("PSCSYNC_REQUIRE_SERVICES"),
        reason="Debian's chromium is not installed (make test installs it)",
    ),
]


@contextlib.contextmanager
def _signed_in(live_server, admin, monkeypatch) -> Iterator[Any]:
    """The seeded firm at NOW, an admin signed in in headless Chromium: yields the page."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import _sign_in

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    monkeypatch.setattr(clock, "now", lambda: NOW)
    seed_firm()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        _sign_in(page, live_server, admin, start="/login/")  # password and the second factor
        page.wait_for_url("**/dashboards/**")
        yield page
        browser.close()
    assert errors == []


def test_every_dashboard_page_renders_its_charts(live_server, admin, monkeypatch) -> None:
    period = f"from={(NOW - dt.timedelta(days=29)).date()}&to={NOW.date()}"
    with _signed_in(live_server, admin, monkeypatch) as page:
        drawn = 0
        for name, path in PAGES.items():
            sep = "&" if "?" in path else "?"
            page.goto(f"{live_server.url}{path}" + ("" if "from=" in path else f"{sep}{period}"))
            assert "Two-factor" not in page.title() and page.locator("main h1").count() == 1, name
            if page.locator("[data-figure]").count():
                page.wait_for_selector("[data-figure] .main-svg", timeout=15000)
                drawn += 1
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        assert drawn >= 4, "the flow pages draw their charts"


def test_the_overview_in_the_firms_and_the_uk_currency(live_server, admin, monkeypatch) -> None:
    """The firm in USD, the UK entity in GBP, and the firm with no GBP rate: amber, named amounts."""
    from dashboards.models import FxRate

    period = f"from={(NOW - dt.timedelta(days=29)).date()}&to={NOW.date()}"
    with _signed_in(live_server, admin, monkeypatch) as page:
        page.goto(f"{live_server.url}/dashboards/?{period}")
        assert "not converted" not in page.content()
        page.screenshot(path=str(SHOTS / "dashboards-overview-firm-usd.png"), full_page=True)
        page.goto(f"{live_server.url}/dashboards/?{period}&legal_entity=uk")
        assert "GBP" in page.locator(".tiles").first.inner_text() and "not converted" not in page.content()
        page.screenshot(path=str(SHOTS / "dashboards-overview-uk-gbp.png"), full_page=True)
        FxRate.objects.filter(currency="GBP").delete()
        page.goto(f"{live_server.url}/dashboards/?{period}")
        assert page.locator(".tile.incomplete").count() >= 1 and "not converted" in page.content()
        page.screenshot(path=str(SHOTS / "dashboards-overview-no-gbp-rate.png"), full_page=True)
