"""Compensation on the real sandboxes: an ERP invoice written by a project-to-bill handoff that
failed afterwards is deleted from NetSuite or Business Central by a worker, its PSA items are
released so the batch can be billed again (once), and the handoff is cancelled. A vendor that
refuses (paid or posted invoice) or is down changes nothing and says why."""

from __future__ import annotations

import pytest

from pscsync import clock
from pscsync.models import AuditEntry, BilledItem, CrossReference, Handoff, Step
from remediation.models import Compensation, ExceptionStatus, HandoffException
from remediation.services import (
    ActionRefused,
    ResubmitMode,
    compensation_run,
    handoff_compensate,
    handoff_reopen,
    handoff_resolve,
    handoff_resubmit,
)
from tests.flows.conftest import run, trigger
from tests.flows.test_project_to_bill import certinia_billing_event, kantata_invoice, provisioned

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    # The test is the worker: it calls compensation_run itself, as the task would.
    monkeypatch.setattr("remediation.services._compensation_enqueue", lambda compensation_id: None)


def _invoiced_then_failed(firm, key: str) -> tuple[Handoff, str]:
    """A Certinia billing event whose NetSuite invoice was written, then the PSA refused to be
    marked as billed: the handoff needs a person with an invoice standing in the ERP."""
    deal = provisioned(firm, "us", key)
    event = certinia_billing_event(firm, deal["opportunity"])
    firm.sandboxes["salesforce"].fault(error_status=400, match="sobjects/pse__Billing_Event__c/", count=1)
    handoff = run(trigger(firm, "project-to-bill", event, slug="certinia-us"))
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION, handoff.last_error_message
    assert handoff.steps.get(name="upsert_invoice").status == Step.Status.SUCCEEDED
    return handoff, event


def _netsuite_invoice(firm, event: str):
    return firm.connector("netsuite-us").lookup(entity="invoice", key=f"I-{event}")


def test_compensating_deletes_the_netsuite_invoice_releases_the_items_and_cancels(firm, operator) -> None:
    handoff, event = _invoiced_then_failed(firm, "c1")
    invoice_id = _netsuite_invoice(firm, event).external_id
    assert BilledItem.objects.filter(invoice_key=f"I-{event}").count() == 2

    compensation = handoff_compensate(actor=operator, handoff=handoff, reason="billed before the PO arrived")
    # Queued, not done in the request: the handoff is held by the compensation meanwhile.
    assert Handoff.objects.get(pk=handoff.pk).lease_owner == f"compensation:{compensation.pk}"
    assert _netsuite_invoice(firm, event) is not None

    assert compensation_run(compensation.pk) == "done"

    assert _netsuite_invoice(firm, event) is None  # gone from NetSuite
    handoff.refresh_from_db()
    assert (handoff.status, handoff.lease_owner) == (Handoff.Status.CANCELLED, "")
    assert not BilledItem.objects.filter(invoice_key=f"I-{event}").exists()  # the items may be billed again
    assert not CrossReference.objects.filter(entity_type="invoice", canonical_id=f"I-{event}").exists()
    item = HandoffException.objects.get(handoff=handoff)
    assert (item.status, item.resolution) == (ExceptionStatus.RESOLVED, "compensated")
    audit = AuditEntry.objects.get(action="handoff.compensate")
    assert audit.comment == "billed before the PO arrived" and audit.actor_label == operator.username
    assert audit.before["status"] == "needs_attention" and audit.after["status"] == "cancelled"
    assert audit.after["removed"][0]["before"]["total"] == 26325.0  # the invoice as NetSuite held it
    assert len(audit.after["released_items"]) == 2
    assert audit.before["steps"]["upsert_invoice"]["ids"] == {f"I-{event}": invoice_id}


