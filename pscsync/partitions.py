"""Monthly partitions (PostgreSQL) of attempts, events and audit entries: made ahead, dropped
when archived.

Migration 0020 (0023_partitions) makes `pscsync_attempt` (by `started_at`) and
`pscsync_auditentry` (by `created_at`) range-partitioned by calendar month (UTC), with a DEFAULT
partition for anything outside; 0025 does the same for `pscsync_event` (by `received_at`), whose
dedupe moves to the unpartitioned EventKey (pscsync.models). The daily beat creates the coming
months ahead of time (`partitions_ensure`), so rows never land in the default partition in
normal running.

A month of attempts leaves the database by DETACH and DROP of its partition, never row by row,
and only when every attempt in it belongs to a handoff that is finished and archived in a file
holding its attempts' full rows (manifest version 2, pscsync.archive): a handoff that needs a
person, waits or runs, or one not yet archived (another entity's retention is longer, say), keeps
the whole month's partition, and that month's archived handoffs keep the older path (bodies
emptied in place). A month of the audit trail leaves only by `audit_month_archive`, run by hand
as the tables' owner: its entries go to a file and the chain's boundary hashes are kept, so
`audit_verify` accepts that gap and no other.

A month of events leaves by the same DROP (`month_drop`), past every entity's retention, when
every event in it belongs to a handoff finished and archived in a file holding events' full rows
(manifest version 3), or to no handoff and is done with (ignored, stale, superseded): those are
in no handoff's archive, so their rows go to a file of their own first. A handoff's trigger event
has no foreign key in the database (`id` alone is not unique in a partitioned table): the rule
never drops one whose handoff is unarchived, and the handoff keeps a copy of the event's source
position for the stale rule and the dashboards.

Detaching and dropping a partition needs the tables' owner (the app's own role may not; docs/
security.md "Database roles"), and an ACCESS EXCLUSIVE lock on the parent for a moment: it waits
at most LOCK_TIMEOUT for running writers and otherwise tries again next day. SQLite keeps plain
tables and none of this applies."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import F
from django.db.utils import OperationalError, ProgrammingError

from pscsync import clock
from pscsync.archive import ArchiveRefused, Month, _manifest_sha256, _sha256, archive_lock, archive_root
from pscsync.audit import audit_append, audit_record, audit_verify
from pscsync.models import AuditArchive, AuditEntry, Event, Handoff, LegalEntity, PartitionDrop

log = logging.getLogger(__name__)

TABLES = {"pscsync_attempt": "started_at", "pscsync_auditentry": "created_at", "pscsync_event": "received_at"}
# Per-partition unique indexes (a partitioned table's unique constraints must hold its key).
UNIQUE = {"pscsync_attempt": {"number": "(step_id, number)"}}
AHEAD = 3
LOCK_TIMEOUT = "5s"
# The audit trail is kept at least this long, and never less than the longest entity retention.
AUDIT_MIN_MONTHS = 24


def partitioned(table: str = "pscsync_attempt") -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = %s", [table])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def partition_name(table: str, month: Month) -> str:
    return f"{table}_y{month.first:%Y}m{month.first:%m}"


def partition_months(table: str) -> dict[Month, str]:
    """The monthly partitions that exist (the default partition is not one)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [table],
        )
        names = [r[0] for r in cursor.fetchall()]
    out = {}
    prefix = f"{table}_y"
    for name in names:
        if name.startswith(prefix) and len(name) == len(prefix) + 7:
            out[Month(dt.date(int(name[-7:-3]), int(name[-2:]), 1))] = name
    return out


