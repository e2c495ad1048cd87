"""Celery tasks of the workbench: thin, take ids, safe to repeat."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="remediation.tasks.bulk_job_task")
def bulk_job_task(job_id: int) -> str:
    from remediation.services import bulk_job_run

    return bulk_job_run(job_id)


@shared_task(name="remediation.tasks.exceptions_reconcile_task")
def exceptions_reconcile_task() -> int:
    from remediation.services import exceptions_reconcile

    return exceptions_reconcile()


@shared_task(name="remediation.tasks.compensation_run_task")
def compensation_run_task(compensation_id: int) -> str:
    from remediation.services import compensation_run

    return compensation_run(compensation_id)
