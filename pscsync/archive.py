"""Retention: a finished handoff's bodies leave the database after its legal entity's retention.

What grows without bound is not the handoffs but what each one carries: the raw body, headers
and payload of its source events and the request and response of every vendor call (a real
vendor answers with kilobytes). After `LegalEntity.retention_months` those bodies move, one
calendar month (UTC, by the handoff's finish) and one legal entity at a time, to gzip-compressed
JSON Lines files with a manifest (row counts and SHA-256 per file); the rows are then emptied of
them in the same transaction. Everything the dashboards, the workbench and reconciliation count
stays: handoffs, steps and their outputs, attempts' outcomes and timings, transitions, facts and
rollups. The attempts file holds attempts' whole rows, so on PostgreSQL a month of attempts can
then leave by DROP of its partition (pscsync.partitions) and a restore writes them back whole. The
audit trail is not archived here (pscsync.partitions.audit_month_archive, by hand). A restore
checks every file against the manifest before it writes a byte back.

Only finished handoffs move: succeeded, resolved or cancelled. One that needs a person, waits to
retry or is running keeps its bodies whatever its age. docs/operations.md ("Retention and
archives") says how to run it; docs/engine.md ("Retention: bodies, then rows by partition") when
rows leave."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Model

from pscsync import clock
from pscsync.audit import audit_record
from pscsync.models import Archive, Attempt, Event, Handoff, LegalEntity, Step

# Handoffs whose attempts needed a person or were rejected (dashboards.facts.EXCEPTION_OUTCOMES).
EXCEPTION_OUTCOMES = ("validation", "mapping", "rejected")

FILES = {
    "events": (Event, ("headers", "raw_body", "payload")),
    "attempts": (Attempt, ("request", "response")),
}
EMPTY: dict[str, Any] = {"headers": {}, "raw_body": "", "payload": {}, "request": {}, "response": {}}
# An attempt's whole row goes to the file (version 2), and an event's too (version 3), so their
# month's partition can be dropped (pscsync.partitions) and a restore can write the row back.
ATTEMPT_COLUMNS = tuple(f.attname for f in Attempt._meta.concrete_fields if f.attname != "id")
EVENT_COLUMNS = tuple(f.attname for f in Event._meta.concrete_fields if f.attname != "id")
# Per file: its whole row's columns, and the partition key (pscsync.partitions).
WHOLE = {"attempts": (ATTEMPT_COLUMNS, "started_at"), "events": (EVENT_COLUMNS, "received_at")}
CHUNK = 2000
MANIFEST_VERSION = 3
# Serialises archive, restore and partition drop: a restore must not write into a partition
# being dropped, nor a drop read a month half restored.
ARCHIVE_LOCK = 0x70617274  # "part"


class ArchiveRefused(Exception):
    """An archive or restore that must not happen, said in words a person reads."""


@dataclass(frozen=True)
class Month:
    first: dt.date

    @classmethod
    def parse(cls, text: str) -> Month:
        try:
            year, month = (int(part) for part in text.split("-"))
            return cls(dt.date(year, month, 1))
        except ValueError:
            raise ArchiveRefused(f"{text!r} is not a month: write it as YYYY-MM, e.g. 2025-10.") from None

    def next(self) -> Month:
        return Month(dt.date(self.first.year + self.first.month // 12, self.first.month % 12 + 1, 1))

    def plus(self, months: int) -> Month:
        m = self
        for _ in range(months):
            m = m.next()
        return m

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(self.first, dt.time.min, tzinfo=dt.UTC)
        return start, dt.datetime.combine(self.next().first, dt.time.min, tzinfo=dt.UTC)

    @property
    def label(self) -> str:
        return f"{self.first:%B %Y}"


def archive_root() -> Path:
    return Path(getattr(settings, "ARCHIVE_DIR", "") or Path(settings.BASE_DIR) / "var" / "archive")


def retention_set(*, entity: LegalEntity, months: int, actor: User | None, actor_label: str = "") -> None:
    """Change how long an entity's finished handoffs keep their bodies (audited). At least one
    month: the current month's handoffs are still being looked at."""
    if not 1 <= months <= 120:
        raise ArchiveRefused(f"A retention is between 1 and 120 months, not {months}.")
    with transaction.atomic():
        before = entity.retention_months
        entity.retention_months = months
        entity.save(update_fields=["retention_months"])
        audit_record(
            actor=actor,
            actor_label=actor_label,
            action="retention.changed",
            obj=entity,
            before={"retention_months": before},
            after={"retention_months": months},
            legal_entity=entity,
        )


