"""One lifecycle (DESIGN.md rule 9): every change of a handoff's status goes through `handoff_move`.

A move is one conditional UPDATE (the handoff must be in one of the expected states, plus any
extra condition such as "this worker holds the lease"), so a move that lost a race changes nothing
and says so (it returns None). A move the transitions table (`Handoff.TRANSITIONS`) does not allow
is a bug and raises before anything is written. The move's history row (`HandoffTransition`: from,
to, when, who, why, step and attempt) is written in the same transaction, and the listeners are
told after that transaction commits, never inside it: a listener that fails or is slow cannot undo
or hold up the move, and a rolled-back move tells nobody.

Listeners are how the parts that read handoffs (the dashboards' backlog and rollups, the
workbench's exceptions) follow them without the engine importing them (DESIGN.md, which way
imports run). A part registers in its AppConfig.ready:

    from pscsync import lifecycle

    lifecycle.listener_add("workbench.exceptions", on_move)   # on_move(move: lifecycle.Move)

Each listener is called once per committed move, in registration order, each in its own
try/except: one failing is logged and does not stop the others. The repair beats of those parts
remain as a safety net for a process killed between commit and listener (they count what they
repaired; it should stay 0).

Batches (the runner's claimed batch, issue 18): inside `with lifecycle.moves_batched():` the moves
committed by this thread are collected instead of told, and when the block ends every listener is
told of them all at once, in commit order: a listener registered with `batch=True` is called once
with the list (`on_moves(moves: list[lifecycle.Move])`), so it can do its work set-based; a plain
listener is called once per move, as ever. Outside such a block (a web request, intake) nothing
changes: each move is told right after its commit, so a person's resolve reaches the dashboards
before the page answers. A batch listener is told the list `[move]` there.

Every other write of a status is refused at run time (`pscsync.models.status_write_allowed`) and
by a test that reads the source (tests/test_lifecycle.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import connection as db
from django.db import transaction
from django.db.models import Q
from django.db.models.sql import UpdateQuery

from pscsync import clock, statements
from pscsync.models import Handoff, HandoffTransition, status_write_allowed

if TYPE_CHECKING:
    from django.contrib.auth.models import User

log = logging.getLogger(__name__)


class TransitionNotAllowed(ValueError):
    """A move that Handoff.TRANSITIONS does not allow: a bug in the caller, never a lost race."""


@dataclass(frozen=True)
class Move:
    """A committed move, as listeners receive it."""

    handoff_id: int
    flow: str
    from_status: str  # "" when the handoff was opened
    to_status: str
    at: dt.datetime
    actor: str
    reason: str = ""
    # The handoff's other fields the move wrote (lease, timestamps, error), for listeners that
    # care only about some of them.
    fields: frozenset[str] = field(default_factory=frozenset)


Listener = Callable[[Move], None]
BatchListener = Callable[[list[Move]], None]


@dataclass(frozen=True)
class _Registered:
    listener: Callable[..., None]
    batch: bool  # told a list of moves at once (else one move a call)


_listeners: dict[str, _Registered] = {}
# The moves committed inside this thread's `moves_batched` block, waiting to be told at its end;
# None outside one. A context variable, so each worker thread (and each request) has its own.
_collecting: contextvars.ContextVar[list[Move] | None] = contextvars.ContextVar("lifecycle_batch", default=None)


def listener_add(name: str, listener: Callable[..., None], *, batch: bool = False) -> Callable[..., None]:
    """Register (or replace, by name) a listener told of every committed move: one Move a call,
    or with batch=True the list of moves committed together (see moves_batched). Returns it, so it
    can be used as a decorator: @functools.partial(lifecycle.listener_add, "name")."""
    _listeners[name] = _Registered(listener, batch)
    return listener


def listener_remove(name: str) -> None:
    _listeners.pop(name, None)


def listeners() -> dict[str, Callable[..., None]]:
    return {name: registered.listener for name, registered in _listeners.items()}


def listeners_tell(move: Move) -> None:
    """Tell every listener of one committed move (runs after commit; never raises), or, inside a
    moves_batched block of this thread, keep it for the block's end."""
    collected = _collecting.get()
    if collected is not None:
        collected.append(move)
        return
    listeners_tell_many([move])


def listeners_tell_many(moves: Sequence[Move]) -> None:
    """Tell every listener, in registration order, of these committed moves (in commit order): a
    batch listener once with the list, a plain one once per move. Each call has its own
    try/except: a listener that fails is logged and neither the others nor its own next moves are
    kept from running. Never raises."""
    if not moves:
        return
    for name, registered in list(_listeners.items()):
        if registered.batch:
            try:
                registered.listener(list(moves))
            except Exception:  # a listener must not fail the moves or the others
                log.exception(
                    "lifecycle listener %s failed on handoffs %s; its repair job will",
                    name,
                    ", ".join(str(h) for h in sorted({m.handoff_id for m in moves})),
                )
            continue
        for move in moves:
            try:
                registered.listener(move)
            except Exception:  # a listener must not fail the move or the others
                log.exception("lifecycle listener %s failed on handoff %s; its repair job will", name, move.handoff_id)


