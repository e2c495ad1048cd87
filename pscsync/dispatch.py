"""Publishing handoffs to the workers. The broker is a doorbell: a lost ring is rung again by
the sweeper, so publishing never fails the caller."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from pscsync import clock
from pscsync.faults import fault_point

log = logging.getLogger(__name__)

# Each message says when it was published (our clock), so the sweeper can tell a message still
# waiting in a long queue from a lost one (queue_head_published_at).
PUBLISHED_AT_HEADER = "pscsync_published_at"


def handoffs_publish(handoff_ids: Iterable[int], *, fault_key: str = "") -> None:
    """Publish one message per handoff over one broker connection (a sweep publishes thousands)."""
    from pscsync.celery import app
    from pscsync.tasks import handoff_run_task

    ids = list(handoff_ids)
    if not ids:
        return
    headers = {PUBLISHED_AT_HEADER: clock.now().timestamp()}
    try:
        with app.producer_or_acquire() as producer:
            for handoff_id in ids:
                fault_point("after_commit_before_publish", fault_key or str(handoff_id))
                try:
                    handoff_run_task.apply_async((handoff_id,), producer=producer, headers=headers)
                except Exception:  # the broker is down or full: the sweeper will publish it again
                    log.warning("could not publish handoff %s; the sweeper will retry", handoff_id, exc_info=True)
    except Exception:  # no connection to the broker at all
        log.warning("could not publish %d handoff(s); the sweeper will retry", len(ids), exc_info=True)


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
        with app.connection_for_read() as connection:
            client = connection.default_channel.client
            raw = client.lindex(app.conf.task_default_queue, -1)
    except Exception:  # unknown: the sweeper falls back on its fixed window
        log.warning("could not read the queue's head", exc_info=True)
        return None
    if raw is None:
        return None
    try:
        return float(json.loads(raw)["headers"][PUBLISHED_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return None  # a message from an older version, or not ours
