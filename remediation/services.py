"""What changes state in the workbench: exceptions kept in step with handoffs, and every human
action (resubmit, resolve, cancel, reopen, assign, comment, archive, runbook, bulk jobs, replay).

Every human action writes an AuditEntry (who, when, before, after) in the transaction that makes
the change. Status moves of a handoff are conditional UPDATEs on its current status, so two
operators acting at the same moment cannot both win: the second is told what happened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Q

from connectors.canonical import KEYS, capability_or_none
from connectors.models import Connection
from connectors.registry import connector_class
from pscsync import clock, glossary
from pscsync.access import entity_ids_for
from pscsync.audit import audit_record
from pscsync.flows import flow_get
from pscsync.lifecycle import Move, handoff_move, repairs_note
from pscsync.models import Handoff, Step
from remediation.models import (
    BulkJob,
    BulkJobItem,
    Comment,
    Compensation,
    ExceptionCause,
    ExceptionStatus,
    HandoffException,
    SavedView,
)
from remediation.selectors import cause_signature


class ActionRefused(Exception):
    """The action cannot be done now; the message says why, in words an operator reads."""


# ---------------------------------------------------------------------------------------------
# Keeping exceptions in step with handoffs
# ---------------------------------------------------------------------------------------------
def failed_step_name(handoff: Handoff) -> str:
    """The step the handoff stopped at, as the runner stored it with the failure
    (Handoff.failed_step; a person's reopen keeps it): "" when it stopped outside a step (a lost
    worker) or at a step its flow no longer has."""
    flow = flow_get(handoff.flow)
    names = {s.name for s in flow.steps} if flow is not None else set()
    return handoff.failed_step if handoff.failed_step in names else ""


def failure_text(handoff: Handoff) -> str:
    """The handoff's error as a person reads it: the target's own words, as the runner stored them
    without the step and the attempt count (Handoff.failure_reason)."""
    return handoff.failure_reason or handoff.last_error_message or ""


def cause_key(handoff: Handoff) -> tuple[str, str, str, str, str]:
    """(signature hash, flow, step, error class, fingerprint): same cause, same group. The
    fingerprint leaves out the batch name, record id and every other variable part."""
    step = failed_step_name(handoff)
    message = cause_signature(failure_text(handoff))
    raw = "\x1f".join((handoff.flow, step, handoff.last_error_class, message))
    return hashlib.sha256(raw.encode()).hexdigest(), handoff.flow, step, handoff.last_error_class, message


# ---------------------------------------------------------------------------------------------
# Root causes: a handoff that cannot proceed because another one failed
# ---------------------------------------------------------------------------------------------
# Flows that act on a won deal's project and contract: they cannot run before the deal's
# quote-to-project handoff has created them.
_NEEDS_THE_DEAL = ("contract-change", "pipeline-to-demand")


def blocker_find(handoff: Handoff, step_name: str) -> Handoff | None:
    """The failed handoff this one waits on, or None. Read from stored records, not from words:
    - a billing batch whose check failed on its ERP customer (the runner stored the customer's
      key, our own, as Handoff.failed_key) that a quote-to-project handoff failed to write;
    - an amendment or demand change whose deal's quote-to-project handoff needs a person."""
    waiting = Handoff.objects.filter(status=Handoff.Status.NEEDS_ATTENTION).exclude(pk=handoff.pk)
    key = handoff.failed_key
    if handoff.flow == "project-to-bill" and step_name == "validate_billing" and key:
        deals = waiting.filter(flow="quote-to-project")
        found = deals.filter(failed_step="upsert_customer", failed_key=key).first()
        if found is not None:
            return found
        # Failed before its customer step (the deal check): the deal of the same account, read
        # back from the key by its declared format (connectors/canonical.py).
        account = (KEYS["customer"].parse(key) or {}).get("account")
        if not account:
            return None
        read = Step.objects.filter(
            name="read_deal", status=Step.Status.SUCCEEDED, handoff__in=deals, output__account__id=account
        ).first()
        return read.handoff if read is not None else None
    if handoff.flow in _NEEDS_THE_DEAL:
        return waiting.filter(flow="quote-to-project", business_key=handoff.business_key).first()
    return None


def blocked_resume(root_id: int) -> list[int]:
    """The root succeeded: every handoff that waited on it resumes by itself at its failed step,
    with an audit entry (so its timeline says why it ran again). Returns the resumed ids.

    Called after the root's success is committed. Today from exception_sync (the post_save hook);
    at the lifecycle merge it becomes a listener of the handoff's move to succeeded."""
    root = Handoff.objects.filter(pk=root_id, status=Handoff.Status.SUCCEEDED).first()
    if root is None:
        return []
    resumed = []
    waiting = HandoffException.objects.filter(blocked_by=root, status=ExceptionStatus.OPEN).select_related("handoff")
    what = f"{glossary.flow_name(root.flow)} {root.customer_name or root.business_key}"
    reason = f"Resumed by itself: {what}, which it waited on, succeeded."
    for item in waiting:
        try:
            handoff_resubmit(
                actor=None,
                handoff=item.handoff,
                mode=ResubmitMode.STORED,
                reason=reason,
                actor_label="system:root-cause",
            )
        except ActionRefused:
            continue  # someone acted on it meanwhile: theirs is the newer decision
        resumed.append(item.handoff_id)
    return resumed


def business_identifiers(handoff: Handoff) -> dict[str, str]:
    """The identifiers people search by: opportunity, project code, billing batch, invoice. The
    keys are built by the key formats the systems' connectors declare (connectors/canonical.py),
    never by decoding prefixes here."""
    key = handoff.business_key
    if handoff.flow in ("quote-to-project", "contract-change", "pipeline-to-demand"):
        found = {"opportunity": key, "project": KEYS["project"](deal=key)}
        erp = (
            Connection.objects.filter(kind="erp", legal_entities=handoff.legal_entity_id, is_active=True).first()
            if handoff.legal_entity_id
            else None
        )
        held = capability_or_none(erp, "contract") if erp is not None else None
        if held is not None:  # the contract's key is the ERP's (SO-… on NetSuite, P-… on Business Central)
            found["contract"] = held.key_format(deal=key)
        return found
    if handoff.flow == "project-to-bill":
        psa = handoff.source_connection
        held = capability_or_none(psa, "billing_batch")
        if held is None:
            return {"billing_batch": key, "invoice": KEYS["invoice"](batch=key)}
        batch = (held.key_format.parse(key) or {"batch": key})["batch"]
        invoice = connector_class(psa.vendor).invoice_key(batch=batch)
        return {held.identifier or "billing_batch": batch, "invoice": invoice}
    if handoff.flow == "bill-to-cash":
        return {"invoice": key}
    return {"key": key}


