"""Monthly partitions of events (migration 0025, pscsync.partitions; issue 18 "data that stays
small"), on PostgreSQL: the table is partitioned by month of `received_at`; the unique
(connection, source event id) holds across months through the key table; a month of events whose
handoffs are all archived leaves by DROP of its partition (its events of no handoff to a file of
their own), a month with an event of a handoff that needs a person or is not archived stays; every
dashboard figure stays; a restore writes the dropped events back. Expected rows and counts are read
from what the test made before any of it ran, or worked out by hand in the comments."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pytest
from django.db import connection as db
from django.db.migrations.executor import MigrationExecutor

from connectors.registry import connector_for
from dashboards.facts import rollups_rebuild_all
from pscsync import clock
from pscsync.archive import ArchiveRefused, Month, archive_month, archive_restore
from pscsync.clock import FrozenClock
from pscsync.intake import event_receive, events_accept
from pscsync.models import AuditEntry, Event, EventKey, Handoff, PartitionDrop
from pscsync.partitions import events_drop, events_drop_due, partition_create, partition_months, partitions_ensure
from pscsync.tasks import archive_due_task
from remediation.services import ActionRefused, handoff_reopen
from tests.helpers import change_body, status_force
from tests.test_archive import OCTOBER, SEPTEMBER, figures, run, setup  # noqa: F401 (autouse fixture)
from tests.test_partitions import AUGUST, dashboards

pytestmark = pytest.mark.django_db(transaction=True)

COLUMNS = [f.attname for f in Event._meta.concrete_fields]


def events_of(handoffs: list[Handoff]) -> dict[int, tuple]:
    rows = Event.objects.filter(handoff__in=handoffs).order_by("pk").values_list(*COLUMNS)
    return {r[0]: r for r in rows}


def received(handoff: Handoff, when: dt.datetime) -> None:
    """As if its event came in at `when` (the UPDATE moves the row to that month's partition)."""
    Event.objects.filter(handoff=handoff).update(received_at=when)
    EventKey.objects.filter(event_id__in=Event.objects.filter(handoff=handoff).values("pk")).update(received_at=when)


def tables() -> set[str]:
    with db.cursor() as cursor:
        cursor.execute("SELECT relname FROM pg_class WHERE relname LIKE 'pscsync_event_y%%' AND relkind = 'r'")
        return {r[0] for r in cursor.fetchall()}


def delivery(connection, event_id: str, key: str, version: int = 1) -> bool:
    """One webhook delivery of one change through the short path: was it stored (not a duplicate)?"""
    [change] = connector_for(connection).parse_webhook(event_id=event_id, body=change_body(key, version))
    [result] = events_accept(connection=connection, changes=[change], headers={}, raw_body="{}")
    return result.created


def test_events_are_monthly_partitions_with_a_default_and_no_foreign_key_into_them() -> None:
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname IN ('pscsync_event', 'pscsync_event_default', "
            "'pscsync_eventkey')"
        )
        kinds = dict(cursor.fetchall())
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE confrelid = 'pscsync_event'::regclass AND contype = 'f'"
        )
        (into,) = cursor.fetchone()
        cursor.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'pscsync_event_pkey'")
        (pkey,) = cursor.fetchone()
    assert kinds == {"pscsync_event": "p", "pscsync_event_default": "r", "pscsync_eventkey": "r"}
    assert into == 0 and pkey == "PRIMARY KEY (id, received_at)"
    today = dt.date.today().replace(day=1)
    assert all(Month(today).plus(i) in partition_months("pscsync_event") for i in range(4))
    # The daily beat makes events' coming months as it does attempts'.
    later = Month(today).plus(12)
    assert f"pscsync_event_y{later.first:%Y}m{later.first:%m}" in partitions_ensure(today=later.first)


