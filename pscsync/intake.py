"""Intake: store an inbound change, dedupe it, and start or queue its handoff, in one transaction.

The rules (DESIGN.md "Rules that must hold" 1 and 4):
- An event is committed before anyone is told it was accepted; a duplicate delivery of the same
  (connection, source event id) changes nothing.
- One open handoff per (flow, business key). A newer change supersedes an open handoff that has
  written nothing yet; otherwise it queues behind it and starts when that one ends. A change
  older than one already applied or pending is stale and only recorded.
- The handoff is published to the workers after commit; if that publish is lost, the sweeper
  publishes it again (pscsync.sweeper), so a lost message delays a handoff but never drops it.

Webhooks take the short path (events_accept): the request stores its events with one INSERT and
rings the doorbell (pscsync.dispatch.events_ring); a worker takes the ids in batches and routes
them (events_route) by the same rules. An event answered 2xx is in PostgreSQL as "received" until
routed, so a doorbell lost with Redis's data is rung again by the sweeper. Polling and tests use
event_receive, which stores and routes in one transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, models, transaction
from django.db import connection as db

from connectors.base import InboundChange
from connectors.models import Connection, PollCursor
from ops.tracing import current_traceparent, event_route_span, handoff_trace_fields
from pscsync import clock, statements
from pscsync.dispatch import events_ring, events_take, events_wake, handoffs_publish
from pscsync.flows import flow_get
from pscsync.flows.triggers import change_route
from pscsync.lifecycle import handoff_move, handoff_opened, handoffs_opened
from pscsync.models import Event, EventKey, Handoff, Step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntakeResult:
    event: Event
    created: bool
    handoff: Handoff | None


# (connection id, its updated_at) -> (its only legal entity's id or None, when looked up). The
# entities of a connection change only through services.connection_save, which saves the
# connection (a new updated_at, so a new key) in the same transaction; the age limit bounds any
# other path (a deleted entity).
_ONLY_ENTITY: dict[tuple[int, object], tuple[tuple[int, str] | None, float]] = {}
_ONLY_ENTITY_MAX_AGE_S = 60.0


def _only_entity(connection: Connection) -> tuple[int, str] | None:
    """(id, code) of the one legal entity a connection serves, None when it serves several;
    cached a minute per connection version, since intake asks for every change."""
    key = (connection.pk, connection.updated_at)
    cached = _ONLY_ENTITY.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[1] < _ONLY_ENTITY_MAX_AGE_S:
        return cached[0]
    entities = list(connection.legal_entities.values_list("pk", "code")[:2])
    # A connection serving exactly one entity needs no routing hint in the change.
    only = entities[0] if len(entities) == 1 else None
    if len(_ONLY_ENTITY) > 1000:
        _ONLY_ENTITY.clear()
    _ONLY_ENTITY[key] = (only, now)
    return only


def _legal_entity_id(connection: Connection, code: str) -> int | None:
    if code:
        return connection.legal_entities.filter(code=code).values_list("pk", flat=True).first()
    only = _only_entity(connection)
    return only[0] if only else None


def change_legal_entity_code(connection: Connection, code: str) -> str:
    """The legal entity a change belongs to, by code: the one it names, or the connection's only
    entity ("" when neither says), for the intake's trace and log lines."""
    if code:
        return code
    only = _only_entity(connection)
    return only[1] if only else ""


# What PostgreSQL's bigint holds (Event.source_sequence); SQLite's integer is the same 64 bits.
_SEQUENCE_RANGE = (-(2**63), 2**63 - 1)