@contextlib.contextmanager
def moves_batched() -> Iterator[list[Move]]:
    """Inside: this thread's committed moves are collected, not told; at the end (also when the
    block raises: the moves committed are committed) the listeners are told of them all at once.
    For a worker's batch of handoffs, so the listeners' work is done once per batch, set-based.
    Nested blocks share the outermost one's collection. A move is told when the block ends, not
    at its commit: keep the block to one short batch of work."""
    outer = _collecting.get()
    if outer is not None:  # the outer block tells them
        yield outer
        return
    collected: list[Move] = []
    token = _collecting.set(collected)
    try:
        yield collected
    finally:
        _collecting.reset(token)
        listeners_tell_many(collected)


def transition_check(from_states: Iterable[str], to: str) -> None:
    for state in from_states:
        if to not in Handoff.TRANSITIONS.get(state, frozenset()):
            raise TransitionNotAllowed(f"a handoff may not move from {state!r} to {to!r}")


def _actor_label(actor: str | User | None) -> tuple[str, User | None]:
    if actor is None:
        return "system", None
    if isinstance(actor, str):
        return actor[:150] or "system", None
    return actor.get_username()[:150], actor


# The condition a write made with a move (handoff_move's `also`) is guarded by: the move happened.
MOVED = "EXISTS (SELECT FROM moved)"


def _transition(
    handoff_id: int,
    flow: str,
    from_status: str,
    to: str,
    *,
    actor: str | User | None,
    reason: str,
    step: str,
    attempt: int | None,
    fields: Iterable[str],
) -> tuple[HandoffTransition, Move]:
    """The history row of a move (not saved) and the Move the listeners will be told."""
    now = clock.now()
    label, user = _actor_label(actor)
    row = HandoffTransition(
        handoff_id=handoff_id,
        from_status=from_status,
        to_status=to,
        at=now,
        user=user,
        actor=label,
        reason=reason,
        step=step[:60],
        attempt=attempt,
    )
    return row, Move(handoff_id, flow, from_status, to, now, label, reason, frozenset(fields))


def _record(recorded: tuple[HandoffTransition, Move]) -> Move:
    """Inside the move's transaction: the history row, and the listeners after commit."""
    row, move = recorded
    row.save(force_insert=True)
    transaction.on_commit(functools.partial(listeners_tell, move))
    return move


def handoff_move(
    handoff: Handoff | int,
    *,
    from_states: Iterable[str],
    to: str,
    actor: str | User | None,
    reason: str = "",
    step: str = "",
    attempt: int | None = None,
    where: Q | None = None,
    fields: dict[str, Any] | None = None,
    also: Sequence[statements.Write] = (),
) -> Move | None:
    """Move a handoff from one of `from_states` to `to`, writing `fields` with it, if it is in one
    of those states and matches `where`; else change nothing and return None.

    Raises TransitionNotAllowed for a move the transitions table does not allow. When `handoff`
    is an instance, its status and the plain values of `fields` are set on it after the move
    (expressions such as F() are not: refresh it if you need them).

    On PostgreSQL a move from one state of an instance is one statement (a data-modifying WITH:
    the conditional UPDATE and its history row), into which the caller may put writes of its own
    that belong to the move (`also`, each guarded by MOVED: the runner's step and attempt), so
    they are written only if the handoff moved, in the same round trip."""
    from_states = tuple(dict.fromkeys(from_states))
    transition_check(from_states, to)
    fields = dict(fields or {})
    fields.pop("status", None)
    instance = handoff if isinstance(handoff, Handoff) else None
    pk = handoff.pk if isinstance(handoff, Handoff) else int(handoff)
    qs = Handoff.objects.filter(pk=pk, status__in=from_states)
    if where is not None:
        qs = qs.filter(where)
    one_statement = db.vendor == "postgresql" and len(from_states) == 1 and instance is not None
    if also and not one_statement:
        raise ValueError("writes made with a move need PostgreSQL, one from-state and the instance")
    attempt = attempt if attempt is not None else _plain(fields.get("attempt_count"))
    token = status_write_allowed.set(True)
    try:
        with transaction.atomic(savepoint=False):
            if one_statement:
                assert instance is not None  # for the type checker: one_statement says so
                row, move = _transition(
                    pk,
                    instance.flow,
                    from_states[0],
                    to,
                    actor=actor,
                    reason=reason,
                    step=step,
                    attempt=attempt,
                    fields=fields,
                )
                if not _move_statement(qs, to, fields, row, also):
                    return None
                transaction.on_commit(functools.partial(listeners_tell, move))
            else:
                if len(from_states) == 1 and instance is not None:
                    # One possible from-state: the conditional UPDATE alone says whether it moved.
                    moved = qs.update(status=to, **fields)
                    from_status, flow = (from_states[0], instance.flow) if moved else (None, "")
                else:
                    # Several: lock the row to learn which one it was in, then move it.
                    found = qs.select_for_update().values_list("status", "flow").first()
                    from_status, flow = found if found is not None else (None, "")
                    if found is not None:
                        Handoff.objects.filter(pk=pk).update(status=to, **fields)
                if from_status is None:
                    return None
                move = _record(
                    _transition(
                        pk, flow, from_status, to, actor=actor, reason=reason, step=step, attempt=attempt, fields=fields
                    )
                )
    finally:
        status_write_allowed.reset(token)
    if instance is not None:
        instance.status = to
        instance._status_loaded = to
        for name, value in fields.items():
            if not hasattr(value, "resolve_expression"):
                setattr(instance, name, value)
    return move


