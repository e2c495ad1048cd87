"""The workbench's journeys in a real headless Chromium, on the real flows and sandboxes.

Screenshots land in docs/screenshots/ so a person can look at what was built."""

from __future__ import annotations

import os
import shutil

import pytest

from pscsync.models import Handoff
from tests.flows.conftest import run, trigger, won_deal
from tests.helpers import ROOT

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "docs" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM) and not os.getenv("PSCSYNC_REQUIRE_SERVICES"),
        reason="Debian's chromium is not installed (make test installs it)",
    ),
]


@pytest.fixture
def page(live_server, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    # No worker here: the test runs handoffs and jobs itself, between browser steps.
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("remediation.services._bulk_enqueue", lambda job_id: None)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        context = browser.new_context(viewport={"width": 1360, "height": 860})
        yield context.new_page()
        browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _login(page, live_server, user) -> None:
    """Password, then the authenticator's code where the role requires a second factor."""
    from tests.twofactor import totp_code, totp_device_for

    device = totp_device_for(user)
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", "a-long-test-password")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if "/two-factor/verify/" in page.url:
        page.fill("#id_token", totp_code(device))
        page.click("main button.primary")
        page.wait_for_load_state()


def test_an_operator_fixes_a_missing_tax_profile_at_the_source_and_resubmits(page, live_server, firm, operator) -> None:
    deal = won_deal(firm, key="91", account={"Tax_Profile__c": None})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION

    _login(page, live_server, operator)
    page.goto(f"{live_server.url}/workbench/")
    group = page.locator("tr.group").first
    assert "has no Tax Profile" in group.inner_text() and "$120,000.00" in group.inner_text()
    group.locator("summary", has_text="Show the").click()
    page.wait_for_selector(f"text={deal['opportunity']}")
    _shot(page, "workbench-inbox")

    # The fix belongs at the source: set the tax profile on the account in Salesforce.
    sf = firm.salesforce
    sf.send("PATCH", sf.api_path(f"sobjects/Account/{deal['account']}"), json={"Tax_Profile__c": "US-STANDARD"})

    page.click(f"text={deal['opportunity']}")
    page.wait_for_url(f"**/workbench/handoffs/{handoff.pk}/")
    assert "Open " + deal["account"] in page.locator(".fixes").inner_text()  # a link to the source record
    _shot(page, "workbench-handoff")
    page.click("text=Edit and resubmit")
    page.wait_for_url("**/resubmit/")
    page.check("input[name=mode][value=remap]")
    page.fill("textarea[name=reason]", "Tax profile set on the account in Salesforce")
    page.click("button:has-text('Review')")
    page.wait_for_selector("text=Confirm and resubmit")
    _shot(page, "workbench-resubmit-review")
    page.click("text=Confirm and resubmit")
    page.wait_for_url(f"**/workbench/handoffs/{handoff.pk}/")
    assert "Resubmitted" in page.locator(".flash").inner_text()

    handoff = run(handoff)  # the worker's turn
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    projects = firm.sandboxes["salesforce"].journal()["creates_by_key"]
    assert projects.get(f"pse__Proj__c/P-{deal['opportunity']}") == 1  # the project is in the PSA

    page.reload()
    assert "Succeeded" in page.locator("h1").inner_text()
    _shot(page, "workbench-handoff-succeeded")
    page.goto(f"{live_server.url}/workbench/")
    assert "Nothing needs a person" in page.locator("#inbox-groups").inner_text()


def test_an_operator_bulk_retries_a_group_after_an_erp_outage_and_watches_progress(
    page, live_server, firm, operator
) -> None:
    firm.sandboxes["netsuite"].fault(error_status=503, match="/record/v1/customer", count=10000)
    handoffs = []
    for n in range(3):
        deal = won_deal(firm, key=f"9{n + 2}")
        handoff = trigger(firm, "quote-to-project", deal["opportunity"])
        # The outage outlasts the retry budget: skip the first waits, the last try dead-letters it.
        Handoff.objects.filter(pk=handoff.pk).update(attempt_count=7)
        handoffs.append(run(handoff))
    assert {h.status for h in handoffs} == {Handoff.Status.NEEDS_ATTENTION}
    firm.sandboxes["netsuite"].clear_faults()  # the ERP is back

    _login(page, live_server, operator)
    page.goto(f"{live_server.url}/workbench/?flow=quote-to-project")
    group = page.locator("tr.group").first
    assert "Create the customer in the ERP" in group.inner_text() and "3" in group.locator("td.num").first.inner_text()
    group.locator("input[name=cause]").check()
    page.select_option("select[name=kind]", "retry")
    page.fill("input[name=reason]", "NetSuite outage over")
    _shot(page, "workbench-bulk-select")
    page.click("text=Start bulk job")
    page.wait_for_url("**/workbench/jobs/*/")
    assert "Queued" in page.locator(".job-status").inner_text()
    assert "Place in the queue: 1" in page.locator("#job-progress").inner_text()
    _shot(page, "workbench-bulk-queued")

    from remediation.models import BulkJob
    from remediation.services import bulk_job_run

    job = BulkJob.objects.get()
    bulk_job_run(job.pk)  # the worker's turn; the page polls and shows the outcome without a reload
    from playwright.sync_api import expect

    # Sent back is not done: the job waits for the handoffs' real end states.
    expect(page.locator(".job-count")).to_contain_text("3 still running or retrying", timeout=15000)
    for handoff in handoffs:
        assert run(handoff).status == Handoff.Status.SUCCEEDED
    expect(page.locator(".job-count")).to_contain_text("3 succeeded", timeout=15000)
    assert "Finished" in page.locator(".job-status").inner_text()
    page.reload()
    _shot(page, "workbench-bulk-done")
    page.goto(f"{live_server.url}/workbench/")
    assert "Nothing needs a person" in page.locator("#inbox-groups").inner_text()


def test_a_viewer_reads_but_cannot_act(page, live_server, firm, viewer) -> None:
    deal = won_deal(firm, key="99", account={"Tax_Profile__c": None})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    _login(page, live_server, viewer)
    assert "Workbench" not in page.locator("nav[aria-label=Main]").inner_text()
    response = page.goto(f"{live_server.url}/workbench/")
    assert response.status == 403
    page.goto(f"{live_server.url}/workbench/handoffs/{handoff.pk}/")
    assert "has no Tax Profile" in page.locator(".callout").inner_text()
    assert page.locator("text=Edit and resubmit").count() == 0
    assert page.locator("button:has-text('Resolve')").count() == 0
    _shot(page, "workbench-viewer-handoff")
    assert page.goto(f"{live_server.url}/workbench/handoffs/{handoff.pk}/resubmit/").status == 403
