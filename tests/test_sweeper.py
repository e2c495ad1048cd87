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
from pscsync.dispatch import DOORBELL, PUBLISHED_AT_HEADER, queue_head_published_at
from pscsync.models import Event, Handoff
from pscsync.sweeper import handoffs_sweep, handoffs_sweep_all
from tests.helpers import status_force

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
def new_process(monkeypatch):
    """This process's runner has timed no handoff yet (its Pace): its claims take one at a time."""
    from pscsync import runner

    pace = runner.Pace()
    monkeypatch.setattr(runner, "_pace", pace)
    return pace


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
    monkeypatch.setattr("pscsync.sweeper.handoffs_publish", lambda ids, **kw: published.extend(ids))
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
def test_a_lost_queue_is_published_again_in_bulk_as_a_few_messages_per_batch(
    echo_connection,
    frozen,
    queue,
    settings,
    new_process,
) -> None:
    settings.WAKE_WORKERS = 4
    client, name = queue
    ids = pending(echo_connection, 3000, NOW - dt.timedelta(seconds=settings.REDISPATCH_SECONDS * 2))
    with TestCase.captureOnCommitCallbacks(execute=True):
        assert handoffs_sweep_all(batch=1000, budget_seconds=120) == 3000
    assert set(Handoff.objects.values_list("dispatched_at", flat=True)) == {NOW}
    messages = [json.loads(m) for m in client.lrange(name, 0, -1)]
    # Three batches of 1,000, each as 4 messages (one per worker: claims of one would take 1,000
    # messages), naming the handoffs 0, 250, 500 and 750 of its batch (in next_attempt_at order,
    # all equal here, so read from the messages) ...
    named = sorted(int(m["headers"]["argsrepr"].strip("(,)")) for m in messages if m["headers"]["argsrepr"] != "(0,)")
    assert len(named) == 12 and set(named) <= set(ids)
    # ... and, as the batches' messages go out only when this test's transaction "commits", the
    # last sweep saw an empty queue and runnable handoffs: it woke the 4 workers as well.
    assert [m["headers"]["argsrepr"] for m in messages].count("(0,)") == 4
    # Published just now: nothing is due again, and the queue's head says so.
    assert handoffs_sweep() == []
    assert queue_head_published_at() == NOW.timestamp()


@pytest.mark.django_db
def test_an_abandoned_handoff_gets_a_message_of_its_own_the_waiting_ones_share_theirs(
    echo_connection,
    frozen,
    queue,
    settings,
    new_process,
) -> None:
    """Only a message naming a running handoff whose lease expired takes it over (the claim does
    not), so each has its own; due waiting handoffs are claimed by any worker."""
    settings.WAKE_WORKERS = 2
    client, name = queue
    old = NOW - dt.timedelta(seconds=settings.REDISPATCH_SECONDS * 2)
    waiting = pending(echo_connection, 5, old)
    abandoned = pending(echo_connection, 3, old - dt.timedelta(seconds=1))
    for pk in abandoned:
        status_force(pk, "running", lease_owner="dead", lease_expires_at=old)
    with TestCase.captureOnCommitCallbacks(execute=True):
        assert sorted(handoffs_sweep()) == sorted(waiting + abandoned)
    named = [int(json.loads(m)["headers"]["argsrepr"].strip("(,)")) for m in client.lrange(name, 0, -1)]
    assert len(named) == 3 + 2  # one per abandoned handoff; the 5 waiting ones as 2 (WAKE_WORKERS)
    assert set(abandoned) <= set(named) and len(set(named) & set(waiting)) == 2