def _failed_step(handoff: Handoff) -> Step | None:
    return (
        Step.objects.filter(handoff=handoff)
        .exclude(status=Step.Status.SUCCEEDED)
        .select_related("target_connection")
        .order_by("position")
        .first()
    )


def _archive_expired(cause: ExceptionCause, now: dt.datetime) -> bool:
    if cause.archived_until is not None and now >= cause.archived_until:
        return True
    return cause.archived_until_occurrences is not None and cause.archived_until_occurrences <= 0


def cause_refresh(cause: ExceptionCause) -> None:
    """Derive a cause's status from its handoffs (archived and regressed are remembered)."""
    now = clock.now()
    open_items = cause.items.filter(status=ExceptionStatus.OPEN).exists()
    retrying = cause.items.filter(status=ExceptionStatus.IN_PROGRESS).exists()
    status = cause.status
    if cause.status == ExceptionStatus.ARCHIVED and not _archive_expired(cause, now):
        return
    if open_items:
        status = ExceptionStatus.REGRESSED if cause.status in (ExceptionStatus.RESOLVED,) else status
        if status not in (ExceptionStatus.REGRESSED,):
            status = ExceptionStatus.OPEN
    elif retrying:
        status = ExceptionStatus.IN_PROGRESS
    else:
        status = ExceptionStatus.RESOLVED
    fields = {"status": status}
    if status == ExceptionStatus.RESOLVED and cause.status != ExceptionStatus.RESOLVED:
        fields["resolved_at"] = now
    if cause.status == ExceptionStatus.ARCHIVED:
        fields.update(archived_until=None, archived_until_occurrences=None)
    ExceptionCause.objects.filter(pk=cause.pk).update(**fields)
    for name, value in fields.items():
        setattr(cause, name, value)


def _open(handoff: Handoff, now: dt.datetime) -> HandoffException:
    signature, flow, step_name, error_class, message = cause_key(handoff)
    cause, _ = ExceptionCause.objects.get_or_create(
        signature=signature,
        defaults={
            "flow": flow,
            "step_name": step_name,
            "error_class": error_class,
            "message": message,
            "title": failure_text(handoff),
            "first_seen_at": now,
            "last_seen_at": now,
        },
    )
    title = failure_text(handoff)
    if cause.title != title:
        # The title is the latest occurrence's real message, in full.
        ExceptionCause.objects.filter(pk=cause.pk).update(title=title)
        cause.title = title
    item = HandoffException.objects.filter(handoff=handoff).first()
    if item is not None and item.status == ExceptionStatus.OPEN and item.cause_id == cause.pk:
        return item  # the same failure seen again (a save that changed something else)
    step = _failed_step(handoff)
    blocker = blocker_find(handoff, step_name)
    identifiers = business_identifiers(handoff)
    keys = [step.idempotency_key] if step is not None and step.idempotency_key else []
    search = " ".join([handoff.business_key, handoff.customer_name, *identifiers.values(), *keys, message]).lower()
    values = {
        "cause": cause,
        "status": ExceptionStatus.OPEN,
        "flow": handoff.flow,
        "step_name": step_name,
        "error_class": error_class,
        "legal_entity_id": handoff.legal_entity_id,
        "connection_id": (step.target_connection_id if step and step.target_connection_id else None)
        or handoff.source_connection_id,
        "customer_name": handoff.customer_name,
        "business_started_at": handoff.business_started_at,
        "amount": handoff.amount,
        "currency": handoff.currency,
        "identifiers": identifiers,
        "search_text": search[:4000],
        "last_failed_at": now,
        "resolved_at": None,
        "resolution": "",
        "blocked_by": blocker,
    }
    if item is None:
        item = HandoffException.objects.create(handoff=handoff, opened_at=now, **values)
    else:
        old_cause = item.cause
        for name, value in values.items():
            setattr(item, name, value)
        item.failures += 1
        if item.status != ExceptionStatus.OPEN:
            item.opened_at = item.opened_at if item.resolved_at is None else now
        item.save()
        if old_cause.pk != cause.pk:
            cause_refresh(old_cause)
    occurrences = cause.occurrences + 1
    updates: dict[str, Any] = {"occurrences": occurrences, "last_seen_at": now}
    if cause.archived_until_occurrences is not None:
        updates["archived_until_occurrences"] = cause.archived_until_occurrences - 1
    ExceptionCause.objects.filter(pk=cause.pk).update(**updates)
    for name, value in updates.items():
        setattr(cause, name, value)
    cause_refresh(cause)
    return item


def exception_sync(handoff: Handoff) -> None:
    """Bring the handoff's exception in line with its status. Cheap when there is none."""
    now = clock.now()
    if handoff.status == Handoff.Status.NEEDS_ATTENTION:
        _open(handoff, now)
        return
    if handoff.status == Handoff.Status.SUCCEEDED:
        _resume_blocked_after_commit(handoff)
    item = HandoffException.objects.filter(handoff_id=handoff.pk).exclude(status=ExceptionStatus.RESOLVED).first()
    if item is None:
        return
    if handoff.status in Handoff.TERMINAL:
        item.status = ExceptionStatus.RESOLVED
        item.resolved_at = now
        item.resolution = handoff.status
    else:
        item.status = ExceptionStatus.IN_PROGRESS
    item.save(update_fields=["status", "resolved_at", "resolution"])
    cause_refresh(item.cause)