def change_problem(change: InboundChange) -> str:
    """Why this change can never be stored, in words for the sender ("" when it can).

    A permanent problem (an over-long id, a number out of range, a NUL byte PostgreSQL text and
    JSON cannot hold, a non-finite number JSON cannot carry) must be answered with a 4xx naming
    it: answered as a database error (503) the sender would retry the same bytes for ever.
    Lengths come from the Event model, so the check and the column never disagree.
    """
    for name, value in (
        ("source_event_id", change.source_event_id),
        ("event_type", change.event_type),
        ("flow", change.flow),
        ("business_key", change.business_key),
    ):
        field = Event._meta.get_field(name)
        limit = field.max_length if isinstance(field, models.CharField) and field.max_length else 0
        label = _FIELD_WORDS[name]
        if len(value) > limit:
            return f"{label} is {len(value)} characters long; at most {limit} are accepted"
        if "\x00" in value:
            return f"{label} contains a NUL character"
    if not _SEQUENCE_RANGE[0] <= change.sequence <= _SEQUENCE_RANGE[1]:
        return f"the version/sequence number {change.sequence} is out of range (at most {_SEQUENCE_RANGE[1]})"
    if "\x00" in change.legal_entity_code:
        return "the legal entity code contains a NUL character"
    return _json_problem(change.payload, "the body")


_FIELD_WORDS = {
    "source_event_id": "the event id (webhook-id)",
    "event_type": "the event type",
    "flow": "the flow",
    "business_key": "the record key",
}


def _json_problem(value: object, where: str, depth: int = 0) -> str:
    if depth > 64:
        return f"{where} is nested more than 64 levels deep"
    if isinstance(value, str):
        return f"{where} contains a NUL character (\\u0000)" if "\x00" in value else ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} contains a number JSON cannot carry (NaN or Infinity)"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _json_problem(key, where, depth + 1) or _json_problem(item, where, depth + 1)
            if problem:
                return problem
    if isinstance(value, list):
        for item in value:
            problem = _json_problem(item, where, depth + 1)
            if problem:
                return problem
    return ""


def _event(
    connection: Connection, change: InboundChange, headers: dict[str, str], raw_body: str, **fields: object
) -> Event:
    """The unsaved Event of a change (its flow and key already routed)."""
    return Event(
        connection=connection,
        source_event_id=change.source_event_id,
        event_type=change.event_type,
        flow=change.flow,
        business_key=change.business_key,
        legal_entity_id=_legal_entity_id(connection, change.legal_entity_code),
        occurred_at=change.occurred_at,
        changed_at=change.changed_at,
        source_sequence=change.sequence,
        headers=headers,
        raw_body=raw_body,
        payload=change.payload,
        **fields,
    )


def _store(connection: Connection, change: InboundChange, headers: dict[str, str], raw_body: str) -> Event | None:
    """Store one event; None when its (connection, source event id) is stored already."""
    event = _event(connection, change, headers, raw_body, received_at=clock.now(), traceparent=current_traceparent())
    stored = _insert_new([event])
    if not stored:
        return None
    event.pk = stored[event.source_event_id]
    event._state.adding = False
    event._state.db = db.alias
    return event


def _latest_applied(flow: str, key: str) -> tuple | None:
    """The source position (occurred_at, source_sequence) of the newest change applied for the key."""
    return (
        Handoff.objects.filter(flow=flow, business_key=key, status=Handoff.Status.SUCCEEDED)
        .order_by("-source_occurred_at", "-source_sequence")
        .values_list("source_occurred_at", "source_sequence")
        .first()
    )


def _open_handoff(flow: str, key: str) -> Handoff | None:
    # Lock by id first: usually there is none, and then no row is fetched and decoded.
    pk = (
        Handoff.objects.select_for_update()
        .filter(flow=flow, business_key=key, status__in=Handoff.OPEN)
        .values_list("pk", flat=True)
        .first()
    )
    if pk is None:
        return None
    return Handoff.objects.select_related("trigger_event").get(pk=pk)


def _has_written(handoff: Handoff) -> bool:
    return Step.objects.filter(handoff=handoff, status__in=[Step.Status.SUCCEEDED, Step.Status.IN_FLIGHT]).exists()


def _source_of(event: Event) -> dict[str, Any]:
    """What a handoff keeps of its trigger event's place in the source (pscsync.models.Handoff)."""
    return {
        "source_occurred_at": event.occurred_at,
        "source_sequence": event.source_sequence,
        "source_changed_at": event.changed_at or event.occurred_at,
    }


