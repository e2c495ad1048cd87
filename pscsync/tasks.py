"""Celery tasks: thin, take ids, safe to repeat. The services decide; the lease guards."""

from __future__ import annotations

import os
import socket

from celery import shared_task

from connectors.http import reset_client


def _worker_name(task_id: str | None) -> str:
    # Unique per delivery: a redelivered duplicate of the same message never shares a lease.
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or '-'}"


@shared_task(bind=True, name="pscsync.tasks.handoff_run_task")
def handoff_run_task(self, handoff_id: int) -> int:
    """Run this handoff and whatever else is runnable, claimed in batches (the message is a
    doorbell: a handoff another worker's batch already ran is skipped at once). A wake names no
    handoff (dispatch.NO_HANDOFF): only what is runnable is claimed."""
    from pscsync.dispatch import NO_HANDOFF
    from pscsync.runner import handoffs_claim_run

    first = None if handoff_id == NO_HANDOFF else handoff_id
    return handoffs_claim_run(worker=_worker_name(self.request.id), first=first)


@shared_task(name="pscsync.tasks.events_route_task")
def events_route_task(event_ids: list[int]) -> int:
    """Route events stored by intake: these ids (the embedded broker carries them in the
    message), then whatever waits on the doorbell (Redis), in batches."""
    from pscsync.intake import events_drain, events_route

    events_route(event_ids)
    return len(event_ids) + events_drain()


@shared_task(name="pscsync.tasks.handoffs_sweep_task")
def handoffs_sweep_task() -> int:
    from django.conf import settings

    from ops.health import SWEEPER, heartbeat_record
    from pscsync.sweeper import events_sweep_all, handoffs_sweep_all

    # Events first (a lost doorbell), within a fifth of the tick; then the handoffs.
    events_sweep_all(budget_seconds=max(settings.SWEEP_SECONDS * 0.2, 0.5))
    published = handoffs_sweep_all()
    heartbeat_record(name=SWEEPER)  # readiness: the safety net ran (after the sweep succeeded)
    return published


@shared_task(name="pscsync.tasks.connections_poll_task")
def connections_poll_task() -> int:
    from connectors.models import Connection

    ids = list(Connection.objects.filter(is_active=True, intake=Connection.Intake.POLL).values_list("pk", flat=True))
    for connection_id in ids:
        connection_poll_task.delay(connection_id)
    return len(ids)


@shared_task(name="pscsync.tasks.connection_poll_task")
def connection_poll_task(connection_id: int) -> int:
    from connectors.models import Connection
    from pscsync.intake import connection_poll, connection_poll_failed

    connection = Connection.objects.filter(pk=connection_id, is_active=True).first()
    if connection is None:
        return 0
    try:
        return connection_poll(connection=connection)
    except Exception as exc:
        connection_poll_failed(connection=connection, error=exc)
        return 0


@shared_task(name="pscsync.tasks.reconcile_task")
def reconcile_task(entity: str = "", period: str = "") -> dict[str, str]:
    """Reconcile every legal entity (or one); each entity's run is recorded, complete or not."""
    from pscsync.reconciliation.services import reconcile

    return {run.legal_entity.code: run.status for run in reconcile(entity=entity or None, period=period)}


@shared_task(name="pscsync.tasks.schema_check_task")
def schema_check_task() -> dict[str, int]:
    """The daily schema check (pscsync.governance); alerts are scanned at once when it found
    something new, so the alert does not wait for the next handoff to fail."""
    from pscsync.governance import schema_check_alerting

    return schema_check_alerting()


@shared_task(name="pscsync.tasks.archive_due_task")
def archive_due_task() -> list[str]:
    """Daily: make the coming months' partitions, archive every month past its legal entity's
    retention (pscsync.archive), then drop the months of attempts and of events now wholly
    archived (pscsync.partitions)."""
    from pscsync.archive import archive_due
    from pscsync.partitions import months_drop_due, partitions_ensure

    made = partitions_ensure()
    archived = [str(a) for a in archive_due()]
    dropped = [
        f"{kind} of {m.label}: {rows} rows dropped"
        for kind in ("attempts", "events")
        for m, rows in months_drop_due(kind)
    ]
    return [*made, *archived, *dropped]


# A forked worker child must not reuse the parent's pooled HTTP connections.
os.register_at_fork(after_in_child=reset_client)
