"""Which flow a change in a source system starts (docs/flows.md, "Triggers").

Connectors report what changed and leave `flow` empty; the change's own connector reads its
payload into a canonical ChangeSubject (connectors/canonical.py) — the vendor's payload is read
there and nowhere else — and this module decides from the subject alone (intake never calls a
vendor) which flow runs and under which business key. A change no flow handles is stored and
marked ignored; so is an echo of pscsync's own write.
"""

from __future__ import annotations

import dataclasses

from connectors import canonical as c
from connectors.base import InboundChange
from connectors.models import Connection
from connectors.registry import connector_for


def change_route(connection: Connection, change: InboundChange) -> InboundChange:
    """The change with its flow and business key set ("" flow when nothing handles it)."""
    if change.flow:
        return change  # the source said (echo target, tests)
    subject = connector_for(connection).change_subject(change)
    flow = subject_flow(subject)
    key = (subject.key if flow else "") or change.business_key
    return dataclasses.replace(change, flow=flow, business_key=key)


def subject_flow(subject: c.ChangeSubject) -> str:
    """The flow a canonical change starts ("" for none)."""
    if subject.own_write:
        return ""  # our own write coming back: acting on it would loop
    if subject.record == c.DEAL and subject.action in {"created", "updated"}:
        if subject.won:
            return "quote-to-project"
        if subject.action == "updated" and subject.changed & c.AMENDMENT_FIELDS:
            return "contract-change"
        if subject.changed & c.PIPELINE_FIELDS:
            return "pipeline-to-demand"
        return ""
    if subject.record == c.BILLING_BATCH and subject.action == "created":
        return "project-to-bill"
    if subject.record in {c.INVOICE, c.PAYMENT}:
        return "bill-to-cash"
    return ""
