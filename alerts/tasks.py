"""Celery tasks of the alerts: thin, take ids, safe to repeat. Their names are the ones they were
registered under in the api app, so messages already queued and beat's schedule still find them."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="api.tasks.alerts_scan_task")
def alerts_scan_task() -> int:
    from alerts.services import alerts_scan

    return alerts_scan()


@shared_task(name="api.tasks.alert_deliver_task")
def alert_deliver_task(delivery_id: int) -> str:
    from alerts.services import alert_delivery_attempt

    return alert_delivery_attempt(delivery_id=delivery_id)


@shared_task(name="api.tasks.alerts_deliver_due_task")
def alerts_deliver_due_task() -> int:
    from alerts.services import alerts_due

    due = alerts_due()
    for delivery_id in due:
        alert_deliver_task.delay(delivery_id)
    return len(due)