def partition_create(table: str, month: Month) -> bool:
    """Create one month's partition unless it exists. Refuses (False, logged) when the default
    partition already holds rows of that month: PostgreSQL would refuse the new bounds, and the
    rows must be moved by hand (docs/operations.md)."""
    if month in partition_months(table):
        return False
    name = partition_name(table, month)
    start, end = month.bounds()
    column = TABLES[table]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {table}_default WHERE {column} >= %s AND {column} < %s)",  # noqa: S608  # nosec B608  # names from TABLES
            [start, end],
        )
        if cursor.fetchone()[0]:
            log.warning("%s: the default partition holds rows of %s; partition not created", table, month.label)
            return False
        cursor.execute(
            f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM (%s) TO (%s)",
            [start, end],
        )
        for suffix, columns in UNIQUE.get(table, {}).items():
            cursor.execute(f"CREATE UNIQUE INDEX {name}_{suffix} ON {name} {columns}")
        _grants_like_parent(cursor, table, name)
    return True


def _grants_like_parent(cursor: Any, table: str, name: str) -> None:
    """A new partition gets its parent's grants and no others: the default privileges would
    give the app's role UPDATE and DELETE on an audit partition (`manage.py audit_db_roles`)."""
    query = (
        "SELECT grantee, string_agg(privilege_type, ', ') FROM information_schema.role_table_grants "
        "WHERE table_name = %s AND grantee <> (SELECT tableowner FROM pg_tables WHERE tablename = %s) GROUP BY grantee"
    )
    cursor.execute(query, [name, table])
    for grantee, _ in cursor.fetchall():
        cursor.execute(f"REVOKE ALL ON {name} FROM {_role(grantee)}")
    cursor.execute(query, [table, table])
    for grantee, privileges in cursor.fetchall():
        cursor.execute(f"GRANT {privileges} ON {name} TO {_role(grantee)}")


def _role(grantee: str) -> str:
    return "PUBLIC" if grantee == "PUBLIC" else connection.ops.quote_name(grantee)


def partitions_ensure(today: dt.date | None = None, ahead: int = AHEAD) -> list[str]:
    """The daily beat: this month's and the next `ahead` months' partitions exist."""
    if not partitioned():
        return []
    first = Month((today or clock.now().date()).replace(day=1))
    made = []
    for table in TABLES:
        for i in range(ahead + 1):
            month = first.plus(i)
            try:
                if partition_create(table, month):
                    made.append(partition_name(table, month))
            except (OperationalError, ProgrammingError) as error:  # not the tables' owner; a lock
                log.warning("%s of %s not created now: %s", table, month.label, error)
                return made
    return made


def _attempts_blocking(name: str) -> int:
    """Attempts in this partition that must stay: their handoff is not finished, not archived,
    or archived before archives held attempts' full rows (manifest version 1)."""
    terminal = list(Handoff.TERMINAL)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {name} a JOIN pscsync_step s ON s.id = a.step_id "  # noqa: S608  # nosec B608  # partition name from the catalogue
            "JOIN pscsync_handoff h ON h.id = s.handoff_id LEFT JOIN pscsync_archive r ON r.id = h.archive_id "
            "WHERE h.archive_id IS NULL OR r.restored_at IS NOT NULL OR NOT (h.status = ANY(%s)) "
            "OR COALESCE((r.manifest->>'version')::int, 1) < 2",
            [terminal],
        )
        return int(cursor.fetchone()[0])


# A handoff whose events must stay: not finished, not archived, or archived before archives held
# events' full rows (manifest version 3).
_HANDOFF_KEEPS = (
    "{h}.archive_id IS NULL OR NOT ({h}.status = ANY(%s)) OR EXISTS (SELECT 1 FROM pscsync_archive r "
    "WHERE r.id = {h}.archive_id AND (r.restored_at IS NOT NULL OR COALESCE((r.manifest->>'version')::int, 1) < 3))"
)
# An event of no handoff that is done with: routed to nothing, or older than what was applied.
EVENTS_DONE = ("ignored", "stale", "superseded")


