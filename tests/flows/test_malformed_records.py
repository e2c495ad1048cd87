"""A vendor that sends a record of another shape than its connector declared (connectors/schema.py):
the handoff stops with a readable reason and a person's attention, nothing is written downstream.

Each sandbox is told over its control API to malform its answers ("malform" fault: every record
holding the field gets another value, or loses it), as a vendor would after a change on its side.
"""

from __future__ import annotations

import httpx
import pytest

from pscsync.models import Attempt, Handoff
from tests.flows.conftest import run, trigger, won_deal
from tests.flows.test_german_entity import firm_de  # noqa: F401
from tests.flows.test_german_entity import kantata_invoice as german_kantata_invoice
from tests.flows.test_german_entity import provisioned as german_provisioned
from tests.flows.test_project_to_bill import certinia_billing_event, kantata_invoice, provisioned

pytestmark = pytest.mark.django_db

# Requests that change nothing: tokens, and queries sent as POST (SuiteQL, SOQL is a GET).
_READS = ("token", "/query", "/_sandbox")


def writes(sandbox) -> int:
    """How many requests to the sandbox could have written something (by its journal)."""
    return sum(
        1
        for e in sandbox.journal()["entries"]
        if e["method"] in ("POST", "PATCH", "PUT", "DELETE") and not any(r in e["path"] for r in _READS)
    )


def stopped_for_a_person(handoff: Handoff) -> None:
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION, handoff.last_error_message
    assert handoff.last_error_class == "validation"
    # A permanent, classified failure of the step: no retry spent, no internal error.
    assert handoff.attempt_count == 0
    last = Attempt.objects.filter(step__handoff=handoff).order_by("-pk").first()
    assert last is not None and last.outcome == Attempt.Outcome.VALIDATION


def test_salesforce_sending_an_opportunity_with_a_text_amount_stops_quote_to_project(firm) -> None:
    deal = won_deal(firm, entity="us", key="m1")
    firm.sandboxes["salesforce"].fault(match="/query", malform={"field": "Amount", "value": "lots"})
    erp_before, crm_before = writes(firm.sandboxes["netsuite"]), writes(firm.sandboxes["salesforce"])

    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))

    stopped_for_a_person(handoff)
    assert handoff.failure_reason == (
        f"Salesforce sent an opportunity ({deal['opportunity']}) we cannot read: Amount should be a number, "
        "got text 'lots'"
    )
    # Neither the ERP nor the PSA (Certinia lives in the same org) got anything.
    assert writes(firm.sandboxes["netsuite"]) == erp_before
    assert writes(firm.sandboxes["salesforce"]) == crm_before


def test_certinia_sending_a_billing_item_with_a_text_amount_stops_project_to_bill(firm) -> None:
    deal = provisioned(firm, "us", "m2")
    event = certinia_billing_event(firm, deal["opportunity"])
    firm.sandboxes["salesforce"].fault(match="/query", malform={"field": "pse__Amount__c", "value": "twelve"})
    erp_before = writes(firm.sandboxes["netsuite"])

    handoff = run(trigger(firm, "project-to-bill", event, slug="certinia-us"))

    stopped_for_a_person(handoff)
    assert handoff.failure_reason.startswith("Salesforce sent a billing event item (")
    assert handoff.failure_reason.endswith("we cannot read: pse__Amount__c should be a number, got text 'twelve'")
    assert writes(firm.sandboxes["netsuite"]) == erp_before  # no invoice was raised


def test_kantata_sending_time_without_a_workspace_stops_project_to_bill(firm) -> None:
    deal = provisioned(firm, "uk", "m3", Billing_Model__c="Time and Materials", Service_Line__c="Advisory")
    invoice_id = kantata_invoice(firm, deal["opportunity"])
    firm.sandboxes["kantata"].fault(match="/invoices", malform={"field": "workspace_id", "drop": True})
    erp_before = writes(firm.sandboxes["businesscentral"])

    handoff = run(trigger(firm, "project-to-bill", f"kantata-invoice:{invoice_id}", slug="kantata-uk"))

    stopped_for_a_person(handoff)
    assert handoff.failure_reason == f"Kantata sent an invoice ({invoice_id}) we cannot read: workspace_id is missing"
    assert writes(firm.sandboxes["businesscentral"]) == erp_before


def test_netsuite_sending_an_invoice_with_a_text_balance_stops_bill_to_cash(firm) -> None:
    deal = provisioned(firm, "us", "m4")
    event = certinia_billing_event(firm, deal["opportunity"])
    assert run(trigger(firm, "project-to-bill", event, slug="certinia-us")).status == Handoff.Status.SUCCEEDED
    invoice = firm.connector("netsuite-us").lookup(entity="invoice", key=f"I-{event}").external_id
    firm.sandboxes["netsuite"].fault(match="/invoice/", malform={"field": "amountRemaining", "value": "none"})
    crm_before = writes(firm.sandboxes["salesforce"])

    handoff = run(trigger(firm, "bill-to-cash", f"I-{event}", slug="netsuite-us"))

    stopped_for_a_person(handoff)
    assert handoff.failure_reason == (
        f"NetSuite sent an invoice ({invoice}) we cannot read: amountRemaining should be a number, got text 'none'"
    )
    # Neither the opportunity nor the Certinia project was marked.
    assert writes(firm.sandboxes["salesforce"]) == crm_before