# Moves after which an exception cannot have changed: a handoff just opened has none, and one
# that is taken by a worker or waits for a retry keeps an exception it has "in progress".
_MOVES_WITHOUT_EXCEPTION_CHANGE = frozenset({Handoff.Status.RUNNING, Handoff.Status.WAITING_RETRY})


def exceptions_follow(moves: Sequence[Move]) -> None:
    """The lifecycle listener (a worker's batch of moves, or one move outside a batch): after the
    moves' commits, bring their handoffs' exceptions in line with their committed status (which a
    later move may already have changed: each reads what is committed, so they converge in any
    order). The handoffs that may need it are found in one query: those moved to needs attention,
    and those with an exception not resolved yet; none for moves to running or waiting to retry,
    or for a batch whose handoffs never needed a person beyond that one read. Each is then synced
    in its own transaction, in id order; one failing is logged and the others go on (the
    reconcile beat repairs it)."""
    to_person: set[int] = set()
    others: set[int] = set()
    for move in moves:
        if move.to_status in _MOVES_WITHOUT_EXCEPTION_CHANGE:
            continue
        if not move.from_status and move.to_status != Handoff.Status.NEEDS_ATTENTION:
            continue
        (to_person if move.to_status == Handoff.Status.NEEDS_ATTENTION else others).add(move.handoff_id)
    if not to_person and not others:
        return
    unresolved = [status for status in ExceptionStatus.values if status != ExceptionStatus.RESOLVED]
    found = Handoff.objects.filter(
        Q(pk__in=sorted(to_person)) | Q(pk__in=sorted(others - to_person), exception__status__in=unresolved)
    ).order_by("pk")
    for handoff in found:
        try:
            with transaction.atomic():
                exception_sync(handoff)
        except Exception:  # one handoff's sync must not keep the batch's others from theirs
            logging.getLogger(__name__).exception(
                "workbench exception not followed for handoff %s; the reconcile beat will", handoff.pk
            )


def _resume_blocked_after_commit(root: Handoff) -> None:
    """The one place where a root's success wakes the handoffs that waited on it (the lead
    re-wires this to a lifecycle listener): only when some wait, after the commit."""
    if HandoffException.objects.filter(blocked_by_id=root.pk, status=ExceptionStatus.OPEN).exists():
        root_id = root.pk
        transaction.on_commit(lambda: blocked_resume(root_id))


RECONCILE_BATCH = 500
STALE_WORK = dt.timedelta(minutes=10)


def exceptions_reconcile() -> int:
    """Repair what a missed listener left behind (a process killed between a move's commit and its
    listeners: counted, see lifecycle.repairs_note), end archives
    whose date has passed, and hand compensations and bulk jobs whose broker message was lost
    back to a worker. Returns repairs.

    Cheap at any history size: it reads only open work, never the finished handoffs. A handoff
    out of step is either waiting for a person without an open exception, or has an open or
    retrying exception while it is not in that state; both are found through the indexed status
    columns of the open sets (handoff `status`, exception `status`), so the cost follows the
    open work, not the history."""
    fixed = 0
    retrying = (Handoff.Status.PENDING, Handoff.Status.RUNNING, Handoff.Status.WAITING_RETRY)
    missing = Handoff.objects.filter(status=Handoff.Status.NEEDS_ATTENTION).exclude(
        exception__status=ExceptionStatus.OPEN
    )
    stale = HandoffException.objects.filter(
        Q(status=ExceptionStatus.OPEN, handoff__status__in=[*retrying, *Handoff.TERMINAL])
        | Q(status=ExceptionStatus.IN_PROGRESS, handoff__status__in=[Handoff.Status.NEEDS_ATTENTION, *Handoff.TERMINAL])
    )
    # The ids first (none in the steady state), then the rows in batches: an ORDER BY pk LIMIT
    # over the whole table could make the planner walk the primary key past every old handoff.
    ids = sorted({*missing.values_list("pk", flat=True), *stale.values_list("handoff_id", flat=True)})
    repairs_note("workbench exceptions", len(ids))
    for start in range(0, len(ids), RECONCILE_BATCH):
        for handoff in Handoff.objects.filter(pk__in=ids[start : start + RECONCILE_BATCH]):
            exception_sync(handoff)
            fixed += 1
    # An archive whose date has passed ends even if the cause never happens again.
    for cause in ExceptionCause.objects.filter(status=ExceptionStatus.ARCHIVED, archived_until__lte=clock.now()):
        cause_refresh(cause)
        fixed += 1
    fixed += _stale_work_requeue(clock.now() - STALE_WORK)
    return fixed


def _stale_work_requeue(before: dt.datetime) -> int:
    """Queued long ago and never started (the broker lost the message), or running on a worker
    that died: run again. Both are safe to repeat (items done are skipped; a withdrawal of a
    record already gone is reported as gone)."""
    compensations = list(
        Compensation.objects.filter(
            Q(status=Compensation.Status.QUEUED, created_at__lt=before)
            | Q(status=Compensation.Status.RUNNING, started_at__lt=before)
        ).values_list("pk", flat=True)
    )
    queued = BulkJob.objects.filter(status=BulkJob.Status.QUEUED, created_at__lt=before)
    jobs = list(queued.values_list("pk", flat=True))
    for compensation_id in compensations:
        _compensation_enqueue(compensation_id)
    for job_id in jobs:
        _bulk_enqueue(job_id)
    return len(compensations) + len(jobs)


# ---------------------------------------------------------------------------------------------
# Acting on one handoff
# ---------------------------------------------------------------------------------------------
class ResubmitMode:
    STORED = "stored"
    EDIT = "edit"
    REMAP = "remap"
    CHOICES = (
        (STORED, "Resume with the stored payload"),
        (EDIT, "Resume with my edit"),
        (REMAP, "Re-map from the source with the current mapping"),
    )


def read_step(handoff: Handoff) -> Step | None:
    """The flow's first step: it reads the source document every later step maps from."""
    flow = flow_get(handoff.flow)
    if flow is None or not flow.steps:
        return None
    return Step.objects.filter(handoff=handoff, name=flow.steps[0].name).first()


