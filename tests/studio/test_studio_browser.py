"""In headless Chromium: an admin sees 12 quote-to-project handoffs failing on an unknown service
line, adds it to the service-line map, sees the impact preview say 12 would pass, publishes,
re-runs them, and they succeed in the sandboxes. Screenshots go to docs/screenshots/."""

from __future__ import annotations

import os
import shutil

import pytest

from pscsync.models import Handoff
from pscsync.runner import handoff_run
from tests.flows.conftest import run, trigger, won_deal
from tests.helpers import ROOT
from tests.test_browser import CHROMIUM, _sign_in, expect

SHOTS = ROOT / "docs" / "screenshots"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not shutil.which(CHROMIUM) and not os.getenv("PSCSYNC_REQUIRE_SERVICES"),
        reason="Debian's chromium is not installed (make test installs it)",
    ),
]


def _shot(browser_page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser_page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_an_admin_fixes_an_unknown_service_line_and_twelve_handoffs_go_through(page, live_server, firm, admin) -> None:
    deals = [won_deal(firm, entity="us", key=f"S{n}", Service_Line__c="Cyber Security") for n in range(12)]
    for deal in deals:
        handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
        assert handoff.last_error_class == "mapping" and "Cyber Security" in handoff.last_error_message

    _sign_in(page, live_server, admin, start="/mappings/")
    page.wait_for_url("**/mappings/")
    _shot(page, "mappings-list")
    page.locator("section", has_text="NetSuite (US)").locator("a", has_text="Contract").click()
    page.wait_for_url("**/mappings/*/")
    expect(page.locator("#impact")).to_contain_text("0 of 12")  # failing because of this mapping, now
    _shot(page, "mapping-failing")
    page.click("button:has-text('Edit in a draft')")

    # Add the new service line to the value map, in the draft.
    value_map = page.locator("details.value-map", has_text="service_line")
    value_map.locator("summary").click()
    value_map.locator("input[aria-label='service_line new key']").first.fill("Cyber Security")
    value_map.locator("input[aria-label='service_line new value']").first.fill("D50 Cyber Security")
    value_map.locator("button:has-text('Save service_line')").click()
    expect(page.locator(".flash")).to_contain_text("Value map 'service_line' saved in the draft")
    expect(page.locator("#impact")).to_contain_text("12 of 12")
    expect(page.locator(".changes")).to_contain_text("“Cyber Security” added to the value map service_line")
    _shot(page, "mapping-draft-impact")

    page.fill("#comment", "Added the Cyber Security service line (department D50)")
    page.click("button:has-text('Publish as v2')")
    expect(page.locator(".flash")).to_contain_text("Published v2")
    expect(page.locator("#impact")).to_contain_text("12 of 12")
    page.click("button:has-text('Re-run these 12 handoffs with version 2')")
    expect(page.locator(".flash")).to_contain_text("12 handoffs sent back to run")
    page.wait_for_url("**/workbench/jobs/*/")
    _shot(page, "mapping-published-rerun")

    # The worker's part, done here: the bulk job resubmits; each resumes at the step that failed.
    from remediation.models import BulkJob
    from remediation.services import bulk_job_run

    bulk_job_run(BulkJob.objects.get().pk)
    for handoff in Handoff.objects.filter(status=Handoff.Status.PENDING):
        handoff_run(handoff_id=handoff.pk, worker="test-worker")
    assert Handoff.objects.filter(flow="quote-to-project", status=Handoff.Status.SUCCEEDED).count() == 12
    netsuite = firm.connector("netsuite-us")
    for deal in deals:
        order = netsuite.lookup(entity="sales_order", key=f"SO-{deal['opportunity']}").response
        assert order["custbody_department"] == "D50 Cyber Security"
    creates = firm.sandboxes["netsuite"].journal()["creates_by_key"]
    assert all(v == 1 for v in creates.values())
    # The handoffs record the version they used.
    used = Handoff.objects.filter(flow="quote-to-project").first().steps.get(name="upsert_contract").mapping_version
    assert used.number == 2