def _events_blocking(name: str) -> int:
    """Events in this partition that must stay: one of a handoff (or the trigger of one, which
    Handoff.trigger_event needs while the handoff is in the database unarchived) that keeps its
    events, and one of no handoff that is not done with (not routed yet, or queued)."""
    terminal = list(Handoff.TERMINAL)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {name} e LEFT JOIN pscsync_handoff h ON h.id = e.handoff_id "  # noqa: S608  # nosec B608  # partition name from the catalogue
            "WHERE (e.handoff_id IS NULL AND NOT (e.status = ANY(%s))) "
            f"OR (e.handoff_id IS NOT NULL AND ({_HANDOFF_KEEPS.format(h='h')})) "
            "OR EXISTS (SELECT 1 FROM pscsync_handoff t WHERE t.trigger_event_id = e.id "
            f"AND ({_HANDOFF_KEEPS.format(h='t')}))",
            [list(EVENTS_DONE), terminal, terminal],
        )
        return int(cursor.fetchone()[0])


def _retention_longest(month: Month, today: dt.date | None = None) -> bool:
    """Has `month` passed every legal entity's retention? An event of no handoff is in no
    entity's archive; it stays as long as any entity keeps bodies."""
    longest = max([0, *LegalEntity.objects.values_list("retention_months", flat=True)])
    return month.next().plus(longest).first <= (today or clock.now().date())


@dataclass(frozen=True)
class Droppable:
    """A partitioned table whose months leave by DROP once every row in them may go."""

    table: str
    what: str
    blocking: Callable[[str], int]
    why: str
    # A month must also pass this (today given), besides being over.
    due: Callable[[Month, dt.date | None], bool] = lambda month, today: True


DROPPABLE = {
    "attempts": Droppable(
        "pscsync_attempt", "attempts", _attempts_blocking, "belong to handoffs not archived (or needing a person)"
    ),
    "events": Droppable(
        "pscsync_event",
        "events",
        _events_blocking,
        "belong to handoffs not archived (or needing a person) or wait to be routed",
        _retention_longest,
    ),
}


def months_droppable(kind: str, today: dt.date | None = None) -> list[Month]:
    """Past months of a table whose every row is archived in full (see its `blocking`)."""
    spec = DROPPABLE[kind]
    if not partitioned(spec.table):
        return []
    current = Month((today or clock.now().date()).replace(day=1))
    return [
        m
        for m, name in sorted(partition_months(spec.table).items(), key=lambda kv: kv[0].first)
        if m.first < current.first and spec.due(m, today) and spec.blocking(name) == 0
    ]


def attempt_months_droppable(today: dt.date | None = None) -> list[Month]:
    return months_droppable("attempts", today)


def _detach_drop(cursor: Any, table: str, name: str) -> None:
    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
    cursor.execute(f"DROP TABLE {name}")


def month_drop(kind: str, *, month: Month, actor: User | None = None, actor_label: str = "") -> int:
    """Detach and drop one month's partition of `kind` (attempts, events); returns its rows.
    Refuses, changing nothing, when a row in it must stay. Events of no handoff, in no archive,
    go to a file of their own first (`_unarchived_events_file`)."""
    spec = DROPPABLE[kind]
    if month.first >= clock.now().date().replace(day=1):
        raise ArchiveRefused(f"{month.label} is not over: its {spec.what} partition stays.")
    if not spec.due(month, None):
        raise ArchiveRefused(f"{month.label} is within a legal entity's retention: its {spec.what} partition stays.")
    with transaction.atomic():
        archive_lock()
        name = partition_months(spec.table).get(month)
        if name is None:
            raise ArchiveRefused(f"There is no {spec.what} partition for {month.label}.")
        with connection.cursor() as cursor:
            # Writers are kept out while it is checked and dropped.
            cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            cursor.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
            blocking = spec.blocking(name)
            if blocking:
                raise ArchiveRefused(f"{blocking:,} {spec.what} of {month.label} {spec.why}: the partition stays.")
            cursor.execute(f"SELECT count(*) FROM {name}")  # noqa: S608  # nosec B608  # name from the catalogue
            rows = int(cursor.fetchone()[0])
            after: dict[str, Any] = {"table": spec.what, "month": f"{month.first:%Y-%m}", "rows": rows}
            directory = None
            if kind == "events":
                directory, after["unarchived"] = _unarchived_events_file(name, month)
            try:
                _detach_drop(cursor, spec.table, name)
                drop, made = PartitionDrop.objects.get_or_create(
                    table=spec.table, month=month.first, defaults={"rows": rows, "dropped_at": clock.now()}
                )
                if not made:  # dropped before, partly restored, archived and dropped again
                    PartitionDrop.objects.filter(pk=drop.pk).update(rows=F("rows") + rows, dropped_at=clock.now())
                audit_append(
                    actor=actor,
                    actor_label=actor_label,
                    action="partition.dropped",
                    object_type="partition",
                    object_id=name,
                    object_repr=f"{spec.what} of {month.label}",
                    after=after,
                )
            except BaseException:
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
                raise
    return rows


