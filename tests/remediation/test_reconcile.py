"""exceptions_reconcile, run by beat: repairs exceptions left out of step by status changes that
sent no signal, hands lost compensations back to a worker, and costs the same however many
finished handoffs the history holds."""

from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pscsync import clock
from pscsync.models import Handoff
from remediation.models import Compensation, ExceptionStatus, HandoffException
from remediation.services import exceptions_reconcile
from tests.flows.conftest import run, trigger, won_deal
from tests.helpers import status_force

pytestmark = pytest.mark.django_db


def _failed(firm, key: str) -> Handoff:
    deal = won_deal(firm, key=key, account={"Tax_Profile__c": None})
    return run(trigger(firm, "quote-to-project", deal["opportunity"]))


def _history(handoff: Handoff, n: int, start: int) -> None:
    """n finished handoffs like `handoff`: what a year of successful runs leaves behind."""
    Handoff.objects.bulk_create(
        Handoff(
            flow=handoff.flow,
            business_key=f"old-{start + i}",
            source_connection_id=handoff.source_connection_id,
            trigger_event_id=handoff.trigger_event_id,
            status=Handoff.Status.SUCCEEDED,
            business_started_at=handoff.business_started_at,
            created_at=handoff.created_at,
        )
        for i in range(n)
    )


def test_it_is_scheduled_in_beat() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["exceptions-reconcile"]
    assert entry["task"] == "remediation.tasks.exceptions_reconcile_task"
    assert entry["schedule"] == 300.0  # every five minutes: a missed repair shows within minutes


def test_it_repairs_what_bulk_updates_left_out_of_step_and_a_second_run_finds_nothing(firm) -> None:
    succeeded_behind_our_back = _failed(firm, "r1")
    failed_behind_our_back = _failed(firm, "r2")
    retried_then_failed = _failed(firm, "r3")
    # Status changes made with QuerySet.update() send no signal: the exceptions do not follow.
    status_force(succeeded_behind_our_back.pk, Handoff.Status.SUCCEEDED)
    HandoffException.objects.filter(handoff=failed_behind_our_back).delete()
    HandoffException.objects.filter(handoff=retried_then_failed).update(status=ExceptionStatus.IN_PROGRESS)

    assert exceptions_reconcile() == 3

    assert HandoffException.objects.get(handoff=succeeded_behind_our_back).status == ExceptionStatus.RESOLVED
    assert HandoffException.objects.get(handoff=failed_behind_our_back).status == ExceptionStatus.OPEN
    assert HandoffException.objects.get(handoff=retried_then_failed).status == ExceptionStatus.OPEN
    assert exceptions_reconcile() == 0


def test_its_cost_does_not_grow_with_the_finished_history(firm) -> None:
    handoff = _failed(firm, "r4")
    _history(handoff, 20, 0)
    with CaptureQueriesContext(connection) as small:
        assert exceptions_reconcile() == 0
    _history(handoff, 2000, 100)
    with CaptureQueriesContext(connection) as large:
        assert exceptions_reconcile() == 0
    assert len(large.captured_queries) == len(small.captured_queries) <= 6
    # Every statement is narrowed by status to open work, so it can use the status indexes
    # instead of reading each finished handoff.
    narrowed = ("needs_attention", "'open'", "'archived'", "remediation_compensation", "remediation_bulkjob")
    for query in large.captured_queries:
        assert any(text in query["sql"] for text in narrowed), query["sql"]


def test_a_compensation_whose_message_was_lost_is_handed_to_a_worker_again(firm, operator, monkeypatch) -> None:
    handoff = _failed(firm, "r5")
    sent = []
    monkeypatch.setattr("remediation.services._compensation_enqueue", sent.append)
    long_ago = clock.now() - dt.timedelta(minutes=30)
    lost = Compensation.objects.create(handoff=handoff, reason="x", created_at=long_ago)
    fresh = Compensation.objects.create(
        handoff=_failed(firm, "r6"), reason="y", created_at=clock.now(), status=Compensation.Status.QUEUED
    )

    exceptions_reconcile()

    assert sent == [lost.pk]  # the fresh one is still on its way to a worker
    assert fresh.pk not in sent