def archive_lock() -> None:
    """Inside a transaction: wait for any other archive, restore or partition drop to finish."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ARCHIVE_LOCK])


def month_due(entity: LegalEntity, month: Month, today: dt.date | None = None) -> bool:
    """Has every day of `month` passed the entity's retention? (October 2025 with 13 months is due
    on 1 December 2026.)"""
    today = today or clock.now().date()
    return month.next().plus(entity.retention_months).first <= today


def _handoffs_of(entity: LegalEntity, month: Month) -> Any:
    start, end = month.bounds()
    return Handoff.objects.filter(
        legal_entity=entity,
        status__in=Handoff.TERMINAL,
        finished_at__gte=start,
        finished_at__lt=end,
        archive__isnull=True,
    )


def _file_fields(name: str) -> tuple[str, ...]:
    return WHOLE[name][0]


# Step ids per statement: well inside PostgreSQL's 65,535 parameters and SQLite's 32,766.
STEP_IDS = 10_000


def _steps_of(handoff_ids: list[int]) -> Iterator[list[int]]:
    """The ids of these handoffs' steps, in lists of at most STEP_IDS. Attempts are picked by these
    ids, not by a join to steps: the join made PostgreSQL hash every monthly partition of attempts
    (a sequential scan of all 4.9 million rows for each chunk of the 1M firm: 2.0 s), where a
    list of ids is an index scan in each partition (0.45 s, planning included)."""
    ids = list(Step.objects.filter(handoff_id__in=handoff_ids).order_by("pk").values_list("pk", flat=True))
    for i in range(0, len(ids), STEP_IDS):
        yield ids[i : i + STEP_IDS]


def _rows(model: type[Model], fields: tuple[str, ...], handoff_ids: list[int]) -> Iterator[dict[str, Any]]:
    for i in range(0, len(handoff_ids), CHUNK):
        chunk = handoff_ids[i : i + CHUNK]
        if model is Event:
            yield from Event.objects.filter(handoff_id__in=chunk).order_by("pk").values("pk", *fields).iterator(CHUNK)
            continue
        for steps in _steps_of(chunk):
            rows = model._default_manager.filter(step_id__in=steps)
            yield from rows.order_by("pk").values("pk", *fields).iterator(CHUNK)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_sha256(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def archive_month(*, entity: LegalEntity, month: Month, actor: User | None, actor_label: str = "") -> Archive:
    """Move one month's finished handoffs' bodies of one entity to files; empty them in the rows.

    All in one transaction with the handoffs locked: a handoff reopened meanwhile waits, and a
    failure leaves the rows as they were and no files behind."""
    if not month_due(entity, month):
        raise ArchiveRefused(
            f"{month.label} is within {entity.name}'s retention of {entity.retention_months} months: "
            f"its handoffs keep their bodies until {month.next().plus(entity.retention_months).first:%-d %B %Y}."
        )
    if Archive.objects.filter(legal_entity=entity, month=month.first, restored_at__isnull=True).exists():
        raise ArchiveRefused(f"{entity.name}'s {month.label} is already archived.")
    created_at = clock.now()
    directory = archive_root() / entity.code / f"{month.first:%Y-%m}-{created_at:%Y%m%dT%H%M%S}"
    with transaction.atomic():
        archive_lock()
        ids = list(_handoffs_of(entity, month).select_for_update().order_by("pk").values_list("pk", flat=True))
        if not ids:
            raise ArchiveRefused(f"{entity.name} has no finished handoff in {month.label} left to archive.")
        directory.mkdir(parents=True, exist_ok=False)
        try:
            files = {}
            for name, (model, _fields) in FILES.items():
                path = directory / f"{name}.jsonl.gz"
                count = 0
                # mtime=0: the same rows make the same bytes, so a file's checksum names its content.
                columns = _file_fields(name)
                with gzip.GzipFile(path, "wb", mtime=0) as out:
                    for row in _rows(model, columns, ids):
                        line = {"id": row["pk"], **{f: row[f] for f in columns}}
                        out.write(json.dumps(line, default=_iso).encode() + b"\n")
                        count += 1
                files[name] = {"file": path.name, "rows": count, "sha256": _sha256(path)}
            manifest = {
                "version": MANIFEST_VERSION,
                "legal_entity": entity.code,
                "month": f"{month.first:%Y-%m}",
                "handoffs": len(ids),
                "handoff_ids": [ids[0], ids[-1]],
                "created_at": created_at.isoformat(),
                "files": files,
            }
            (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
            archive = Archive.objects.create(
                legal_entity=entity,
                month=month.first,
                directory=str(directory),
                manifest=manifest,
                manifest_sha256=_manifest_sha256(manifest),
                handoffs=len(ids),
                created_at=created_at,
            )
            for i in range(0, len(ids), CHUNK):
                chunk = ids[i : i + CHUNK]
                Event.objects.filter(handoff_id__in=chunk).update(**{f: EMPTY[f] for f in FILES["events"][1]})
                flagged: set[int] = set()
                for steps in _steps_of(chunk):
                    Attempt.objects.filter(step_id__in=steps).update(**{f: EMPTY[f] for f in FILES["attempts"][1]})
                    # What the facts read from attempts (pscsync.partitions may drop them later).
                    flagged.update(
                        Attempt.objects.filter(step_id__in=steps, outcome__in=EXCEPTION_OUTCOMES).values_list(
                            "step_id", flat=True
                        )
                    )
                if flagged:
                    Handoff.objects.filter(pk__in=Step.objects.filter(pk__in=flagged).values("handoff_id")).update(
                        attempts_flagged=True
                    )
                Handoff.objects.filter(pk__in=chunk).update(archive=archive)
            audit_record(
                actor=actor,
                actor_label=actor_label,
                action="archive.created",
                obj=archive,
                after={"month": manifest["month"], "handoffs": len(ids), "files": files},
                legal_entity=entity,
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
    return archive


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def archives_due(today: dt.date | None = None) -> list[tuple[LegalEntity, Month]]:
    """Every (entity, month) past its retention that still has a finished handoff to archive."""
    due = []
    for entity in LegalEntity.objects.all():
        oldest = (
            Handoff.objects.filter(legal_entity=entity, status__in=Handoff.TERMINAL, archive__isnull=True)
            .exclude(finished_at=None)
            .order_by("finished_at")
            .values_list("finished_at", flat=True)
            .first()
        )
        if oldest is None:
            continue
        month = Month(oldest.date().replace(day=1))
        while month_due(entity, month, today):
            if _handoffs_of(entity, month).exists():
                due.append((entity, month))
            month = month.next()
    return due


def archive_due(*, actor_label: str = "system:retention") -> list[Archive]:
    """The beat's monthly pass: archive whatever has passed its entity's retention."""
    return [
        archive_month(entity=entity, month=month, actor=None, actor_label=actor_label)
        for entity, month in archives_due()
    ]


def _restore_rows(model: type[Model], fields: tuple[str, ...], rows: list[dict[str, Any]]) -> int:
    """Write the bodies back into rows that are there; write back whole the rows whose month's
    partition was dropped (recreating the partition first)."""
    if not rows:
        return 0
    present = set(model._default_manager.filter(pk__in=[r["id"] for r in rows]).values_list("pk", flat=True))
    model._default_manager.bulk_update(
        [model(pk=r["id"], **{k: r[k] for k in fields}) for r in rows if r["id"] in present], fields
    )
    gone = [r for r in rows if r["id"] not in present]
    if gone:
        name = "attempts" if model is Attempt else "events"
        columns, key = WHOLE[name]
        if key not in gone[0]:  # an older manifest: bodies only
            raise ArchiveRefused(f"{len(gone)} {model._meta.verbose_name_plural} of this archive are no longer there.")
        from pscsync.partitions import partition_create, partitioned

        at = {r["id"]: dt.datetime.fromisoformat(r[key]) for r in gone}
        if partitioned():
            for first in {s.astimezone(dt.UTC).date().replace(day=1) for s in at.values()}:
                partition_create(model._meta.db_table, Month(first))
        for r in gone:
            r[key] = at[r["id"]]
        model._default_manager.bulk_create([model(pk=r["id"], **{k: r[k] for k in columns}) for r in gone])
    return len(rows)


def archive_verify(archive: Archive) -> list[str]:
    """What no longer matches the manifest (empty when every file is whole)."""
    problems = []
    if _manifest_sha256(archive.manifest) != archive.manifest_sha256:
        problems.append("the manifest stored with the archive was changed")
    directory = Path(archive.directory)
    for name, entry in archive.manifest.get("files", {}).items():
        path = directory / entry["file"]
        if not path.exists():
            problems.append(f"the {name} file is missing ({path})")
        elif _sha256(path) != entry["sha256"]:
            problems.append(f"the {name} file no longer matches its checksum (changed or damaged)")
    return problems


def archive_restore(*, archive: Archive, actor: User | None, actor_label: str = "") -> int:
    """Write an archive's bodies back into their rows (for an audit or an investigation).
    Refuses, changing nothing, when a file is missing or does not match the manifest."""
    if archive.restored_at is not None:
        raise ArchiveRefused(f"{archive} was already restored.")
    problems = archive_verify(archive)
    if problems:
        raise ArchiveRefused(f"{archive} cannot be restored: " + "; ".join(problems) + ".")
    directory = Path(archive.directory)
    restored = 0
    with transaction.atomic():
        archive_lock()
        for name, (model, fields) in FILES.items():
            batch: list[dict[str, Any]] = []
            with gzip.open(directory / archive.manifest["files"][name]["file"], "rb") as f:
                for line in f:
                    batch.append(json.loads(line))
                    if len(batch) >= CHUNK:
                        restored += _restore_rows(model, fields, batch)
                        batch = []
            restored += _restore_rows(model, fields, batch)
        Handoff.objects.filter(archive=archive).update(archive=None)
        archive.restored_at = clock.now()
        archive.save(update_fields=["restored_at"])
        audit_record(
            actor=actor,
            actor_label=actor_label,
            action="archive.restored",
            obj=archive,
            after={"rows": restored},
            legal_entity=archive.legal_entity,
        )
    return restored
