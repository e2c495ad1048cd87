"""Monthly partitions (pscsync.partitions, migration 0020, issue 18 "data that stays small"), on
PostgreSQL: a month of attempts whose handoffs are all archived leaves by DROP of its partition,
a month holding a handoff that needs a person stays; the restore writes the dropped rows back;
a month of the audit trail leaves with its boundary hashes and the chain still verifies; every
dashboard figure stays. The expected rows, counts and hashes are read from the rows the test made,
before any of it ran, not from the manifests."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection as db
from django.db.migrations.executor import MigrationExecutor

from dashboards.facts import rollups_rebuild_all
from dashboards.models import AttemptRollup, DailyRollup, FlowFact
from pscsync import clock
from pscsync.archive import ArchiveRefused, Month, archive_month, archive_restore
from pscsync.audit import audit_append, audit_verify
from pscsync.clock import FrozenClock
from pscsync.models import Attempt, AuditArchive, AuditEntry, Handoff, PartitionDrop
from pscsync.partitions import (
    attempts_drop,
    attempts_drop_due,
    audit_month_archive,
    partition_create,
    partition_months,
    partitions_ensure,
)
from tests.helpers import audit_raw_sql, status_force
from tests.test_archive import OCTOBER, SEPTEMBER, figures, run, setup  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.django_db(transaction=True)

AUGUST = dt.datetime(2025, 8, 20, 12, tzinfo=dt.UTC)
COLUMNS = [f.attname for f in Attempt._meta.concrete_fields]


def attempts_of(handoffs: list[Handoff]) -> dict[int, tuple]:
    rows = Attempt.objects.filter(step__handoff__in=handoffs).order_by("pk").values_list(*COLUMNS)
    return {r[0]: r for r in rows}


def dated(handoff: Handoff, when: dt.datetime) -> None:
    """As if it ran at `when`: created an hour before, its attempts then (an UPDATE moves them to
    that month's partition)."""
    Handoff.objects.filter(pk=handoff.pk).update(created_at=when - dt.timedelta(hours=1))
    Attempt.objects.filter(step__handoff=handoff).update(started_at=when)


def tables() -> set[str]:
    with db.cursor() as cursor:
        cursor.execute("SELECT relname FROM pg_class WHERE relname LIKE 'pscsync_attempt_y%%' AND relkind = 'r'")
        return {r[0] for r in cursor.fetchall()}


def dashboards() -> dict:
    return {
        "facts": sorted(FlowFact.objects.values_list("flow", "key", "exception", "amount", "status")),
        "daily": sorted(DailyRollup.objects.values_list("flow", "day", "exceptions", "started", "finished")),
        "attempts": sorted(AttemptRollup.objects.values_list("hour", "attempts", "failures")),
    }


@pytest.fixture
def months(echo_connection, entities):
    """August, September and October 2025 in the US, attempts dated in their own month:
    September holds three succeeded handoffs (one rejected once by the target before it was
    resolved); August one that still needs a person; October one succeeded, not yet due."""
    for first in (dt.date(2025, 8, 1), dt.date(2025, 9, 1), dt.date(2025, 10, 1)):
        partition_create("pscsync_attempt", Month(first))
    done = [run(echo_connection, f"OPP-P{i}", SEPTEMBER + dt.timedelta(hours=i)) for i in range(3)]
    for h in done:
        dated(h, SEPTEMBER)
    step = done[0].steps.order_by("pk").first()
    Attempt.objects.create(step=step, number=99, started_at=SEPTEMBER, outcome="rejected", request={"n": 1})
    stuck = run(echo_connection, "OPP-STUCK", AUGUST)
    dated(stuck, AUGUST)
    status_force(stuck.pk, Handoff.Status.NEEDS_ATTENTION)
    october = run(echo_connection, "OPP-OCT", OCTOBER)
    dated(october, OCTOBER)
    rollups_rebuild_all()
    return {"done": done, "stuck": stuck, "october": october, "us": entities["us"]}


def test_tables_are_monthly_partitions_with_a_default_and_the_coming_months() -> None:
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname IN ('pscsync_attempt', 'pscsync_auditentry', "
            "'pscsync_attempt_default', 'pscsync_auditentry_default')"
        )
        kinds = dict(cursor.fetchall())
    assert kinds == {
        "pscsync_attempt": "p",
        "pscsync_auditentry": "p",
        "pscsync_attempt_default": "r",
        "pscsync_auditentry_default": "r",
    }
    today = dt.date.today().replace(day=1)
    want = [Month(today).plus(i) for i in range(4)]
    assert all(m in partition_months("pscsync_attempt") for m in want)
    assert all(m in partition_months("pscsync_auditentry") for m in want)
    # The beat a year on makes that year's months; twice is once.
    later = Month(today).plus(12)
    made = partitions_ensure(today=later.first)
    assert f"pscsync_attempt_y{later.first:%Y}m{later.first:%m}" in made
    assert partitions_ensure(today=later.first) == []


def test_a_wholly_archived_month_of_attempts_is_dropped_and_restored_and_no_figure_moves(months, admin) -> None:
    done, stuck, october = months["done"], months["stuck"], months["october"]
    before = attempts_of(done)
    # Worked out from what the fixture made: three attempts per echo handoff, plus the rejected one.
    assert len(before) == 10
    kept = attempts_of([stuck, october])
    shown, board = figures(admin), dashboards()
    # By hand: OPP-P0 was rejected once, OPP-STUCK needs a person; the others never stopped.
    assert {f[1] for f in board["facts"] if f[2]} == {"OPP-P0", "OPP-STUCK"}

    archive = archive_month(entity=months["us"], month=Month.parse("2025-09"), actor=admin)
    assert Handoff.objects.filter(pk=done[0].pk, attempts_flagged=True).exists()
    assert Handoff.objects.filter(attempts_flagged=True).count() == 1
    dropped = attempts_drop_due(actor_label="test")

    # September goes (all its rows archived in full); August stays (a handoff needs a person);
    # October stays (not archived); December is the current month.
    # (Past months left empty, if another test made them, go too: nothing in them to keep.)
    assert [(m.first, rows) for m, rows in dropped if rows] == [(dt.date(2025, 9, 1), 10)]
    assert "pscsync_attempt_y2025m09" not in tables()
    assert {"pscsync_attempt_y2025m08", "pscsync_attempt_y2025m10"} <= tables()
    assert attempts_of(done) == {}
    assert attempts_of([stuck, october]) == kept
    with pytest.raises(ArchiveRefused, match="3 attempts of August 2025 belong to handoffs not archived"):
        attempts_drop(month=Month.parse("2025-08"))
    assert "pscsync_attempt_y2025m08" in tables()

    # The file holds the whole rows, exactly as they were.
    lines = [json.loads(line) for line in gzip.open(Path(archive.directory) / "attempts.jsonl.gz", "rb")]
    assert [line["id"] for line in lines] == sorted(before)
    assert archive.manifest["version"] == 3

    # Every figure the API gives is the same, and so is a rebuild of every fact and rollup from
    # what is left (the exception flag now comes from the handoff, not its dropped attempts).
    assert figures(admin) == shown
    rollups_rebuild_all()
    assert dashboards() == board
    assert audit_verify().intact
    assert AuditEntry.objects.filter(action="partition.dropped", object_id="pscsync_attempt_y2025m09").count() == 1

    # The restore recreates September's partition and writes every row back whole.
    assert archive_restore(archive=archive, actor=admin) == 3 + 10
    assert "pscsync_attempt_y2025m09" in tables()
    assert attempts_of(done) == before
    assert figures(admin) == shown
    rollups_rebuild_all()
    assert dashboards() == board
    assert audit_verify().intact
    # Restored rows are not archived any more: the month stays until archived again.
    assert attempts_drop_due(actor_label="test") == []
    # New attempts still take fresh ids after the written-back ones.
    fresh = Attempt.objects.create(step=done[1].steps.first(), number=50, started_at=clock.now())
    assert fresh.pk > max(before)


def test_a_month_of_the_audit_trail_leaves_with_its_boundary_hashes_and_the_chain_verifies(admin) -> None:
    old = Month.parse("2024-09")
    partition_create("pscsync_auditentry", old)
    clock.use(FrozenClock(dt.datetime(2024, 9, 10, 9, tzinfo=dt.UTC)))
    try:
        first = [audit_append(actor=admin, action="test.old", object_type="thing", object_id=str(i)) for i in range(5)]
    finally:
        clock.use(None)
    later = [audit_append(actor=admin, action="test.new", object_type="thing", object_id=str(i)) for i in range(3)]
    total = AuditEntry.objects.count()

    sealed = audit_month_archive(month=old, actor=admin)

    # The boundary is the first old entry's link and the last old entry's hash, read from them.
    assert (sealed.prev_hash, sealed.last_hash, sealed.entries) == (first[0].prev_hash, first[-1].hash, 5)
    assert not AuditEntry.objects.filter(pk__in=[e.pk for e in first]).exists()
    assert "pscsync_auditentry_y2024m09" not in partition_months("pscsync_auditentry").values()
    lines = [json.loads(line) for line in gzip.open(Path(sealed.directory) / "audit.jsonl.gz", "rb")]
    assert [line["hash"] for line in lines] == [e.hash for e in first]
    report = audit_verify()
    assert report.intact and report.archived == 5 and report.checked == total - 5 + 1
    # The gap is accepted only where the seal says: a row deleted from what stays still breaks it.
    audit_raw_sql("DELETE FROM pscsync_auditentry WHERE id = %s", [later[1].pk])
    broken = audit_verify()
    assert [e.pk for e, _ in broken.breaks] == [later[2].pk]

    # Within the audit retention, or twice: refused.
    with pytest.raises(ArchiveRefused, match="within its retention"):
        audit_month_archive(month=Month.parse("2026-11"))
    with pytest.raises(ArchiveRefused, match="already archived"):
        audit_month_archive(month=old)


def test_a_seal_the_chain_never_announced_hides_nothing(admin) -> None:
    entries = [audit_append(actor=admin, action="test.x", object_type="thing", object_id=str(i)) for i in range(4)]
    audit_raw_sql("DELETE FROM pscsync_auditentry WHERE id = %s", [entries[1].pk])
    # Someone who can write tables but holds no audit key adds a seal over the deleted row.
    AuditArchive.objects.create(
        month=dt.date(2024, 1, 1),
        directory="/nowhere",
        manifest={},
        manifest_sha256="",
        entries=1,
        first_id=entries[1].pk,
        last_id=entries[1].pk,
        prev_hash=entries[1].prev_hash,
        last_hash=entries[1].hash,
        created_at=clock.now(),
    )
    assert [e.pk for e, _ in audit_verify().breaks] == [entries[2].pk]


def test_the_migration_keeps_every_row_and_key_both_ways(months) -> None:
    """Back to plain tables and forward again (0020) with rows in four months."""
    attempts = attempts_of([*months["done"], months["stuck"], months["october"]])
    audit = list(AuditEntry.objects.order_by("pk").values_list("pk", "hash"))
    executor = MigrationExecutor(db)
    executor.migrate([("pscsync", "0019_handoff_failed_step_key")])
    with db.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'pscsync_attempt'")
        assert cursor.fetchone()[0] == "r"
    executor = MigrationExecutor(db)
    executor.migrate(executor.loader.graph.leaf_nodes("pscsync"))
    assert attempts_of([*months["done"], months["stuck"], months["october"]]) == attempts
    assert list(AuditEntry.objects.order_by("pk").values_list("pk", "hash")) == audit
    assert {"pscsync_attempt_y2025m08", "pscsync_attempt_y2025m09", "pscsync_attempt_y2025m10"} <= tables()
    assert audit_verify().intact
    # The append-only trigger came along.
    with pytest.raises(Exception, match="append-only"), db.cursor() as cursor:
        cursor.execute("UPDATE pscsync_auditentry SET comment = 'x'")
    call_command("archive", "--partitions")


def test_the_app_role_cannot_drop_a_month_and_the_beat_goes_on(months, admin) -> None:
    """Web and workers run as a role that does not own the tables (audit_db_roles): the daily
    pass archives, then leaves the month for the owner's run, logging why."""
    archive_month(entity=months["us"], month=Month.parse("2025-09"), actor=admin)
    role = f"pscsync_app_{uuid.uuid4().hex[:8]}"
    with db.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} NOLOGIN")
    call_command("audit_db_roles", role, "--apply")
    with db.cursor() as cursor:
        cursor.execute(f"SET ROLE {role}")
        try:
            assert partitions_ensure(today=dt.date(2031, 1, 1)) == []
            assert attempts_drop_due(actor_label="test") == []
        finally:
            cursor.execute("RESET ROLE")
    assert "pscsync_attempt_y2025m09" in tables() and not PartitionDrop.objects.exists()
    assert [m.first for m, rows in attempts_drop_due(actor_label="test") if rows] == [dt.date(2025, 9, 1)]
