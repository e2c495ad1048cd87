"""Every dashboard page in headless Chromium on the seeded firm; screenshots in docs/screenshots/."""

from __future__ import annotations

import datetime as dt
import os
import shutil

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
    "dashboards-integration": "/dashboards/integration/",
    "dashboards-demand": "/dashboards/demand/",
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


def test_every_dashboard_page_renders_its_charts(live_server, admin, monkeypatch) -> None:  # noqa: ANN001
    from playwright.sync_api import sync_playwright

    from tests.test_browser import _sign_in

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    monkeypatch.setattr(clock, "now", lambda: NOW)
    seed_firm()
    SHOTS.mkdir(parents=True, exist_ok=True)
    period = f"from={(NOW - dt.timedelta(days=29)).date()}&to={NOW.date()}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        _sign_in(page, live_server, admin, start="/login/")  # password and the second factor
        page.wait_for_url("**/dashboards/**")
        drawn = 0
        for name, path in PAGES.items():
            sep = "&" if "?" in path else "?"
            page.goto(f"{live_server.url}{path}{sep}{period}")
            assert "Two-factor" not in page.title() and page.locator("main h1").count() == 1, name
            if page.locator("[data-figure]").count():
                page.wait_for_selector("[data-figure] .main-svg", timeout=15000)
                drawn += 1
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        assert drawn >= 4, "the flow pages draw their charts"
        browser.close()
    assert errors == []
