"""A browser journey per role (Playwright + Chromium at 1360 px): tour every page reachable from
the menu and from those pages, and every mapping's impact panel; fail on a page wider than the
window, any 4xx/5xx or console error, and text a person should never read (a timedelta's repr,
a dict's repr, an ISO timestamp with microseconds, a bare step code). Screenshots of each page
land in docs/screenshots/journey-<role>-<n>.png."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from pscsync.glossary import STEP_NAMES
from tests.connectors.conftest import sandbox_factory  # noqa: F401
from tests.flows.conftest import firm, run, trigger, won_deal  # noqa: F401
from tests.test_browser import ROOT, page  # noqa: F401
from tests.twofactor import totp_code, totp_device_for

pytestmark = [pytest.mark.django_db(transaction=True)]

RAW = re.compile(
    r"\d+ days?, \d+:\d\d:\d\d|\{'|\.\d{6}\+00:00|\b(" + "|".join(k for k in STEP_NAMES if "_" in k) + r")\b"
)
# Not pages: downloads, the API, signing out, and actions.
SKIP = re.compile(r"\.(csv|json)(\?|$)|[?&](csv|format)=|/api/|/logout|/export|/admin/|/webhooks/|#")
MAX_PAGES = 30
SHOTS = ROOT / "docs" / "screenshots"


def _sign_in(browser_page, live_server, user) -> None:
    totp_device_for(user)  # enrolled beforehand, as a person's phone would be: the tour is not the set-up page
    browser_page.goto(f"{live_server.url}/")
    browser_page.fill("#id_username", user.username)
    browser_page.fill("#id_password", "a-long-test-password")
    browser_page.click("button[type=submit]")
    browser_page.wait_for_load_state()
    if "/two-factor/verify/" in browser_page.url:
        browser_page.fill("#id_token", totp_code(totp_device_for(user)))
        browser_page.click("main button.primary")
        browser_page.wait_for_load_state()


def _tour(browser_page, live_server, role: str) -> list[str]:
    problems: list[str] = []
    origin = urlparse(live_server.url).netloc
    browser_page.on(
        "response",
        lambda r: (
            problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and urlparse(r.url).netloc == origin and not r.url.endswith("favicon.ico")
            else None
        ),
    )
    browser_page.on(
        "console",
        lambda m: problems.append(f"console on {browser_page.url}: {m.text}") if m.type == "error" else None,
    )
    browser_page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    seen: set[str] = set()
    queue = [browser_page.url]
    n = 0
    while queue and n < MAX_PAGES:
        url = queue.pop(0)
        path = urlparse(url).path + (f"?{urlparse(url).query}" if urlparse(url).query else "")
        if path in seen:
            continue
        seen.add(path)
        browser_page.goto(url)
        browser_page.wait_for_load_state("networkidle")
        n += 1
        width = browser_page.evaluate("document.documentElement.scrollWidth")
        if width > 1360:
            problems.append(f"{path} is {width} px wide")
        text = browser_page.evaluate("document.body.innerText")
        for match in RAW.finditer(text):
            around = text[max(0, match.start() - 40) : match.end() + 40].replace("\n", " ")
            problems.append(f"{path} shows a raw value: {match.group(0)!r} in …{around}…")
        browser_page.screenshot(path=str(SHOTS / f"journey-{role}-{n:02d}.png"), full_page=False)
        for href in browser_page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            parsed = urlparse(href)
            if (
                parsed.netloc == origin
                and not SKIP.search(href)
                and parsed.path not in {urlparse(u).path for u in queue}
            ):
                queue.append(href.split("#")[0])
    return problems


# The leader is the viewer role: dashboards and handoffs, read only.
ROLES = {"leader": "viewer", "operator": "operator", "admin": "admin"}


@pytest.mark.parametrize("role", list(ROLES))
def test_a_journey_per_role(page, live_server, firm, request, role) -> None:  # noqa: F811
    # A firm with work to do: a deal stopped by a missing tax profile, one by an unknown service line.
    run(trigger(firm, "quote-to-project", won_deal(firm, key="J1", account={"Tax_Profile__c": None})["opportunity"]))
    run(trigger(firm, "quote-to-project", won_deal(firm, key="J2", Service_Line__c="Cyber Security")["opportunity"]))
    user = request.getfixturevalue(ROLES[role])
    _sign_in(page, live_server, user)
    problems = _tour(page, live_server, role)
    if role == "admin":
        from pscsync.models import Mapping

        for mapping in Mapping.objects.all():
            impact = f"/mappings/{mapping.pk}/impact/"
            with page.expect_response(lambda r, impact=impact: r.url.endswith(impact)) as answer:
                page.goto(f"{live_server.url}/mappings/{mapping.pk}/")
            if answer.value.status != 200:
                problems.append(f"mapping {mapping.pk}: the impact panel answered {answer.value.status}")
            elif "Checking the handoffs" in page.locator("#publish").inner_text():
                page.wait_for_timeout(300)
                if "Checking the handoffs" in page.locator("#publish").inner_text():
                    problems.append(f"mapping {mapping.pk}: the impact panel never answered")
    assert problems == [], "\n".join(problems)


def test_a_bar_that_says_click_opens_its_handoffs(page, live_server, firm, viewer) -> None:  # noqa: F811
    # Two deals needing attention, started on 20 Nov 2026 (the trigger's time): one bar of the age chart.
    run(trigger(firm, "quote-to-project", won_deal(firm, key="C1", account={"Tax_Profile__c": None})["opportunity"]))
    run(trigger(firm, "quote-to-project", won_deal(firm, key="C2", Service_Line__c="Cyber Security")["opportunity"]))
    _sign_in(page, live_server, viewer)
    page.goto(f"{live_server.url}/dashboards/")
    chart = page.locator("#chart-age")
    chart.scroll_into_view_if_needed()
    assert "Click a bar" in page.locator("figure.chart", has=chart).inner_text()
    bars = chart.locator(".bars .point")
    heights = [bars.nth(i).bounding_box()["height"] for i in range(bars.count())]
    tallest = bars.nth(heights.index(max(heights))).bounding_box()
    page.mouse.click(tallest["x"] + tallest["width"] / 2, tallest["y"] + tallest["height"] / 2)
    page.wait_for_url("**/handoffs/?status=needs_attention&age_min=*")
    rows = page.locator("#handoff-table table.grid tbody tr")
    assert rows.count() == 2  # the bar's two handoffs, no other
    assert "days ago" in page.locator("main").inner_text()  # the list says which ages it holds
