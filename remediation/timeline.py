"""Reads for one handoff: its timeline across systems, what a resubmit will write, fix links.
Nothing here calls a vendor: pages read what the engine stored."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from django.urls import reverse

from connectors.models import Connection
from connectors.registry import connector_for
from pscsync.flows import FLOWS
from pscsync.glossary import action_name, document_text, error_words, later_words, step_name
from pscsync.models import Attempt, AuditEntry, CrossReference, Handoff, Mapping, Step
from pscsync.secrets import mask_secrets
from pscsync.selectors import events_for_handoff


def record_url(connection: Connection | None, entity_type: str, external_id: str) -> str:
    """A link to the record in the vendor's own UI, where the vendor has a stable one."""
    if connection is None or not external_id:
        return ""
    return connector_for(connection).record_url(entity_type, external_id)


@dataclass
class Entry:
    at: Any
    kind: str  # event, attempt, audit
    title: str
    detail: str = ""
    who: str = ""
    outcome: str = ""  # the code, for the badge's colour
    outcome_label: str = ""
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
                "request": document_text(mask_secrets(attempt.request)),
                "response": document_text(mask_secrets(attempt.response)),
            }
            step.shown_attempts.append(shown)
            target = f" → {step.target_connection.name}" if step.target_connection else ""
            entries.append(
                Entry(
                    at=attempt.started_at,
                    kind="attempt",
                    title=f"{step_name(step.name)}, attempt {attempt.number}{target}",
                    detail=_deferral_words(attempt) or error_words(attempt.error_message),
                    outcome=attempt.outcome,
                    outcome_label=attempt.get_outcome_display(),
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
                title=action_name(entry.action),
                detail=error_words(entry.comment),
                who=entry.actor_label,
                request=document_text(entry.before),
                response=document_text(entry.after),
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
        "next_step": next_step(handoff),
        "mapping_versions": sorted({s.mapping_version.label for s in steps if s.mapping_version_id}),
    }


def _deferral_words(attempt: Attempt) -> str:
    """A deferred attempt in business words: it sent nothing and waited for the rate limit until
    its slot (the limiter's wait, counted from when the attempt ended). "" for other attempts."""
    if attempt.outcome != Attempt.Outcome.DEFERRED:
        return ""
    ended = attempt.started_at + dt.timedelta(milliseconds=attempt.duration_ms or 0)
    resumes = ended + dt.timedelta(seconds=attempt.retry_after_seconds or 0)
    return f"Waited for the vendor's rate limit; resumes at {later_words(resumes, since=attempt.started_at)}"


_MAPPING_LABEL = re.compile(r"mapping ([\w-]+)/(\w+)@v(\d+)")
_VALUE_MAP = re.compile(r"'(\w+)' value map of mapping|is not in value map '(\w+)'")
_FAILED_RULE = re.compile(r"could not map this record: ([\w.]+) ")
_NO_MAPPING = re.compile(r"no published mapping for (\w+) on ")
_SF_ID = re.compile(r"\(((?:001|006)[A-Za-z0-9]{12,15})\)")
_CONNECTIONS_FIX = ("is not set up in pscsync", "connection serves legal entity", "served by more than one")


def fix_links(handoff: Handoff, steps: list[Step]) -> list[dict[str, str]]:
    """Where the fix is: the failed rule or value map in the mapping studio for a mapping error,
    the connections for a legal entity no connection serves, the connection for an auth error,
    the source record for a missing or incomplete record. `admin` marks fixes only an admin can
    make (the studio and connections are theirs): operators are told to ask one."""
    links = []
    message = handoff.last_error_message or ""
    failed = next((s for s in steps if s.status != Step.Status.SUCCEEDED), None)
    last = failed.shown_attempts[-1]["attempt"] if failed is not None and failed.shown_attempts else None
    if handoff.last_error_class == "mapping":
        links.extend(_mapping_fixes(message))
    if last is not None and last.http_status in (401, 403) and failed.target_connection is not None:
        links.append(
            {
                "label": f"Check the credentials of {failed.target_connection.name}",
                "url": reverse("connections:edit", args=[failed.target_connection.pk]),
                "admin": "yes",
            }
        )
    for record_id in dict.fromkeys(_SF_ID.findall(message)):
        url = record_url(handoff.source_connection, "record", record_id)
        if url:
            links.append({"label": f"Open {record_id} in {handoff.source_connection.name}", "url": url, "admin": ""})
    return links


NEXT_STEPS = {
    "validation": "The record is incomplete or wrong at its source. Correct it there (the button opens it), then "
    "resubmit choosing “Re-map from the source”. Or correct the document here with “Resume with my edit”.",
    "mapping": "pscsync does not know how to translate a value. An admin adds it to the mapping (the button opens "
    "the rule or value map); then resubmit: it maps again with the mapping in force. Or correct the record at "
    "its source if the value itself is wrong.",
    "rejected": "The target system refused the record: its answer is in the timeline (Sent / received). Correct "
    "the data at the source or with “Resume with my edit”, or in the target, then resubmit.",
    "transient": "The target system was unavailable and retries ran out. Once it answers again, resubmit with the "
    "stored payload (or bulk-retry the whole group): finished steps are never sent twice.",
    "unknown": "The target did not answer clearly and retries ran out. Once it is back, resubmit with the stored "
    "payload: the record is looked up by its key first, so nothing is written twice.",
    "worker_lost": "The worker processing it kept dying on it. Ask an admin to check the worker logs before "
    "resubmitting.",
    "internal": "pscsync itself failed on this record. Ask an admin to look at the logs; resubmit once fixed.",
}


def next_step(handoff: Handoff) -> str:
    """What an operator does about this kind of failure, in one or two sentences."""
    if handoff.status != Handoff.Status.NEEDS_ATTENTION:
        return ""
    return NEXT_STEPS.get(handoff.last_error_class, "")


def _mapping_fixes(message: str) -> list[dict[str, str]]:
    match = _MAPPING_LABEL.search(message)
    mappings = Mapping.objects.select_related("connection")
    mapping = mappings.filter(connection__slug=match.group(1), entity=match.group(2)).first() if match else None
    if mapping is not None:
        what = f"the {mapping.entity} mapping of {mapping.connection.name}"
        url = reverse("studio:detail", args=[mapping.pk])
        table = _VALUE_MAP.search(message)
        rule = _FAILED_RULE.search(message)
        if table:
            name = table.group(1) or table.group(2)
            return [
                {
                    "label": f"Open value map “{name}” of {what}",
                    "url": f"{url}?open={name}#value-map-{name}",
                    "admin": "yes",
                }
            ]
        if rule:
            field = rule.group(1)
            return [
                {
                    "label": f"Open rule “{field}” of {what}",
                    "url": f"{url}?field={field}#rule-{_rule_position(mapping, field)}",
                    "admin": "yes",
                }
            ]
        return [{"label": f"Open {what} in the studio", "url": url, "admin": "yes"}]
    if _NO_MAPPING.search(message):
        return [{"label": "Publish the missing mapping in the studio", "url": reverse("studio:list"), "admin": "yes"}]
    if any(text in message for text in _CONNECTIONS_FIX):
        return [{"label": "Set up the legal entity's connections", "url": reverse("connections:list"), "admin": "yes"}]
    return []


def _rule_position(mapping: Mapping, target: str) -> int:
    """The 1-based position of the rule setting `target` in the version in force (the anchor)."""
    version = mapping.versions.filter(status="published").only("rules").first()
    rules = version.rules if version else []
    return next((n for n, rule in enumerate(rules, start=1) if rule.get("target") == target), 1)


def resubmit_plan(handoff: Handoff) -> dict[str, Any]:
    """What a resubmit will do: the step it resumes at, the steps that follow and the system each
    writes to, what the failed step last tried to send, and the records the targets already hold
    under the keys this handoff writes (from our cross references: no vendor is called)."""
    steps = list(handoff.steps.select_related("target_connection").order_by("position"))
    failed = next((s for s in steps if s.status != Step.Status.SUCCEEDED), None)
    if failed is None:
        return {"step": None}
    last = failed.attempts.order_by("-number").first()
    upcoming = _upcoming(handoff, [s for s in steps if s.status != Step.Status.SUCCEEDED])
    targets = {t.pk for t in (u["target"] for u in upcoming) if t is not None}
    existing = [
        x
        for x in CrossReference.objects.filter(canonical_id__in=_keys_written(handoff, failed)).select_related(
            "connection", "handoff"
        )
        if x.connection_id in targets and x.handoff_id != handoff.pk
    ]
    return {
        "step": failed,
        "in_flight": failed.status == Step.Status.IN_FLIGHT,
        "request": document_text(mask_secrets(last.request)) if last else "—",
        "request_is_write": bool(last and (last.request or {}).get("operation") == "upsert"),
        "existing": existing,
        "upcoming": upcoming,
        "done": [s for s in steps if s.status == Step.Status.SUCCEEDED],
    }


def _upcoming(handoff: Handoff, unfinished: list[Step]) -> list[dict[str, Any]]:
    """Each step still to run, what it does and the connection it writes to (from the legal
    entity's connections: a database read)."""
    from connectors.errors import ConnectorError
    from pscsync.flows import flow_get
    from pscsync.flows.routing import systems_for

    flow = flow_get(handoff.flow)
    defs = {d.name: d for d in flow.steps} if flow else {}
    try:
        systems = systems_for(handoff.legal_entity) if handoff.legal_entity else None
    except ConnectorError:
        systems = None
    rows = []
    for step in unfinished:
        step_def = defs.get(step.name)
        kind = getattr(step_def, "system", None)
        if isinstance(kind, str):
            target, verb = (systems.of(kind) if systems else step.target_connection), "writes to"
        elif hasattr(step_def, "check"):
            target, verb = None, "checks the document"
        else:
            target, verb = step.target_connection or handoff.source_connection, "reads from"
        rows.append({"step": step, "verb": verb, "target": target})
    return rows


def _keys_written(handoff: Handoff, failed: Step) -> list[str]:
    """Our keys for the records this handoff writes: its business identifiers, the customer of
    the account it read, and the failed step's own keys."""
    from remediation.services import business_identifiers

    keys = set(business_identifiers(handoff).values())
    read = handoff.steps.filter(position=0).values_list("output", flat=True).first() or {}
    account = (read.get("account") or {}).get("id") if isinstance(read, dict) else None
    if account:
        keys.add(f"C-{account}")
    keys.update(k for k in (failed.idempotency_key or "").split(",") if k)
    return sorted(keys)
