"""Celery beat that is safe to run twice: only the holder of a lease row in the database publishes.

Celery beat must be exactly one process, or every periodic task is published twice; a single beat
that dies silently stops the sweeper, so nothing re-publishes lost work. Run two (or more): each
ticks, but only the one holding the `beat-leader` lease publishes. The leader renews the lease
every third of its length; a standby takes it over once it has expired (the leader died or lost
the database), and a leader that stops cleanly hands it over at once by expiring it.

The lease is a row, not a PostgreSQL advisory lock, so the embedded demo on SQLite uses the same
code; the conditional UPDATE on the database's own clock is what makes exactly one holder win.
A leader checks that it still holds a lease with at least a third of its length left before every
publish, so two beats never publish in the same interval unless a leader's process stalls for
longer than that third between the check and the publish (a paused VM; see docs/operations.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from typing import Any

from celery.beat import PersistentScheduler
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Q
from django.db.models.functions import Now

from ops.health import BEAT_LEADER
from ops.models import Heartbeat

log = logging.getLogger("pscsync.beat")


def lease_acquire(*, holder: str, seconds: int) -> bool:
    """Take or renew the beat leader lease for `holder`. True when `holder` leads afterwards."""
    expires = Now() + dt.timedelta(seconds=seconds)
    taken = Heartbeat.objects.filter(Q(holder=holder) | Q(expires_at__lte=Now()), name=BEAT_LEADER).update(
        holder=holder, seen_at=Now(), expires_at=expires
    )
    if taken:
        return True
    try:
        with transaction.atomic():
            Heartbeat.objects.create(name=BEAT_LEADER, holder=holder, seen_at=Now(), expires_at=expires)
    except IntegrityError:  # another beat holds it (or created it a moment ago)
        return False
    return True


def lease_release(*, holder: str) -> None:
    """Expire our lease now, so a standby takes over on its next tick instead of after the lease."""
    Heartbeat.objects.filter(name=BEAT_LEADER, holder=holder).update(expires_at=Now())


class LeaderScheduler(PersistentScheduler):
    """PersistentScheduler that publishes only while it holds the beat leader lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.lease_seconds = settings.BEAT_LEASE_SECONDS
        self._renewed_at: float | None = None  # monotonic time of our last successful renewal
        super().__init__(*args, **kwargs)

    def _leads(self) -> bool:
        if self._renewed_at is not None and time.monotonic() - self._renewed_at < self.lease_seconds / 3:
            return True
        try:
            close_old_connections()  # like a request: a connection broken since the last tick is replaced
            leads = lease_acquire(holder=self.holder, seconds=self.lease_seconds)
        except Exception:  # no database: we cannot know we lead, so we must not publish
            log.exception("beat %s cannot reach the database to renew its leader lease", self.holder)
            leads = False
        if leads and self._renewed_at is None:
            log.warning("beat %s leads: it publishes the periodic tasks", self.holder)
        elif not leads and self._renewed_at is not None:
            log.warning("beat %s lost the leader lease: it stands by", self.holder)
        self._renewed_at = time.monotonic() if leads else None
        return leads

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._leads():
            # Stand by: try again well within a lease, so a dead leader is replaced promptly.
            return min(self.max_interval, max(1.0, self.lease_seconds / 3))
        # Never sleep past the next renewal, whatever the schedule says.
        return min(super().tick(*args, **kwargs), self.lease_seconds / 3)

    def close(self) -> None:
        if self._renewed_at is not None:
            try:
                lease_release(holder=self.holder)
                log.warning("beat %s stopped and handed over the leader lease", self.holder)
            except Exception:  # the lease then simply expires
                log.exception("beat %s could not hand over the leader lease", self.holder)
            self._renewed_at = None
        super().close()