def _handoff_for(event: Event, now: dt.datetime) -> Handoff:
    """The handoff an event opens (not saved): one shape for the single and the batch path."""
    return Handoff(
        flow=event.flow,
        business_key=event.business_key,
        legal_entity_id=event.legal_entity_id,
        source_connection_id=event.connection_id,
        trigger_event=event,
        payload=event.payload,
        business_started_at=event.occurred_at,
        **_source_of(event),
        created_at=now,
        next_attempt_at=now,
        dispatched_at=now,
        **handoff_trace_fields(event.traceparent),
    )


def handoff_start(*, event: Event, reason: str = "a new change") -> Handoff:
    """Open a handoff for an event. The caller holds the transaction."""
    handoff = _handoff_for(event, clock.now())
    handoff.save(force_insert=True)
    handoff_opened(handoff, actor="intake", reason=reason)
    event.status = Event.Status.ACCEPTED
    event.handoff = handoff
    event.save(update_fields=["status", "handoff"])
    return handoff


def business_key_lock(flow: str, key: str) -> None:
    """Serialise every routing decision for one business key until the transaction ends.

    Intake and the runner's "finished, start the next queued change" both take it, so a change
    is always judged against what is committed for its key (no stale write after a newer one).
    On SQLite, IMMEDIATE transactions already serialise all writers.
    """
    if db.vendor == "postgresql":
        with db.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"{flow}\x1f{key}"])


def _route(event: Event) -> Handoff | None:
    """Decide what an event starts. Returns the handoff to publish, if any."""
    if flow_get(event.flow) is None:
        event.status = Event.Status.IGNORED
        event.save(update_fields=["status"])
        return None
    business_key_lock(event.flow, event.business_key)
    applied = _latest_applied(event.flow, event.business_key)
    if applied is not None and event.source_position <= applied:
        event.status = Event.Status.STALE
        event.save(update_fields=["status"])
        return None
    for _ in range(2):
        open_handoff = _open_handoff(event.flow, event.business_key)
        if open_handoff is None:
            try:
                with transaction.atomic():
                    return handoff_start(event=event)
            except IntegrityError:
                continue  # another intake opened one for this key a moment ago: route against it
        return _route_behind(event, open_handoff)
    raise RuntimeError(f"could not route event {event.pk}: the open handoff keeps changing")


def _route_behind(event: Event, open_handoff: Handoff) -> Handoff | None:
    current = open_handoff.trigger_event
    if event.source_position <= current.source_position:
        event.status = Event.Status.STALE
        event.save(update_fields=["status"])
        return None
    # Claimed by a worker (reserved in a batch, pscsync.runner.handoffs_claim) counts as running:
    # it may start at any moment with the input it was claimed with.
    reserved = open_handoff.lease_expires_at is not None and open_handoff.lease_expires_at > clock.now()
    supersedable = open_handoff.status != Handoff.Status.RUNNING and not reserved and not _has_written(open_handoff)
    if not supersedable:
        event.status = Event.Status.QUEUED
        event.handoff = None
        event.save(update_fields=["status", "handoff"])
        return None
    # Nothing of the older change reached any system yet: run the newer one in its place.
    now = clock.now()
    current.status = Event.Status.SUPERSEDED
    current.save(update_fields=["status"])
    handoff_move(
        open_handoff,
        from_states=(open_handoff.status,),
        to=Handoff.Status.PENDING,
        actor="intake",
        reason="superseded by a newer change before anything was written",
        fields={
            "trigger_event": event,
            **_source_of(event),
            "payload": event.payload,
            "superseded_count": open_handoff.superseded_count + 1,
            "attempt_count": 0,
            "next_attempt_at": now,
            "dispatched_at": now,
            **handoff_trace_fields(event.traceparent),
        },
    )
    event.status = Event.Status.ACCEPTED
    event.handoff = open_handoff
    event.save(update_fields=["status", "handoff"])
    return open_handoff


