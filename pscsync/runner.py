"""The handoff runner: lease, resume at the first unfinished step, record every attempt.

Lifecycle of a handoff (Handoff.TRANSITIONS; every move goes through pscsync.lifecycle.handoff_move):
  pending -> running -> succeeded
                     -> waiting_retry -> running ...    (transient or unknown outcome, within budget)
                     -> needs_attention                 (validation, mapping, rejected; budget spent;
                                                         or the worker died on it too often)
Recovery points: each attempt is committed as "in flight" before the call, and its result is
committed before the next step starts (in the same transaction that marks the next step in flight,
or that ends the handoff: one commit per step). A step found in flight after a crash had an unknown
outcome: the runner looks the object up by the step's key and adopts it if it exists, so a write
applied just before a crash is never made twice.
Every write to the handoff checks that this worker still holds the lease; a worker that lost it
(it stalled past the lease and another took over) stops without writing.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection as db
from django.db import transaction
from django.db.models import Max, OuterRef, Q, Subquery

from connectors.base import WriteResult
from connectors.errors import ConnectorError, TransientError, UnknownOutcomeError
from ops import tracing
from ops.logs import bind as log_bind
from pscsync import clock, statements
from pscsync.faults import fault_point
from pscsync.flows import Flow, StepContext, StepDef, flow_get
from pscsync.intake import business_key_lock, queued_event_start
from pscsync.lifecycle import MOVED, handoff_move, moves_batched
from pscsync.models import ATTEMPT_CLOCK_SLACK, Attempt, CrossReference, Event, Handoff, LegalEntity, Step

log = logging.getLogger(__name__)

RETRY_CAP_SECONDS = 3600.0


class LeaseLost(Exception):
    """Another worker owns this handoff now; stop without writing anything."""


@dataclass
class StepFailed(Exception):
    error_class: str
    message: str
    retryable: bool
    retry_after: float | None = None
    # Nothing was sent: the call waits its turn under a rate or concurrency limit. A deferral,
    # not a failure: rescheduled for when its slot frees, with no retry spent.
    deferred: bool = False
    key: str = ""  # the record the failure is about, when the error named one (ConnectorError.key)
    # What else the error named (ConnectorError): fields at fault, mapping version id, value map.
    fields: tuple[str, ...] = ()
    mapping_version: int | None = None
    value_map: str = ""


# A failure's structured detail, cleared wherever the failure itself is (a success, a failure
# outside any step): stale detail would point the workbench at the wrong fix.
NO_FAILURE_DETAIL: dict[str, Any] = {"failed_mapping_id": None, "failed_fields": [], "failed_value_map": ""}


def retry_delay(attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the target's Retry-After."""
    ceiling = min(RETRY_CAP_SECONDS, settings.RETRY_BASE_SECONDS * 2 ** max(attempt - 1, 0))
    delay = (rng or random).uniform(0, ceiling)
    return max(delay, retry_after or 0.0)


