"""Causes grouped like Sentry, and root causes: billing batches blocked by the deal whose ERP
customer was never created are one cause under that root, and resume by themselves when the
root succeeds (recorded in their timeline)."""

from __future__ import annotations

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
            fields={
                "last_error_class": "validation",
                "last_error_message": NO_CUSTOMER.format(batch=f"Batch {n}", id=f"k{n}x", project=f"Proj {n}", key=key),
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