def queued_event_start(*, flow: str, business_key: str, key_locked: bool = False) -> Handoff | None:
    """When a key's handoff ends, start the newest queued change; older queued ones are superseded.

    Call inside the transaction that ends the handoff; key_locked when it holds the key's lock
    already (a second pg_advisory_xact_lock in one transaction is a no-op round trip)."""
    if not key_locked:
        business_key_lock(flow, business_key)
    queued = list(
        Event.objects.select_for_update()
        .filter(flow=flow, business_key=business_key, status=Event.Status.QUEUED)
        .order_by("-occurred_at", "-source_sequence")
    )
    if not queued:
        return None
    newest, older = queued[0], queued[1:]
    Event.objects.filter(pk__in=[e.pk for e in older]).update(status=Event.Status.SUPERSEDED)
    applied = _latest_applied(flow, business_key)
    if applied is not None and newest.source_position <= applied:
        newest.status = Event.Status.STALE
        newest.save(update_fields=["status"])
        return None
    return handoff_start(event=newest, reason="the newest change that waited behind the previous handoff")


def event_receive(
    *, connection: Connection, change: InboundChange, headers: dict[str, str], raw_body: str
) -> IntakeResult:
    """Store one change and route it. Publishes the handoff after commit."""
    change = change_route(connection, change)
    # No savepoint of its own: _store and handoff_start keep theirs for the races they handle;
    # any other error fails the caller's whole transaction anyway.
    with transaction.atomic(savepoint=False):
        event = _store(connection, change, headers, raw_body)
        if event is None:
            key = EventKey.objects.get(connection=connection, source_event_id=change.source_event_id)
            existing = Event.objects.filter(pk=key.event_id, received_at=key.received_at).first()
            if existing is None:  # its month left the database, archived (pscsync.partitions)
                existing = Event(pk=key.event_id, connection=connection, source_event_id=key.source_event_id)
            return IntakeResult(event=existing, created=False, handoff=None)
        handoff = _route(event)
        if handoff is not None:
            handoff_id = handoff.pk
            transaction.on_commit(lambda: handoffs_publish([handoff_id], fault_key=change.source_event_id))
    return IntakeResult(event=event, created=True, handoff=handoff)


def events_accept(
    *,
    connection: Connection,
    changes: list[InboundChange],
    headers: dict[str, str],
    raw_body: str,
    traceparents: list[str] | None = None,
) -> list[IntakeResult]:
    """Store a delivery's changes with one statement and ring the doorbell; a worker routes them.

    One INSERT ... ON CONFLICT DO NOTHING RETURNING: all the changes or none, a change already
    stored (same connection and source event id) is left as it was and answered as a duplicate.
    The doorbell rings after the commit (at once outside a transaction); if it is lost the
    sweeper rings again for every event still "received". `traceparents`, one per change, is the
    trace each change's handoff continues (ops.tracing); the current one when not given."""
    now = clock.now()
    traces = traceparents or [current_traceparent()] * len(changes)
    events = [
        _event(
            connection,
            change_route(connection, change),
            headers,
            raw_body,
            received_at=now,
            rung_at=now,
            status=Event.Status.RECEIVED,
            traceparent=trace,
        )
        for change, trace in zip(changes, traces, strict=True)
    ]
    stored = _insert_new(events)
    results = []
    duplicates = [e.source_event_id for e in events if e.source_event_id not in stored]
    existing = (
        dict(
            EventKey.objects.filter(connection=connection, source_event_id__in=duplicates).values_list(
                "source_event_id", "event_id"
            )
        )
        if duplicates
        else {}
    )
    for event in events:
        created = event.source_event_id in stored
        event.pk = stored[event.source_event_id] if created else existing.get(event.source_event_id)
        results.append(IntakeResult(event=event, created=created, handoff=None))
    new_ids = list(stored.values())
    if new_ids:
        first_key = next(e.source_event_id for e in events if e.source_event_id in stored)
        transaction.on_commit(lambda: events_ring(new_ids, fault_key=first_key))
    return results