def _lease_until(now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(seconds=settings.LEASE_SECONDS)


def _renew(handoff: Handoff, worker: str) -> dt.datetime:
    """Inside a transaction: prove we still hold the lease and extend it, or raise LeaseLost.

    A handoff claimed in a batch (handoffs_claim) is reserved, not yet running: its first commit
    moves it to running, with the same proof (the reservation is ours) in the same statement."""
    now = clock.now()
    if handoff.status != Handoff.Status.RUNNING:
        _take_reserved(handoff, worker, now)
        return now
    held = Handoff.objects.filter(pk=handoff.pk, lease_owner=worker, status=Handoff.Status.RUNNING).update(
        lease_expires_at=_lease_until(now)
    )
    if held != 1:
        raise LeaseLost(f"handoff {handoff.pk}: lease no longer held by {worker}")
    return now


def _take_reserved(handoff: Handoff, worker: str, now: dt.datetime, *, also: Sequence[statements.Write] = ()) -> None:
    """Move a handoff reserved by this worker's batch claim to running (with `also`, the writes
    of the same commit), or raise LeaseLost."""
    moved = handoff_move(
        handoff,
        from_states=(handoff.status,),
        to=Handoff.Status.RUNNING,
        actor=worker,
        reason="taken by a worker",
        attempt=handoff.attempt_count,
        where=Q(lease_owner=worker),
        fields={"lease_expires_at": _lease_until(now), "started_at": handoff.started_at or now},
        also=also,
    )
    if moved is None:
        raise LeaseLost(f"handoff {handoff.pk}: reservation no longer held by {worker}")


def _lease(handoff_id: int, worker: str) -> Handoff | None:
    """Take the handoff if it is due and nobody live holds it. Counts takeovers from dead workers."""
    now = clock.now()
    with transaction.atomic():
        # The row lock makes a duplicate delivery wait and then find the lease held. The connection
        # comes along (steps write to it) without being locked.
        handoff = (
            Handoff.objects.select_for_update(of=("self",))
            .select_related("source_connection", "legal_entity")
            .filter(pk=handoff_id)
            .first()
        )
        if handoff is None or handoff.status not in {"pending", "waiting_retry", "running"}:
            return None
        if handoff.lease_expires_at is not None and handoff.lease_expires_at > now:
            return None  # a live worker has it; this delivery is a duplicate
        if handoff.status != Handoff.Status.RUNNING and handoff.next_attempt_at and handoff.next_attempt_at > now:
            return None  # a retry that is not due yet
        reason = "taken by a worker"
        if handoff.status == Handoff.Status.RUNNING:
            # The previous worker's lease ran out while it was running: it died or hung.
            crashes = handoff.worker_crashes + 1
            _record_worker_lost(handoff, now)
            if crashes >= settings.MAX_WORKER_CRASHES:
                message = (
                    f"The worker processing this handoff died {crashes} times (killed, out of "
                    "memory or past its time limit). It was stopped so it cannot take other work down with it."
                )
                handoff_move(
                    handoff,
                    from_states=(Handoff.Status.RUNNING,),
                    to=Handoff.Status.NEEDS_ATTENTION,
                    actor=worker,
                    reason=message,
                    fields={
                        "worker_crashes": crashes,
                        "last_error_class": "worker_lost",
                        "last_error_message": message,
                        "failed_step": "",  # it died somewhere, not at a step that answered
                        "failed_key": "",
                        "failure_reason": message,
                        **NO_FAILURE_DETAIL,
                        "lease_owner": "",
                        "lease_expires_at": None,
                        "finished_at": None,
                    },
                )
                return None
            handoff.worker_crashes = crashes
            reason = f"taken over from a worker that died ({crashes} so far)"
        handoff_move(
            handoff,
            from_states=(handoff.status,),
            to=Handoff.Status.RUNNING,
            actor=worker,
            reason=reason,
            attempt=handoff.attempt_count,
            fields={
                "lease_owner": worker,
                "lease_expires_at": _lease_until(now),
                "started_at": handoff.started_at or now,
                "worker_crashes": handoff.worker_crashes,
            },
        )
    return handoff


def _record_worker_lost(handoff: Handoff, now: dt.datetime) -> None:
    step = Step.objects.filter(handoff=handoff, status=Step.Status.IN_FLIGHT).order_by("position").first()
    if step is None:
        return
    last = step.attempts.filter(outcome=Attempt.Outcome.IN_FLIGHT).order_by("-number").first()
    if last is not None:
        last.outcome = Attempt.Outcome.WORKER_LOST
        last.error_class = "worker_lost"
        last.error_message = "the worker died during this attempt; the outcome is checked before any retry"
        last.duration_ms = int((now - last.started_at).total_seconds() * 1000)
        last.save()


def _ensure_steps(handoff: Handoff, flow: Flow) -> list[Step]:
    return _steps_of({handoff.pk: (handoff, flow)})[handoff.pk]


def _steps_of(runs: dict[int, tuple[Handoff, Flow]]) -> dict[int, list[Step]]:
    """The steps of each handoff in its flow's order, the missing ones created: one SELECT and
    one INSERT for the whole batch, so all or none."""
    # Each step with the number of its last attempt: only the lease holder adds attempts, so the
    # runner counts them from here on instead of asking before each one.
    if not runs:
        return {}
    # A subquery bounded by the batch's oldest handoff reads only the attempts partitions since then.
    since = min(h.created_at for h, _ in runs.values()) - ATTEMPT_CLOCK_SLACK
    last = (
        Attempt.objects.filter(step=OuterRef("pk"), started_at__gte=since)
        .order_by()
        .values("step")
        .annotate(n=Max("number"))
        .values("n")
    )
    existing: dict[tuple[int, str], Step] = {
        (s.handoff_id, s.name): s
        for s in Step.objects.filter(handoff_id__in=list(runs)).annotate(last_attempt=Subquery(last))
    }
    missing = [
        Step(handoff=handoff, name=step_def.name, position=position, idempotency_key="")
        for handoff, flow in runs.values()
        for position, step_def in enumerate(flow.steps)
        if (handoff.pk, step_def.name) not in existing
    ]
    for step in Step.objects.bulk_create(missing):
        step.last_attempt = 0  # type: ignore[attr-defined]  # as the annotate() gives the others
        existing[(step.handoff_id, step.name)] = step
    return {pk: [existing[(pk, step_def.name)] for step_def in flow.steps] for pk, (_, flow) in runs.items()}


@dataclass
class _Done:
    """A step that succeeded (or was adopted) at the target and whose result is not stored yet:
    the next commit stores it, the one that begins the next step or ends the handoff."""

    step: Step
    attempt: Attempt
    outcome: str
    started: float
    result: WriteResult


def _begin_attempt(
    handoff: Handoff, step: Step, step_def: StepDef, ctx: StepContext, worker: str, *, done: _Done | None = None
) -> Attempt:
    """Commit the step as in flight with a new attempt, and the result of the step before (done)."""
    key = target = None
    if not step.idempotency_key:
        try:
            key, target = step_def.idempotency_key(ctx), step_def.target(ctx)
        except Exception:
            if done is not None:  # a defect in this step's definition must not lose the last result
                _finish_attempt(
                    handoff,
                    done.step,
                    done.attempt,
                    worker,
                    outcome=done.outcome,
                    started=done.started,
                    result=done.result,
                )
            raise
    try:
        planned = _jsonable(step_def.planned_request(ctx))
    except Exception as exc:  # the same error surfaces, classified, when the step runs
        planned = {"could_not_build_request": str(exc)}
    last = getattr(step, "last_attempt", None)
    with transaction.atomic():
        if db.vendor == "postgresql" and last is not None and (done is None or _plain_success(done)):
            # The common cases, one statement (a data-modifying WITH): a running handoff's lease,
            # the last step's result, this step and its attempt; or a reserved handoff's first
            # commit, its move to running (with the history row) and this step and its attempt.
            now = clock.now()
            if done is not None:
                _outcome_apply(
                    done.step, done.attempt, now, outcome=done.outcome, started=done.started, result=done.result
                )
            _step_begin_apply(step, key, target)
            attempt = Attempt(step=step, number=last + 1, started_at=now, worker=worker, request=planned)
            if handoff.status == Handoff.Status.RUNNING:
                _step_write(handoff, worker, now, done=done, step=step, attempt=attempt)
            else:
                _first_write(handoff, worker, now, done=done, step=step, attempt=attempt)
        else:
            now = _renew(handoff, worker)
            if done is not None:
                _done_record(handoff, done, now)
            _step_begin_apply(step, key, target)
            step.save(update_fields=["status", "idempotency_key", "target_connection"])
            if last is None:
                last = step.attempts.aggregate(n=Max("number"))["n"] or 0
            attempt = Attempt.objects.create(step=step, number=last + 1, started_at=now, worker=worker, request=planned)
    step.last_attempt = attempt.number  # type: ignore[attr-defined]  # see _steps
    return attempt


def _done_record(handoff: Handoff, done: _Done, now: dt.datetime) -> None:
    """Inside a transaction that has just renewed the lease: store a step's success (ORM path)."""
    _record_outcome(
        handoff, done.step, done.attempt, now, outcome=done.outcome, started=done.started, result=done.result
    )


def _step_begin_apply(step: Step, key: str | None, target: Any) -> None:
    if key is not None:
        step.idempotency_key = key
        step.target_connection = target
    step.status = Step.Status.IN_FLIGHT


def _plain_success(done: _Done) -> bool:
    """A success that writes only its attempt, its step and cross references (no business facts
    for the handoff): what _step_write stores in its one statement."""
    return done.outcome in (Attempt.Outcome.SUCCEEDED, Attempt.Outcome.ADOPTED) and not (
        done.result is not None and done.result.output.get("handoff_facts")
    )


_STEP_DONE_FIELDS = ("status", "external_id", "output", "mapping_version", "finished_at")
_STEP_BEGUN_FIELDS = ("status", "idempotency_key", "target_connection")


def _step_writes(
    handoff: Handoff, now: dt.datetime, guard: str, *, done: _Done | None, step: Step, attempt: Attempt
) -> tuple[list[statements.Write], statements.Write]:
    """The parts of a commit that begins a step, each guarded: the last step's result (its attempt,
    its step, its cross references), this step in flight, and its attempt (the last part, which
    reads back the attempt's id)."""
    writes = [statements.update(step, _STEP_BEGUN_FIELDS, guard)]
    if done is not None:
        writes += _done_writes(handoff, done, now, guard)
    inserted = statements.insert(attempt, guard)
    return [*writes, inserted], inserted


def _done_writes(handoff: Handoff, done: _Done, now: dt.datetime, guard: str) -> list[statements.Write]:
    """The parts that store a plain success (already applied to its step and attempt): the attempt
    (by id and start, which names its month's partition), the step, the cross references."""
    writes = [
        statements.update(
            done.attempt,
            _ATTEMPT_OUTCOME_FIELDS,
            guard,
            where="started_at = %s",
            where_params=[done.attempt.started_at],
        ),
        statements.update(done.step, _STEP_DONE_FIELDS, guard),
    ]
    links = _cross_reference_rows(handoff, done.step, now)
    if links:
        writes.append(
            statements.upsert(links, unique=_LINK_UNIQUE, update_fields=_LINK_UPDATED, guard=guard),
        )
    return writes


def _attempt_stored(written: statements.Write, attempt: Attempt) -> None:
    """After a statement that stored an attempt's outcome by id and start (one of _done_writes):
    should the start read back differently (it never has), the id alone still finds the row."""
    if not written.value:
        Attempt.objects.filter(pk=attempt.pk).update(**{f: getattr(attempt, f) for f in _ATTEMPT_OUTCOME_FIELDS})


def _step_write(
    handoff: Handoff, worker: str, now: dt.datetime, *, done: _Done | None, step: Step, attempt: Attempt
) -> None:
    """Inside a transaction, in one statement: prove and extend the lease, store the last step's
    result (its attempt, its step and its cross references), mark this step in flight and insert
    its attempt. Each part writes only if the lease is ours (the first CTE's row); else nothing is
    written and LeaseLost is raised."""
    lease = (
        "lease AS (UPDATE pscsync_handoff SET lease_expires_at = %s WHERE id = %s AND lease_owner = %s "
        "AND status = %s RETURNING id)"
    )
    params: list[Any] = [_lease_until(now), handoff.pk, worker, Handoff.Status.RUNNING]
    writes, inserted = _step_writes(handoff, now, "EXISTS (SELECT FROM lease)", done=done, step=step, attempt=attempt)
    (held,) = statements.run([lease], params, writes, "(SELECT count(*) FROM lease)")
    if not held:
        raise LeaseLost(f"handoff {handoff.pk}: lease no longer held by {worker}")
    _attempt_saved(attempt, inserted)
    if done is not None:
        _attempt_stored(writes[1], done.attempt)


def _first_write(
    handoff: Handoff, worker: str, now: dt.datetime, *, done: _Done | None, step: Step, attempt: Attempt
) -> None:
    """A reserved handoff's first commit in one statement: its move to running (handoff_move, with
    the proof that the reservation is ours and the history row), this step in flight and its
    attempt (and the last step's result, should there be one), written only if it moved."""
    writes, inserted = _step_writes(handoff, now, MOVED, done=done, step=step, attempt=attempt)
    _take_reserved(handoff, worker, now, also=writes)
    _attempt_saved(attempt, inserted)
    if done is not None:
        _attempt_stored(writes[1], done.attempt)


def _attempt_saved(attempt: Attempt, inserted: statements.Write) -> None:
    attempt.pk = inserted.value
    attempt._state.adding = False
    attempt._state.db = "default"


def _finish_attempt(
    handoff: Handoff,
    step: Step,
    attempt: Attempt,
    worker: str,
    *,
    outcome: str,
    started: float,
    result: WriteResult | None = None,
    error: ConnectorError | None = None,
    recovering: bool = False,
) -> None:
    with transaction.atomic():
        now = _renew(handoff, worker)
        _record_outcome(
            handoff,
            step,
            attempt,
            now,
            outcome=outcome,
            started=started,
            result=result,
            error=error,
            recovering=recovering,
        )


_ATTEMPT_OUTCOME_FIELDS = (
    "outcome", "duration_ms", "request", "response", "http_status", "external_id", "error_class", "error_message",
    "retry_after_seconds",
)  # fmt: skip


def _record_outcome(
    handoff: Handoff,
    step: Step,
    attempt: Attempt,
    now: dt.datetime,
    *,
    outcome: str,
    started: float,
    result: WriteResult | None = None,
    error: ConnectorError | None = None,
    recovering: bool = False,
) -> None:
    """Inside a transaction that has just renewed the lease: store how an attempt ended."""
    status = step.status
    succeeded = _outcome_apply(
        step, attempt, now, outcome=outcome, started=started, result=result, error=error, recovering=recovering
    )
    # By id and start: on PostgreSQL the start names the attempt's month partition. Should the
    # start read back differently (it never has), the id alone still finds the row.
    outcome_fields = {f: getattr(attempt, f) for f in _ATTEMPT_OUTCOME_FIELDS}
    if not Attempt.objects.filter(pk=attempt.pk, started_at=attempt.started_at).update(**outcome_fields):
        Attempt.objects.filter(pk=attempt.pk).update(**outcome_fields)
    if succeeded:
        step.save(update_fields=["status", "external_id", "output", "mapping_version", "finished_at"])
        if result is not None and result.output.get("handoff_facts"):
            _record_facts(handoff, result.output["handoff_facts"])
        _record_links(handoff, step, now)
    elif step.status != status:  # failed, or deferred back to pending; unknown stays in flight
        step.save(update_fields=["status"])


def _outcome_apply(
    step: Step,
    attempt: Attempt,
    now: dt.datetime,
    *,
    outcome: str,
    started: float,
    result: WriteResult | None = None,
    error: ConnectorError | None = None,
    recovering: bool = False,
) -> bool:
    """Set how an attempt ended on it and its step (not saved). True when the step succeeded."""
    attempt.outcome = outcome
    attempt.duration_ms = int((time.monotonic() - started) * 1000)
    if result is not None and result.request:
        attempt.request = _jsonable(result.request)
    if result is not None:
        attempt.response = _jsonable(result.response)
        attempt.http_status = result.http_status
        attempt.external_id = result.external_id
    if error is not None:
        attempt.error_class = error.error_class
        attempt.error_message = error.message
        attempt.http_status = error.http_status
        attempt.response = _jsonable(error.response) if error.response is not None else {}
        if isinstance(error, TransientError) and error.retry_after is not None:
            attempt.retry_after_seconds = int(error.retry_after)
    if outcome in (Attempt.Outcome.SUCCEEDED, Attempt.Outcome.ADOPTED):
        step.status = Step.Status.SUCCEEDED
        step.external_id = result.external_id if result else ""
        step.output = result.output if result else {}
        step.mapping_version_id = result.mapping_version_id if result else None
        step.finished_at = now
        return True
    if outcome == Attempt.Outcome.DEFERRED:
        # Nothing was sent: the step waits for its slot. A step being recovered stays in flight,
        # so the run after the wait still looks before writing.
        if not recovering:
            step.status = Step.Status.PENDING
        return False
    if outcome != Attempt.Outcome.UNKNOWN:
        # An unknown outcome leaves the step in flight, so the next run looks before writing.
        step.status = Step.Status.FAILED
    return False


def _instant(value: Any) -> dt.datetime | None:
    """An ISO date or date-time from a source system, as an aware date-time (dates: midnight UTC)."""
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _record_facts(handoff: Handoff, facts: dict[str, Any]) -> None:
    """Business facts a step found (customer, service line, amount, source timestamps) go on the
    handoff, so dashboards and the workbench can filter and measure without reading payloads."""
    fields = {k: facts[k] for k in ("customer_name", "service_line", "amount", "currency") if facts.get(k) is not None}
    if len(str(fields.get("currency", ""))) != 3:
        fields.pop("currency", None)  # only an ISO code is a currency here
    if facts.get("legal_entity") and handoff.legal_entity_id is None:
        entity = LegalEntity.objects.filter(code__iexact=facts["legal_entity"]).first()
        if entity is not None:
            fields["legal_entity"] = entity
    started = _instant(facts.get("started_at"))
    if started is not None:
        # When it happened in the source's business time (the deal closed, the batch was
        # released), not when the vendor's system committed the change we heard about.
        fields["business_started_at"] = started
    times = facts.get("business_times") or {}
    if times:
        current = Handoff.objects.filter(pk=handoff.pk).values_list("business_times", flat=True).first() or {}
        fields["business_times"] = {**current, **times}
    if fields:
        Handoff.objects.filter(pk=handoff.pk).update(**fields)
        for name, value in fields.items():
            setattr(handoff, name, value)


def _jsonable(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, (dict, list, str, int, float, bool)):
        return value
    return str(value)


_LINK_UNIQUE = ("entity_type", "canonical_id", "connection")
_LINK_UPDATED = ("external_id", "legal_entity", "handoff", "updated_at")


def _cross_reference_rows(handoff: Handoff, step: Step, now: dt.datetime) -> list[CrossReference]:
    """The id each record the step wrote has in the target, under its canonical key (none when
    the step wrote nothing a later run or a person looks up)."""
    if not (step.target_connection_id and (step.external_id or step.output.get("ids"))):
        return []
    output = step.output or {}
    entity_type = output.get("entity_type") or step.name.removeprefix("upsert_")
    pairs = output.get("ids") or {step.idempotency_key: step.external_id}
    return [
        CrossReference(
            entity_type=entity_type,
            canonical_id=canonical_id,
            connection_id=step.target_connection_id,
            external_id=external_id,
            legal_entity_id=handoff.legal_entity_id,
            handoff=handoff,
            created_at=now,
            updated_at=now,
        )
        for canonical_id, external_id in pairs.items()
        if external_id
    ]


def _record_links(handoff: Handoff, step: Step, now: dt.datetime) -> None:
    """Remember the id each record has in the target: one INSERT ... ON CONFLICT DO UPDATE for all
    the records of the step (created_at is kept when a row exists)."""
    rows = _cross_reference_rows(handoff, step, now)
    if rows:
        CrossReference.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=list(_LINK_UNIQUE), update_fields=list(_LINK_UPDATED)
        )