def _snapshot(handoff: Handoff) -> dict[str, Any]:
    return {
        "status": handoff.status,
        "last_error_class": handoff.last_error_class,
        "last_error_message": handoff.last_error_message[:500],
    }


def _take(
    handoff: Handoff,
    *,
    allowed: tuple[str, ...],
    to: str,
    actor: User | None,
    reason: str,
    **fields: Any,
) -> None:
    """Move the handoff from one of `allowed` to `to`, or refuse: one operator wins a race."""
    # lease_owner is empty unless a compensation holds the handoff (a worker never holds one that
    # waits for a person): nothing else may move it meanwhile.
    moved = handoff_move(
        handoff, from_states=allowed, to=to, actor=actor, reason=reason, where=Q(lease_owner=""), fields=fields
    )
    if moved is None:
        current, lease = Handoff.objects.filter(pk=handoff.pk).values_list("status", "lease_owner").first() or ("", "")
        if lease.startswith("compensation:") and current in allowed:
            raise ActionRefused("Nothing was done: a compensation is running on this handoff; wait for its outcome.")
        label = dict(Handoff.Status.choices).get(current, current)
        raise ActionRefused(
            f"Nothing was done: this handoff is now “{label}” — someone else acted on it a moment ago."
            if current in (Handoff.Status.PENDING, Handoff.Status.RUNNING, Handoff.Status.WAITING_RETRY)
            else f"Nothing was done: this handoff is “{label}”, not waiting for a person."
        )
    handoff.refresh_from_db()


def handoff_resubmit(
    *,
    actor: User | None,
    handoff: Handoff,
    mode: str,
    reason: str,
    edited: dict[str, Any] | None = None,
    job: BulkJob | None = None,
    actor_label: str = "",
) -> Handoff:
    """Resume a handoff at its failed step. Finished steps are never sent again; a step whose
    outcome is unknown stays in flight, so the runner looks its record up before writing."""
    if not reason.strip():
        raise ActionRefused("Say why you resubmit: the reason is kept in the audit trail.")
    now = clock.now()
    with transaction.atomic():
        before = _snapshot(handoff)
        _take(
            handoff,
            allowed=(Handoff.Status.NEEDS_ATTENTION,),
            to=Handoff.Status.PENDING,
            actor=actor,
            reason=reason,
            attempt_count=0,
            worker_crashes=0,
            next_attempt_at=now,
            dispatched_at=now,
            lease_owner="",
            lease_expires_at=None,
        )
        source = read_step(handoff)
        change: dict[str, Any] = {"mode": mode}
        if mode == ResubmitMode.EDIT:
            if source is None or source.status != Step.Status.SUCCEEDED or edited is None:
                raise ActionRefused("There is no read document to edit: re-map from the source instead.")
            change["document_before"] = source.output
            change["document_after"] = edited
            Step.objects.filter(pk=source.pk).update(output=edited)
        elif mode == ResubmitMode.REMAP and source is not None:
            # Read the source again; every later unfinished step maps from the new read with the
            # mapping in force. Steps in flight stay in flight (looked up before writing).
            Step.objects.filter(pk=source.pk).update(status=Step.Status.PENDING, output={}, finished_at=None)
        exception_sync(handoff)
        audit_record(
            actor=actor,
            action="handoff.resubmit" if job is None else "handoff.resubmit.bulk",
            obj=handoff,
            before=before,
            after={**_snapshot(handoff), **change, **({"bulk_job": job.pk} if job else {})},
            comment=reason,
            legal_entity=handoff.legal_entity,
            actor_label=actor_label,
        )
        transaction.on_commit(lambda: _publish(handoff.pk))
    return handoff


def _publish(handoff_id: int) -> None:
    from pscsync.dispatch import handoffs_publish

    handoffs_publish([handoff_id])


def _end(*, actor: User | None, handoff: Handoff, to: str, reason: str, action: str, job: BulkJob | None) -> Handoff:
    from pscsync.intake import business_key_lock, queued_event_start

    if not reason.strip():
        raise ActionRefused("A reason is required: say why no retry is needed.")
    now = clock.now()
    with transaction.atomic():
        business_key_lock(handoff.flow, handoff.business_key)
        before = _snapshot(handoff)
        _take(
            handoff,
            allowed=(Handoff.Status.NEEDS_ATTENTION,),
            to=to,
            actor=actor,
            reason=reason,
            finished_at=now,
            next_attempt_at=None,
        )
        exception_sync(handoff)
        audit_record(
            actor=actor,
            action=action,
            obj=handoff,
            before=before,
            after={**_snapshot(handoff), **({"bulk_job": job.pk} if job else {})},
            comment=reason,
            legal_entity=handoff.legal_entity,
        )
        # The key is free again: a change that queued behind this handoff starts now.
        following = queued_event_start(flow=handoff.flow, business_key=handoff.business_key)
        if following is not None:
            following_id = following.pk
            transaction.on_commit(lambda: _publish(following_id))
    return handoff


def handoff_resolve(*, actor: User | None, handoff: Handoff, reason: str, job: BulkJob | None = None) -> Handoff:
    return _end(
        actor=actor, handoff=handoff, to=Handoff.Status.RESOLVED, reason=reason, action="handoff.resolve", job=job
    )


def handoff_cancel(*, actor: User | None, handoff: Handoff, reason: str) -> Handoff:
    return _end(
        actor=actor, handoff=handoff, to=Handoff.Status.CANCELLED, reason=reason, action="handoff.cancel", job=None
    )


def handoff_reopen(*, actor: User | None, handoff: Handoff, reason: str) -> Handoff:
    """Back to the workbench after a resolve or cancel (e.g. resolved by mistake)."""
    if not reason.strip():
        raise ActionRefused("A reason is required to reopen.")
    if handoff.archive_id is not None:
        # Its events and attempts may have left the database with their months' partitions
        # (pscsync.partitions), which keep only what archived, finished handoffs point at.
        raise ActionRefused("Its month is archived: restore the archive (manage.py archive --restore) to reopen it.")
    try:
        with transaction.atomic():
            before = _snapshot(handoff)
            _take(
                handoff,
                allowed=(Handoff.Status.RESOLVED, Handoff.Status.CANCELLED),
                to=Handoff.Status.NEEDS_ATTENTION,
                actor=actor,
                reason=reason,
                finished_at=None,
            )
            exception_sync(handoff)
            audit_record(
                actor=actor,
                action="handoff.reopen",
                obj=handoff,
                before=before,
                after=_snapshot(handoff),
                comment=reason,
                legal_entity=handoff.legal_entity,
            )
    except IntegrityError:
        raise ActionRefused(
            "Cannot reopen: a newer handoff for the same business key is open; work that one instead."
        ) from None
    return handoff


