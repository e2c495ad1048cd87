"""The sweeper against real Redis: a message waiting in a long queue is not published again; a lost
one is; a lost queue is re-published in bulk, each handoff once."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from django.conf import settings
from django.test import TestCase

from pscsync import clock
from pscsync.dispatch import PUBLISHED_AT_HEADER, queue_head_published_at
from pscsync.models import Event, Handoff
from pscsync.sweeper import handoffs_sweep, handoffs_sweep_all

pytestmark = pytest.mark.skipif(
    not os.getenv("CELERY_BROKER_URL", "").startswith("redis"), reason="needs the Redis broker"
)
NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


@pytest.fixture
def frozen():
    c = clock.FrozenClock(NOW)
    clock.use(c)
    yield c
    clock.use(None)


@pytest.fixture
def queue():
    """The handoffs' queue in this test's Redis db, emptied before and after."""
    from pscsync.celery import app

    with app.connection_for_write() as connection:
        client = connection.default_channel.client
        name = app.conf.task_default_queue
        client.delete(name)
        yield client, name
        client.delete(name)


def pending(echo_connection, n: int, dispatched: dt.datetime) -> list[int]:
    events = Event.objects.bulk_create(
        Event(
            connection=echo_connection,
            source_event_id=f"sweep-{dispatched.timestamp()}-{i}",
            flow="echo",
            business_key=f"SWEEP-{dispatched.timestamp()}-{i}",
            occurred_at=dispatched,
            received_at=dispatched,
            raw_body="{}",
        )
        for i in range(n)
    )
    rows = Handoff.objects.bulk_create(
        Handoff(
            flow="echo",
            business_key=e.business_key,
            source_connection=echo_connection,
            trigger_event=e,
            business_started_at=dispatched,
            created_at=dispatched,
            next_attempt_at=dispatched,
            dispatched_at=dispatched,
        )
        for e in events
    )
    return [h.pk for h in rows]


@pytest.mark.django_db
def test_a_handoff_behind_a_waiting_message_is_not_published_again(
    echo_connection,
    frozen,
    queue,
    monkeypatch,
) -> None:
    client, name = queue
    published: list[int] = []
    monkeypatch.setattr("pscsync.sweeper.handoffs_publish", lambda ids: published.extend(ids))
    window = dt.timedelta(seconds=settings.REDISPATCH_SECONDS)
    lost = pending(echo_connection, 1, NOW - window * 5)  # before the queue's head: lost
    waiting = pending(echo_connection, 1, NOW - window * 2)  # after it: still in the queue
    # The oldest message still waiting was published 3 windows ago (a long queue).
    head = {"headers": {PUBLISHED_AT_HEADER: (NOW - window * 3).timestamp()}, "body": ""}
    client.lpush(name, json.dumps(head))
    client.lpush(name, json.dumps({"headers": {PUBLISHED_AT_HEADER: NOW.timestamp()}, "body": ""}))
    assert queue_head_published_at() == (NOW - window * 3).timestamp()
    with TestCase.captureOnCommitCallbacks(execute=True):
        assert handoffs_sweep() == lost
    assert published == lost
    # The queue drained (Redis lost it, or the workers took it all): the one behind is due now.
    client.delete(name)
    published.clear()
    with TestCase.captureOnCommitCallbacks(execute=True):
        assert handoffs_sweep() == waiting
    assert published == waiting


@pytest.mark.django_db
def test_a_lost_queue_is_published_again_in_bulk_each_handoff_once(
    echo_connection,
    frozen,
    queue,
) -> None:
    client, name = queue
    ids = pending(echo_connection, 3000, NOW - dt.timedelta(seconds=settings.REDISPATCH_SECONDS * 2))
    with TestCase.captureOnCommitCallbacks(execute=True):
        assert handoffs_sweep_all(batch=1000, budget_seconds=120) == 3000
    messages = [json.loads(m) for m in client.lrange(name, 0, -1)]
    assert len(messages) == 3000
    assert sorted(m["headers"]["argsrepr"] for m in messages) == sorted(f"({i},)" for i in ids)
    # Published just now: nothing is due again, and the queue's head says so.
    assert handoffs_sweep() == []
    assert queue_head_published_at() == NOW.timestamp()