def test_a_second_click_or_a_repeated_task_never_deletes_twice(firm, operator, admin) -> None:
    handoff, event = _invoiced_then_failed(firm, "c2")
    stale_copy = Handoff.objects.get(pk=handoff.pk)
    compensation = handoff_compensate(actor=operator, handoff=handoff, reason="wrong customer")
    with pytest.raises(ActionRefused, match="compensation is already running"):
        handoff_compensate(actor=admin, handoff=stale_copy, reason="me too")
    # Nor can anyone resubmit or resolve it while the records are being removed.
    with pytest.raises(ActionRefused, match="compensation is running"):
        handoff_resubmit(actor=admin, handoff=stale_copy, mode=ResubmitMode.STORED, reason="retry")
    with pytest.raises(ActionRefused, match="compensation is running"):
        handoff_resolve(actor=admin, handoff=stale_copy, reason="done by hand")

    # A duplicate delivery while a live worker runs it finds nothing to claim.
    Compensation.objects.filter(pk=compensation.pk).update(status=Compensation.Status.RUNNING, started_at=clock.now())
    assert compensation_run(compensation.pk) == "skipped"
    Compensation.objects.filter(pk=compensation.pk).update(status=Compensation.Status.QUEUED)
    assert compensation_run(compensation.pk) == "done"
    assert compensation_run(compensation.pk) == "skipped"  # a redelivered task does nothing
    deletes = [e for e in firm.sandboxes["netsuite"].journal()["entries"] if e["method"] == "DELETE"]
    assert len(deletes) == 1
    with pytest.raises(ActionRefused, match="Nothing this handoff wrote can be undone"):
        handoff_compensate(actor=operator, handoff=Handoff.objects.get(pk=handoff.pk), reason="again")
    assert Compensation.objects.count() == 1
    assert AuditEntry.objects.filter(action="handoff.compensate.request").count() == 1


def test_after_compensating_the_batch_is_billed_again_exactly_once(firm, operator) -> None:
    handoff, event = _invoiced_then_failed(firm, "c3")
    compensation_run(handoff_compensate(actor=operator, handoff=handoff, reason="re-bill after the fix").pk)

    handoff_reopen(actor=operator, handoff=Handoff.objects.get(pk=handoff.pk), reason="bill it again")
    handoff_resubmit(
        actor=operator, handoff=Handoff.objects.get(pk=handoff.pk), mode=ResubmitMode.REMAP, reason="re-bill"
    )
    handoff = run(handoff)

    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    assert _netsuite_invoice(firm, event).response["total"] == 26325.0  # one new invoice, same key
    assert BilledItem.objects.filter(invoice_key=f"I-{event}").count() == 2  # claimed again, once


def test_a_paid_invoice_is_refused_by_netsuite_and_nothing_changes(firm, operator) -> None:
    handoff, event = _invoiced_then_failed(firm, "c4")
    invoice = _netsuite_invoice(firm, event)
    netsuite = firm.connector("netsuite-us")
    netsuite.upsert(
        entity="customerPayment",
        key=f"PAY-{event}",
        fields={
            "customer": invoice.response["entity"],
            "payment": 1000.0,
            "apply": {"items": [{"doc": {"id": invoice.external_id}, "apply": True, "amount": 1000.0}]},
        },
    )

    compensation = handoff_compensate(actor=operator, handoff=handoff, reason="wrong rate")
    assert compensation_run(compensation.pk) == "failed"

    compensation.refresh_from_db()
    assert "a payment or another record is applied to it" in compensation.detail
    assert "credit memo" in compensation.detail and "Nothing was changed" in compensation.detail
    assert _netsuite_invoice(firm, event) is not None
    handoff.refresh_from_db()
    # Back as it was, free for the other actions: not cancelled, not held, items still claimed.
    assert (handoff.status, handoff.lease_owner) == (Handoff.Status.NEEDS_ATTENTION, "")
    assert BilledItem.objects.filter(invoice_key=f"I-{event}").count() == 2
    assert handoff.steps.get(name="upsert_invoice").status == Step.Status.SUCCEEDED
    assert AuditEntry.objects.get(action="handoff.compensate.failed").comment == compensation.detail


def test_an_erp_outage_fails_the_compensation_cleanly_and_it_can_be_tried_again(firm, operator) -> None:
    handoff, event = _invoiced_then_failed(firm, "c5")
    firm.sandboxes["netsuite"].fault(error_status=503, match="/record/v1/invoice/", count=100)

    first = handoff_compensate(actor=operator, handoff=handoff, reason="duplicate billing")
    assert compensation_run(first.pk) == "failed"
    first.refresh_from_db()
    assert "NetSuite failed (503)" in first.detail and "Nothing was changed" in first.detail
    assert Handoff.objects.get(pk=handoff.pk).status == Handoff.Status.NEEDS_ATTENTION

    firm.sandboxes["netsuite"].clear_faults()  # NetSuite is back
    second = handoff_compensate(actor=operator, handoff=Handoff.objects.get(pk=handoff.pk), reason="retry")
    assert compensation_run(second.pk) == "done"
    assert _netsuite_invoice(firm, event) is None


