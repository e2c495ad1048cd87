"""Order per business key: supersede, queue, stale; and polling intake with a stored cursor."""

from __future__ import annotations

import httpx
import pytest

from connectors.models import PollCursor
from pscsync.intake import connection_poll, event_receive, events_accept, events_route
from pscsync.models import Event, Handoff
from pscsync.runner import _lease, handoff_run
from tests.helpers import change_body, status_force

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_broker(monkeypatch) -> None:
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)


def receive(connection, key: str, version: int):
    from connectors.registry import connector_for

    body = change_body(key, version)
    [change] = connector_for(connection).parse_webhook(event_id=f"{key}-v{version}", body=body)
    return event_receive(connection=connection, change=change, headers={}, raw_body=body.decode())


def status_of(key: str, version: int) -> str:
    return Event.objects.get(source_event_id=f"{key}-v{version}").status


def test_a_newer_change_supersedes_a_handoff_that_has_written_nothing(echo_connection) -> None:
    first = receive(echo_connection, "K", 1).handoff
    second = receive(echo_connection, "K", 2).handoff
    assert second.pk == first.pk
    handoff = Handoff.objects.get()
    assert handoff.payload["version"] == 2 and handoff.superseded_count == 1
    assert status_of("K", 1) == "superseded" and status_of("K", 2) == "accepted"


def test_an_older_change_arriving_late_is_stale_and_starts_nothing(echo_connection) -> None:
    receive(echo_connection, "K", 3)
    assert receive(echo_connection, "K", 2).handoff is None
    assert status_of("K", 2) == "stale"
    assert Handoff.objects.get().payload["version"] == 3


def test_a_change_for_a_running_handoff_queues_and_the_newest_starts_after_it(echo_connection, echo) -> None:
    running = receive(echo_connection, "K", 1).handoff
    _lease(running.pk, "w1")  # a worker has it
    assert receive(echo_connection, "K", 2).handoff is None
    assert receive(echo_connection, "K", 3).handoff is None
    assert status_of("K", 2) == "queued" and status_of("K", 3) == "queued"
    status_force(running.pk, "pending", lease_expires_at=None)
    assert handoff_run(handoff_id=running.pk, worker="w1") == "succeeded"
    # v3 started as its own handoff; v2 was superseded by it without ever running.
    following = Handoff.objects.exclude(pk=running.pk).get()
    assert following.payload["version"] == 3 and following.status == "pending"
    assert status_of("K", 2) == "superseded"
    assert handoff_run(handoff_id=following.pk, worker="w1") == "succeeded"
    assert echo.records()["invoice/INV-K"]["fields"]["version"] == 3


def test_a_change_older_than_what_was_applied_is_stale(echo_connection, echo) -> None:
    handoff = receive(echo_connection, "K", 5).handoff
    handoff_run(handoff_id=handoff.pk, worker="w1")
    assert receive(echo_connection, "K", 4).handoff is None
    assert status_of("K", 4) == "stale"


def test_one_open_handoff_per_business_key_is_enforced_by_the_database(echo_connection) -> None:
    from django.db import IntegrityError

    handoff = receive(echo_connection, "K", 1).handoff
    with pytest.raises(IntegrityError):
        Handoff.objects.create(
            flow="echo",
            business_key="K",
            source_connection=echo_connection,
            trigger_event=handoff.trigger_event,
            business_started_at=handoff.business_started_at,
            created_at=handoff.created_at,
        )


def test_polling_stores_new_changes_and_advances_the_cursor_once(echo_connection, echo) -> None:
    echo_connection.intake = "poll"
    echo_connection.save()
    for version in (1, 2):
        httpx.post(
            f"{echo.url}/_changes",
            json={"key": f"P-{version}", "version": 1, "occurred_at": "2026-11-01T10:00:00+00:00", "data": {}},
        ).raise_for_status()
    assert connection_poll(connection=echo_connection) == 2
    assert PollCursor.objects.get(connection=echo_connection).position == "2"
    assert connection_poll(connection=echo_connection) == 0
    assert Handoff.objects.count() == 2