def handoff_assign(*, actor: User | None, handoff: Handoff, assignee: User | None, job: BulkJob | None = None) -> None:
    item = HandoffException.objects.filter(handoff=handoff).first()
    if item is None:
        raise ActionRefused("This handoff never needed a person: there is nothing to assign.")
    with transaction.atomic():
        before = {"assignee": item.assignee.get_username() if item.assignee else None}
        HandoffException.objects.filter(pk=item.pk).update(assignee=assignee)
        audit_record(
            actor=actor,
            action="exception.assign",
            obj=handoff,
            before=before,
            after={"assignee": assignee.get_username() if assignee else None, **({"bulk_job": job.pk} if job else {})},
            legal_entity=handoff.legal_entity,
        )


def _cause_entities_outside(actor: User | None, cause: ExceptionCause) -> list[int] | None:
    """The actor's entity ids when the cause also holds open exceptions outside them, else None
    (an actor of every entity, or a cause wholly inside the actor's scope)."""
    ids = entity_ids_for(actor) if actor is not None else None
    if ids is None:
        return None
    live = HandoffException.objects.filter(cause=cause).exclude(status=ExceptionStatus.RESOLVED)
    return ids if live.exclude(legal_entity_id__in=ids).exists() else None


def cause_scope_check(actor: User | None, cause: ExceptionCause) -> None:
    """A cause groups failures of every legal entity. Archiving or reopening it changes it for
    all of them, so an operator limited to some entities may do that only while every open
    exception of the cause is theirs; else a person who works for every entity involved does."""
    if _cause_entities_outside(actor, cause) is not None:
        raise PermissionDenied(
            "This cause also groups exceptions of legal entities outside your scope; archive or reopen it "
            "is for someone who works for every entity involved. You may assign or resolve your own exceptions."
        )


def cause_assign(*, actor: User | None, cause: ExceptionCause, assignee: User | None) -> None:
    """Assign the cause; for an operator whose scope covers only part of it, assign their own
    entities' exceptions of the cause instead (the others' stay as they are)."""
    ids = _cause_entities_outside(actor, cause)
    after = {"assignee": assignee.get_username() if assignee else None}
    with transaction.atomic():
        if ids is not None:
            items = HandoffException.objects.filter(cause=cause, legal_entity_id__in=ids)
            count = items.update(assignee=assignee)
            audit_record(
                actor=actor,
                action="cause.assign",
                obj=cause,
                after={**after, "exceptions": count, "entities": sorted(ids)},
                comment="only the exceptions of the assigner's legal entities",
            )
            return
        before = {"assignee": cause.assignee.get_username() if cause.assignee else None}
        ExceptionCause.objects.filter(pk=cause.pk).update(assignee=assignee)
        audit_record(actor=actor, action="cause.assign", obj=cause, before=before, after=after)


def comment_add(*, actor: User, cause: ExceptionCause, body: str, handoff: Handoff | None = None) -> Comment:
    if not body.strip():
        raise ActionRefused("Write something first.")
    with transaction.atomic():
        comment = Comment.objects.create(
            cause=cause,
            handoff=handoff,
            legal_entity=handoff.legal_entity if handoff else None,
            author=actor,
            author_label=actor.get_username(),
            body=body.strip(),
            created_at=clock.now(),
        )
        audit_record(
            actor=actor,
            action="exception.comment",
            obj=handoff or cause,
            after={"comment": comment.body, "cause": cause.pk},
            legal_entity=handoff.legal_entity if handoff else None,
        )
    return comment


def cause_archive(
    *,
    actor: User,
    cause: ExceptionCause,
    until: dt.datetime | None,
    occurrences: int | None,
    reason: str,
) -> None:
    cause_scope_check(actor, cause)
    if until is None and not occurrences:
        raise ActionRefused("Archive until a date or until a number of new occurrences.")
    with transaction.atomic():
        before = {"status": cause.status}
        ExceptionCause.objects.filter(pk=cause.pk).update(
            status=ExceptionStatus.ARCHIVED, archived_until=until, archived_until_occurrences=occurrences or None
        )
        audit_record(
            actor=actor,
            action="cause.archive",
            obj=cause,
            before=before,
            after={"status": "archived", "until": until.isoformat() if until else None, "occurrences": occurrences},
            comment=reason,
        )


def cause_unarchive(*, actor: User, cause: ExceptionCause) -> None:
    cause_scope_check(actor, cause)
    with transaction.atomic():
        ExceptionCause.objects.filter(pk=cause.pk).update(status=ExceptionStatus.OPEN)
        cause.status = ExceptionStatus.OPEN
        cause_refresh(cause)
        audit_record(actor=actor, action="cause.unarchive", obj=cause, before={"status": "archived"})


def runbook_save(*, actor: User, cause: ExceptionCause, fields: dict[str, str]) -> None:
    names = ("runbook_meaning", "runbook_cause", "runbook_action", "runbook_link")
    with transaction.atomic():
        before = {n: getattr(cause, n) for n in names}
        after = {n: fields.get(n, "") for n in names}
        ExceptionCause.objects.filter(pk=cause.pk).update(**after)
        audit_record(actor=actor, action="cause.runbook", obj=cause, before=before, after=after)


def saved_view_save(*, actor: User, name: str, query: str) -> SavedView:
    if not name.strip():
        raise ActionRefused("Give the view a name.")
    with transaction.atomic():
        view, _ = SavedView.objects.update_or_create(
            name=name.strip()[:120],
            defaults={"query": query[:1000], "created_by": actor, "created_at": clock.now()},
        )
        audit_record(actor=actor, action="saved_view.save", obj=view, after={"query": view.query})
    return view