def test_a_redelivery_in_the_next_month_is_a_duplicate(echo_connection) -> None:
    partition_create("pscsync_event", Month.parse("2025-09"))
    partition_create("pscsync_event", Month.parse("2025-10"))
    clock.use(FrozenClock(dt.datetime(2025, 9, 30, 23, 59, 59, tzinfo=dt.UTC)))
    try:
        assert delivery(echo_connection, "OPP-M-v1", "OPP-M")
        # Two changes with one id in one delivery: the first is stored, once.
        changes = [
            *connector_for(echo_connection).parse_webhook(event_id="OPP-T-v1", body=change_body("OPP-T", 1)),
            *connector_for(echo_connection).parse_webhook(event_id="OPP-T-v1", body=change_body("OPP-T", 2)),
        ]
        twice = events_accept(connection=echo_connection, changes=changes, headers={}, raw_body="{}")
        assert twice[0].event.pk == twice[1].event.pk
        clock.use(FrozenClock(dt.datetime(2025, 10, 1, 0, 0, 1, tzinfo=dt.UTC)))
        # The same (connection, id) a second later, in October's partition: refused, both paths.
        assert not delivery(echo_connection, "OPP-M-v1", "OPP-M")
        [change] = connector_for(echo_connection).parse_webhook(event_id="OPP-M-v1", body=change_body("OPP-M"))
        again = event_receive(connection=echo_connection, change=change, headers={}, raw_body="{}")
        assert not again.created
        assert delivery(echo_connection, "OPP-N-v1", "OPP-N")  # a new one still goes in
    finally:
        clock.use(None)
    stored = dict(Event.objects.values_list("source_event_id", "received_at__month"))
    assert stored == {"OPP-M-v1": 9, "OPP-T-v1": 9, "OPP-N-v1": 10}
    assert again.event.pk == Event.objects.get(source_event_id="OPP-M-v1").pk
    # One key per stored event, naming it.
    keys = dict(EventKey.objects.values_list("source_event_id", "event_id"))
    assert keys == dict(Event.objects.values_list("source_event_id", "pk"))


@pytest.fixture
def months(echo_connection, entities):
    """August, September and October 2025 in the US, events received in their own month:
    September holds three succeeded handoffs' events and one change no flow handles (ignored, no
    handoff); August the event of a handoff that still needs a person; October one succeeded,
    not yet archived."""
    for first in (dt.date(2025, 8, 1), dt.date(2025, 9, 1), dt.date(2025, 10, 1)):
        partition_create("pscsync_event", Month(first))
    done = [run(echo_connection, f"OPP-E{i}", SEPTEMBER + dt.timedelta(hours=i)) for i in range(3)]
    for h in done:
        received(h, SEPTEMBER)
    ignored = Event.objects.create(
        connection=echo_connection,
        source_event_id="IGN-1",
        occurred_at=SEPTEMBER,
        received_at=SEPTEMBER,
        raw_body="{}",
        status=Event.Status.IGNORED,
    )
    stuck = run(echo_connection, "OPP-ESTUCK", AUGUST)
    received(stuck, AUGUST)
    status_force(stuck.pk, Handoff.Status.NEEDS_ATTENTION)
    october = run(echo_connection, "OPP-EOCT", OCTOBER)
    received(october, OCTOBER)
    rollups_rebuild_all()
    return {"done": done, "stuck": stuck, "october": october, "ignored": ignored, "us": entities["us"]}