def _run_step(
    handoff: Handoff,
    step: Step,
    step_def: StepDef,
    ctx: StepContext,
    worker: str,
    attempt: Attempt,
    *,
    recovering: bool,
) -> _Done:
    """Run one begun attempt to success, or store the failure and raise StepFailed. The success is
    returned, not stored: the caller's next commit stores it (before any further call)."""
    started = time.monotonic()
    if recovering:
        # The last try may have been applied before its worker died: look before writing again.
        try:
            existing = step_def.find_existing(ctx)
        except ConnectorError as exc:
            _finish_attempt(
                handoff, step, attempt, worker, outcome=_outcome_of(exc), started=started, error=exc, recovering=True
            )
            raise _failure(exc) from exc
        if existing is not None:
            return _Done(step, attempt, Attempt.Outcome.ADOPTED, started, existing)
    fault_point("before_target_call", handoff.business_key)
    try:
        result = step_def.perform(ctx)
    except UnknownOutcomeError as exc:
        adopted = _adopt_after_unknown(step_def, ctx)
        if adopted is None:
            _finish_attempt(handoff, step, attempt, worker, outcome=Attempt.Outcome.UNKNOWN, started=started, error=exc)
            raise _failure(exc) from exc
        return _Done(step, attempt, Attempt.Outcome.ADOPTED, started, adopted)
    except ConnectorError as exc:
        _finish_attempt(handoff, step, attempt, worker, outcome=_outcome_of(exc), started=started, error=exc)
        raise _failure(exc) from exc
    except SoftTimeLimitExceeded as exc:
        # The step ran past the task's time limit mid-call: it may or may not have been applied.
        unknown = UnknownOutcomeError("the step took longer than the task time limit")
        _finish_attempt(handoff, step, attempt, worker, outcome=Attempt.Outcome.UNKNOWN, started=started, error=unknown)
        raise _failure(unknown) from exc
    except Exception as exc:
        # A defect on our side (mapping code, an unexpected response). The write may have happened,
        # so the step stays in flight and a resubmit looks before writing; a person must look.
        log.exception("handoff %s step %s failed unexpectedly", handoff.pk, step.name)
        internal = ConnectorError(f"internal error: {exc.__class__.__name__}: {exc}")
        internal.error_class = "internal"
        _finish_attempt(
            handoff, step, attempt, worker, outcome=Attempt.Outcome.UNKNOWN, started=started, error=internal
        )
        raise StepFailed("internal", internal.message, retryable=False) from exc
    fault_point("after_target_call_before_commit", step.idempotency_key)
    return _Done(step, attempt, Attempt.Outcome.SUCCEEDED, started, result)


