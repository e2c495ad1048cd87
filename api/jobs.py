"""Bulk jobs: one action over many handoffs, run by a worker, polled by the client.

The job row is the ledger: each processed handoff is written to `results` as it finishes, so a
job taken over after a worker died resumes after the last one done and never acts twice."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q

from api.models import BulkJob
from pscsync import clock
from pscsync.access import WORK_EXCEPTIONS
from pscsync.models import Handoff
from pscsync.selectors import handoffs_visible_to
from remediation import services

log = logging.getLogger(__name__)
MAX_JOB_SIZE = 1000
# A running job whose worker made no progress for this long is taken over.
STALLED_AFTER = dt.timedelta(minutes=10)


class JobRefused(ValueError):
    """The job cannot be created; `missing` lists ids the user cannot see (or that do not exist)."""

    def __init__(self, message: str, missing: list[int] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


def _runner(action: str) -> Callable[..., Handoff]:
    return {
        BulkJob.Action.RESUBMIT: services.exception_resubmit,
        BulkJob.Action.RESOLVE: services.exception_resolve,
        BulkJob.Action.CANCEL: services.exception_cancel,
        BulkJob.Action.REPLAY: services.handoff_replay,
    }[action]


@transaction.atomic
def bulk_job_create(*, actor: AbstractBaseUser, action: str, handoff_ids: list[int], comment: str = "") -> BulkJob:
    ids = list(dict.fromkeys(handoff_ids))
    if not ids:
        raise JobRefused("name at least one handoff")
    if len(ids) > MAX_JOB_SIZE:
        raise JobRefused(f"at most {MAX_JOB_SIZE} handoffs per job")
    if action in (BulkJob.Action.RESOLVE, BulkJob.Action.CANCEL) and not comment.strip():
        raise JobRefused("say why: a comment is required to resolve or cancel")
    visible = set(handoffs_visible_to(actor).filter(pk__in=ids).values_list("pk", flat=True))
    missing = [i for i in ids if i not in visible]
    if missing:
        # Same answer for "not yours" and "does not exist": a job never confirms another entity's ids.
        raise JobRefused("some handoffs were not found", missing=missing)
    job = BulkJob.objects.create(
        action=action, created_by=actor, handoff_ids=ids, comment=comment, created_at=clock.now()
    )
    job_id = job.pk
    transaction.on_commit(lambda: _enqueue(job_id))
    return job


def _enqueue(job_id: int) -> None:
    from api.tasks import bulk_job_run_task

    try:
        bulk_job_run_task.delay(job_id)
    except Exception:  # the broker is down: the sweep publishes it again
        log.warning("could not publish bulk job %s; the sweep will publish it", job_id, exc_info=True)


def bulk_job_run(*, job_id: int) -> str:
    now = clock.now()
    claimed = BulkJob.objects.filter(
        Q(status=BulkJob.Status.QUEUED) | Q(status=BulkJob.Status.RUNNING, started_at__lt=now - STALLED_AFTER),
        pk=job_id,
    ).update(status=BulkJob.Status.RUNNING, started_at=now)
    if claimed != 1:
        return "skipped"
    job = BulkJob.objects.select_related("created_by").get(pk=job_id)
    actor = job.created_by
    done = {r["handoff"] for r in job.results}
    run = _runner(job.action)
    for handoff_id in job.handoff_ids:
        if handoff_id in done:
            continue
        result = _run_one(job, actor, run, handoff_id)
        job.results.append(result)
        job.succeeded += int(result["ok"])
        job.failed += int(not result["ok"])
        # Progress is visible to pollers after each handoff; started_at doubles as the heartbeat.
        BulkJob.objects.filter(pk=job.pk).update(
            results=job.results, succeeded=job.succeeded, failed=job.failed, started_at=clock.now()
        )
    BulkJob.objects.filter(pk=job.pk).update(status=BulkJob.Status.FINISHED, finished_at=clock.now())
    return "finished"


def _run_one(job: BulkJob, actor: AbstractBaseUser, run: Callable[..., Handoff], handoff_id: int) -> dict[str, Any]:
    # Re-checked at run time: the creator may have lost the role or the entity since.
    if not actor.is_active or not actor.has_perm(WORK_EXCEPTIONS):
        return {"handoff": handoff_id, "ok": False, "detail": "the job's creator may no longer work exceptions"}
    if not handoffs_visible_to(actor).filter(pk=handoff_id).exists():
        return {"handoff": handoff_id, "ok": False, "detail": "not found"}
    kwargs: dict[str, Any] = {"handoff_id": handoff_id, "actor": actor, "comment": job.comment}
    try:
        handoff = run(**kwargs)
    except (services.ActionRefused, services.PayloadInvalid) as exc:
        return {"handoff": handoff_id, "ok": False, "detail": str(exc)}
    detail = f"replayed as handoff {handoff.pk}" if job.action == BulkJob.Action.REPLAY else handoff.status
    return {"handoff": handoff_id, "ok": True, "detail": detail}


def bulk_jobs_sweep() -> list[int]:
    """Publish again jobs whose message was lost (queued a minute ago) or whose worker stalled."""
    now = clock.now()
    ids = list(
        BulkJob.objects.filter(
            Q(status=BulkJob.Status.QUEUED, created_at__lt=now - dt.timedelta(minutes=1))
            | Q(status=BulkJob.Status.RUNNING, started_at__lt=now - STALLED_AFTER)
        ).values_list("pk", flat=True)[:100]
    )
    for job_id in ids:
        _enqueue(job_id)
    return ids