def test_business_central_sending_an_invoice_with_a_text_total_stops_bill_to_cash(firm) -> None:
    deal = provisioned(firm, "uk", "m5", Billing_Model__c="Time and Materials", Service_Line__c="Advisory")
    invoice_id = kantata_invoice(firm, deal["opportunity"])
    billed = run(trigger(firm, "project-to-bill", f"kantata-invoice:{invoice_id}", slug="kantata-uk"))
    assert billed.status == Handoff.Status.SUCCEEDED, billed.last_error_message
    draft = firm.connector("businesscentral-uk").lookup(entity="salesInvoices", key=f"I-K{invoice_id}").external_id
    firm.sandboxes["businesscentral"].fault(
        match="salesInvoices", malform={"field": "totalAmountIncludingTax", "value": "lots"}
    )
    crm_before, psa_before = writes(firm.sandboxes["salesforce"]), writes(firm.sandboxes["kantata"])

    handoff = run(trigger(firm, "bill-to-cash", f"bc-invoice:{draft}", slug="businesscentral-uk"))

    stopped_for_a_person(handoff)
    assert handoff.failure_reason == (
        f"Business Central sent a sales invoice ({draft}) we cannot read: "
        "totalAmountIncludingTax should be a number, got text 'lots'"
    )
    assert (writes(firm.sandboxes["salesforce"]), writes(firm.sandboxes["kantata"])) == (crm_before, psa_before)


def test_dynamics_sending_an_invoice_line_with_a_text_price_stops_bill_to_cash_and_a_poll(firm_de) -> None:  # noqa: F811
    from connectors.models import PollCursor
    from connectors.schema import MalformedRecord
    from pscsync.intake import connection_poll
    from pscsync.tasks import connection_poll_task

    deal = german_provisioned(firm_de, "m6")
    invoice_id = german_kantata_invoice(firm_de, deal["opportunity"])
    billed = run(trigger(firm_de, "project-to-bill", f"kantata-invoice:{invoice_id}", slug="kantata-de"))
    assert billed.status == Handoff.Status.SUCCEEDED, billed.last_error_message
    found = firm_de.connector("dynamicsfinance-de").lookup(entity="invoice", key=f"I-K{invoice_id}").external_id
    d365 = firm_de.sandboxes["dynamicsfinance"]
    # A draft's figures are its lines' (posted, the posted journal's).
    d365.fault(match="FreeTextInvoiceLines", malform={"field": "UnitPrice", "value": "lots"})
    crm_before, psa_before = writes(firm_de.sandboxes["salesforce"]), writes(firm_de.sandboxes["kantata"])

    handoff = run(trigger(firm_de, "bill-to-cash", f"d365-invoice:{found}", slug="dynamicsfinance-de"))

    stopped_for_a_person(handoff)
    assert handoff.failure_reason == (
        "Dynamics 365 Finance sent a free text invoice line we cannot read: UnitPrice should be a number, "
        "got text 'lots'"
    )
    assert (writes(firm_de.sandboxes["salesforce"]), writes(firm_de.sandboxes["kantata"])) == (crm_before, psa_before)

    # Finance posts the invoice; the poll that hears of it gets a posted invoice without its
    # number: it stores nothing, keeps its cursor and says why.
    httpx.post(f"{d365.url}/_sandbox/post-invoice", json={"dataAreaId": "demf", "InvoiceIdentifier": int(found)})
    d365.fault(match="SalesInvoiceHeadersV2", malform={"field": "InvoiceNumber", "drop": True})
    connection = firm_de.connections["dynamicsfinance-de"]
    before = PollCursor.objects.filter(connection=connection).values_list("position", flat=True).first() or ""
    handoffs = Handoff.objects.count()
    with pytest.raises(MalformedRecord):
        connection_poll(connection=connection)
    assert connection_poll_task(connection.pk) == 0
    cursor = PollCursor.objects.get(connection=connection)
    assert cursor.position == before and Handoff.objects.count() == handoffs
    assert cursor.last_error == ("Dynamics 365 Finance sent a posted invoice we cannot read: InvoiceNumber is missing")


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/bin/chromium").exists(), reason="no chromium")
def test_the_handoff_page_shows_a_wait_for_the_rate_limit_then_the_record_it_could_not_read(
    firm, live_server, admin, monkeypatch
) -> None:
    import datetime as dt

    from playwright.sync_api import sync_playwright

    from connectors import limiter
    from tests.test_browser import CHROMIUM, _shot, _sign_in

    # given: Salesforce allows one call a minute and another worker spent it; and it sends the
    # opportunity with its amount as text
    deal = won_deal(firm, entity="us", key="m7")
    crm = firm.connections["salesforce"]
    crm.rate_limit_per_minute = 1
    crm.save(update_fields=["rate_limit_per_minute"])
    limiter.forget_all()  # the set-up's own calls (under the firm's usual limit) are not this minute's
    limiter.acquire(connection_id=crm.pk, per_minute=1)
    firm.sandboxes["salesforce"].fault(match="/query", malform={"field": "Amount", "value": "lots"})

    # when: the first run waits for the limit, the second (the minute over) reads the opportunity
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.WAITING_RETRY and handoff.attempt_count == 0
    limiter.forget_all()
    crm.rate_limit_per_minute = 0
    crm.save(update_fields=["rate_limit_per_minute"])
    Handoff.objects.filter(pk=handoff.pk).update(next_attempt_at=handoff.next_attempt_at - dt.timedelta(minutes=5))
    handoff = run(handoff)
    stopped_for_a_person(handoff)

    # then: the page tells both in words
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        _sign_in(page, live_server, admin, start=f"/workbench/handoffs/{handoff.pk}/")
        page.wait_for_selector("text=Timeline")
        waited = page.locator("li.tl-deferred")
        assert waited.count() == 1
        assert "Waited for the vendor's rate limit; resumes at" in waited.inner_text()
        failed = page.locator("li.tl-validation")
        assert "we cannot read: Amount should be a number, got text 'lots'" in failed.inner_text()
        _shot(page, "handoff-deferred-then-malformed")
        browser.close()