def _adopt_after_unknown(step_def: StepDef, ctx: StepContext) -> WriteResult | None:
    try:
        return step_def.find_existing(ctx)
    except ConnectorError:
        return None  # still unknown; the step stays in flight and the next run looks again


def _outcome_of(exc: ConnectorError) -> str:
    if exc.deferred:
        return Attempt.Outcome.DEFERRED  # nothing was sent: a wait for a limit, not a failure
    return {
        "transient": Attempt.Outcome.TRANSIENT,
        "unknown": Attempt.Outcome.UNKNOWN,
        "validation": Attempt.Outcome.VALIDATION,
        "mapping": Attempt.Outcome.MAPPING,
    }.get(exc.error_class, Attempt.Outcome.REJECTED)


def _failure(exc: ConnectorError) -> StepFailed:
    return StepFailed(
        error_class=exc.error_class,
        message=exc.message,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
        deferred=exc.deferred,
        key=exc.key,
        fields=exc.fields,
        mapping_version=exc.mapping_version,
        value_map=exc.value_map,
    )


def _fail(handoff: Handoff, flow: Flow, step: Step, step_def: StepDef, failure: StepFailed, worker: str) -> str:
    now = clock.now()
    handoff.refresh_from_db(fields=["attempt_count"])
    attempts = handoff.attempt_count + (1 if failure.retryable and not failure.deferred else 0)
    fields: dict[str, Any] = {
        "last_error_class": failure.error_class,
        "failed_step": step.name,
        # The record the step writes (its idempotency key is ours: "C-…"), unless the error named
        # another; a read or a check is keyed by the engine alone ("read_deal:…"), which names nothing.
        "failed_key": failure.key or (step.idempotency_key if step_def.keys_a_record else ""),
        "failure_reason": failure.message,
        "failed_mapping_id": failure.mapping_version,
        "failed_fields": list(failure.fields),
        "failed_value_map": failure.value_map,
        "lease_owner": "",
        "lease_expires_at": None,
        "attempt_count": attempts,
    }
    if failure.deferred:
        # When the slot frees, not a backoff: the limiter said when. A little jitter spreads the
        # handoffs deferred together over the slots as they free.
        delay = (failure.retry_after or 1.0) + random.uniform(0, 1.0)  # nosec B311  # jitter
        to = Handoff.Status.WAITING_RETRY
        fields["next_attempt_at"] = now + dt.timedelta(seconds=delay)
        fields["last_error_message"] = f"{step.name}: {failure.message}"
        # Nothing failed: the handoff did not stop at a step, it waits for its turn.
        fields.update(failed_step="", failed_key="", failure_reason="")
    elif failure.retryable and attempts < flow.attempt_budget:
        delay = retry_delay(attempts, retry_after=failure.retry_after)
        to = Handoff.Status.WAITING_RETRY
        fields["next_attempt_at"] = now + dt.timedelta(seconds=delay)
        fields["last_error_message"] = f"{step.name}: {failure.message} (retry {attempts} in {delay:.0f} s)"
    else:
        to = Handoff.Status.NEEDS_ATTENTION
        fields["next_attempt_at"] = None
        spent = f" after {attempts} attempts" if failure.retryable else ""
        fields["last_error_message"] = f"{step.name}: {failure.message}{spent}"
    # The lease check and the move in one conditional update (a worker that lost the lease writes nothing).
    moved = handoff_move(
        handoff,
        from_states=(Handoff.Status.RUNNING,),
        to=to,
        actor=worker,
        reason=fields["last_error_message"],
        step=step.name,
        where=Q(lease_owner=worker),
        fields=fields,
    )
    if moved is None:
        raise LeaseLost(f"handoff {handoff.pk}: lease no longer held by {worker}")
    return to


