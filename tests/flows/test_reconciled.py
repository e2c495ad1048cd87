"""What the flows write reconciles: a firm run through the real flows has no mismatches, and an
amendment the ERP has not received is caught and explained."""

from __future__ import annotations

import pytest

from pscsync.models import Handoff, Mismatch
from pscsync.reconciliation.services import reconcile
from tests.flows.conftest import run, trigger
from tests.flows.test_project_to_bill import certinia_billing_event, kantata_invoice, provisioned

pytestmark = pytest.mark.django_db


def test_a_firm_run_through_the_flows_reconciles_cleanly_then_an_unsynced_amendment_is_caught(firm) -> None:
    us = provisioned(firm, "us", "61")
    event = certinia_billing_event(firm, us["opportunity"])
    assert run(trigger(firm, "project-to-bill", event, slug="certinia-us")).status == Handoff.Status.SUCCEEDED
    uk = provisioned(firm, "uk", "62", Billing_Model__c="Time and Materials", Service_Line__c="Advisory")
    invoice = kantata_invoice(firm, uk["opportunity"])
    assert run(trigger(firm, "project-to-bill", f"kantata-invoice:{invoice}", slug="kantata-uk")).status == (
        Handoff.Status.SUCCEEDED
    )

    # The accountants approve and post what the flows raised: only a posted invoice is revenue.
    firm.connector("netsuite-us").upsert(entity="invoice", key=f"I-{event}", fields={"approvalStatus": {"id": "2"}})
    bc = firm.connector("businesscentral-uk")
    bc.post_invoice(bc.lookup(entity="salesInvoices", key=f"I-K{invoice}").external_id)

    runs = reconcile()
    assert all(r.status == "complete" for r in runs), [(r.legal_entity_id, r.error) for r in runs]
    assert list(Mismatch.objects.filter(status="open").values_list("explanation", flat=True)) == []

    # The deal is amended in Salesforce and the change has not reached the ERP yet.
    firm.salesforce.update(
        entity="opportunity", record_id=us["opportunity"], fields={"Amount": 135000, "Contract_Version__c": 2}
    )
    reconcile(entity="us")
    mismatch = Mismatch.objects.get(status="open")
    assert mismatch.cause == "amendment_not_synced" and us["opportunity"] in mismatch.subject_key

    # The contract-change flow syncs it; the next run clears the mismatch.
    assert run(trigger(firm, "contract-change", us["opportunity"])).status == Handoff.Status.SUCCEEDED
    reconcile(entity="us")
    mismatch.refresh_from_db()
    assert mismatch.status == "cleared"