def test_a_wholly_archived_month_of_events_is_dropped_and_restored_and_no_figure_moves(months, admin) -> None:
    done, stuck, october = months["done"], months["stuck"], months["october"]
    before = events_of(done)
    assert len(before) == 3  # one event per echo handoff
    kept = events_of([stuck, october])
    ignored = Event.objects.filter(pk=months["ignored"].pk).values(*COLUMNS).get()
    shown, board = figures(admin), dashboards()

    archive = archive_month(entity=months["us"], month=Month.parse("2025-09"), actor=admin)
    assert archive.manifest["version"] == 3
    # On 15 November 2026 September 2025 is past the US's 13 months, October not yet: the daily
    # task drops September's events; August (a handoff needs a person) and October (its handoff
    # not archived) stay.
    clock.use(FrozenClock(dt.datetime(2026, 11, 15, 3, tzinfo=dt.UTC)))
    try:
        made = archive_due_task()
        assert [m for m in made if m.startswith("events of")] == ["events of September 2025: 4 rows dropped"]
        with pytest.raises(ArchiveRefused, match="1 events of August 2025 belong to handoffs not archived"):
            events_drop(month=Month.parse("2025-08"))
        with pytest.raises(ArchiveRefused, match="October 2025 is within a legal entity's retention"):
            events_drop(month=Month.parse("2025-10"))
        assert events_drop_due(actor_label="test") == []
    finally:
        clock.use(None)
    # Today October is past it, and its handoff is not archived.
    with pytest.raises(ArchiveRefused, match="1 events of October 2025 belong to handoffs not archived"):
        events_drop(month=Month.parse("2025-10"))
    assert "pscsync_event_y2025m09" not in tables()
    assert {"pscsync_event_y2025m08", "pscsync_event_y2025m10"} <= tables()
    assert events_of(done) == {} and events_of([stuck, october]) == kept
    assert not Event.objects.filter(pk=ignored["id"]).exists()

    # The archive holds the handoffs' events whole; the event of no handoff has a file of its own.
    lines = [json.loads(line) for line in gzip.open(Path(archive.directory) / "events.jsonl.gz", "rb")]
    assert [line["id"] for line in lines] == sorted(before)
    entry = AuditEntry.objects.get(action="partition.dropped", object_id="pscsync_event_y2025m09")
    assert entry.after["rows"] == 4 and entry.after["unarchived"]["rows"] == 1
    [line] = [json.loads(line) for line in gzip.open(entry.after["unarchived"]["file"], "rb")]
    assert (line["id"], line["source_event_id"], line["status"]) == (ignored["id"], "IGN-1", "ignored")
    assert PartitionDrop.objects.filter(table="pscsync_event", month=dt.date(2025, 9, 1), rows=4).exists()

    # Every figure the API gives is the same, and so is a rebuild from what is left.
    assert figures(admin) == shown
    rollups_rebuild_all()
    assert dashboards() == board
    # An archived handoff is not reopened while its trigger event may be gone: restore first.
    with pytest.raises(ActionRefused, match="restore the archive"):
        handoff_reopen(actor=admin, handoff=Handoff.objects.get(pk=done[0].pk), reason="resolved by mistake")
    # A redelivery of a dropped event is still a duplicate (its key stays).
    assert not delivery(done[0].source_connection, "OPP-E0-v1", "OPP-E0")
    assert not Event.objects.filter(source_event_id="OPP-E0-v1").exists()

    # The restore recreates September's partition and writes the handoffs' events back whole.
    archive_restore(archive=archive, actor=admin)
    assert "pscsync_event_y2025m09" in tables()
    assert events_of(done) == before
    assert (
        Handoff.objects.get(pk=done[0].pk).trigger_event.raw_body
        == before[done[0].trigger_event_id][COLUMNS.index("raw_body")]
    )
    assert figures(admin) == shown
    # Restored rows are not archived any more: the month stays until archived again.
    assert events_drop_due(actor_label="test") == []


def test_a_month_with_an_event_still_to_route_stays(months, admin) -> None:
    """An event of no handoff that is not done with (received, not routed yet) keeps its month."""
    archive_month(entity=months["us"], month=Month.parse("2025-09"), actor=admin)
    waiting = delivery(months["done"][0].source_connection, "LATE-1", "OPP-LATE")
    assert waiting
    Event.objects.filter(source_event_id="LATE-1").update(received_at=SEPTEMBER)
    with pytest.raises(ArchiveRefused, match="1 events of September 2025 .* wait to be routed"):
        events_drop(month=Month.parse("2025-09"))
    assert "pscsync_event_y2025m09" in tables()


def test_the_migration_keeps_every_event_key_and_source_position_both_ways(months) -> None:
    """Back to a plain events table (0024) and forward again (0025) with events in four months."""
    events = {r[0]: r for r in Event.objects.order_by("pk").values_list(*COLUMNS)}
    positions = list(Handoff.objects.order_by("pk").values_list("pk", "source_occurred_at", "source_changed_at"))
    assert len(events) == 6 and all(p[1] is not None for p in positions)
    executor = MigrationExecutor(db)
    executor.migrate([("pscsync", "0024_event_changed_at")])
    with db.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'pscsync_event'")
        assert cursor.fetchone()[0] == "r"
        # The unique (connection, source event id) is the events table's own again.
        cursor.execute("SELECT count(*) FROM pg_constraint WHERE conname = 'event_unique_per_connection'")
        assert cursor.fetchone()[0] == 1
    executor = MigrationExecutor(db)
    executor.migrate(executor.loader.graph.leaf_nodes("pscsync"))
    assert {r[0]: r for r in Event.objects.order_by("pk").values_list(*COLUMNS)} == events
    assert (
        list(Handoff.objects.order_by("pk").values_list("pk", "source_occurred_at", "source_changed_at")) == positions
    )
    # Every event has its key again, and new events still take fresh ids.
    keys = sorted(EventKey.objects.values_list("event_id", "connection_id", "source_event_id", "received_at"))
    assert keys == sorted((r[0], r[1], r[2], r[COLUMNS.index("received_at")]) for r in events.values())
    assert {"pscsync_event_y2025m08", "pscsync_event_y2025m09", "pscsync_event_y2025m10"} <= tables()
    assert delivery(months["done"][0].source_connection, "AFTER-1", "OPP-AFTER")
    assert Event.objects.get(source_event_id="AFTER-1").pk > max(events)