def _succeed(handoff: Handoff, worker: str, *, done: _Done | None = None) -> None:
    """End the handoff as succeeded, storing the last step's result (done) in the same commit."""
    with transaction.atomic():
        # The key lock before the row lock, in the same order as intake takes them (no deadlock).
        business_key_lock(handoff.flow, handoff.business_key)
        if handoff.status != Handoff.Status.RUNNING:
            _renew(handoff, worker)  # claimed in a batch with nothing left to run: start it first
        now = clock.now()
        ended = {
            "finished_at": now,
            "business_finished_at": now,
            "lease_owner": "",
            "lease_expires_at": None,
            "next_attempt_at": None,
            "last_error_class": "",
            "last_error_message": "",
            "failed_step": "",
            "failed_key": "",
            "failure_reason": "",
            **NO_FAILURE_DETAIL,
        }
        # The lease check and the end in one statement; only the fields that change are written.
        # On PostgreSQL the last step's plain success is stored in that same statement, which also
        # says whether a change waits behind this one (the common case: none, nothing more to do).
        together = db.vendor == "postgresql" and (done is None or _plain_success(done))
        writes: list[statements.Write] = []
        if together and done is not None:
            _outcome_apply(done.step, done.attempt, now, outcome=done.outcome, started=done.started, result=done.result)
            writes = _done_writes(handoff, done, now, MOVED)
        queued = statements.Write(
            "SELECT 1 FROM pscsync_event WHERE flow = %s AND business_key = %s AND status = %s LIMIT 1",
            [handoff.flow, handoff.business_key, Event.Status.QUEUED],
            read="count(*)",
        )
        moved = handoff_move(
            handoff,
            from_states=(Handoff.Status.RUNNING,),
            to=Handoff.Status.SUCCEEDED,
            actor=worker,
            reason="every step succeeded",
            where=Q(lease_owner=worker),
            fields=ended,
            also=[*writes, queued] if together else (),
        )
        if moved is None:
            raise LeaseLost(f"handoff {handoff.pk}: lease no longer held by {worker}")
        if done is not None:
            if together:
                _attempt_stored(writes[0], done.attempt)
            else:
                _done_record(handoff, done, now)
        if together and not queued.value:
            return  # read under the key's lock: no change can queue behind it until we commit
        following = queued_event_start(flow=handoff.flow, business_key=handoff.business_key, key_locked=True)
        if following is not None:
            from pscsync.dispatch import handoffs_publish

            following_id = following.pk
            transaction.on_commit(lambda: handoffs_publish([following_id]))


