"""Honest outcomes of bulk jobs: a retry is "done" only when the handoff succeeded; one back in
the workbench says it failed again (same cause or another); a retry that cannot help is
confirmed first; a queued job shows its place and an estimate."""

from __future__ import annotations

import pytest

from pscsync.models import Handoff
from remediation.models import BulkJob
from remediation.selectors import job_queue_place, job_results, retry_warnings
from remediation.services import bulk_job_create, bulk_job_run
from tests.flows.conftest import run, trigger, won_deal

pytestmark = pytest.mark.django_db


def _tax_failure(firm, key: str) -> Handoff:
    deal = won_deal(firm, key=key, account={"Tax_Profile__c": None})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION
    return handoff


def test_a_bulk_retry_that_fails_again_says_so(firm, operator) -> None:
    handoffs = [_tax_failure(firm, "81"), _tax_failure(firm, "82")]
    ids = [h.pk for h in handoffs]
    # Nothing changed since they failed (no newer change of the deal arrived): asked first.
    [warning] = retry_warnings(operator, ids)
    assert warning.startswith("2 failed a check of their data") and "will fail again" in warning

    job = bulk_job_create(actor=operator, kind=BulkJob.Kind.RETRY, handoff_ids=ids, reason="try again")
    bulk_job_run(job.pk)
    job.refresh_from_db()
    # Sent back to run, not yet run: nothing is "done" yet.
    assert job_results(job).counts == {"retrying": 2}
    assert not job_results(job).settled
    for handoff in handoffs:
        run(handoff)
    results = job_results(job)
    # Both are back in the workbench with the tax-profile cause they had: the headline says so.
    assert results.counts == {"failed_same": 2}
    assert results.settled
    assert [name for _, name, _ in results.headline] == ["Failed again, same cause"]


def test_a_queued_job_shows_its_place_and_an_estimate(operator, firm) -> None:
    handoffs = [_tax_failure(firm, "83"), _tax_failure(firm, "84")]
    first = bulk_job_create(actor=operator, kind=BulkJob.Kind.ASSIGN, handoff_ids=[handoffs[0].pk])
    second = bulk_job_create(actor=operator, kind=BulkJob.Kind.ASSIGN, handoff_ids=[h.pk for h in handoffs])
    assert job_queue_place(first)["place"] == 1
    queue = job_queue_place(second)
    # One job ahead of it with 1 handoff left, then its own 2: 3 handoffs at the default 0.2 s
    # each (no job has finished yet to measure) is 0.6 s, shown as at least a second.
    assert (queue["place"], queue["ahead"], queue["estimate_seconds"]) == (2, 1, 1.0)