@pytest.mark.django_db
def test_an_empty_queue_with_runnable_handoffs_wakes_the_workers_and_nothing_else_does(
    echo_connection,
    frozen,
    queue,
    settings,
    new_process,
) -> None:
    """A worker killed before claiming all of a batch published as one message leaves handoffs
    that are runnable, recently published (not due again for REDISPATCH_SECONDS) and named in no
    message: the sweeper wakes workers for them when it finds the queue empty."""
    settings.WAKE_WORKERS = 3
    client, name = queue
    assert handoffs_sweep() == [] and client.llen(name) == 0  # nothing runnable: no message
    ids = pending(echo_connection, 5, NOW)  # published just now, their messages gone
    assert handoffs_sweep() == []
    assert [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(name, 0, -1)] == ["(0,)"] * 3
    # While those wait in the queue, the next tick adds none.
    assert handoffs_sweep() == [] and client.llen(name) == 3
    # Reserved by a live worker: not runnable, so an empty queue wakes nobody.
    client.delete(name)
    Handoff.objects.filter(pk__in=ids).update(lease_owner="w", lease_expires_at=NOW + dt.timedelta(minutes=5))
    assert handoffs_sweep() == [] and client.llen(name) == 0


@pytest.mark.django_db
def test_a_bulk_message_is_what_apply_async_would_have_pushed(queue) -> None:
    """The sweeper's pre-serialised messages (one template, one pipeline) must be the message
    Celery itself pushes, apart from the ids: a Celery or kombu upgrade that changes the layout
    fails here, not in production with messages no worker understands."""
    from pscsync.celery import app
    from pscsync.dispatch import handoff_messages
    from pscsync.tasks import handoff_run_task

    client, name = queue
    handoff_run_task.apply_async((4711,), headers={PUBLISHED_AT_HEADER: 1.5})
    celerys = json.loads(client.rpop(name))
    ours = json.loads(handoff_messages([4711], published_at=1.5)[0])

    def without_ids(message: dict) -> dict:
        message = json.loads(json.dumps(message))
        for key in ("id", "root_id", "origin"):
            message["headers"].pop(key)
        for key in ("correlation_id", "delivery_tag"):
            message["properties"].pop(key)
        return message

    assert without_ids(ours) == without_ids(celerys)
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": app.conf.task_default_queue}
    # Two messages never share a task id or a delivery tag (the worker acks by tag).
    pair = [json.loads(m) for m in handoff_messages([1, 2], published_at=1.5)]
    assert pair[0]["headers"]["id"] != pair[1]["headers"]["id"]
    assert pair[0]["properties"]["delivery_tag"] != pair[1]["properties"]["delivery_tag"]
    assert [m["headers"]["argsrepr"] for m in pair] == ["(1,)", "(2,)"]


def received(echo_connection, n: int, rung: dt.datetime, prefix: str) -> list[int]:
    """n events stored by intake and not routed yet, their doorbell rung at `rung`."""
    from connectors.registry import connector_for
    from pscsync.intake import events_accept
    from tests.helpers import change_body

    changes = [
        change
        for i in range(n)
        for change in connector_for(echo_connection).parse_webhook(
            event_id=f"{prefix}-{i}", body=change_body(f"{prefix}-{i}")
        )
    ]
    results = events_accept(connection=echo_connection, changes=changes, headers={}, raw_body="{}")
    ids = [r.event.pk for r in results]
    Event.objects.filter(pk__in=ids).update(rung_at=rung)
    return ids


@pytest.mark.django_db(transaction=True)
def test_an_accepted_event_whose_doorbell_redis_lost_is_found_in_postgresql_and_routed(
    echo_connection,
    frozen,
    queue,
    monkeypatch,
) -> None:
    from pscsync.dispatch import DOORBELL, doorbell_state
    from pscsync.intake import events_drain
    from pscsync.sweeper import events_sweep

    client, name = queue
    client.delete(DOORBELL)
    published: list[int] = []
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: published.extend(ids))
    window = dt.timedelta(seconds=settings.REDISPATCH_SECONDS)
    # Accepted (2xx) and rung: the doorbell holds the three ids, and one wake message was queued.
    ids = received(echo_connection, 3, NOW, "LOST")
    assert doorbell_state() == (3, NOW.timestamp())
    assert client.llen(name) == 1  # the wake: the list was empty, so no worker was on it
    # Redis loses everything. Within the window nothing is rung again (it may still be on its way).
    client.flushdb()
    assert events_sweep() == []
    frozen.advance(window.total_seconds() + 1)
    assert sorted(events_sweep()) == sorted(ids)  # found from PostgreSQL: still "received"
    assert doorbell_state()[0] == 3 and client.llen(name) == 1  # rung, and a worker woken
    # Rung just now: the next sweep does not ring them again.
    assert events_sweep() == []
    # A worker drains the doorbell: each event routed once, its handoff published.
    assert events_drain() == 3
    assert sorted(Handoff.objects.values_list("trigger_event_id", flat=True)) == sorted(ids)
    assert sorted(published) == sorted(Handoff.objects.values_list("pk", flat=True))
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"accepted"}
    client.delete(DOORBELL)