def test_business_central_deletes_a_draft_invoice_and_refuses_a_posted_one(firm, admin) -> None:
    bc = firm.connector("businesscentral-uk")
    handoffs = {}
    for key in ("c6", "c7"):
        deal = provisioned(firm, "uk", key, Billing_Model__c="Time and Materials", Service_Line__c="Advisory")
        invoice_id = kantata_invoice(firm, deal["opportunity"])
        firm.sandboxes["kantata"].fault(error_status=422, match="/api/v1/invoices/", count=1)
        handoff = run(trigger(firm, "project-to-bill", f"kantata-invoice:{invoice_id}", slug="kantata-uk"))
        assert handoff.status == Handoff.Status.NEEDS_ATTENTION, handoff.last_error_message
        handoffs[key] = (handoff, f"I-K{invoice_id}")

    draft, draft_key = handoffs["c6"]
    assert compensation_run(handoff_compensate(actor=admin, handoff=draft, reason="wrong period").pk) == "done"
    assert bc.lookup(entity="salesInvoices", key=draft_key) is None

    posted, posted_key = handoffs["c7"]
    bc.post_invoice(bc.lookup(entity="salesInvoices", key=posted_key).external_id)
    compensation = handoff_compensate(actor=admin, handoff=posted, reason="wrong period")
    assert compensation_run(compensation.pk) == "failed"
    compensation.refresh_from_db()
    assert "it is posted (Open)" in compensation.detail and "corrective credit memo" in compensation.detail
    assert bc.lookup(entity="salesInvoices", key=posted_key) is not None
    assert Handoff.objects.get(pk=posted.pk).status == Handoff.Status.NEEDS_ATTENTION


def test_compensate_needs_a_reason_an_operator_and_a_failed_handoff(client, firm, operator, viewer) -> None:
    handoff, event = _invoiced_then_failed(firm, "c8")
    url = f"/workbench/handoffs/{handoff.pk}/compensate/"

    client.force_login(viewer)
    assert client.post(url, {"reason": "no"}).status_code == 403
    client.force_login(operator)
    page = client.post(url, {"reason": "  "}, follow=True).content.decode()
    assert "A reason is required" in page
    assert not Compensation.objects.exists() and Handoff.objects.get(pk=handoff.pk).lease_owner == ""

    handoff_resolve(actor=operator, handoff=handoff, reason="settled by hand")
    page = client.post(url, {"reason": "undo"}, follow=True).content.decode()
    assert "It was resolved by a person: reopen it first" in page and not Compensation.objects.exists()

    handoff_reopen(actor=operator, handoff=Handoff.objects.get(pk=handoff.pk), reason="undo it after all")
    detail = client.get(f"/workbench/handoffs/{handoff.pk}/").content.decode()
    assert "Delete the invoice from the ERP" in detail and f"I-{event}" in detail
    page = client.post(url, {"reason": "undo"}, follow=True).content.decode()
    assert "Compensation started" in page and "Compensation queued" in page
    assert "A compensation is running on this handoff" in page and "Edit and resubmit" not in page
    compensation = Compensation.objects.get()
    assert compensation.status == Compensation.Status.QUEUED

    # The card the page polls shows the outcome once the worker is done.
    compensation_run(compensation.pk)
    card = client.get(f"/workbench/handoffs/{handoff.pk}/compensation/").content.decode()
    assert "Compensated" in card and f"I-{event}" in card and "2 PSA items released" in card
    assert "hx-trigger" not in card  # finished: it stops polling


def test_another_entitys_operator_cannot_compensate_or_even_see_it(client, firm, outsider) -> None:
    handoff, _ = _invoiced_then_failed(firm, "c10")
    client.force_login(outsider)  # works for the UK entity only
    assert client.post(f"/workbench/handoffs/{handoff.pk}/compensate/", {"reason": "x"}).status_code == 404
    assert client.get(f"/workbench/handoffs/{handoff.pk}/compensation/").status_code == 404
    assert not Compensation.objects.exists()


def test_quote_to_project_offers_no_compensation(client, firm, operator) -> None:
    from tests.flows.conftest import won_deal

    deal = won_deal(firm, key="c9", account={"Tax_Profile__c": None})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    client.force_login(operator)
    assert "Compensate" not in client.get(f"/workbench/handoffs/{handoff.pk}/").content.decode()
    with pytest.raises(ActionRefused, match="Nothing this handoff wrote can be undone"):
        handoff_compensate(actor=operator, handoff=handoff, reason="try")