def saved_view_delete(*, actor: User, view: SavedView) -> None:
    """A shared view is removed by whoever saved it, or by an admin."""
    from pscsync.access import CONFIGURE

    if view.created_by_id != actor.pk and not actor.has_perm(CONFIGURE):
        raise ActionRefused(f"“{view.name}” was saved by someone else: ask them or an admin to remove it.")
    with transaction.atomic():
        audit_record(actor=actor, action="saved_view.delete", obj=view, before={"name": view.name, "query": view.query})
        view.delete()


# ---------------------------------------------------------------------------------------------
# Compensation: undo what a step wrote, where the step defines how (e.g. delete an unpaid invoice)
# ---------------------------------------------------------------------------------------------
# From where a compensation may start: waiting for a person only. That status is open, so the
# one-open-handoff-per-key constraint keeps any newer run of the key out while the records are
# removed (a new change queues behind it). A resolved or cancelled handoff is reopened first:
# reopening refuses when a newer handoff holds the key, and "resolved" is a person saying it is
# settled as it is.
COMPENSABLE_FROM = (Handoff.Status.NEEDS_ATTENTION,)


def compensable_steps(handoff: Handoff) -> list[tuple[Step, Any]]:
    """(step, its WriteStep) for each finished step whose definition says how to undo it and
    which wrote something, last written first."""
    flow = flow_get(handoff.flow)
    if flow is None:
        return []
    defs = {d.name: d for d in flow.steps if getattr(d, "compensation", None) is not None}
    steps = (
        Step.objects.filter(handoff=handoff, name__in=list(defs), status=Step.Status.SUCCEEDED)
        .select_related("target_connection")
        .order_by("-position")
    )
    return [(step, defs[step.name]) for step in steps if _written_ids(step)]


def _written_ids(step: Step) -> dict[str, str]:
    ids = (step.output or {}).get("ids") or {}
    return {key: value for key, value in ids.items() if value}


def compensation_refusal(handoff: Handoff) -> str:
    """Why "Compensate" cannot be offered now, in an operator's words; "" when it can."""
    if handoff.lease_owner.startswith("compensation:"):
        return "A compensation is already running on this handoff."
    if not compensable_steps(handoff):
        return "Nothing this handoff wrote can be undone by pscsync."
    if handoff.status in (Handoff.Status.RESOLVED, Handoff.Status.CANCELLED):
        return f"It was {handoff.get_status_display().lower()}: reopen it first if its records must be undone."
    if handoff.status not in COMPENSABLE_FROM:
        return f"It is “{handoff.get_status_display()}”: only a handoff waiting for a person is compensated."
    same_key = Handoff.objects.filter(flow=handoff.flow, business_key=handoff.business_key)
    if same_key.filter(created_at__gt=handoff.created_at).exists():
        # The newer run writes under the same keys, so the record is now (also) its record.
        return "A newer handoff for the same business key exists: its records are the same ones; work that one."
    return ""


def compensation_plan(handoff: Handoff) -> list[dict[str, Any]]:
    """What a compensation would remove: one line per record, for the confirmation."""
    plan = []
    for step, step_def in compensable_steps(handoff):
        for key, record_id in _written_ids(step).items():
            plan.append(
                {
                    "step": step.name,
                    "label": step_def.compensation.label,
                    "explain": step_def.compensation.explain,
                    "key": key,
                    "id": record_id,
                    "system": step.target_connection.name if step.target_connection else "",
                }
            )
    return plan


def handoff_compensate(*, actor: User | None, handoff: Handoff, reason: str) -> Compensation:
    """Queue the undoing of what the handoff's compensable steps wrote. The handoff is leased to
    the compensation in the same statement that checks its status, so of two operators (or two
    clicks) one wins and the other is told; a worker does the vendor calls after commit."""
    if not reason.strip():
        raise ActionRefused("A reason is required: say why what was written must be undone.")
    refusal = compensation_refusal(handoff)
    if refusal:
        raise ActionRefused(refusal)
    steps = [step.name for step, _ in compensable_steps(handoff)]
    now = clock.now()
    try:
        with transaction.atomic():
            compensation = Compensation.objects.create(
                handoff=handoff, requested_by=actor, reason=reason.strip(), steps=steps, created_at=now
            )
            claimed = Handoff.objects.filter(pk=handoff.pk, status__in=COMPENSABLE_FROM, lease_owner="").update(
                lease_owner=compensation.lease
            )
            if claimed != 1:
                raise ActionRefused("Nothing was done: someone else acted on this handoff a moment ago.")
            audit_record(
                actor=actor,
                action="handoff.compensate.request",
                obj=handoff,
                before=_snapshot(handoff),
                after={"compensation": compensation.pk, "will_remove": compensation_plan(handoff)},
                comment=reason,
                legal_entity=handoff.legal_entity,
            )
            transaction.on_commit(lambda: _compensation_enqueue(compensation.pk))
    except IntegrityError:  # one_active_compensation: another request got in first
        raise ActionRefused("Nothing was done: a compensation is already running on this handoff.") from None
    handoff.refresh_from_db()
    return compensation


def _compensation_enqueue(compensation_id: int) -> None:
    from remediation.tasks import compensation_run_task

    try:
        compensation_run_task.delay(compensation_id)
    except Exception:  # the broker is down: exceptions_reconcile hands it to a worker later
        import logging

        logging.getLogger(__name__).warning("could not publish compensation %s", compensation_id, exc_info=True)


