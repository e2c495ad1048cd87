"""Reads for one handoff: its timeline across systems, what a resubmit will write, fix links.
Nothing here calls a vendor: pages read what the engine stored."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.urls import reverse

from connectors.models import Connection
from pscsync.flows import FLOWS
from pscsync.models import AuditEntry, CrossReference, Handoff, Mapping, Step
from pscsync.secrets import mask_secrets
from pscsync.selectors import events_for_handoff


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) if value not in ({}, None, "") else "—"


def record_url(connection: Connection | None, entity_type: str, external_id: str) -> str:
    """A link to the record in the vendor's own UI, where the vendor has a stable one."""
    if connection is None or not external_id:
        return ""
    base = connection.base_url.rstrip("/")
    if connection.vendor in ("salesforce", "certinia"):
        return f"{base}/{external_id}"
    if connection.vendor == "netsuite":
        page = "entity/custjob.nl" if entity_type == "customer" else "accounting/transactions/transaction.nl"
        return f"{base}/app/{'common/' if entity_type == 'customer' else ''}{page}?id={external_id}"
    if connection.vendor == "kantata" and entity_type in ("project", "budget"):
        return f"{base}/workspaces/{external_id}"
    return ""


@dataclass
class Entry:
    at: Any
    kind: str  # event, attempt, audit
    title: str
    detail: str = ""
    who: str = ""
    outcome: str = ""
    request: str = ""
    response: str = ""


def handoff_timeline(handoff: Handoff) -> dict[str, Any]:
    steps = list(
        handoff.steps.select_related("target_connection", "mapping_version__mapping__connection").prefetch_related(
            "attempts"
        )
    )
    entries: list[Entry] = []
    events = list(events_for_handoff(handoff))
    for event in events:
        entries.append(
            Entry(
                at=event.received_at,
                kind="event",
                title=f"{event.connection.name}: {event.event_type or 'change'} received",
                detail=f"{event.source_event_id} · {event.get_status_display()}",
            )
        )
    for step in steps:
        step.shown_attempts = []
        for attempt in step.attempts.all():
            shown = {
                "attempt": attempt,
                "request": _pretty(mask_secrets(attempt.request)),
                "response": _pretty(mask_secrets(attempt.response)),
            }
            step.shown_attempts.append(shown)
            target = f" → {step.target_connection.name}" if step.target_connection else ""
            entries.append(
                Entry(
                    at=attempt.started_at,
                    kind="attempt",
                    title=f"{step.name} attempt {attempt.number}{target}",
                    detail=attempt.error_message,
                    outcome=attempt.outcome,
                    request=shown["request"],
                    response=shown["response"],
                )
            )
    audits = AuditEntry.objects.filter(object_type="pscsync.handoff", object_id=str(handoff.pk)).order_by("created_at")
    for entry in audits:
        entries.append(
            Entry(
                at=entry.created_at,
                kind="audit",
                title=entry.action,
                detail=entry.comment,
                who=entry.actor_label,
                request=_pretty(entry.before),
                response=_pretty(entry.after),
            )
        )
    entries.sort(key=lambda e: e.at)
    xrefs = [
        {"ref": x, "url": record_url(x.connection, x.entity_type, x.external_id)}
        for x in CrossReference.objects.filter(handoff=handoff).select_related("connection")
    ]
    from remediation.models import HandoffException

    return {
        "handoff": handoff,
        "flow": FLOWS.get(handoff.flow),
        "steps": steps,
        "events": events,
        "timeline": entries,
        "xrefs": xrefs,
        "exception": HandoffException.objects.filter(handoff=handoff).select_related("cause", "assignee").first(),
        "fixes": fix_links(handoff, steps),
        "mapping_versions": sorted({s.mapping_version.label for s in steps if s.mapping_version_id}),
    }


_MAPPING_LABEL = re.compile(r"mapping ([\w-]+)/(\w+)@v(\d+)")
_SF_ID = re.compile(r"\(((?:001|006)[A-Za-z0-9]{12,15})\)")


def fix_links(handoff: Handoff, steps: list[Step]) -> list[dict[str, str]]:
    """Where the fix is: the mapping for a mapping error, the connection for an auth error, the
    source record for a missing or incomplete record."""
    links = []
    message = handoff.last_error_message or ""
    failed = next((s for s in steps if s.status != Step.Status.SUCCEEDED), None)
    last = failed.shown_attempts[-1]["attempt"] if failed is not None and failed.shown_attempts else None
    if handoff.last_error_class == "mapping":
        match = _MAPPING_LABEL.search(message)
        if match:
            mapping = Mapping.objects.filter(connection__slug=match.group(1), entity=match.group(2)).first()
            if mapping is not None:
                links.append(
                    {
                        "label": f"Open the {mapping.entity} mapping of {mapping.connection.name} in the studio",
                        "url": reverse("studio:detail", args=[mapping.pk]),
                    }
                )
    if last is not None and last.http_status in (401, 403) and failed.target_connection is not None:
        links.append(
            {
                "label": f"Check the credentials of {failed.target_connection.name}",
                "url": reverse("connections:edit", args=[failed.target_connection.pk]),
            }
        )
    for record_id in dict.fromkeys(_SF_ID.findall(message)):
        url = record_url(handoff.source_connection, "record", record_id)
        if url:
            links.append({"label": f"Open {record_id} in {handoff.source_connection.name}", "url": url})
    return links


def resubmit_plan(handoff: Handoff) -> dict[str, Any]:
    """What a resubmit will do: the step it resumes at, what that step last tried to send, and
    whether the target already holds a record under that key (from our cross references)."""
    steps = list(handoff.steps.select_related("target_connection").order_by("position"))
    failed = next((s for s in steps if s.status != Step.Status.SUCCEEDED), None)
    if failed is None:
        return {"step": None}
    last = failed.attempts.order_by("-number").first()
    existing = []
    if failed.target_connection_id and failed.idempotency_key:
        keys = [k for k in failed.idempotency_key.split(",") if k]
        existing = list(CrossReference.objects.filter(connection_id=failed.target_connection_id, canonical_id__in=keys))
    return {
        "step": failed,
        "in_flight": failed.status == Step.Status.IN_FLIGHT,
        "request": _pretty(mask_secrets(last.request)) if last else "—",
        "existing": existing,
        "done": [s for s in steps if s.status == Step.Status.SUCCEEDED],
    }