def handoff_run(*, handoff_id: int, worker: str) -> str:
    """Run a handoff from its first unfinished step. Safe to call twice: the lease decides."""
    handoff = _lease(handoff_id, worker)
    if handoff is None:
        return "skipped"
    return _run_traced(handoff, worker)


def _run_traced(
    handoff: Handoff, worker: str, steps: list[Step] | None = None, shared: dict[Any, Any] | None = None
) -> str:
    # On every line after, and on every span (ops.tracing), which the run joins to the handoff's trace.
    log_bind(
        handoff_id=handoff.pk,
        business_key=handoff.business_key,
        flow=handoff.flow,
        legal_entity=handoff.legal_entity.code if handoff.legal_entity else "",
    )
    with tracing.handoff_span(handoff):
        outcome = _run_leased(handoff, worker, steps=steps, shared=shared)
        tracing.annotate(outcome=outcome)  # succeeded, waiting_retry, needs_attention, lease_lost
        return outcome


def _run_leased(
    handoff: Handoff, worker: str, *, steps: list[Step] | None = None, shared: dict[Any, Any] | None = None
) -> str:
    flow = flow_get(handoff.flow)
    if flow is None:
        failure = StepFailed("mapping", f"no flow named {handoff.flow!r} is installed", retryable=False)
        moved = handoff_move(
            handoff,
            from_states=(handoff.status,),  # running, or reserved by a batch claim
            to=Handoff.Status.NEEDS_ATTENTION,
            actor=worker,
            reason=failure.message,
            where=Q(lease_owner=worker),
            fields={
                "last_error_class": failure.error_class,
                "last_error_message": failure.message,
                "failed_step": "",
                "failed_key": "",
                "failure_reason": failure.message,
                **NO_FAILURE_DETAIL,
                "lease_owner": "",
                "lease_expires_at": None,
            },
        )
        if moved is None:
            return "lease_lost"
        return Handoff.Status.NEEDS_ATTENTION
    ctx = StepContext(handoff=handoff, shared={} if shared is None else shared)
    try:
        if steps is None:
            steps = _ensure_steps(handoff, flow)
        done: _Done | None = None  # the last step's success, stored by the next commit
        for step_def, step in zip(flow.steps, steps, strict=True):
            if step.status == Step.Status.SUCCEEDED:
                ctx.results[step.name] = step.external_id
                ctx.outputs[step.name] = step.output
                continue
            recovering = step.status == Step.Status.IN_FLIGHT
            attempt = _begin_attempt(handoff, step, step_def, ctx, worker, done=done)
            done = None
            try:
                with tracing.span(f"step {step.name}", step=step.name):
                    done = _run_step(handoff, step, step_def, ctx, worker, attempt, recovering=recovering)
            except StepFailed as failure:
                return _fail(handoff, flow, step, step_def, failure, worker)
            ctx.results[step.name] = done.result.external_id
            ctx.outputs[step.name] = done.result.output
        _succeed(handoff, worker, done=done)
    except LeaseLost:
        log.warning("handoff %s: lease lost by %s; another worker continues it", handoff.pk, worker)
        return "lease_lost"
    return Handoff.Status.SUCCEEDED


