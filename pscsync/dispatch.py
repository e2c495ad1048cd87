"""Publishing handoffs to the workers. The broker is a doorbell: a lost ring is rung again by
the sweeper, so publishing never fails the caller."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pscsync.faults import fault_point

log = logging.getLogger(__name__)


def handoffs_publish(handoff_ids: Iterable[int], *, fault_key: str = "") -> None:
    from pscsync.tasks import handoff_run_task

    for handoff_id in handoff_ids:
        fault_point("after_commit_before_publish", fault_key or str(handoff_id))
        try:
            handoff_run_task.delay(handoff_id)
        except Exception:  # the broker is down or full: the sweeper will publish it again
            log.warning("could not publish handoff %s; the sweeper will retry", handoff_id, exc_info=True)
