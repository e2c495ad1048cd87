"""bill-to-cash: ERP invoice and payment status reflected on the opportunity and in the PSA."""

from __future__ import annotations

import pytest

from pscsync.models import Handoff
from tests.flows.conftest import run, trigger
from tests.flows.test_project_to_bill import certinia_billing_event, kantata_invoice, provisioned

pytestmark = pytest.mark.django_db


def opportunity(firm, opp: str) -> dict:
    fields = ["Billing_Status__c", "Amount_Invoiced__c", "Amount_Paid__c", "Last_Invoice__c"]
    return next(firm.salesforce.read("opportunity", where={"Id": opp}, fields=fields))


def test_netsuite_invoice_then_part_payment_show_on_the_opportunity_and_the_certinia_project(firm) -> None:
    deal = provisioned(firm, "us", "31")
    event = certinia_billing_event(firm, deal["opportunity"])
    assert run(trigger(firm, "project-to-bill", event, slug="certinia-us")).status == Handoff.Status.SUCCEEDED

    # NetSuite routes the new invoice for approval: not posted, so not invoiced on the deal.
    pending = run(trigger(firm, "bill-to-cash", f"I-{event}", slug="netsuite-us"))
    assert pending.status == Handoff.Status.SUCCEEDED, pending.last_error_message
    assert opportunity(firm, deal["opportunity"])["Billing_Status__c"] == "Invoice awaiting approval"
    assert float(opportunity(firm, deal["opportunity"])["Amount_Invoiced__c"] or 0) == 0.0

    netsuite = firm.connector("netsuite-us")
    netsuite.upsert(entity="invoice", key=f"I-{event}", fields={"approvalStatus": {"id": "2"}})  # finance approves
    invoiced = run(trigger(firm, "bill-to-cash", f"I-{event}", slug="netsuite-us", minutes_later=1))
    assert invoiced.status == Handoff.Status.SUCCEEDED, invoiced.last_error_message
    assert opportunity(firm, deal["opportunity"])["Billing_Status__c"] == "Invoiced"
    assert float(opportunity(firm, deal["opportunity"])["Amount_Invoiced__c"]) == 26325.0

    invoice = netsuite.lookup(entity="invoice", key=f"I-{event}")
    customer = invoice.response["entity"]["id"]
    payment = netsuite.upsert(
        entity="payment",
        key="PAY-31",
        fields={
            "customer": {"id": customer},
            "payment": 10000,
            "tranDate": "2027-01-10",
            "apply": {"items": [{"doc": {"id": invoice.external_id}, "apply": True, "amount": 10000}]},
        },
    )
    paid = run(trigger(firm, "bill-to-cash", f"payment:{payment.external_id}", slug="netsuite-us"))

    assert paid.status == Handoff.Status.SUCCEEDED, paid.last_error_message
    status = opportunity(firm, deal["opportunity"])
    assert status["Billing_Status__c"] == "Partly paid" and float(status["Amount_Paid__c"]) == 10000.0
    project = firm.connector("certinia-us").lookup(entity="project", key=f"P-{deal['opportunity']}").response
    assert float(project["Paid_To_Date__c"]) == 10000.0 and float(project["Billed_To_Date__c"]) == 26325.0
    assert paid.business_times["payment_applied"] == "2027-01-10"


def test_business_central_payment_in_full_marks_the_kantata_invoice_paid(firm) -> None:
    deal = provisioned(firm, "uk", "32", Billing_Model__c="Time and Materials", Service_Line__c="Advisory")
    invoice_id = kantata_invoice(firm, deal["opportunity"])
    assert run(trigger(firm, "project-to-bill", f"kantata-invoice:{invoice_id}", slug="kantata-uk")).status == (
        Handoff.Status.SUCCEEDED
    )
    bc = firm.connector("businesscentral-uk")
    draft = bc.lookup(entity="salesInvoices", key=f"I-K{invoice_id}")
    drafted = run(trigger(firm, "bill-to-cash", f"bc-invoice:{draft.external_id}", slug="businesscentral-uk"))
    assert drafted.status == Handoff.Status.SUCCEEDED, drafted.last_error_message
    assert opportunity(firm, deal["opportunity"])["Billing_Status__c"] == "Invoice in draft"

    bc.post_invoice(draft.external_id)
    posted = bc.lookup(entity="salesInvoices", key=f"I-K{invoice_id}").response
    payment = bc.upsert(
        entity="customerPayments",
        key="PAY-32",
        fields={
            "customerNumber": f"C-{deal['account']}",
            "amount": -posted["totalAmountIncludingTax"],
            "appliesToInvoiceNumber": posted["number"],
            "postingDate": "2027-01-12",
        },
    )
    paid = run(trigger(firm, "bill-to-cash", f"bc-payment:{payment.external_id}", slug="businesscentral-uk"))

    assert paid.status == Handoff.Status.SUCCEEDED, paid.last_error_message
    assert opportunity(firm, deal["opportunity"])["Billing_Status__c"] == "Paid"
    marked = next(firm.connector("kantata-uk").read("invoices", where={"only": invoice_id}))
    assert marked["status"] == "accepted payment"
