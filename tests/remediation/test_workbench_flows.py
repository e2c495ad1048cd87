"""The workbench on the real flows: fix at the source or edit, resubmit, and the group leaves
the inbox; an invalid edit changes nothing; two operators race and one wins; bulk jobs."""

from __future__ import annotations

import pytest

from pscsync.models import AuditEntry, Handoff, Step
from remediation.models import BulkJob, ExceptionCause, ExceptionStatus, HandoffException
from remediation.selectors import InboxFilter, inbox_groups
from remediation.services import ActionRefused, ResubmitMode, bulk_job_create, bulk_job_run, handoff_resubmit
from tests.flows.conftest import run, trigger, won_deal

pytestmark = pytest.mark.django_db


def _tax_failure(firm, key: str):
    deal = won_deal(firm, key=key, account={"Tax_Profile__c": None})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION
    return deal, handoff


def _projects(firm, opportunity: str) -> int:
    return firm.sandboxes["salesforce"].journal()["creates_by_key"].get(f"pse__Proj__c/P-{opportunity}", 0)


def test_a_failure_opens_one_group_with_money_and_identifiers(firm, operator) -> None:
    _, first = _tax_failure(firm, "61")
    _, second = _tax_failure(firm, "62")
    [group] = inbox_groups(operator, InboxFilter())
    assert group.count == 2 and group.cause.step_name == "validate_deal"
    assert group.cause.error_class == "validation"
    assert group.money == [("USD", 240000)]
    assert group.customers == ["Globex 61", "Globex 62"]
    item = HandoffException.objects.get(handoff=first)
    assert item.identifiers["project"] == f"P-{first.business_key}"
    assert inbox_groups(operator, InboxFilter(q=f"p-{second.business_key}".lower()))[0].count == 1
    assert inbox_groups(operator, InboxFilter(legal_entity="uk")) == []


def test_fixed_at_the_source_then_remapped_the_project_is_written_and_the_group_resolves(firm, operator) -> None:
    deal, handoff = _tax_failure(firm, "63")
    sf = firm.salesforce
    sf.send("PATCH", sf.api_path(f"sobjects/Account/{deal['account']}"), json={"Tax_Profile__c": "US-STANDARD"})
    handoff_resubmit(actor=operator, handoff=handoff, mode=ResubmitMode.REMAP, reason="tax profile set in Salesforce")
    assert HandoffException.objects.get(handoff=handoff).status == ExceptionStatus.IN_PROGRESS
    handoff = run(handoff)
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    assert _projects(firm, deal["opportunity"]) == 1
    item = HandoffException.objects.get(handoff=handoff)
    assert (item.status, item.resolution) == (ExceptionStatus.RESOLVED, "succeeded")
    assert item.cause.status == ExceptionStatus.RESOLVED
    assert inbox_groups(operator, InboxFilter()) == []
    audit = AuditEntry.objects.get(action="handoff.resubmit")
    assert audit.comment == "tax profile set in Salesforce" and audit.after["mode"] == "remap"


def test_resume_with_my_edit_uses_the_edit(firm, operator) -> None:
    deal, handoff = _tax_failure(firm, "64")
    read = Step.objects.get(handoff=handoff, name="read_deal")
    edited = {**read.output, "account": {**read.output["account"], "tax_profile": "US-EXEMPT"}}
    handoff_resubmit(actor=operator, handoff=handoff, mode=ResubmitMode.EDIT, reason="exempt", edited=edited)
    handoff = run(handoff)
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    customer = Step.objects.get(handoff=handoff, name="upsert_customer").attempts.last()
    # The edited document was mapped and sent: the exempt tax code, not the standard one.
    assert customer.request["records"][0]["fields"]["custentity_tax_code"] == "US-EXEMPT"
    audit = AuditEntry.objects.get(action="handoff.resubmit")
    assert audit.after["document_after"]["account"]["tax_profile"] == "US-EXEMPT"
    assert audit.after["document_before"]["account"]["tax_profile"] == ""


def test_a_regression_reopens_a_resolved_group(firm, operator) -> None:
    deal, handoff = _tax_failure(firm, "65")
    handoff_resubmit(actor=operator, handoff=handoff, mode=ResubmitMode.REMAP, reason="try again")
    handoff = run(handoff)  # still no tax profile: fails again, same cause
    cause = ExceptionCause.objects.get()
    assert cause.status == ExceptionStatus.OPEN and cause.occurrences == 2
    from remediation.services import handoff_resolve

    handoff_resolve(actor=operator, handoff=handoff, reason="handled by hand")
    assert ExceptionCause.objects.get().status == ExceptionStatus.RESOLVED
    _tax_failure(firm, "66")
    assert ExceptionCause.objects.get().status == ExceptionStatus.REGRESSED


def test_two_operators_resubmitting_at_once_one_wins(firm, operator, admin) -> None:
    _, handoff = _tax_failure(firm, "67")
    stale_copy = Handoff.objects.get(pk=handoff.pk)
    handoff_resubmit(actor=operator, handoff=handoff, mode=ResubmitMode.STORED, reason="first")
    with pytest.raises(ActionRefused, match="someone else acted on it"):
        handoff_resubmit(actor=admin, handoff=stale_copy, mode=ResubmitMode.STORED, reason="second")
    assert AuditEntry.objects.filter(action="handoff.resubmit").count() == 1


def test_an_invalid_edit_shows_the_error_on_the_field_and_changes_nothing(client, firm, operator) -> None:
    _, handoff = _tax_failure(firm, "68")
    read = Step.objects.get(handoff=handoff, name="read_deal")
    before = read.output
    client.force_login(operator)
    page = client.get(f"/workbench/handoffs/{handoff.pk}/resubmit/").content.decode()
    form_fields = {}
    import re

    for name, path in re.findall(r'name="(doc-f\d+)"[^>]*data-path="([^"]+)"', page) + [
        (n, p) for p, n in re.findall(r'data-path="([^"]+)"[^>]*name="(doc-f\d+)"', page)
    ]:
        form_fields[path] = name
    amount_field = form_fields["deal.amount"]
    data = {"mode": "edit", "reason": "typo", amount_field: "not a number"}
    response = client.post(f"/workbench/handoffs/{handoff.pk}/resubmit/", data)
    assert response.status_code == 400
    assert "Enter a number" in response.content.decode()
    read.refresh_from_db()
    handoff.refresh_from_db()
    assert read.output == before and handoff.status == Handoff.Status.NEEDS_ATTENTION
    assert not AuditEntry.objects.filter(action="handoff.resubmit").exists()


def test_bulk_retry_is_a_tracked_job_that_can_be_run_twice(firm, operator) -> None:
    handoffs = [_tax_failure(firm, f"7{n}")[1] for n in range(3)]
    job = bulk_job_create(
        actor=operator, kind=BulkJob.Kind.RETRY, handoff_ids=[h.pk for h in handoffs], reason="after the fix"
    )
    assert bulk_job_run(job.pk) == "done"
    job.refresh_from_db()
    assert (job.done, job.succeeded, job.status) == (3, 3, BulkJob.Status.DONE)
    assert bulk_job_run(job.pk) == "skipped"
    assert Handoff.objects.filter(status=Handoff.Status.PENDING).count() == 3


def test_a_scoped_user_never_sees_another_entitys_groups_or_money(firm, outsider, operator) -> None:
    _tax_failure(firm, "81")
    assert inbox_groups(outsider, InboxFilter()) == []
    assert inbox_groups(operator, InboxFilter())[0].count == 1