def _unarchived_events_file(name: str, month: Month) -> tuple[Path | None, dict[str, Any]]:
    """The month's events of no handoff (ignored, stale, superseded in a queue) are in no
    handoff's archive: their whole rows go to a file of their own, named in the drop's audit
    entry, so no event leaves the database without a copy."""
    from pscsync.archive import EVENT_COLUMNS, _iso

    rows = list(
        Event.objects.raw(
            f"SELECT * FROM {name} WHERE handoff_id IS NULL ORDER BY id"  # noqa: S608  # nosec B608  # name from the catalogue
        )
    )
    if not rows:
        return None, {}
    directory = archive_root() / "events" / f"{month.first:%Y-%m}-{clock.now():%Y%m%dT%H%M%S}"
    directory.mkdir(parents=True, exist_ok=False)
    path = directory / "events.jsonl.gz"
    with gzip.GzipFile(path, "wb", mtime=0) as out:
        for event in rows:
            line = {"id": event.pk, **{c: getattr(event, c) for c in EVENT_COLUMNS}}
            out.write(json.dumps(line, sort_keys=True, default=_iso).encode() + b"\n")
    return directory, {"file": str(path), "rows": len(rows), "sha256": _sha256(path)}


def attempts_drop(*, month: Month, actor: User | None = None, actor_label: str = "") -> int:
    """Detach and drop one month's attempts partition (month_drop)."""
    return month_drop("attempts", month=month, actor=actor, actor_label=actor_label)


def events_drop(*, month: Month, actor: User | None = None, actor_label: str = "") -> int:
    """Detach and drop one month's events partition (month_drop)."""
    return month_drop("events", month=month, actor=actor, actor_label=actor_label)


def months_drop_due(kind: str, actor_label: str = "system:retention") -> list[tuple[Month, int]]:
    """The daily beat after archiving: drop every past month whose rows are all archived.
    A month that cannot take the lock now, or a role that may not drop, waits for the next day."""
    dropped = []
    for month in months_droppable(kind):
        try:
            dropped.append((month, month_drop(kind, month=month, actor=None, actor_label=actor_label)))
        except (OperationalError, ProgrammingError) as error:  # lock timeout; not the tables' owner
            log.warning("%s of %s not dropped now: %s", kind, month.label, error)
        except ArchiveRefused as refused:
            log.info("%s", refused)
    return dropped


def attempts_drop_due(actor_label: str = "system:retention") -> list[tuple[Month, int]]:
    return months_drop_due("attempts", actor_label)


def events_drop_due(actor_label: str = "system:retention") -> list[tuple[Month, int]]:
    return months_drop_due("events", actor_label)


def audit_month_due(month: Month, today: dt.date | None = None) -> bool:
    """The audit trail of a month is kept AUDIT_MIN_MONTHS, and as long as any entity's retention."""
    longest = max([AUDIT_MIN_MONTHS, *LegalEntity.objects.values_list("retention_months", flat=True)])
    return month.next().plus(longest).first <= (today or clock.now().date())


def _entry_json(row: Any) -> bytes:
    return json.dumps(row, sort_keys=True, default=str).encode() + b"\n"


