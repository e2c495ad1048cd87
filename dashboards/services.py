"""What changes dashboard configuration: each flow's SLA (the FX rates are still set by the page)."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.models import User
from django.db import transaction

from dashboards.facts import sla_for
from dashboards.models import FlowSla
from pscsync.audit import audit_record


def flow_sla_set(
    *,
    actor: User,
    flow: str,
    target: Decimal,
    unit: str,
    note: str | None = None,
    sync_target_minutes: int | None = None,
) -> FlowSla:
    """Set a flow's SLAs (business cycle; sync latency in minutes), audited; the breach flags of
    stored facts are recomputed after commit. `note` or `sync_target_minutes` None keeps it."""
    values: dict[str, object] = {"target": target, "unit": unit}
    if note is not None:
        values["note"] = note
    if sync_target_minutes is not None:
        values["sync_target_minutes"] = sync_target_minutes
    with transaction.atomic():
        before = sla_for(flow)
        sla, _ = FlowSla.objects.update_or_create(flow=flow, defaults=values)
        audit_record(
            actor=actor,
            action="sla.set",
            obj=sla,
            before={"target": str(before.target), "unit": before.unit, "sync_minutes": before.sync_target_minutes},
            after={"target": str(target), "unit": unit, "sync_minutes": sla.sync_target_minutes},
        )
        transaction.on_commit(_rollups_rebuild)
    return sla


def _rollups_rebuild() -> None:
    from dashboards.tasks import rollups_rebuild_task

    rollups_rebuild_task.delay()
