"""What a person does about an exception: resubmit (optionally with an edited payload), resolve,
cancel, and replay a finished handoff. Pages, the API and bulk jobs all call these; each checks
the handoff's state under a row lock, writes an audit entry in the same transaction, and
publishes work only after the commit."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from pscsync import clock
from pscsync.audit import audit_record
from pscsync.dispatch import handoffs_publish
from pscsync.intake import business_key_lock, handoff_start, queued_event_start
from pscsync.models import Handoff

MAX_PAYLOAD_BYTES = 256 * 1024


class ActionRefused(Exception):
    """The handoff's state does not allow the action; the message says why, in plain words."""


class PayloadInvalid(ValueError):
    """An edited payload that cannot be used; nothing was changed."""


def _locked(handoff_id: int) -> Handoff:
    # of=("self",): PostgreSQL cannot lock the nullable side of the legal-entity join.
    return Handoff.objects.select_for_update(of=("self",)).select_related("legal_entity").get(pk=handoff_id)


def _publish_after_commit(handoff_id: int) -> None:
    transaction.on_commit(lambda: handoffs_publish([handoff_id]))


def payload_validate(payload: Any) -> dict[str, Any]:
    import json

    if not isinstance(payload, dict) or not payload:
        raise PayloadInvalid("the payload must be a JSON object with at least one field")
    size = len(json.dumps(payload, default=str))
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadInvalid(f"the payload is {size} bytes; at most {MAX_PAYLOAD_BYTES} are accepted")
    return payload


@transaction.atomic
def exception_resubmit(
    *,
    handoff_id: int,
    actor: AbstractBaseUser,
    payload: dict[str, Any] | None = None,
    comment: str = "",
    remote_addr: str | None = None,
) -> Handoff:
    """Run a handoff that needs attention again, from its first unfinished step (finished steps
    are never sent again). With `payload`, the steps map from the edited payload."""
    if payload is not None:
        payload = payload_validate(payload)
    handoff = _locked(handoff_id)
    if handoff.status != Handoff.Status.NEEDS_ATTENTION:
        raise ActionRefused(f"only a handoff that needs attention can be resubmitted; this one is {handoff.status}")
    before: dict[str, Any] = {"status": handoff.status, "error": handoff.last_error_message}
    after: dict[str, Any] = {"status": Handoff.Status.PENDING}
    if payload is not None and payload != handoff.payload:
        before["payload"], after["payload"] = handoff.payload, payload
        handoff.payload = payload
    now = clock.now()
    handoff.status = Handoff.Status.PENDING
    handoff.attempt_count = 0
    handoff.worker_crashes = 0
    handoff.next_attempt_at = now
    handoff.dispatched_at = now
    handoff.finished_at = None
    handoff.save()
    audit_record(
        actor=actor,
        action="exception.resubmit",
        obj=handoff,
        before=before,
        after=after,
        comment=comment,
        legal_entity=handoff.legal_entity,
        remote_addr=remote_addr,
    )
    _publish_after_commit(handoff.pk)
    return handoff


def _finish_by_person(
    *, handoff_id: int, actor: AbstractBaseUser, status: str, allowed: set[str], comment: str, remote_addr: str | None
) -> Handoff:
    if not comment.strip():
        raise PayloadInvalid("say why: a comment is required")
    handoff = Handoff.objects.only("flow", "business_key").get(pk=handoff_id)
    # The key lock before the row lock, in the order intake and the runner take them.
    business_key_lock(handoff.flow, handoff.business_key)
    handoff = _locked(handoff_id)
    if handoff.status not in allowed:
        raise ActionRefused(f"a handoff that is {handoff.status} cannot be {status}")
    before = {"status": handoff.status}
    handoff.status = status
    handoff.finished_at = clock.now()
    handoff.next_attempt_at = None
    handoff.save()
    audit_record(
        actor=actor,
        action=f"exception.{'resolve' if status == Handoff.Status.RESOLVED else 'cancel'}",
        obj=handoff,
        before=before,
        after={"status": status},
        comment=comment,
        legal_entity=handoff.legal_entity,
        remote_addr=remote_addr,
    )
    # The key is free again: a change that waited behind this handoff starts now.
    following = queued_event_start(flow=handoff.flow, business_key=handoff.business_key)
    if following is not None:
        _publish_after_commit(following.pk)
    return handoff


@transaction.atomic
def exception_resolve(
    *, handoff_id: int, actor: AbstractBaseUser, comment: str, remote_addr: str | None = None
) -> Handoff:
    """Mark a handoff as dealt with by a person, without a successful run."""
    return _finish_by_person(
        handoff_id=handoff_id,
        actor=actor,
        status=Handoff.Status.RESOLVED,
        allowed={Handoff.Status.NEEDS_ATTENTION},
        comment=comment,
        remote_addr=remote_addr,
    )


@transaction.atomic
def exception_cancel(
    *, handoff_id: int, actor: AbstractBaseUser, comment: str, remote_addr: str | None = None
) -> Handoff:
    """Stop a handoff that has not run to the end; nothing more is sent for it."""
    return _finish_by_person(
        handoff_id=handoff_id,
        actor=actor,
        status=Handoff.Status.CANCELLED,
        allowed={Handoff.Status.NEEDS_ATTENTION, Handoff.Status.PENDING, Handoff.Status.WAITING_RETRY},
        comment=comment,
        remote_addr=remote_addr,
    )


@transaction.atomic
def handoff_replay(
    *, handoff_id: int, actor: AbstractBaseUser, comment: str = "", remote_addr: str | None = None
) -> Handoff:
    """Run a finished handoff's change again as a new handoff (e.g. after a mapping fix).

    Only the latest handoff of its business key may be replayed, so an older change never
    overwrites a newer one; steps are idempotent, so what exists is adopted, not duplicated."""
    original = Handoff.objects.select_related("trigger_event").get(pk=handoff_id)
    business_key_lock(original.flow, original.business_key)
    if original.status not in Handoff.TERMINAL:
        raise ActionRefused(f"only a finished handoff can be replayed; this one is {original.status}")
    latest = (
        Handoff.objects.filter(flow=original.flow, business_key=original.business_key)
        .order_by("-created_at", "-pk")
        .first()
    )
    if latest is not None and latest.pk != original.pk:
        raise ActionRefused(f"handoff {latest.pk} is newer for the same business key; replay that one")
    try:
        with transaction.atomic():
            replayed = handoff_start(event=original.trigger_event)
    except IntegrityError:
        raise ActionRefused("another handoff for this business key is open; wait for it to finish") from None
    audit_record(
        actor=actor,
        action="handoff.replay",
        obj=replayed,
        before={"replay_of": original.pk},
        after={"status": replayed.status},
        comment=comment,
        legal_entity=replayed.legal_entity,
        remote_addr=remote_addr,
    )
    _publish_after_commit(replayed.pk)
    return replayed