def _insert_new(events: list[Event]) -> dict[str, int]:
    """INSERT the events, skipping any already stored: {source event id: new pk} of those stored.

    The dedupe is the unique (connection, source event id) of the small key table (EventKey):
    on PostgreSQL one statement writes the keys (ON CONFLICT DO NOTHING) and the events of the
    keys it wrote, each key naming its event's id taken from the events' own sequence. Within a
    delivery the first of two changes with one id wins, as a plain INSERT ... ON CONFLICT did.
    Django's bulk_create cannot say which rows were skipped, so the statement is built here from
    the model's own fields (their defaults and database preparation, as bulk_create would)."""
    first: dict[tuple[int, str], Event] = {}
    for event in events:
        first.setdefault((event.connection_id, event.source_event_id), event)
    if not first:
        return {}
    params: list[Any] = []
    for event in first.values():
        params += statements.prepared(event, _STORED_NAMES)[1]
    if db.vendor != "postgresql":
        return _insert_new_plain(list(first.values()), params)
    with db.cursor() as cursor:
        cursor.execute(_insert_sql(len(first)), params)
        return {source_event_id: pk for pk, source_event_id in cursor.fetchall()}


_STORED = [f for f in Event._meta.concrete_fields if not f.primary_key]
_STORED_NAMES = [f.name for f in _STORED]


@functools.cache
def _insert_sql(rows: int) -> str:
    """The storing statement for `rows` events (PostgreSQL). Values are typed in the VALUES, so
    key and event take the columns' own types; every value is a parameter."""
    quote = db.ops.quote_name
    table, keys = quote(Event._meta.db_table), quote(EventKey._meta.db_table)
    typed = statements.columns(Event, _STORED_NAMES)
    columns = ", ".join(column for column, _ in typed)
    taken = ", ".join(f"v.{column}" for column, _ in typed)
    row = "(" + ", ".join(placeholder for _, placeholder in typed) + ")"
    return (
        f"WITH v ({columns}) AS (VALUES {', '.join([row] * rows)}), "  # noqa: S608  # nosec B608  # names from the models
        f"k AS (INSERT INTO {keys} (connection_id, source_event_id, event_id, received_at) "
        f"SELECT connection_id, source_event_id, nextval(pg_get_serial_sequence('{table}', 'id')), received_at "
        "FROM v ON CONFLICT (connection_id, source_event_id) DO NOTHING "
        "RETURNING connection_id, source_event_id, event_id) "
        f"INSERT INTO {table} (id, {columns}) SELECT k.event_id, {taken} FROM v "
        "JOIN k USING (connection_id, source_event_id) RETURNING id, source_event_id"
    )


def _insert_new_plain(events: list[Event], params: list[Any]) -> dict[str, int]:
    """SQLite (no INSERT inside a WITH): the keys first, then the events of the keys written,
    then each key's event id, in one transaction; SQLite runs one writer at a time."""
    quote = db.ops.quote_name
    table, keys = quote(Event._meta.db_table), quote(EventKey._meta.db_table)
    columns = ", ".join(quote(str(f.column)) for f in _STORED)
    row = "(" + ", ".join(["%s"] * len(_STORED)) + ")"
    width = len(_STORED)
    with transaction.atomic(), db.cursor() as cursor:
        new: list[int] = []
        for n, event in enumerate(events):
            cursor.execute(
                f"INSERT INTO {keys} (connection_id, source_event_id, event_id, received_at) "  # noqa: S608  # nosec B608  # names from the models
                "VALUES (%s, %s, 0, %s) ON CONFLICT (connection_id, source_event_id) DO NOTHING RETURNING id",
                [event.connection_id, event.source_event_id, params[n * width + _column_index("received_at")]],
            )
            if cursor.fetchone() is not None:
                new.append(n)
        if not new:
            return {}
        values = [p for n in new for p in params[n * width : (n + 1) * width]]
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * len(new))} RETURNING id, source_event_id",  # noqa: S608  # nosec B608  # names from the model, values as parameters
            values,
        )
        stored = {source_event_id: pk for pk, source_event_id in cursor.fetchall()}
        for n in new:
            cursor.execute(
                f"UPDATE {keys} SET event_id = %s WHERE connection_id = %s AND source_event_id = %s",  # noqa: S608  # nosec B608  # names from the model
                [stored[events[n].source_event_id], events[n].connection_id, events[n].source_event_id],
            )
        return stored


