"""Causes grouped like Sentry, and root causes: billing batches blocked by the deal whose ERP
customer was never created are one cause under that root, and resume by themselves when the
root succeeds (recorded in their timeline)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pscsync import clock
from pscsync.lifecycle import handoff_move
from pscsync.models import AuditEntry, Event, Handoff, Step
from remediation.fingerprints import fingerprint, placeholders
from remediation.models import ExceptionCause, HandoffException
from remediation.selectors import InboxFilter, inbox_groups
from remediation.services import ResubmitMode, handoff_resubmit
from tests.flows.conftest import run, trigger, won_deal
from tests.helpers import moves_told

pytestmark = pytest.mark.django_db

NO_CUSTOMER = (
    "validate_billing: billing batch {batch} ({id}) for project {project}: Business Central (UK) has no customer "
    "{key} to bill — fix: resubmit the deal's quote-to-project handoff so the customer is created, then resubmit "
    "this one"
)


def test_the_variable_parts_are_left_out_of_the_fingerprint_and_kept_in_the_title() -> None:
    a = NO_CUSTOMER.format(batch="Acme time Nov", id="a9f3", project="Acme rollout", key="C-001A")
    b = NO_CUSTOMER.format(batch="Globex expenses", id="b77", project="Globex ERP", key="C-002B")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) == (
        "validate_billing: billing batch … for project …: Business Central (UK) has no customer … to bill — fix: "
        "resubmit the deal's quote-to-project handoff so the customer is created, then resubmit this one"
    )
    # Values that tell causes apart stay: another HTTP status is another cause.
    assert fingerprint("the target rejected the request (422)") != fingerprint("the target rejected the request (400)")
    # Amounts, dates, counts, quoted names and mapping versions are variable parts.
    assert fingerprint("amount 1200.50 on 2026-11-03 for 'Acme' after 3 attempts (mapping ns/contract@v3)") == (
        fingerprint("amount 99.10 on 2026-12-01 for 'Globex' after 5 attempts (mapping ns/contract@v4)")
    )
    # The cause page counts the distinct values of each placeholder.
    found = {p.word: p.values for p in placeholders(fingerprint(a), [a, b])}
    assert found["customer"] == ("C-001A", "C-002B")
    assert [p.words for p in placeholders(fingerprint(a), [a, b]) if p.word == "customer"] == [
        "2 customers: C-001A, C-002B"
    ]


def _blocked_batch(firm, root: Handoff, account: str, n: int) -> Handoff:
    """A project-to-bill handoff stopped at its check because the ERP has no customer for the
    account: the records the runner keeps for it (the batch it read, the failed check)."""
    now = clock.now()
    key = f"C-{account}"
    event = Event.objects.create(
        connection=firm.connections["kantata-uk"],
        source_event_id=f"bill-{n}",
        occurred_at=now,
        received_at=now,
        raw_body="{}",
    )
    handoff = Handoff.objects.create(
        flow="project-to-bill",
        business_key=f"kantata-invoice:{n}",
        source_connection=firm.connections["kantata-uk"],
        trigger_event=event,
        business_started_at=now,
        created_at=now,
        status=Handoff.Status.RUNNING,
        amount=[1500, 2500, 1000][n % 3],
        currency="GBP",
        customer_name="Globex",
        legal_entity=root.legal_entity,
    )
    Step.objects.create(
        handoff=handoff,
        name="read_billing",
        position=1,
        status="succeeded",
        output={"billing": {"customer_key": key, "name": f"Batch {n}"}},
    )
    Step.objects.create(handoff=handoff, name="validate_billing", position=2, status="failed")
    with moves_told():  # the workbench's listener opens the exception, as after the runner's move
        handoff_move(
            handoff,
            from_states=[Handoff.Status.RUNNING],
            to=Handoff.Status.NEEDS_ATTENTION,
            actor="test",
            # As the runner stores the check's failure: the step, and the customer it found missing.
            fields={
                "last_error_class": "validation",
                "last_error_message": NO_CUSTOMER.format(batch=f"Batch {n}", id=f"k{n}x", project=f"Proj {n}", key=key),
                "failed_step": "validate_billing",
                "failed_key": key,
                "failure_reason": NO_CUSTOMER.format(
                    batch=f"Batch {n}", id=f"k{n}x", project=f"Proj {n}", key=key
                ).removeprefix("validate_billing: "),
            },
        )
    return handoff


def test_blocked_batches_are_one_cause_under_their_root_and_resume_when_it_succeeds(
    firm, operator, django_capture_on_commit_callbacks
) -> None:
    # given: the deal's quote-to-project handoff stops (no tax profile), so no ERP customer
    deal = won_deal(firm, key="71", account={"Tax_Profile__c": None})
    root = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert root.status == Handoff.Status.NEEDS_ATTENTION
    batches = [_blocked_batch(firm, root, deal["account"], n) for n in range(3)]

    # then: one cause for the three batches, blocked by the root; the root's group says what it blocks
    items = HandoffException.objects.filter(handoff__in=batches)
    assert {i.cause_id for i in items} == {items[0].cause_id}
    assert {i.blocked_by_id for i in items} == {root.pk}
    groups = {g.cause.flow: g for g in inbox_groups(operator, InboxFilter())}
    assert groups["project-to-bill"].count == 3
    assert groups["quote-to-project"].blocks == 3
    # 1500 + 2500 + 1000 GBP wait on the root (worked by hand from the three batches)
    assert groups["quote-to-project"].blocks_money == [("GBP", 5000)]
    assert [c.pk for c in groups["project-to-bill"].waiting_on] == [groups["quote-to-project"].cause.pk]
    # the title keeps the latest real values in full; the fingerprint has none
    cause = ExceptionCause.objects.get(pk=items[0].cause_id)
    assert "Batch 2" in cause.title and cause.title.endswith("then resubmit this one")
    assert "Batch" not in cause.message

    # when: the root is fixed at the source and succeeds
    sf = firm.salesforce
    sf.send("PATCH", sf.api_path(f"sobjects/Account/{deal['account']}"), json={"Tax_Profile__c": "US-STANDARD"})
    handoff_resubmit(actor=operator, handoff=root, mode=ResubmitMode.REMAP, reason="tax profile set")
    with django_capture_on_commit_callbacks(execute=True):
        root = run(root)
    assert root.status == Handoff.Status.SUCCEEDED, root.last_error_message

    # then: every blocked batch resumed by itself, with the reason in its timeline
    for batch in batches:
        batch.refresh_from_db()
        assert batch.status == Handoff.Status.PENDING
        entry = AuditEntry.objects.get(action="handoff.resubmit", object_id=str(batch.pk))
        assert entry.actor_label == "system:root-cause"
        assert entry.comment.startswith("Resumed by itself: Quote to project")


def test_the_demos_five_batches_blocked_by_one_missing_business_central_customer(
    firm, outsider, django_capture_on_commit_callbacks
) -> None:
    """The demo's case end to end on the sandboxes: a UK deal's project bills five Kantata invoices
    while Business Central has no customer for its account (removed there, and refused when the
    deal is sent again). The five stop at their check: one cause, under the deal's handoff that
    failed at its customer step; when that handoff succeeds, the five resume by themselves and
    each becomes a Business Central invoice."""
    from tests.flows.test_project_to_bill import kantata_invoice, provisioned

    deal = provisioned(firm, "uk", "90", Billing_Model__c="Time and Materials", Service_Line__c="Advisory")
    customer_key = f"C-{deal['account']}"
    invoices = [kantata_invoice(firm, deal["opportunity"]) for _ in range(5)]
    bc = firm.connector("businesscentral-uk")
    bc.withdraw(entity="customers", record_id=bc.lookup(entity="customers", key=customer_key).external_id)
    assert bc.lookup(entity="customers", key=customer_key) is None
    # Business Central refuses the customer when the deal comes again (credit control).
    firm.sandboxes["businesscentral"].fault(
        match="/customers",
        reject={"field": "displayName", "equals": "Globex 90", "message": "Customer blocked by credit control"},
    )
    root = run(trigger(firm, "quote-to-project", deal["opportunity"], minutes_later=5))
    assert root.status == Handoff.Status.NEEDS_ATTENTION
    assert root.last_error_message.startswith("upsert_customer: ")
    # The runner stored where it stopped as data: the step and the customer it was writing.
    assert (root.failed_step, root.failed_key) == ("upsert_customer", customer_key)
    assert "Customer blocked by credit control" in root.failure_reason
    assert not root.failure_reason.startswith("upsert_customer")  # the target's words, not the step

    batches = [run(trigger(firm, "project-to-bill", f"kantata-invoice:{i}", slug="kantata-uk")) for i in invoices]

    assert [b.status for b in batches] == [Handoff.Status.NEEDS_ATTENTION] * 5
    # Each check named the missing customer as data (ConnectorError.key), not only in its words.
    assert {(b.failed_step, b.failed_key) for b in batches} == {("validate_billing", customer_key)}
    items = HandoffException.objects.filter(handoff__in=batches)
    assert len({i.cause_id for i in items}) == 1  # one cause, whatever each batch's name and id
    assert {i.blocked_by_id for i in items} == {root.pk}
    # as the UK operator sees them (the `outsider` fixture works for the UK entity only)
    groups = {g.cause.flow: g for g in inbox_groups(outsider, InboxFilter())}
    assert groups["project-to-bill"].count == 5
    assert groups["quote-to-project"].blocks == 5
    # Each invoice is 8 h + 6.5 h at £120/h = £1,740.00; five of them wait on the root: £8,700.00.
    assert groups["quote-to-project"].blocks_money == [("GBP", Decimal("8700.00"))]
    assert [c.pk for c in groups["project-to-bill"].waiting_on] == [groups["quote-to-project"].cause.pk]

    # when: credit control releases the customer and the root is resubmitted: it succeeds
    firm.sandboxes["businesscentral"].clear_faults()
    handoff_resubmit(actor=outsider, handoff=root, mode=ResubmitMode.STORED, reason="credit control released it")
    with django_capture_on_commit_callbacks(execute=True):
        root = run(root)
    assert root.status == Handoff.Status.SUCCEEDED, root.last_error_message

    # then: the five resumed by themselves (nobody touched them), and each bills once
    for batch in batches:
        batch.refresh_from_db()
        assert batch.status == Handoff.Status.PENDING
        entry = AuditEntry.objects.get(action="handoff.resubmit", object_id=str(batch.pk))
        assert entry.actor_label == "system:root-cause"
        assert run(batch).status == Handoff.Status.SUCCEEDED
    for invoice_id in invoices:
        written = bc.lookup(entity="salesInvoices", key=f"I-K{invoice_id}").response
        assert written["customerNumber"] == customer_key and written["totalAmountExcludingTax"] == 1740.0
    assert not HandoffException.objects.filter(handoff__in=batches, status="open").exists()
