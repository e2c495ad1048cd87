"""The sweeper: publishes handoffs that are due and not being worked on.

It is what makes a lost broker message, a flushed Redis or a killed worker a delay instead of a
loss. It publishes, from the database:
- pending handoffs whose last publish is older than REDISPATCH_SECONDS (the message was lost), and
  older than the oldest message still waiting in the queue (a message behind it is waiting, not
  lost: a long queue must not breed duplicate deliveries);
- retries whose time has come (waiting_retry, next_attempt_at passed);
- running handoffs whose lease expired (their worker died); the runner counts the crash.
Due waiting handoffs are published together, as routing publishes them (a few messages wake the
workers, whose claims take them all); each abandoned one has its own message (only a message
naming it takes it over). When the queue is empty and nothing was due, it still wakes workers if
handoffs are runnable: a worker killed before claiming all of a batch left no message for them.
Rows are claimed with SELECT ... FOR UPDATE SKIP LOCKED, so several sweepers never collide, in
batches of SWEEP_BATCH pushed in one Redis pipeline (pscsync.dispatch.handoffs_publish), batch
after batch within one beat tick (handoffs_sweep_all), so a lost queue of a million is queued
again in minutes.

It does the same for the intake's doorbell (events_sweep): events stored but not routed whose
ring is older than REDISPATCH_SECONDS and than the oldest entry still on the doorbell are rung
again; and if entries wait on the doorbell it wakes a worker (one whose drain was killed leaves
them there).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from pscsync import clock
from pscsync.dispatch import (
    doorbell_state,
    events_ring,
    events_wake,
    handoffs_publish,
    handoffs_wake,
    queue_head_published_at,
    wake_count,
    wake_limit,
)
from pscsync.models import Event, Handoff
from pscsync.runner import handoffs_runnable


def handoffs_due(now: dt.datetime, *, waiting_since: dt.datetime | None = None) -> Q:
    """Handoffs to publish again. `waiting_since`: when the oldest message still in the queue was
    published; a handoff published after it is waiting behind it, not lost, however long the
    queue (a backlog must not breed duplicate deliveries)."""
    cutoff = now - dt.timedelta(seconds=settings.REDISPATCH_SECONDS)
    if waiting_since is not None:
        cutoff = min(cutoff, waiting_since - QUEUE_CLOCK_MARGIN)
    stale_publish = Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=cutoff)
    waiting = Q(status__in=[Handoff.Status.PENDING, Handoff.Status.WAITING_RETRY], next_attempt_at__lte=now) & (
        stale_publish | Q(dispatched_at__lt=F("next_attempt_at"))
    )
    abandoned = Q(status=Handoff.Status.RUNNING, lease_expires_at__lt=now) & (
        stale_publish | Q(dispatched_at__lt=F("lease_expires_at"))
    )
    return waiting | abandoned


# dispatched_at is taken at commit, the message's publish time a moment later (another process's
# clock for the same time source): a handoff counts as behind the head only when clearly after it.
QUEUE_CLOCK_MARGIN = dt.timedelta(seconds=1)
SWEEP_BATCH = 2000


def handoffs_sweep(*, limit: int = SWEEP_BATCH) -> list[int]:
    """Claim and publish up to `limit` due handoffs. Returns their ids.

    A running handoff whose lease expired is taken over only by a message naming it (the
    takeover counts the crash), so each gets its own; the waiting ones are claimed by any
    worker, so they are published together (handoffs_publish, due)."""
    now = clock.now()
    head = queue_head_published_at()
    waiting_since = dt.datetime.fromtimestamp(head, tz=dt.UTC) if head is not None else None
    with transaction.atomic():
        rows = list(
            Handoff.objects.select_for_update(skip_locked=True)
            .filter(handoffs_due(now, waiting_since=waiting_since))
            .order_by("next_attempt_at")
            .values_list("pk", "status")[:limit]
        )
        ids = [pk for pk, _ in rows]
        if ids:
            Handoff.objects.filter(pk__in=ids).update(dispatched_at=now)
            abandoned = [pk for pk, status in rows if status == Handoff.Status.RUNNING]
            waiting = [pk for pk, status in rows if status != Handoff.Status.RUNNING]
            transaction.on_commit(lambda: _publish(abandoned, waiting))
    if head is None and not ids:
        _idle_wake(now)
    return ids


def _publish(abandoned: list[int], waiting: list[int]) -> None:
    handoffs_publish(abandoned)
    handoffs_publish(waiting, due=True)


def _idle_wake(now: dt.datetime) -> None:
    """The queue is empty, yet handoffs may be runnable with no message left to wake a worker:
    a batch published with one message for several (handoffs_publish, due) whose worker was
    killed before claiming them all. Their publish is recent, so they are not due again for
    REDISPATCH_SECONDS: wake workers for them now. At most one message per worker each tick,
    and none when nothing is runnable (while workers are busy, a wake waits for one to be free)."""
    runnable = Handoff.objects.filter(handoffs_runnable(now)).values_list("pk", flat=True)
    found = len(runnable[: settings.RUN_BATCH * wake_limit()])
    if found:
        handoffs_wake(wake_count(found))


def handoffs_sweep_all(*, budget_seconds: float | None = None, batch: int = SWEEP_BATCH) -> int:
    """Sweep batch after batch until nothing is due or the time budget is spent (so one beat tick
    can re-queue a whole lost queue: 1M handoffs in minutes, not hours). Returns how many."""
    budget = budget_seconds if budget_seconds is not None else max(settings.SWEEP_SECONDS * 0.8, 1.0)
    return _batches(handoffs_sweep, budget=budget, batch=batch)


def _batches(sweep: Callable[..., list[int]], *, budget: float, batch: int) -> int:
    """Call sweep(limit=batch) until a batch comes back short or the budget is spent."""
    started = time.monotonic()
    total = 0
    while time.monotonic() - started < budget:
        swept = len(sweep(limit=batch))
        total += swept
        if swept < batch:
            break
    return total


def events_sweep(*, limit: int = SWEEP_BATCH) -> list[int]:
    """Ring again for up to `limit` stored events whose ring was lost; wake a worker if entries
    wait on the doorbell. Returns the ids rung."""
    now = clock.now()
    waiting, oldest = doorbell_state()
    cutoff = now - dt.timedelta(seconds=settings.REDISPATCH_SECONDS)
    if oldest is not None:
        # An event rung after the oldest entry still waiting is behind it, not lost.
        cutoff = min(cutoff, dt.datetime.fromtimestamp(oldest, tz=dt.UTC) - QUEUE_CLOCK_MARGIN)
    with transaction.atomic():
        ids = list(
            Event.objects.select_for_update(skip_locked=True)
            .filter(status=Event.Status.RECEIVED)
            .filter(Q(rung_at__isnull=True) | Q(rung_at__lt=cutoff))
            .order_by("rung_at")
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            Event.objects.filter(pk__in=ids).update(rung_at=now)
            transaction.on_commit(lambda: events_ring(ids))
    if not ids and waiting:
        events_wake()
    return ids


def events_sweep_all(*, budget_seconds: float, batch: int = SWEEP_BATCH) -> int:
    return _batches(events_sweep, budget=budget_seconds, batch=batch)