def _column_index(name: str) -> int:
    return next(i for i, f in enumerate(_STORED) if f.name == name)


# Events routed per batch: each in its own transaction (its own key lock), then their handoffs
# published together.
ROUTE_BATCH = 100


def event_route(event_id: int) -> Handoff | None:
    """Route one stored event that is still "received" (another worker or an earlier ring may
    have routed it: then nothing happens). Returns the handoff to publish, if any."""
    with transaction.atomic():
        event = (
            Event.objects.select_for_update(skip_locked=True).filter(pk=event_id, status=Event.Status.RECEIVED).first()
        )
        if event is None:
            return None
        with event_route_span(event.traceparent):
            return _route(event)


def events_route(event_ids: list[int]) -> list[int]:
    """Route these events and publish the handoffs they open. Returns the published handoff ids.

    On PostgreSQL the batch is routed in one transaction (events_route_batch); if that fails
    (a race the batch does not handle, a defect), each event is routed in its own transaction, so
    one bad event never holds up the others."""
    opened: dict[int, None] = {}  # in order, once each (a newer change may supersede into it)
    routed = False
    if db.vendor == "postgresql" and len(event_ids) > 1:
        try:
            opened = dict.fromkeys(h.pk for h in events_route_batch(event_ids))
            routed = True
        except Exception:
            log.warning("routing %d events together failed; routing them one by one", len(event_ids), exc_info=True)
    if not routed:
        for event_id in event_ids:
            one = event_route(event_id)
            if one is not None:
                opened[one.pk] = None
    handoffs_publish(list(opened), due=True)  # routed now: due and free, claimed by any worker
    return list(opened)


def events_route_batch(event_ids: list[int]) -> list[Handoff]:
    """Route a batch of stored events in one transaction, by the same rules as _route.

    The events are locked first (SKIP LOCKED: one another worker holds is its to route), then
    their keys' locks are taken in one statement in a fixed order (sorted by the lock's hash), so
    two workers routing overlapping batches never deadlock. The common case, a key's only change
    in the batch with no open handoff and nothing newer applied, is decided in memory and written
    set-based: one INSERT of the handoffs, one of their history rows, one UPDATE of the events.
    Any other key (several changes, an open handoff, an unknown flow) goes through _route, in the
    same transaction. Returns the handoffs to publish (PostgreSQL only: the key locks)."""
    with transaction.atomic():
        events = list(
            Event.objects.select_for_update(skip_locked=True)
            .filter(pk__in=event_ids, status=Event.Status.RECEIVED)
            .order_by("pk")
        )
        by_key: dict[tuple[str, str], list[Event]] = {}
        for event in events:
            by_key.setdefault((event.flow, event.business_key), []).append(event)
        known = {k: v for k, v in by_key.items() if flow_get(k[0]) is not None}
        if known:
            _business_keys_lock(list(known))
        applied = _latest_applied_many(list(known))
        # Not locked here: with the keys' locks held no handoff of these keys opens or closes
        # under routing's feet; the keys that have one go through _route, which locks it.
        open_keys = set(
            Handoff.objects.filter(
                flow__in={f for f, _ in known}, business_key__in={k for _, k in known}, status__in=Handoff.OPEN
            ).values_list("flow", "business_key")
        )
        fresh: list[Event] = []
        opened: list[Handoff] = []
        for key, group in by_key.items():
            single = len(group) == 1 and key in known and key not in open_keys
            if single and not (key in applied and group[0].source_position <= applied[key]):
                fresh.append(group[0])
                continue
            for event in group:  # in the order they arrived, as routing them one by one would
                with event_route_span(event.traceparent):
                    handoff = _route(event)
                if handoff is not None:
                    opened.append(handoff)
        opened += _handoffs_start(fresh)
    return list({h.pk: h for h in opened}.values())