# --- Batch claims -------------------------------------------------------------------------------


def handoffs_claim(*, worker: str, limit: int, first: int | None = None) -> tuple[list[Handoff], bool]:
    """Reserve up to `limit` runnable handoffs for this worker, the longest due first: one locking
    SELECT (SKIP LOCKED, so two workers never take the same handoff nor wait for each other) and
    one UPDATE that sets the lease on them all, in one transaction.

    Runnable: pending or waiting to retry, due, and no live lease. `first` (the handoff whose
    message woke us) is taken when runnable even without a due time. A reserved handoff keeps its
    status until its first commit moves it to running (_renew); a worker that dies before that
    leaves it pending with a lease that expires, and no crash is counted for a run that never
    began. Returns the handoffs (with their connection and legal entity), and whether `first` is a
    running handoff whose lease expired: the caller takes that one over through handoff_run,
    which counts the crash."""
    now = clock.now()
    waiting = _waiting_free(now)
    runnable = handoffs_runnable(now)
    if first is not None:
        runnable |= Q(pk=first) & waiting & Q(next_attempt_at__isnull=True)
        runnable |= Q(pk=first, status=Handoff.Status.RUNNING, lease_expires_at__lte=now)
    with transaction.atomic():
        found = list(
            Handoff.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("source_connection", "legal_entity")
            .filter(runnable)
            .order_by("next_attempt_at")[:limit]
        )
        takeover = any(h.status == Handoff.Status.RUNNING for h in found)
        reserved = [h for h in found if h.status != Handoff.Status.RUNNING]
        if reserved:
            lease = _lease_until(now)
            Handoff.objects.filter(pk__in=[h.pk for h in reserved]).update(lease_owner=worker, lease_expires_at=lease)
            for h in reserved:
                h.lease_owner, h.lease_expires_at = worker, lease
    return reserved, takeover


def _waiting_free(now: dt.datetime) -> Q:
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now)
    return Q(status__in=(Handoff.Status.PENDING, Handoff.Status.WAITING_RETRY)) & free


def handoffs_runnable(now: dt.datetime) -> Q:
    """What any claim takes, named in a message or not: waiting, due, and no live lease."""
    return _waiting_free(now) & Q(next_attempt_at__lte=now)