@pytest.mark.django_db(transaction=True)
def test_an_event_waiting_on_a_long_doorbell_is_not_rung_again(
    echo_connection,
    frozen,
    queue,
) -> None:
    from pscsync.dispatch import DOORBELL
    from pscsync.sweeper import events_sweep

    client, _name = queue
    client.delete(DOORBELL)
    window = dt.timedelta(seconds=settings.REDISPATCH_SECONDS)
    lost = received(echo_connection, 1, NOW - window * 5, "OLD")  # rung before the oldest entry: lost
    client.delete(DOORBELL)
    waiting = received(echo_connection, 1, NOW - window * 2, "MID")  # rung after it: still waiting
    client.delete(DOORBELL)
    # The oldest entry still on the doorbell was rung 3 windows ago (a long backlog).
    client.lpush(DOORBELL, f"999999@{(NOW - window * 3).timestamp()}")
    assert events_sweep() == lost
    # The doorbell drained: the one behind is due now; entries left wake a worker every sweep.
    client.delete(DOORBELL)
    assert events_sweep() == waiting
    client.delete(DOORBELL)


@pytest.mark.django_db(transaction=True)
def test_a_routed_batch_is_a_few_messages_whose_claims_run_every_handoff_once(
    echo_connection,
    echo,
    frozen,
    queue,
    settings,
    new_process,
) -> None:
    """Seven events routed together: 2 messages (claims of 4, a second of work at 0.25 s each),
    naming the 1st and the 4th handoff. A handoff named in no message is not published again
    while the batch's messages wait in a long queue; the first message's worker runs all seven,
    each once; the second finds nothing."""
    from pscsync.intake import events_route
    from pscsync.tasks import handoff_run_task

    new_process.seconds = 0.25
    settings.WAKE_WORKERS = 8
    client, name = queue
    events = received(echo_connection, 7, NOW, "BATCH")
    client.delete(name)  # the doorbell's wake: this test routes by hand
    opened = events_route(events)
    assert len(opened) == 7
    messages = [json.loads(m) for m in reversed(client.lrange(name, 0, -1))]  # oldest first
    assert [m["headers"]["argsrepr"] for m in messages] == [f"({opened[0]},)", f"({opened[3]},)"]
    # Three windows later the messages still wait (a long queue): nothing is published again,
    # named or not, and nothing woken.
    frozen.advance(settings.REDISPATCH_SECONDS * 3)
    assert handoffs_sweep() == [] and client.llen(name) == 2
    # Delivered: the first message's worker claims and runs all seven; the second runs none.
    ran = [handoff_run_task(int(m["headers"]["argsrepr"].strip("(,)"))) for m in messages]
    assert ran == [7, 0]
    assert set(Handoff.objects.filter(pk__in=opened).values_list("status", flat=True)) == {"succeeded"}
    creates = echo.stats()["creates"]
    assert len(creates) == 7 * 3 and set(creates.values()) == {1}
    client.delete(name, DOORBELL)


@pytest.mark.django_db
def test_a_worker_out_of_time_wakes_another_for_what_may_be_left(queue) -> None:
    from pscsync.runner import handoffs_claim_run

    client, name = queue
    assert handoffs_claim_run(worker="w1", budget_seconds=0) == 0
    assert [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(name, 0, -1)] == ["(0,)"]
    client.delete(name)
    assert handoffs_claim_run(worker="w1") == 0  # nothing runnable: done, no wake
    assert client.llen(name) == 0