def compensation_run(compensation_id: int) -> str:
    """Remove the records, then (only when every one is gone) release our bookkeeping, cancel
    the handoff and reset its steps so the work can be run again from the source. Safe to run
    twice: the claim lets one run at a time through, and a record already gone is gone."""
    from connectors.errors import ConnectorError
    from connectors.registry import connector_for

    # One run at a time: a queued one, or a running one whose worker died long ago (a duplicate
    # delivery of the task while the first run is alive finds nothing to claim).
    now = clock.now()
    claimable = Q(status=Compensation.Status.QUEUED) | Q(
        status=Compensation.Status.RUNNING, started_at__lt=now - STALE_WORK
    )
    claimed = Compensation.objects.filter(claimable, pk=compensation_id).update(
        status=Compensation.Status.RUNNING, started_at=now
    )
    if not claimed:
        return "skipped"
    compensation = Compensation.objects.select_related("handoff", "requested_by").get(pk=compensation_id)
    handoff = compensation.handoff
    removed: list[dict[str, Any]] = []
    try:
        for step, step_def in compensable_steps(handoff):
            connection = step.target_connection
            connector = connector_for(connection)
            entity = step_def.entity(connection)
            for key, record_id in _written_ids(step).items():
                result = connector.withdraw(entity=entity, record_id=record_id)
                removed.append(
                    {
                        "step": step.name,
                        "system": connection.name,
                        "key": key,
                        "id": record_id,
                        "before": result.response,
                        "already_gone": bool(result.output.get("already_gone")),
                    }
                )
    except ConnectorError as exc:
        return _compensation_failed(compensation, handoff, exc.message, removed)
    except Exception as exc:  # a defect must not leave the handoff held by this compensation
        import logging

        logging.getLogger(__name__).exception("compensation %s failed unexpectedly", compensation_id)
        return _compensation_failed(compensation, handoff, f"internal error: {exc.__class__.__name__}: {exc}", removed)
    return _compensation_done(compensation, handoff, removed)


def _compensation_failed(compensation: Compensation, handoff: Handoff, message: str, removed: list) -> str:
    if removed:
        gone = ", ".join(f"{r['key']} (id {r['id']})" for r in removed)
        message = f"{message}. Already removed: {gone}; compensate again to finish"
    else:
        message = f"{message}. Nothing was changed"
    with transaction.atomic():
        Handoff.objects.filter(pk=handoff.pk, lease_owner=compensation.lease).update(lease_owner="")
        Compensation.objects.filter(pk=compensation.pk).update(
            status=Compensation.Status.FAILED, finished_at=clock.now(), removed=removed, detail=message[:2000]
        )
        audit_record(
            actor=compensation.requested_by,
            action="handoff.compensate.failed",
            obj=handoff,
            before=_snapshot(handoff),
            after={"compensation": compensation.pk, "removed": removed},
            comment=message,
            legal_entity=handoff.legal_entity,
        )
    return "failed"


def _compensation_done(compensation: Compensation, handoff: Handoff, removed: list[dict[str, Any]]) -> str:
    from pscsync.intake import business_key_lock, queued_event_start
    from pscsync.models import CrossReference

    now = clock.now()
    with transaction.atomic():
        business_key_lock(handoff.flow, handoff.business_key)
        handoff.refresh_from_db()
        before = {**_snapshot(handoff), "steps": {s.name: s.output for s in handoff.steps.all()}}
        moved = handoff_move(
            handoff,
            from_states=COMPENSABLE_FROM,
            to=Handoff.Status.CANCELLED,
            actor=compensation.requested_by,
            reason=f"compensated: {compensation.reason}",
            where=Q(lease_owner=compensation.lease),
            fields={"lease_owner": "", "finished_at": now, "next_attempt_at": None},
        )
        if moved is None:  # a run taken over as dead finished first: roll this one back
            raise RuntimeError(f"handoff {handoff.pk} is no longer held by compensation {compensation.pk}")
        released: dict[str, Any] = {}
        for step, step_def in compensable_steps(handoff):
            ids = _written_ids(step)
            keys = list(ids)
            CrossReference.objects.filter(
                connection=step.target_connection, canonical_id__in=keys, external_id__in=list(ids.values())
            ).delete()
            if step_def.compensation.release is not None:
                released.update(step_def.compensation.release(handoff, keys))
        # Every step runs again on a rerun (reopen and resubmit): the source is read again, the
        # checks claim the items again, and the record is written again under the same key.
        Step.objects.filter(handoff=handoff).update(
            status=Step.Status.PENDING, output={}, external_id="", idempotency_key="", finished_at=None
        )
        handoff.refresh_from_db()
        exception_sync(handoff)
        HandoffException.objects.filter(handoff=handoff).update(resolution="compensated")
        Compensation.objects.filter(pk=compensation.pk).update(
            status=Compensation.Status.DONE, finished_at=now, removed=removed, released=released
        )
        audit_record(
            actor=compensation.requested_by,
            action="handoff.compensate",
            obj=handoff,
            before=before,
            after={**_snapshot(handoff), "compensation": compensation.pk, "removed": removed, **released},
            comment=compensation.reason,
            legal_entity=handoff.legal_entity,
        )
        following = queued_event_start(flow=handoff.flow, business_key=handoff.business_key)
        if following is not None:
            following_id = following.pk
            transaction.on_commit(lambda: _publish(following_id))
    return "done"


# ---------------------------------------------------------------------------------------------
# Many at once: bulk jobs and replay
# ---------------------------------------------------------------------------------------------
def bulk_job_create(
    *,
    actor: User,
    kind: str,
    handoff_ids: list[int],
    reason: str = "",
    params: dict[str, Any] | None = None,
) -> BulkJob:
    """Record the job and hand it to a worker after commit. `handoff_ids` must already be scoped
    to what the actor may see (the views pass ids from scoped selectors)."""
    if kind in (BulkJob.Kind.RETRY, BulkJob.Kind.RESOLVE, BulkJob.Kind.REPLAY) and not reason.strip():
        raise ActionRefused("A reason is required for a bulk action.")
    if not handoff_ids:
        raise ActionRefused("Nothing selected: choose handoffs or a filter that matches some.")
    ids = sorted(set(handoff_ids))
    with transaction.atomic():
        job = BulkJob.objects.create(
            kind=kind,
            created_by=actor,
            created_at=clock.now(),
            reason=reason.strip(),
            params=params or {},
            handoff_ids=ids,
            total=len(ids),
        )
        audit_record(
            actor=actor,
            action=f"bulk.{kind}",
            obj=job,
            after={"handoffs": len(ids), "params": params or {}},
            comment=reason,
        )
        transaction.on_commit(lambda: _bulk_enqueue(job.pk))
    return job


