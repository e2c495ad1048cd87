"""Publishing handoffs to the workers. The broker is a doorbell: a lost ring is rung again by
the sweeper, so publishing never fails the caller."""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from ops.logs import celery_publish_headers
from pscsync import clock
from pscsync.faults import fault_point

log = logging.getLogger(__name__)

# Each message says when it was published (our clock), so the sweeper can tell a message still
# waiting in a long queue from a lost one (queue_head_published_at).
PUBLISHED_AT_HEADER = "pscsync_published_at"


def handoffs_publish(handoff_ids: Iterable[int], *, fault_key: str = "", due: bool = False) -> None:
    """Publish handoffs to the workers. A failed push is logged: the sweeper publishes again.

    By default one message per handoff, naming it: the worker takes that one even when a claim
    would not (no due time, or running with its lease expired: the takeover). `due=True` is for
    callers that know every handoff is pending or waiting to retry, due and free (routing, the
    sweeper's lost messages): any claim takes them, so only as many messages as will wake the
    workers that claim them are published (wake_count), each naming one; the rest are claimed by
    the same workers' next claims. A message per handoff mostly found its handoff already run by
    another's batch and cost the worker Celery's receive, ack and trace (about 1 ms of CPU) for
    nothing (docs/benchmarks.md)."""
    ids = list(handoff_ids)
    if not ids:
        return
    for handoff_id in ids:
        fault_point("after_commit_before_publish", fault_key or str(handoff_id))
    if due:
        count = wake_count(len(ids))
        ids = [ids[i * len(ids) // count] for i in range(count)]  # spread over the batch
    _publish(ids)


def handoffs_wake(count: int = 1) -> None:
    """Wake `count` workers to claim whatever is runnable, naming no handoff (a worker whose time
    ran out with work left, the sweeper finding runnable handoffs and an empty queue)."""
    if count > 0:
        _publish([NO_HANDOFF] * count)


# The handoff a wake names: none (ids start at 1), so the claim takes only what is runnable.
NO_HANDOFF = 0


def wake_count(n: int) -> int:
    """Messages for n due handoffs: one per claim this process would make (its runner's Pace: a
    second of work each), at most as many as the worker runs at once, so every idle thread or
    child wakes and none finds its message's work already taken."""
    from pscsync.runner import claim_size

    return max(1, min(n, math.ceil(n / claim_size()), wake_limit()))


# The worker's concurrency, as it started (-c): set in the worker (pscsync.celery), 0 elsewhere.
worker_concurrency = 0


def wake_limit() -> int:
    """At most this many messages per published batch: PSCSYNC_WAKE_WORKERS when set (several
    worker processes: their threads in all), else this worker's concurrency."""
    from django.conf import settings

    return settings.WAKE_WORKERS or worker_concurrency or settings.WORKER_CONCURRENCY


def _publish(ids: list[int]) -> None:
    """On Redis the messages are built from one template and pushed in one pipeline (a sweep
    publishes thousands: Celery's apply_async costs about 0.6 ms of CPU per message, which alone
    capped a sweep below 2,000/s); on any other broker one apply_async each over one connection."""
    if not _redis_broker():
        _publish_each(ids)
        return
    try:
        messages = handoff_messages(ids, published_at=clock.now().timestamp())
    except Exception:
        log.exception("could not build %d handoff message(s) in bulk; publishing one by one", len(ids))
        _publish_each(ids)
        return
    try:
        _redis_push(messages)
    except Exception:
        log.warning("could not publish %d handoff(s); the sweeper will retry", len(ids), exc_info=True)


def _publish_each(ids: list[int]) -> None:
    from pscsync.celery import app
    from pscsync.tasks import handoff_run_task

    headers = {PUBLISHED_AT_HEADER: clock.now().timestamp()}
    try:
        with app.producer_or_acquire() as producer:
            for handoff_id in ids:
                try:
                    handoff_run_task.apply_async((handoff_id,), producer=producer, headers=headers)
                except Exception:  # the broker is down or full: the sweeper will publish it again
                    log.warning("could not publish handoff %s; the sweeper will retry", handoff_id, exc_info=True)
    except Exception:  # no connection to the broker at all
        log.warning("could not publish %d handoff(s); the sweeper will retry", len(ids), exc_info=True)


def _redis_broker() -> bool:
    from django.conf import settings

    return settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://"))


_broker_clients: dict[str, Any] = {}
_broker_clients_lock = threading.Lock()


def _broker() -> Any:
    """One Redis client per process for the broker's lists (its pool is thread-safe and starts
    again in a forked child). Opening a kombu connection per push, as `app.connection_for_write()`
    does, cost every webhook a new TCP connection and Redis handshake: about a third of the
    request's CPU in process (measured, docs/benchmarks.md)."""
    import redis
    from django.conf import settings

    url = settings.CELERY_BROKER_URL
    with _broker_clients_lock:
        client = _broker_clients.get(url)
        if client is None:
            client = _broker_clients[url] = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    return client


# Values per LPUSH: one command per chunk keeps each under Redis's argument limits and the
# pipeline's buffer small, while a sweep of 2,000 is still one round trip.
PUSH_CHUNK = 500


def handoff_messages(ids: list[int], *, published_at: float) -> list[str]:
    """The broker messages that apply_async would push for these handoffs, serialised.

    Celery builds the headers once (as_task_v2: task name, time limits, origin, ignore_result);
    each message then differs only in its ids, its argument and its body. The layout (Celery's
    task protocol 2 in kombu's Redis envelope) is checked against a real apply_async message by
    tests/test_sweeper.py, so a Celery or kombu upgrade that changes it fails there."""
    from pscsync.celery import app
    from pscsync.tasks import handoff_run_task

    queue = app.conf.task_default_queue
    template = app.amqp.as_task_v2(
        "template",
        handoff_run_task.name,
        args=(0,),
        kwargs={},
        reply_to=app.thread_oid,
        time_limit=app.conf.task_time_limit,
        soft_time_limit=app.conf.task_soft_time_limit,
        ignore_result=handoff_run_task.ignore_result,
        root_id="template",
    )
    headers = {**template.headers, PUBLISHED_AT_HEADER: published_at}
    celery_publish_headers(headers)  # the publishing request's id, as Celery's signal adds it
    properties = {**template.properties, "delivery_mode": 2, "priority": 0, "body_encoding": "base64"}
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    _args, kwargs, embed = template.body
    tail = json.dumps([kwargs, embed])[1:]  # ", {...}]": what follows the arguments in every body
    messages = []
    for handoff_id in ids:
        task_id = str(uuid.uuid4())
        body = f"[[{int(handoff_id)}], {tail}".encode()
        message = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {**headers, "id": task_id, "root_id": task_id, "argsrepr": f"({int(handoff_id)},)"},
            "properties": {**properties, "correlation_id": task_id, "delivery_tag": str(uuid.uuid4())},
        }
        messages.append(json.dumps(message))
    return messages


def _redis_push(messages: list[str]) -> None:
    """Push the messages onto the queue in one pipelined round trip (not a transaction: a push
    that fails half-way leaves the rest to the sweeper, and a message twice is harmless)."""
    from pscsync.celery import app

    queue = app.conf.task_default_queue
    with _broker().pipeline(transaction=False) as pipe:
        for start in range(0, len(messages), PUSH_CHUNK):
            pipe.lpush(queue, *messages[start : start + PUSH_CHUNK])
        pipe.execute()


def queue_head_published_at() -> float | None:
    """When the oldest message still waiting in the handoffs' queue was published (a timestamp of
    our clock), or None: the queue is empty, or the broker is not Redis, or it cannot be read.

    The queue is first in, first out: a handoff published after the head is still behind it, not
    lost. Celery's Redis transport pushes on the left and workers pop on the right, so the head
    is the list's last element."""
    from django.conf import settings

    from pscsync.celery import app

    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        return None
    try:
        raw = _broker().lindex(app.conf.task_default_queue, -1)
    except Exception:  # unknown: the sweeper falls back on its fixed window
        log.warning("could not read the queue's head", exc_info=True)
        return None
    if raw is None:
        return None
    try:
        return float(json.loads(raw)["headers"][PUBLISHED_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return None  # a message from an older version, or not ours


# --- The intake doorbell ------------------------------------------------------------------------
# Intake stores an event and pushes its id here (one LPUSH, no Celery message); workers take ids
# in batches and route them (pscsync.intake.events_route). Each entry is "<event id>@<when rung>",
# so the sweeper can tell an entry waiting in a long list from a lost one, as for the handoffs'
# queue. The list is only a doorbell: PostgreSQL knows which events are not routed yet (status
# "received"), and the sweeper rings again for them if Redis lost the list.
DOORBELL = "pscsync:events"


def events_ring(event_ids: Iterable[int], *, fault_key: str = "") -> None:
    """Tell the workers these stored events wait to be routed. Never fails the caller: a lost
    ring is rung again by the sweeper (events_due)."""
    ids = [int(i) for i in event_ids]
    if not ids:
        return
    fault_point("after_commit_before_publish", fault_key or str(ids[0]))
    if not _redis_broker():
        _events_route_publish(ids)  # the embedded broker: one small message carries the ids
        return
    stamp = clock.now().timestamp()
    try:
        length = _broker().lpush(DOORBELL, *(f"{i}@{stamp}" for i in ids))
    except Exception:
        log.warning("could not ring for %d event(s); the sweeper will", len(ids), exc_info=True)
        return
    if length == len(ids):
        # The list was empty: no worker is draining it, so wake one. While it is not empty a
        # worker is on it (and the sweeper wakes one every tick it finds entries left).
        events_wake()


def events_wake() -> None:
    _events_route_publish([])


def _events_route_publish(ids: list[int]) -> None:
    from pscsync.tasks import events_route_task

    try:
        events_route_task.apply_async((ids,), headers={PUBLISHED_AT_HEADER: clock.now().timestamp()})
    except Exception:
        log.warning("could not wake a worker for the events' doorbell", exc_info=True)


def events_take(limit: int) -> list[int]:
    """Take up to `limit` event ids off the doorbell, oldest first ([] when empty or not Redis)."""
    if not _redis_broker():
        return []
    raw = _broker().rpop(DOORBELL, limit) or []
    return [int(_entry(value)[0]) for value in raw]


def _entry(value: bytes | str) -> list[str]:
    """A doorbell entry's parts: [event id, when rung]."""
    return (value.decode() if isinstance(value, bytes) else value).split("@", 1)


def doorbell_state() -> tuple[int, float | None]:
    """How many entries wait on the doorbell, and when the oldest was rung (None when empty or
    unreadable; (0, None) when the broker is not Redis)."""
    if not _redis_broker():
        return 0, None
    try:
        with _broker().pipeline(transaction=False) as pipe:
            length, oldest = pipe.llen(DOORBELL).lindex(DOORBELL, -1).execute()
    except Exception:
        log.warning("could not read the events' doorbell", exc_info=True)
        return 0, None
    if not oldest:
        return int(length or 0), None
    try:
        return int(length), float(_entry(oldest)[1])
    except (IndexError, ValueError):
        return int(length), None