def _release(handoffs: list[Handoff], worker: str) -> None:
    """Give back reservations this worker will not run (its time is up, or it failed): their
    lease is cleared and they are published again, so they do not wait for the lease to expire."""
    if not handoffs:
        return
    from pscsync.dispatch import handoffs_publish

    ids = [h.pk for h in handoffs]
    Handoff.objects.filter(
        pk__in=ids, lease_owner=worker, status__in=(Handoff.Status.PENDING, Handoff.Status.WAITING_RETRY)
    ).update(lease_owner="", lease_expires_at=None)
    handoffs_publish(ids)


class Pace:
    """How long this process's handoffs take to run (a moving average), to size its claims.

    A batch is run one handoff after the other, so what it holds is its size times a handoff's
    duration: ten nine-step handoffs at 50 ms a vendor call keep 4.5 s of work in one worker while
    the others, woken by the same burst of messages, find nothing left to claim. A claim is sized
    to about BATCH_SECONDS of work instead: large where handoffs are quick (the claim's round
    trips shared by many), one at a time where they wait on vendors (every idle worker gets some).
    Nothing known yet (a new process) claims one, which is then timed."""

    BATCH_SECONDS = 1.0
    WEIGHT = 0.2  # of the newest duration: a change in the vendors' latency shows within a batch or two

    def __init__(self) -> None:
        self.seconds: float | None = None

    def record(self, seconds: float) -> None:
        self.seconds = seconds if self.seconds is None else self.seconds + self.WEIGHT * (seconds - self.seconds)

    def claim_size(self, limit: int) -> int:
        if self.seconds is None:
            return 1
        return max(1, min(limit, int(self.BATCH_SECONDS / max(self.seconds, 0.001))))


# Per process (a prefork child runs one task at a time); threads sharing it only blur the average.
_pace = Pace()


def claim_size() -> int:
    """How many handoffs this process's next claim would take (pscsync.dispatch.wake_count)."""
    return _pace.claim_size(settings.RUN_BATCH)


def handoffs_claim_run(
    *,
    worker: str,
    limit: int = 0,
    first: int | None = None,
    budget_seconds: float | None = None,
    pace: Pace | None = None,
) -> int:
    """A worker's turn: claim runnable handoffs, at most `limit` and about a second of work at a
    time (Pace), and run them one after the other, until none is runnable or the time budget is
    spent. Returns how many it ran.

    Each handoff runs exactly as handoff_run runs it (every attempt committed before its call,
    its result before the next call, the lease proved at every commit); only the claim, the
    reading of the steps and their creation are shared by the batch, and the lifecycle listeners
    are told of the batch's moves once, at its end (lifecycle.moves_batched). A message whose handoff
    another worker's batch already ran finds nothing to claim and returns at once."""
    limit = limit or settings.RUN_BATCH
    pace = pace or _pace
    # Well inside the task's soft time limit: a handoff is started only while time is left.
    budget = budget_seconds if budget_seconds is not None else min(30.0, settings.CELERY_TASK_SOFT_TIME_LIMIT / 2)
    started = time.monotonic()
    ran = 0
    while time.monotonic() - started < budget:
        handoffs, takeover = handoffs_claim(worker=worker, limit=pace.claim_size(limit), first=first)
        if takeover and first is not None:
            handoff_run(handoff_id=first, worker=worker)
            ran += 1
        first = None
        if not handoffs:
            if not takeover:
                break
            continue
        # The batch's moves are told to the listeners once, when it ends, so they do their work
        # (facts, rollups, backlog, exceptions) for the batch at once instead of for each move.
        with moves_batched():
            ran += _run_batch(handoffs, worker, started=started, budget=budget, pace=pace)
    else:
        # Out of time with work perhaps left: the handoffs a batch published with one message for
        # several (dispatch.handoffs_publish, due) have no message of their own to wake another.
        from pscsync.dispatch import handoffs_wake

        handoffs_wake()
    return ran


def _run_batch(handoffs: list[Handoff], worker: str, *, started: float, budget: float, pace: Pace | None = None) -> int:
    runs = {h.pk: (h, flow) for h in handoffs if (flow := flow_get(h.flow)) is not None}
    steps = _steps_of(runs) if runs else {}
    shared: dict[Any, Any] = {}  # the batch's memo (StepContext.shared): systems, mapping versions
    done = 0
    try:
        for handoff in handoffs:
            if time.monotonic() - started >= budget:
                break
            began = time.monotonic()
            try:
                _run_traced(handoff, worker, steps.get(handoff.pk), shared)
            except Exception:
                done += 1  # not given back: it failed on our side
                _start_failed(handoff, worker)
                raise
            done += 1
            (pace or _pace).record(time.monotonic() - began)
    finally:
        _release(handoffs[done:], worker)  # none, unless time ran out or a run raised
    return done


def _start_failed(handoff: Handoff, worker: str) -> None:
    """A run that raised before its first commit (a defect in a step's key, the database) is
    moved to running and left there, as handoff_run leaves it: its lease expires, the sweeper
    publishes it, and the takeover counts a crash, so a handoff that always fails stops after
    MAX_WORKER_CRASHES instead of being claimed again for ever."""
    if handoff.status == Handoff.Status.RUNNING:
        return
    try:
        with transaction.atomic():
            _renew(handoff, worker)
    except Exception:  # the database is away or the reservation lost: its lease expires as is
        log.warning("handoff %s: could not mark its failed start", handoff.pk, exc_info=True)