def test_a_failed_poll_keeps_the_cursor_and_says_why(echo_connection, echo) -> None:
    from connectors.errors import ConnectorError
    from pscsync.intake import connection_poll_failed

    echo.fault(mode="status", status=503, match="/changes", count=1)
    with pytest.raises(ConnectorError):
        connection_poll(connection=echo_connection)
    connection_poll_failed(connection=echo_connection, error=RuntimeError("the target failed with 503"))
    cursor = PollCursor.objects.get(connection=echo_connection)
    assert cursor.position == ""
    assert "503" in cursor.last_error


def accept(connection, *versions: tuple[str, int]) -> list:
    """One webhook delivery carrying these (key, version) changes, through the short path."""
    from connectors.registry import connector_for

    changes = []
    for key, version in versions:
        body = change_body(key, version)
        changes += connector_for(connection).parse_webhook(event_id=f"{key}-v{version}", body=body)
    return events_accept(connection=connection, changes=changes, headers={}, raw_body="{}")


def test_the_short_path_stores_a_delivery_with_one_statement_and_rings_once(echo_connection, monkeypatch) -> None:
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    rung: list[list[int]] = []
    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: rung.append(list(ids)))
    accept(echo_connection, ("W", 1))  # warms the connection's legal-entity cache
    with CaptureQueriesContext(db) as statements:
        results = accept(echo_connection, ("A", 1), ("B", 1))
    assert len(statements.captured_queries) == 1, [q["sql"][:80] for q in statements.captured_queries]
    # One statement writes the keys (the dedupe) and the events of the keys it wrote.
    sql = statements.captured_queries[0]["sql"]
    assert sql.startswith("WITH v") and 'INSERT INTO "pscsync_eventkey"' in sql and 'INSERT INTO "pscsync_event"' in sql
    ids = [r.event.pk for r in results]
    assert all(r.created for r in results) and rung[-1] == ids
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"received"}
    assert not Handoff.objects.exists()  # nothing is routed by the request
    # The same delivery again, with one new change: the new one is stored, the old one answered
    # as a duplicate with its id, and only the new one is rung.
    again = accept(echo_connection, ("A", 1), ("C", 1))
    assert [r.created for r in again] == [False, True]
    assert again[0].event.pk == ids[0]
    assert rung[-1] == [again[1].event.pk]
    assert Event.objects.count() == 4


def test_the_worker_routes_received_events_by_the_same_rules(echo_connection, monkeypatch) -> None:
    published: list[int] = []
    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: published.extend(ids))
    # Versions 2, 3 and then 1 of one key, and a key of a flow nobody installed, all received.
    results = accept(echo_connection, ("K", 2), ("K", 3), ("K", 1))
    ids = [r.event.pk for r in results]
    events_route(ids)
    handoff = Handoff.objects.get()
    # v2 opened it, v3 superseded it (nothing written yet), v1 is older than both: stale.
    assert handoff.payload["version"] == 3 and handoff.superseded_count == 1
    assert [status_of("K", v) for v in (1, 2, 3)] == ["stale", "superseded", "accepted"]
    assert published == [handoff.pk]
    # Routed once: ringing again (a duplicate doorbell entry) changes nothing.
    assert events_route(ids) == []
    assert Handoff.objects.count() == 1 and handoff.transitions.count() == 2


def test_the_short_path_stores_when_a_source_changed_beside_its_business_time(echo_connection, monkeypatch) -> None:
    import dataclasses
    import datetime as dt

    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    from connectors.registry import connector_for

    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: None)
    accept(echo_connection, ("W", 1))  # warms the connection's legal-entity cache
    parse = connector_for(echo_connection).parse_webhook
    (dated,) = parse(event_id="D-v2", body=change_body("D", 2))
    (stamped,) = parse(event_id="D-v1", body=change_body("D", 1))
    seen = dt.datetime(2027, 1, 13, 12, tzinfo=dt.UTC)
    # A source with a business date only: its change is dated well before we observed it.
    dated = dataclasses.replace(dated, occurred_at=dt.datetime(2026, 12, 14, 12, tzinfo=dt.UTC), changed_at=seen)
    with CaptureQueriesContext(db) as statements:
        results = events_accept(connection=echo_connection, changes=[dated, stamped], headers={}, raw_body="{}")
    assert len(statements.captured_queries) == 1  # still one INSERT for the delivery
    stored = {e.source_event_id: e for e in Event.objects.filter(pk__in=[r.event.pk for r in results])}
    assert (stored["D-v2"].occurred_at, stored["D-v2"].changed_at) == (dated.occurred_at, seen)
    assert (stored["D-v1"].occurred_at, stored["D-v1"].changed_at) == (stamped.occurred_at, None)


