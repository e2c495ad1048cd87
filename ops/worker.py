"""The worker's heartbeat: a bootstep that stamps `worker:<hostname>` every few seconds from the
worker's own timer (so a wedged event loop stops beating), and removes the row on a clean stop."""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

log = logging.getLogger("pscsync.worker")


def _beat(hostname: str) -> None:
    from django.db import close_old_connections

    from ops.health import heartbeat_record, worker_heartbeat_name

    try:
        close_old_connections()
        heartbeat_record(name=worker_heartbeat_name(hostname))
    except Exception:  # a missed beat is what readiness reports; the worker itself goes on
        log.exception("worker %s could not record its heartbeat", hostname)


class WorkerHeartbeat(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker: Any) -> None:
        from django.conf import settings

        _beat(worker.hostname)
        self.tref = worker.timer.call_repeatedly(settings.WORKER_HEARTBEAT_SECONDS, _beat, (worker.hostname,))

    def stop(self, worker: Any) -> None:
        from ops.health import heartbeat_forget, worker_heartbeat_name

        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        try:
            heartbeat_forget(name=worker_heartbeat_name(worker.hostname))
        except Exception:  # the row then ages out
            log.exception("worker %s could not remove its heartbeat", worker.hostname)