def _business_keys_lock(keys: list[tuple[str, str]]) -> None:
    """business_key_lock for many keys in one statement, in the order of the locks' hashes: every
    worker that holds several takes them in that order, so none waits in a cycle."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h "
            "FROM unnest(%s::text[]) AS k ORDER BY 1) AS locks",
            [[f"{flow}\x1f{key}" for flow, key in keys]],
        )


def _latest_applied_many(keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
    """_latest_applied for many keys in one query."""
    if not keys:
        return {}
    wanted = set(keys)
    latest: dict[tuple[str, str], tuple] = {}
    rows = Handoff.objects.filter(
        flow__in={f for f, _ in keys}, business_key__in={k for _, k in keys}, status=Handoff.Status.SUCCEEDED
    ).values_list("flow", "business_key", "source_occurred_at", "source_sequence")
    for flow, key, occurred_at, sequence in rows:
        if (flow, key) in wanted and ((flow, key) not in latest or (occurred_at, sequence) > latest[(flow, key)]):
            latest[(flow, key)] = (occurred_at, sequence)
    return latest


def _handoffs_start(events: list[Event]) -> list[Handoff]:
    """handoff_start for many events whose keys have no open handoff (their key locks held)."""
    if not events:
        return []
    now = clock.now()
    handoffs = []
    for event in events:
        with event_route_span(event.traceparent):
            handoffs.append(_handoff_for(event, now))
    Handoff.objects.bulk_create(handoffs)
    handoffs_opened(handoffs, actor="intake", reason="a new change")
    for event, handoff in zip(events, handoffs, strict=True):
        event.status = Event.Status.ACCEPTED
        event.handoff = handoff
    Event.objects.bulk_update(events, ["status", "handoff"])
    return handoffs


def events_drain(*, batch: int = ROUTE_BATCH, budget_seconds: float | None = None) -> int:
    """A worker's turn at the doorbell: take event ids in batches and route them until it is
    empty or the time budget is spent (then the next ring or sweep wakes a worker). Returns how
    many ids were taken."""
    from django.conf import settings

    # Well inside the task's soft time limit: ids taken and not routed wait for the sweeper.
    budget = budget_seconds if budget_seconds is not None else min(30.0, settings.CELERY_TASK_SOFT_TIME_LIMIT / 2)
    started = time.monotonic()
    taken = 0
    while True:
        if time.monotonic() - started >= budget:
            events_wake()  # entries may remain: hand over to a fresh task rather than wait for a sweep
            break
        ids = events_take(batch)
        if not ids:
            break
        taken += len(ids)
        events_route(ids)
    return taken


def connection_poll(*, connection: Connection) -> int:
    """Fetch changes since the stored cursor; store them and the new cursor in one transaction."""
    from connectors.registry import connector_for

    cursor, _ = PollCursor.objects.get_or_create(connection=connection)
    connector = connector_for(connection)
    changes, next_position = connector.poll(cursor=cursor.position)
    if connector.polled_changes_dated_only:
        # Records dated only by their business day: the sync clock starts when we saw them.
        seen = clock.now()
        changes = [c if c.changed_at else dataclasses.replace(c, changed_at=seen) for c in changes]
    stored = 0
    with transaction.atomic():
        for change in changes:
            result = event_receive(
                connection=connection, change=change, headers={}, raw_body=json.dumps(change.payload)
            )
            stored += int(result.created)
        PollCursor.objects.filter(pk=cursor.pk).update(position=next_position, polled_at=clock.now(), last_error="")
    return stored


def connection_poll_failed(*, connection: Connection, error: Exception) -> None:
    """Keep the cursor where it was (nothing is skipped) and say why polling failed."""
    log.warning("polling %s failed: %s", connection.slug, error)
    PollCursor.objects.update_or_create(connection=connection, defaults={"last_error": str(error)[:2000]})
