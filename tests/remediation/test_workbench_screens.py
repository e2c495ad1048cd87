"""Every workbench page at 1360 x 900 in headless Chromium, on the real flows and sandboxes, with
a screenshot of each in docs/screenshots/workbench-tour-*.png for a person to look at. The page
must fit its width: nothing scrolls sideways but a table inside its own container."""

from __future__ import annotations

import datetime as dt

import pytest

from pscsync import clock
from pscsync.models import Handoff
from remediation.models import BulkJob, ExceptionCause
from remediation.services import bulk_job_create, bulk_job_run, handoff_resolve, runbook_save
from tests.flows.conftest import run, trigger, won_deal
from tests.flows.test_project_to_bill import certinia_billing_event, provisioned
from tests.remediation.test_workbench_browser import SHOTS, _login
from tests.remediation.test_workbench_browser import page as page  # the fixture

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTH = 1360


def _shot(browser_page, name: str) -> None:
    # Nothing may be wider than the window: a sideways scroll hides the status and owner columns.
    width = browser_page.evaluate("document.documentElement.scrollWidth")
    assert width <= WIDTH, f"{name}: the page is {width} px wide in a {WIDTH} px window"
    browser_page.screenshot(path=str(SHOTS / f"workbench-tour-{name}.png"), full_page=True)


def _firm_with_trouble(firm) -> dict[str, Handoff]:
    """What an ops morning looks like: missing tax profiles, an ERP outage that outlasted the
    retries, a service line nobody mapped, and an invoice written before the PSA refused."""
    made: dict[str, Handoff] = {}
    for n in range(3):
        deal = won_deal(firm, key=f"t{n}", account={"Tax_Profile__c": None}, account_name=f"Initech Holdings {n}")
        made[f"tax{n}"] = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    firm.sandboxes["netsuite"].fault(error_status=503, match="/record/v1/customer", count=10000)
    for n in range(2):
        handoff = trigger(firm, "quote-to-project", won_deal(firm, key=f"o{n}")["opportunity"])
        Handoff.objects.filter(pk=handoff.pk).update(attempt_count=7)
        made[f"outage{n}"] = run(handoff)
    firm.sandboxes["netsuite"].clear_faults()
    deal = won_deal(firm, key="m1", Service_Line__c="Quantum Readiness")
    made["mapping"] = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    deal = provisioned(firm, "us", "b1")
    event = certinia_billing_event(firm, deal["opportunity"])
    firm.sandboxes["salesforce"].fault(error_status=400, match="sobjects/pse__Billing_Event__c/", count=1)
    made["bill"] = run(trigger(firm, "project-to-bill", event, slug="certinia-us"))
    for name, handoff in made.items():
        assert handoff.status == Handoff.Status.NEEDS_ATTENTION, (name, handoff.last_error_message)
    return made


def test_every_workbench_page_fits_1360_pixels(page, live_server, firm, operator, admin) -> None:
    made = _firm_with_trouble(firm)
    tax_cause = ExceptionCause.objects.get(items__handoff=made["tax0"])
    runbook_save(
        actor=admin,
        cause=tax_cause,
        fields={
            "runbook_meaning": "The customer's account in Salesforce has no tax profile, so the ERP cannot "
            "create the customer with a tax code.",
            "runbook_cause": "Accounts created by sales without finance review.",
            "runbook_action": "Set Tax Profile on the account in Salesforce (finance knows which), then "
            "resubmit with “Re-map from the source”.",
            "runbook_link": "https://wiki.example.com/finance/tax-profiles",
        },
    )
    page.set_viewport_size({"width": WIDTH, "height": 900})
    _login(page, live_server, operator)

    page.goto(f"{live_server.url}/workbench/")
    assert page.locator("tr.group").count() == 4  # tax, outage, mapping, invoice
    _shot(page, "1-inbox")

    tax_row = page.locator("tr.group", has_text="has no Tax Profile")
    tax_row.locator("summary", has_text="Show the").click()
    page.wait_for_selector("text=Initech Holdings 2")
    _shot(page, "2-group-expanded")

    page.goto(f"{live_server.url}/workbench/causes/{tax_cause.pk}/")
    assert "Set Tax Profile on the account" in page.locator(".runbook").inner_text()
    _shot(page, "3-cause-runbook")

    page.goto(f"{live_server.url}/workbench/handoffs/{made['tax0'].pk}/")
    _shot(page, "4-handoff")

    page.click("text=Edit and resubmit")
    page.check("input[name=mode][value=edit]")
    page.select_option("select[data-path='account.tax_profile']", "US-EXEMPT")
    page.fill("textarea[name=reason]", "Non-profit: exempt per the signed certificate")
    page.click("button:has-text('Review')")
    page.wait_for_selector("table.diff")
    assert "US-EXEMPT" in page.locator("table.diff").inner_text()
    _shot(page, "5-resubmit-diff")

    page.goto(f"{live_server.url}/workbench/handoffs/{made['mapping'].pk}/")
    _shot(page, "6-handoff-mapping-error")

    page.goto(f"{live_server.url}/workbench/handoffs/{made['bill'].pk}/")
    assert "Delete the invoice from the ERP" in page.locator("#compensation").inner_text()
    _shot(page, "7-handoff-compensate")

    handoff_resolve(actor=operator, handoff=made["outage1"], reason="Customer created by hand in NetSuite")
    job = bulk_job_create(
        actor=operator,
        kind=BulkJob.Kind.RETRY,
        handoff_ids=[made["outage0"].pk, made["outage1"].pk, made["tax1"].pk],
        reason="NetSuite outage over",
    )
    page.goto(f"{live_server.url}/workbench/jobs/{job.pk}/")
    _shot(page, "8-bulk-queued")
    bulk_job_run(job.pk)
    page.wait_for_selector(
        "text=/Finished|Sent back; waiting/"
    )  # every handoff sent back (honest outcome: not yet run)
    _shot(page, "9-bulk-done")

    now = clock.now()
    window = {"start": (now - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"), "end": now.strftime("%Y-%m-%dT%H:%M")}
    page.goto(f"{live_server.url}/workbench/replay/?connection=salesforce&start={window['start']}&end={window['end']}")
    assert page.locator(".preview").count() == 1
    _shot(page, "10-replay-preview")
