"""The sweeper: publishes handoffs that are due and not being worked on.

It is what makes a lost broker message, a flushed Redis or a killed worker a delay instead of a
loss. It publishes, from the database:
- pending handoffs whose last publish is older than REDISPATCH_SECONDS (the message was lost);
- retries whose time has come (waiting_retry, next_attempt_at passed);
- running handoffs whose lease expired (their worker died); the runner counts the crash.
Rows are claimed with SELECT ... FOR UPDATE SKIP LOCKED, so several sweepers never collide.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from pscsync import clock
from pscsync.dispatch import handoffs_publish
from pscsync.models import Handoff


def handoffs_due(now: dt.datetime) -> Q:
    stale_publish = Q(dispatched_at__isnull=True) | Q(
        dispatched_at__lt=now - dt.timedelta(seconds=settings.REDISPATCH_SECONDS)
    )
    waiting = Q(status__in=[Handoff.Status.PENDING, Handoff.Status.WAITING_RETRY], next_attempt_at__lte=now) & (
        stale_publish | Q(dispatched_at__lt=F("next_attempt_at"))
    )
    abandoned = Q(status=Handoff.Status.RUNNING, lease_expires_at__lt=now) & (
        stale_publish | Q(dispatched_at__lt=F("lease_expires_at"))
    )
    return waiting | abandoned


def handoffs_sweep(*, limit: int = 500) -> list[int]:
    """Claim and publish up to `limit` due handoffs. Returns their ids."""
    now = clock.now()
    with transaction.atomic():
        ids = list(
            Handoff.objects.select_for_update(skip_locked=True)
            .filter(handoffs_due(now))
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            Handoff.objects.filter(pk__in=ids).update(dispatched_at=now)
            transaction.on_commit(lambda: handoffs_publish(ids))
    return ids