def _bulk_enqueue(job_id: int) -> None:
    from remediation.tasks import bulk_job_task

    try:
        bulk_job_task.delay(job_id)
    except Exception:  # the broker is down: the job stays queued and can be started again
        import logging

        logging.getLogger(__name__).warning("could not publish bulk job %s", job_id, exc_info=True)


def bulk_job_cancel(*, actor: User, job: BulkJob) -> None:
    with transaction.atomic():
        BulkJob.objects.filter(pk=job.pk).update(cancel_requested=True)
        BulkJob.objects.filter(pk=job.pk, status=BulkJob.Status.QUEUED).update(
            status=BulkJob.Status.CANCELLED, finished_at=clock.now()
        )
        audit_record(actor=actor, action="bulk.cancel", obj=job, before={"done": job.done, "total": job.total})


def _bulk_item(job: BulkJob, handoff: Handoff) -> tuple[str, str]:
    actor = job.created_by
    try:
        if job.kind == BulkJob.Kind.RETRY:
            handoff_resubmit(actor=actor, handoff=handoff, mode=ResubmitMode.STORED, reason=job.reason, job=job)
        elif job.kind == BulkJob.Kind.REPLAY:
            handoff_resubmit(actor=actor, handoff=handoff, mode=ResubmitMode.REMAP, reason=job.reason, job=job)
        elif job.kind == BulkJob.Kind.RESOLVE:
            handoff_resolve(actor=actor, handoff=handoff, reason=job.reason, job=job)
        elif job.kind == BulkJob.Kind.ASSIGN:
            from django.contrib.auth import get_user_model

            assignee = get_user_model().objects.filter(pk=job.params.get("assignee")).first()
            handoff_assign(actor=actor, handoff=handoff, assignee=assignee, job=job)
    except ActionRefused as refused:
        return BulkJobItem.Outcome.SKIPPED, str(refused)[:300]
    return BulkJobItem.Outcome.DONE, ""


def bulk_job_run(job_id: int) -> str:
    """Work through a job's handoffs, recording each outcome. Safe to run again: items already
    done are skipped; a cancel stops it between items."""
    from pscsync.selectors import handoffs_visible_to

    now = clock.now()
    claimed = BulkJob.objects.filter(pk=job_id, status__in=[BulkJob.Status.QUEUED, BulkJob.Status.RUNNING]).update(
        status=BulkJob.Status.RUNNING, started_at=now
    )
    if not claimed:
        return "skipped"
    job = BulkJob.objects.select_related("created_by").get(pk=job_id)
    done_ids = set(BulkJobItem.objects.filter(job=job).values_list("handoff_id", flat=True))
    # Scope again at run time: the creator's access may have shrunk since.
    visible = handoffs_visible_to(job.created_by) if job.created_by else Handoff.objects.none()
    for position, handoff_id in enumerate(job.handoff_ids):
        if handoff_id in done_ids:
            continue
        if position % 10 == 0 and BulkJob.objects.filter(pk=job_id, cancel_requested=True).exists():
            BulkJob.objects.filter(pk=job_id).update(status=BulkJob.Status.CANCELLED, finished_at=clock.now())
            return "cancelled"
        handoff = visible.filter(pk=handoff_id).first()
        cause_before = HandoffException.objects.filter(handoff_id=handoff_id).values_list("cause_id", flat=True).first()
        if handoff is None:
            outcome, detail = BulkJobItem.Outcome.SKIPPED, "not visible to you any more"
        else:
            outcome, detail = _bulk_item(job, handoff)
        with transaction.atomic():
            BulkJobItem.objects.create(
                job=job, handoff_id=handoff_id, outcome=outcome, detail=detail, cause_before_id=cause_before
            )
            counter = {"done": "succeeded", "skipped": "skipped", "failed": "failed"}[outcome]
            from django.db.models import F

            BulkJob.objects.filter(pk=job_id).update(done=F("done") + 1, **{counter: F(counter) + 1})
    BulkJob.objects.filter(pk=job_id).update(status=BulkJob.Status.DONE, finished_at=clock.now())
    return "done"


def replay_scope(*, user: User, connection_id: int, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """What a replay of a connection's events in [start, end) will touch, before it runs: the
    events by status, the handoffs they led to by status, and those that will be resubmitted
    (waiting for a person and not held by a compensation). Only what the user may see: an event
    without a legal entity of its own counts when the handoff it led to is the user's."""
    from django.db.models import Count

    from pscsync.access import entity_ids_for, scope_queryset
    from pscsync.models import Event

    events = Event.objects.filter(connection_id=connection_id, received_at__gte=start, received_at__lt=end)
    entity_ids = entity_ids_for(user)
    if entity_ids is not None:
        events = events.filter(
            Q(legal_entity__in=entity_ids) | Q(legal_entity__isnull=True, handoff__legal_entity__in=entity_ids)
        )
    led_to = scope_queryset(Handoff.objects.all(), user).filter(
        Q(pk__in=events.exclude(handoff=None).values("handoff_id")) | Q(trigger_event__in=events.values("pk"))
    )
    by_status = {
        r["status"]: r["n"]
        for r in Handoff.objects.filter(pk__in=led_to.values("pk")).values("status").annotate(n=Count("pk"))
    }
    events_by_status = {r["status"]: r["n"] for r in events.values("status").annotate(n=Count("pk")).order_by()}
    replayable = led_to.filter(status=Handoff.Status.NEEDS_ATTENTION, lease_owner="")
    ids = sorted(set(replayable.values_list("pk", flat=True)))
    raw = f"{connection_id}|{start.isoformat()}|{end.isoformat()}|{','.join(map(str, ids))}"
    return {
        "events": sum(events_by_status.values()),
        "events_by_status": sorted(events_by_status.items()),
        "handoffs_by_status": [(s, label, by_status[s]) for s, label in Handoff.Status.choices if s in by_status],
        "handoff_ids": ids,
        "handoffs": len(ids),
        # What the person saw: the replay runs only if the same window still touches the same handoffs.
        "fingerprint": hashlib.sha256(raw.encode()).hexdigest()[:16],
    }
