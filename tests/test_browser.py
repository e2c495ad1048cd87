"""In a real headless Chromium: an operator signs in, finds a failed handoff and reads why.

Screenshots of every page land in var/screenshots/ so a person can look at what was built.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pscsync.intake import event_receive
from pscsync.runner import handoff_run
from tests.helpers import ROOT, change_body

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "var" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # make test installs Debian's chromium; in CI a missing browser is a failure, not a skip.
    pytest.mark.skipif(
        not shutil.which(CHROMIUM) and not os.getenv("PSCSYNC_REQUIRE_SERVICES"),
        reason="Debian's chromium is not installed (make test installs it)",
    ),
]


@pytest.fixture
def page(live_server, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = browser.new_context(viewport={"width": 1360, "height": 860})
        yield context.new_page()
        browser.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _shot(page, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _sign_in(page, live_server, user, *, start: str = "/") -> None:
    """Password, then the code from the user's authenticator (enrolled beforehand, as a person's
    phone would be), the way every admin and operator signs in."""
    from tests.twofactor import totp_code, totp_device_for

    device = totp_device_for(user)
    page.goto(f"{live_server.url}{start}")
    page.fill("#id_username", user.username)
    page.fill("#id_password", "a-long-test-password")
    page.click("button[type=submit]")
    page.wait_for_url("**/account/two-factor/verify/**")
    page.fill("#id_token", totp_code(device))
    page.click("main button.primary")


def _seed(connection, echo) -> None:
    from connectors.registry import connector_for

    echo.fault(mode="status", status=422, match="INV-OPP-2002", count=1)
    for key in ("OPP-2001", "OPP-2002"):
        body = change_body(key)
        [change] = connector_for(connection).parse_webhook(event_id=f"evt-{key}", body=body)
        handoff = event_receive(connection=connection, change=change, headers={}, raw_body=body.decode()).handoff
        handoff_run(handoff_id=handoff.pk, worker="seed")


def test_an_operator_finds_a_failed_handoff_and_reads_what_the_target_said(
    page,
    live_server,
    operator,
    echo_connection,
    echo,
    monkeypatch,
) -> None:
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)
    _seed(echo_connection, echo)
    blocked: list[str] = []  # the CSP must not block anything the pages (and htmx) do
    page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)

    page.goto(f"{live_server.url}/")
    _shot(page, "login")
    _sign_in(page, live_server, operator)
    page.wait_for_url("**/workbench/")  # operators land on the workbench
    page.goto(f"{live_server.url}/dashboards/")
    assert page.locator(".tile", has_text="Needs attention").locator(".figure").inner_text() == "1"
    _shot(page, "health")

    page.click('.tile:has-text("Needs attention")')
    page.wait_for_url("**/handoffs/?status=needs_attention")
    rows = page.locator("table.grid tbody tr")
    assert rows.count() == 1 and "OPP-2002" in rows.first.inner_text()
    _shot(page, "handoffs-needs-attention")

    # Changing the filter swaps the table in place and keeps the filter in the address.
    page.select_option("select[name=status]", "succeeded")
    page.wait_for_url("**status=succeeded**")
    # Locator waits, not wait_for_function: the page's CSP forbids the eval that the latter uses.
    expect(page.locator("#handoff-table")).to_contain_text("OPP-2001")
    assert "OPP-2002" not in page.locator("#handoff-table").inner_text()

    page.select_option("select[name=status]", "needs_attention")
    expect(page.locator("#handoff-table")).to_contain_text("OPP-2002")
    page.click("text=OPP-2002")
    page.wait_for_url("**/handoffs/*/")
    assert "Needs attention" in page.locator("h1").inner_text()
    assert "the target rejected the request (422): injected" in page.locator(".callout").inner_text()
    failed_step = page.locator(".step-failed")
    # The step by its name for a person (pscsync.glossary), never its code.
    text = failed_step.inner_text()
    assert "Create the invoice in the ERP" in text and "upsert_invoice" not in text
    assert "INV-OPP-2002" in failed_step.locator("pre").first.inner_text()  # what we tried to send
    _shot(page, "handoff-detail")

    page.click("text=Workbench")
    page.wait_for_url("**/workbench/")
    assert "rejected the request (422)" in page.locator("table.grid").inner_text()
    _shot(page, "workbench")
    assert blocked == []
    assert os.path.getsize(SHOTS / "handoff-detail.png") > 10_000


def test_an_admin_tests_a_connection_from_its_page(page, live_server, admin, echo_connection) -> None:
    _sign_in(page, live_server, admin, start="/login/")
    page.wait_for_url("**/dashboards/")
    page.click("text=Connections")
    page.click("text=Echo US")
    page.wait_for_url("**/connections/*/")
    assert "Credentials are set" in page.content()
    page.click("button:has-text('Test connection')")
    page.wait_for_selector(".check-ok")
    assert "Connected" in page.locator("#check-result").inner_text()
    _shot(page, "connection-edit")


def test_an_operator_sets_up_two_factor_at_first_sign_in(page, live_server, operator, admin) -> None:
    """No second factor yet: the password leads to the set-up page, never to the app."""
    import base64

    from django_otp.oath import totp

    csp_violations: list[str] = []
    page.on("console", lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", operator.username)
    page.fill("#id_password", "a-long-test-password")
    page.click("button[type=submit]")
    page.wait_for_url("**/account/two-factor/**")
    assert page.locator(".qr svg").count() == 1
    _shot(page, "two-factor-setup")
    page.goto(f"{live_server.url}/dashboards/health/")  # still only the set-up page
    page.wait_for_url("**/account/two-factor/**")

    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    page.fill("#id_token", f"{totp(key):06d}")
    page.click("main button.primary")
    codes = page.locator("#recovery-codes li")
    assert codes.count() == 10
    _shot(page, "two-factor-recovery-codes")
    page.click("text=I have saved them")
    page.wait_for_url("**/dashboards/health/")
    assert csp_violations == []

    # An admin sees the operator's open session and ends it.
    admin_page = page.context.browser.new_context(viewport={"width": 1360, "height": 860}).new_page()
    _sign_in(admin_page, live_server, admin, start="/account/users/")
    admin_page.wait_for_url("**/account/users/")
    row = admin_page.locator("tr", has_text=operator.username)
    assert "on" in row.inner_text()
    _shot(admin_page, "users-and-sessions")
    row.locator("button:has-text('End sessions')").click()
    admin_page.wait_for_selector(".flash")
    page.goto(f"{live_server.url}/dashboards/health/")
    page.wait_for_url("**/login/**")
