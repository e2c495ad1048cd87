"""The Celery app. Workers and beat run the same code in the demo and in production."""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import (
    before_task_publish,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_ready,
)
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pscsync.settings")

app = Celery("pscsync")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Readiness (/readyz) knows a worker is alive by its heartbeat row (ops.worker).
from ops.worker import WorkerHeartbeat  # noqa: E402

app.steps["worker"].add(WorkerHeartbeat)

# Structured logs (ops.logs): the publishing request's id travels in the message headers, and a
# task's lines carry it with the handoff id.
from ops import logs as _logs  # noqa: E402

before_task_publish.connect(_logs.celery_publish_headers, weak=False)
task_prerun.connect(_logs.celery_task_started, weak=False)
task_postrun.connect(_logs.celery_task_finished, weak=False)

log = logging.getLogger("pscsync.worker")

# Connections are reused across tasks (CELERY_DB_REUSE_MAX); like Django around a request, drop
# one that is broken or past CONN_MAX_AGE before and after each task, so no task inherits it.
task_prerun.connect(close_old_connections, weak=False)
task_postrun.connect(close_old_connections, weak=False)


@worker_ready.connect
@worker_process_init.connect
def _startup_objects_freeze(**kwargs: object) -> None:
    """Once the worker (or a prefork child) has loaded its code, keep the start-up objects out of
    the garbage collector's full collections (ops.runtime)."""
    from ops.runtime import startup_objects_freeze

    startup_objects_freeze()


@worker_init.connect
def _concurrency_record(sender: object = None, **kwargs: object) -> None:
    """The worker's threads or children (-c), before prefork forks them: a routed batch is
    published as at most this many messages (pscsync.dispatch.wake_limit)."""
    from pscsync import dispatch

    dispatch.worker_concurrency = int(getattr(sender, "concurrency", 0) or 0)


@worker_ready.connect
def _check_effective_timings(sender: object = None, **kwargs: object) -> None:
    """Log, and refuse to run with, queue timings that would redeliver running tasks.

    Celery has ignored configured visibility timeouts before (celery#7651), so we read back the
    values the worker actually uses rather than trusting the settings file.
    """
    conf = app.conf
    options = conf.broker_transport_options or {}
    hard = conf.task_time_limit
    visibility = options.get("visibility_timeout")
    log.info(
        "queue timings: task_time_limit=%s visibility_timeout=%s acks_late=%s reject_on_worker_lost=%s prefetch=%s",
        hard,
        visibility,
        conf.task_acks_late,
        conf.task_reject_on_worker_lost,
        conf.worker_prefetch_multiplier,
    )
    problems = []
    if not (conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1):
        problems.append("acks_late, reject_on_worker_lost and prefetch 1 must all be on")
    if visibility is not None and hard is not None and hard >= visibility - 30:
        problems.append(f"task_time_limit {hard} s is not at least 30 s below visibility_timeout {visibility} s")
    if problems:
        log.critical("refusing to run: %s", "; ".join(problems))
        raise SystemExit(2)