def _move_statement(
    qs: Any, to: str, fields: dict[str, Any], row: HandoffTransition, also: Sequence[statements.Write]
) -> bool:
    """The conditional UPDATE (as QuerySet.update compiles it), its history row and the caller's
    writes, in one statement; each write only if the UPDATE found the handoff. True if it moved."""
    query = qs.query.chain(UpdateQuery)
    query.add_update_values({"status": to, **fields})
    update_sql, update_params = query.get_compiler(qs.db).as_sql()
    history = statements.insert(row, MOVED)
    history.read = ""
    (moved,) = statements.run(
        [f"moved AS ({update_sql} RETURNING 1)"], update_params, [history, *also], "(SELECT count(*) FROM moved)"
    )
    return bool(moved)


def _plain(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def handoff_opened(handoff: Handoff, *, actor: str | User | None, reason: str = "") -> Move:
    """Record that a handoff was just created (its first history row, from nothing to its
    status) and tell the listeners after commit. Call in the transaction that created it."""
    return _record(
        _transition(
            handoff.pk, handoff.flow, "", handoff.status, actor=actor, reason=reason, step="", attempt=None, fields=()
        )
    )


def handoffs_opened(handoffs: list[Handoff], *, actor: str, reason: str = "") -> list[Move]:
    """handoff_opened for many handoffs created together: their history rows in one INSERT, and
    each one's listeners after commit. Call in the transaction that created them."""
    now = clock.now()
    label, _ = _actor_label(actor)
    HandoffTransition.objects.bulk_create(
        [
            HandoffTransition(
                handoff_id=h.pk, from_status="", to_status=h.status, at=now, actor=label, reason=reason, step=""
            )
            for h in handoffs
        ]
    )
    moves = [Move(h.pk, h.flow, "", h.status, now, label, reason, frozenset()) for h in handoffs]
    for move in moves:
        transaction.on_commit(functools.partial(listeners_tell, move))
    return moves


repairs_log = logging.getLogger("pscsync.lifecycle.repairs")


def repairs_note(job: str, repaired: int) -> None:
    """The repair beats' count of what the listeners had missed: the metric that should stay 0.
    Anything above 0 means a listener failed or a process died between a commit and its
    listeners (or a status was written around the lifecycle), and is logged as a warning."""
    if repaired:
        repairs_log.warning("lifecycle repair: %s put right %d handoff(s) its listener had missed", job, repaired)
    else:
        repairs_log.info("lifecycle repair: %s found nothing to put right", job)


__all__ = [
    "Move",
    "TransitionNotAllowed",
    "handoff_move",
    "handoff_opened",
    "handoffs_opened",
    "listener_add",
    "listener_remove",
    "listeners",
    "listeners_tell",
    "listeners_tell_many",
    "moves_batched",
    "repairs_note",
    "transition_check",
]


def handoff_values_changed(handoff: Handoff, *, fields: Iterable[str], actor: str = "system", reason: str = "") -> None:
    """Tell the listeners, after commit, that a handoff's business values (not its status) changed,
    e.g. an amended deal's value carried onto its waiting handoff: the open backlog counts that
    value. Told as a move that stays in the handoff's status; no history row (the status did not
    move)."""
    move = Move(handoff.pk, handoff.flow, handoff.status, handoff.status, clock.now(), actor, reason, frozenset(fields))
    transaction.on_commit(functools.partial(listeners_tell, move))