def test_the_migration_dates_stored_d365_events_by_when_pscsync_received_them(echo_connection, monkeypatch) -> None:
    import datetime as dt
    import importlib

    from django.apps import apps

    from connectors.models import Connection

    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: None)
    migration = importlib.import_module("pscsync.migrations.0024_event_changed_at")
    (posted,), (other,) = accept(echo_connection, ("P", 1)), accept(echo_connection, ("Q", 1))
    received = dt.datetime(2027, 1, 13, 12, tzinfo=dt.UTC)
    Event.objects.filter(pk=posted.event.pk).update(received_at=received)
    migration.forwards(apps, None)
    assert Event.objects.filter(changed_at__isnull=False).count() == 0  # not a dated-only source
    # The same event as if polled from D365 (its occurred_at an accounting date).
    Connection.objects.filter(pk=echo_connection.pk).update(vendor="dynamicsfinance")
    Event.objects.filter(pk=other.event.pk).update(changed_at=dt.datetime(2027, 1, 14, tzinfo=dt.UTC))
    migration.forwards(apps, None)
    assert Event.objects.get(pk=posted.event.pk).changed_at == received
    assert Event.objects.get(pk=other.event.pk).changed_at == dt.datetime(2027, 1, 14, tzinfo=dt.UTC)  # kept


def test_a_batch_of_events_is_routed_in_one_transaction_by_the_same_rules(echo_connection, monkeypatch) -> None:
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    published: list[int] = []
    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: published.extend(ids))
    running = receive(echo_connection, "R", 1).handoff
    _lease(running.pk, "w1")  # R's handoff is running: a newer change queues behind it
    done = receive(echo_connection, "S", 2).handoff
    status_force(done.pk, "succeeded")  # S's version 2 is applied: version 1 is stale
    results = accept(echo_connection, ("N1", 1), ("R", 2), ("N2", 1), ("S", 1), ("N3", 1))
    ids = [r.event.pk for r in results]
    published.clear()

    assert len(events_route(ids)) == 3
    assert [status_of(k, v) for k, v in (("N1", 1), ("R", 2), ("N2", 1), ("S", 1), ("N3", 1))] == [
        "accepted", "queued", "accepted", "stale", "accepted",
    ]  # fmt: skip
    opened = Handoff.objects.filter(business_key__in=["N1", "N2", "N3"])
    assert sorted(published) == sorted(h.pk for h in opened)
    for handoff in opened:
        assert handoff.status == "pending" and handoff.trigger_event.handoff_id == handoff.pk
        assert [(t.from_status, t.to_status, t.actor) for t in handoff.transitions.all()] == [("", "pending", "intake")]

    # New keys cost a fixed handful of statements for the whole batch, not a transaction each.
    fresh = [r.event.pk for r in accept(echo_connection, *((f"M{i}", 1) for i in range(20)))]
    with CaptureQueriesContext(db) as statements:
        assert len(events_route(fresh)) == 20
    # BEGIN, the events locked, the key locks, what was applied, what is open, the handoffs, their
    # history rows, the events updated, COMMIT.
    assert len(statements.captured_queries) <= 9, [q["sql"][:60] for q in statements.captured_queries]


def test_a_batch_that_cannot_be_routed_together_is_routed_one_by_one(echo_connection, monkeypatch) -> None:
    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: None)

    def broken(event_ids):
        raise RuntimeError("a defect in the batch path")

    monkeypatch.setattr("pscsync.intake.events_route_batch", broken)
    ids = [r.event.pk for r in accept(echo_connection, ("P1", 1), ("P2", 1))]
    assert len(events_route(ids)) == 2
    assert [status_of("P1", 1), status_of("P2", 1)] == ["accepted", "accepted"]