def audit_month_archive(*, month: Month, actor: User | None = None, actor_label: str = "") -> AuditArchive:
    """Move one month of the audit trail to a file and drop its partition, keeping the chain's two
    boundary hashes (AuditArchive) so `audit_verify` still passes across the gap. Refuses,
    changing nothing, within the audit retention, on a chain that does not verify now (a damaged
    stretch must not be sealed), or when the month's entries are not one unbroken stretch of the
    chain (an entry of another month between them)."""
    if not audit_month_due(month):
        raise ArchiveRefused(f"{month.label}'s audit trail is within its retention and stays.")
    if AuditArchive.objects.filter(month=month.first).exists():
        raise ArchiveRefused(f"The audit trail of {month.label} is already archived.")
    created_at = clock.now()
    directory = archive_root() / "audit" / f"{month.first:%Y-%m}-{created_at:%Y%m%dT%H%M%S}"
    with transaction.atomic():
        archive_lock()
        name = partition_months("pscsync_auditentry").get(month)
        if name is None:
            raise ArchiveRefused(f"There is no audit partition for {month.label}.")
        report = audit_verify()
        if not report.intact:
            raise ArchiveRefused(f"The audit chain has {len(report.breaks)} break(s): fix or explain them first.")
        start, end = month.bounds()
        rows = list(AuditEntry.objects.filter(created_at__gte=start, created_at__lt=end).order_by("pk").values())
        if not rows:
            raise ArchiveRefused(f"The audit trail has no entry in {month.label}.")
        first, last = rows[0], rows[-1]
        if AuditEntry.objects.filter(pk__gte=first["id"], pk__lte=last["id"]).count() != len(rows):
            raise ArchiveRefused(f"Entries of other months sit between {month.label}'s in the chain: it stays.")
        directory.mkdir(parents=True, exist_ok=False)
        try:
            path = directory / "audit.jsonl.gz"
            with gzip.GzipFile(path, "wb", mtime=0) as out:
                for row in rows:
                    out.write(_entry_json(row))
            manifest = {
                "version": 1,
                "month": f"{month.first:%Y-%m}",
                "entries": len(rows),
                "first_id": first["id"],
                "last_id": last["id"],
                "prev_hash": first["prev_hash"],
                "last_hash": last["hash"],
                "created_at": created_at.isoformat(),
                "files": {"audit": {"file": path.name, "rows": len(rows), "sha256": _sha256(path)}},
            }
            (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
            sealed = AuditArchive.objects.create(
                month=month.first,
                directory=str(directory),
                manifest=manifest,
                manifest_sha256=_manifest_sha256(manifest),
                entries=len(rows),
                first_id=first["id"],
                last_id=last["id"],
                prev_hash=first["prev_hash"],
                last_hash=last["hash"],
                created_at=created_at,
            )
            with connection.cursor() as cursor:
                _detach_drop(cursor, "pscsync_auditentry", name)
            # The boundary is also written into the (keyed) chain itself.
            audit_record(
                actor=actor,
                actor_label=actor_label,
                action="audit.month_archived",
                obj=sealed,
                after={k: manifest[k] for k in ("month", "entries", "first_id", "last_id", "prev_hash", "last_hash")},
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
    return sealed


def audit_archive_verify(sealed: AuditArchive) -> list[str]:
    """What no longer matches: the manifest, the file's checksum, or the chain inside the file."""
    problems = []
    if _manifest_sha256(sealed.manifest) != sealed.manifest_sha256:
        problems.append("the manifest stored with the archive was changed")
    entry = sealed.manifest["files"]["audit"]
    path = Path(sealed.directory) / entry["file"]
    if not path.exists():
        return [*problems, f"the audit file is missing ({path})"]
    if _sha256(path) != entry["sha256"]:
        problems.append("the audit file no longer matches its checksum (changed or damaged)")
    return problems


def attempt_months_dropped() -> list[tuple[dt.datetime, dt.datetime]]:
    """The months (as UTC bounds) whose attempts partition was ever dropped: their attempt
    rollups stand for rows no longer (all) there, so a rebuild keeps them as they are."""
    months = PartitionDrop.objects.filter(table="pscsync_attempt").values_list("month", flat=True)
    return [Month(first).bounds() for first in months]
