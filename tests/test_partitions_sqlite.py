"""On SQLite, the embedded default, nothing is partitioned: the migration leaves plain tables, the
daily beat's partition steps do nothing, and retention keeps emptying bodies in the rows (the path
before partitions), restore included. Run in a pytest of its own on SQLite."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from django.db import connection as db

from pscsync.archive import Month, archive_month, archive_restore
from pscsync.models import Attempt, Handoff
from pscsync.partitions import attempts_drop_due, partitioned, partitions_ensure
from pscsync.tasks import archive_due_task
from tests.helpers import sqlite_outcomes
from tests.test_archive import SEPTEMBER, run

MARK = "PSCSYNC_PARTITIONS_SQLITE_NESTED"


@pytest.mark.django_db(transaction=True)
def test_sqlite_keeps_plain_tables_and_empties_bodies_in_place(
    echo_connection, entities, admin, settings, tmp_path, monkeypatch
):
    if os.getenv(MARK) != "1":
        pytest.skip("the nested SQLite run only")
    assert db.vendor == "sqlite"
    settings.ARCHIVE_DIR = str(tmp_path / "archive")
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)
    done = [run(echo_connection, f"OPP-S{i}", SEPTEMBER + dt.timedelta(hours=i)) for i in range(2)]
    Attempt.objects.filter(step__handoff__in=done).update(started_at=SEPTEMBER)
    before = {a.pk: (a.request, a.response) for a in Attempt.objects.filter(step__handoff__in=done)}
    assert len(before) == 6

    assert not partitioned() and partitions_ensure() == []
    archive = archive_month(entity=entities["us"], month=Month.parse("2025-09"), actor=admin)
    assert archive_due_task() == [] and attempts_drop_due() == []
    after = {a.pk: (a.request, a.response) for a in Attempt.objects.filter(step__handoff__in=done)}
    # The rows stay, emptied; the file has them whole.
    assert set(after) == set(before) and all(v == ({}, {}) for v in after.values())
    assert Path(archive.directory, "attempts.jsonl.gz").exists()
    assert archive_restore(archive=archive, actor=admin) == 2 + 6
    assert {a.pk: (a.request, a.response) for a in Attempt.objects.filter(step__handoff__in=done)} == before
    assert not Handoff.objects.filter(archive__isnull=False).exists()


@pytest.mark.skipif(os.getenv(MARK) == "1", reason="already the SQLite run")
@pytest.mark.on_sqlite(target=f"{__file__}::test_sqlite_keeps_plain_tables_and_empties_bodies_in_place", env=MARK)
def test_the_same_on_sqlite(sqlite_run) -> None:
    outcomes = sqlite_outcomes(
        sqlite_run.stdout, f"{__file__}::test_sqlite_keeps_plain_tables_and_empties_bodies_in_place"
    )
    assert len(outcomes) == 1 and outcomes[0].startswith("PASSED"), (
        sqlite_run.stdout[-3000:] + sqlite_run.stderr[-2000:]
    )
