"""Retention (pscsync.archive, issue 18 "data that stays small"), on PostgreSQL: a month of one
entity's finished handoffs leaves its bodies in checksummed files; the rows, every figure and the
audit chain stay; a restore brings back exactly what left, and refuses a file that changed.

The expected counts and checksums are worked out here from the rows the test made and the bytes
on disk (hashlib over the files), not taken from the archive's own manifest."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection as db
from django.test import Client

from api.tokens import api_token_issue
from pscsync.archive import ArchiveRefused, Month, archive_month, archive_restore, archives_due, month_due
from pscsync.audit import audit_verify
from pscsync.intake import event_receive
from pscsync.models import Archive, Attempt, AuditEntry, Event, Handoff
from pscsync.runner import handoff_run
from tests.helpers import change_body, status_force

pytestmark = pytest.mark.django_db(transaction=True)

SEPTEMBER = dt.datetime(2025, 9, 15, 12, tzinfo=dt.UTC)
OCTOBER = dt.datetime(2025, 10, 2, 12, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def setup(settings, tmp_path, monkeypatch):
    assert db.vendor == "postgresql"
    settings.ARCHIVE_DIR = str(tmp_path / "archive")
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)


def run(connection, key: str, finished: dt.datetime) -> Handoff:
    """One echo handoff through intake and the runner (three real HTTP writes), then dated."""
    from connectors.registry import connector_for

    body = change_body(key)
    [change] = connector_for(connection).parse_webhook(event_id=f"{key}-v1", body=body)
    handoff = event_receive(
        connection=connection, change=change, headers={"X-Seen": key}, raw_body=body.decode()
    ).handoff
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "succeeded"
    Handoff.objects.filter(pk=handoff.pk).update(finished_at=finished)
    return Handoff.objects.get(pk=handoff.pk)


def bodies(handoffs: list[Handoff]) -> dict[str, dict[int, tuple]]:
    ids = [h.pk for h in handoffs]
    return {
        "events": {e.pk: (e.headers, e.raw_body, e.payload) for e in Event.objects.filter(handoff_id__in=ids)},
        "attempts": {a.pk: (a.request, a.response) for a in Attempt.objects.filter(step__handoff_id__in=ids)},
    }


def figures(admin) -> dict:
    token = api_token_issue(user=admin, name="archive test", days=1).plaintext
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    out = {}
    for path in ("/api/v1/metrics/?from=2025-09-01&to=2025-10-31", "/api/v1/handoffs/?page_size=100"):
        response = client.get(path)
        assert response.status_code == 200, response.content[:300]
        out[path] = _timeless(response.json())
    return out


def _timeless(value):
    """The payload without its "as of" stamps (when each figure was read, not what it says)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in ("as_of", "generated_at")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


@pytest.fixture
def month(echo_connection, entities):
    """September 2025 in the US: three succeeded handoffs and one that still needs a person;
    one succeeded in October (another month). All through intake and the real runner."""
    done = [run(echo_connection, f"OPP-A{i}", SEPTEMBER + dt.timedelta(hours=i)) for i in range(3)]
    stuck = run(echo_connection, "OPP-STUCK", SEPTEMBER)
    status_force(stuck.pk, Handoff.Status.NEEDS_ATTENTION)
    october = run(echo_connection, "OPP-OCT", OCTOBER)
    return {"done": done, "stuck": stuck, "october": october, "us": entities["us"]}


def test_a_month_past_retention_moves_its_bodies_to_checksummed_files_and_every_figure_stays(
    month, admin, client
) -> None:
    before = bodies(month["done"])
    # Worked out from what the test made: each echo handoff has one event and three attempts
    # (one PUT per step), so three finished handoffs carry 3 events and 9 attempts.
    assert (len(before["events"]), len(before["attempts"])) == (3, 9)
    kept = bodies([month["stuck"], month["october"]])
    shown = figures(admin)

    archive = archive_month(entity=month["us"], month=Month.parse("2025-09"), actor=admin)

    # The files: one line per row, in id order, exactly the bodies that were in the rows.
    directory = Path(archive.directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    for name, fields in (("events", ("headers", "raw_body", "payload")), ("attempts", ("request", "response"))):
        path = directory / f"{name}.jsonl.gz"
        lines = [json.loads(line) for line in gzip.open(path, "rb")]
        assert [line["id"] for line in lines] == sorted(before[name])
        assert {line["id"]: tuple(line[f] for f in fields) for line in lines} == before[name]
        assert manifest["files"][name] == {
            "file": path.name,
            "rows": len(before[name]),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    assert manifest["handoffs"] == 3 and manifest["month"] == "2025-09" and manifest["legal_entity"] == "us"

    # The rows stay, emptied of their bodies; their outcomes, steps and statuses do not move.
    after = bodies(month["done"])
    assert set(after["events"]) == set(before["events"]) and set(after["attempts"]) == set(before["attempts"])
    assert all(v == ({}, "", {}) for v in after["events"].values())
    assert all(v == ({}, {}) for v in after["attempts"].values())
    assert set(Handoff.objects.filter(archive=archive).values_list("pk", flat=True)) == {h.pk for h in month["done"]}
    # Never a handoff that needs a person, nor another month's.
    assert bodies([month["stuck"], month["october"]]) == kept
    # Every figure and list the API gives is the same, and the audit chain still verifies.
    assert figures(admin) == shown
    assert audit_verify().intact

    # The handoff's page says where its bodies went, in words.
    client.force_login(admin)
    page = client.get(f"/workbench/handoffs/{month['done'][0].pk}/").content.decode()
    assert "archive, not here" in page and "September 2025" in page

    # A restore brings back exactly what left, and the month can be archived again later.
    assert archive_restore(archive=archive, actor=admin) == 12
    assert bodies(month["done"]) == before
    assert not Handoff.objects.filter(archive__isnull=False).exists()
    assert audit_verify().intact


def test_a_changed_file_is_refused_and_nothing_is_written_back(month, admin) -> None:
    archive = archive_month(entity=month["us"], month=Month.parse("2025-09"), actor=admin)
    path = Path(archive.directory) / "attempts.jsonl.gz"
    lines = gzip.open(path, "rb").read().replace(b'"PUT"', b'"GET"')
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(lines)
    with pytest.raises(ArchiveRefused, match="attempts file no longer matches its checksum"):
        archive_restore(archive=archive, actor=admin)
    archive.refresh_from_db()
    assert archive.restored_at is None
    assert Handoff.objects.filter(archive=archive).count() == 3
    assert all(a.request == {} for a in Attempt.objects.filter(step__handoff__archive=archive))
    with pytest.raises(CommandError, match="no longer matches"):
        call_command("archive", "--verify", str(archive.pk))


def test_a_month_within_retention_or_already_archived_is_refused_and_nothing_changes(month, admin) -> None:
    us = month["us"]
    # 13 months (the default): September 2025 is due on 1 November 2026; today (2026-12) it is.
    assert month_due(us, Month.parse("2025-09"), today=dt.date(2026, 11, 1))
    assert not month_due(us, Month.parse("2025-09"), today=dt.date(2026, 10, 31))
    call_command("archive", "--entity", "us", "--retention", "24")
    us.refresh_from_db()
    assert AuditEntry.objects.filter(action="retention.changed", after={"retention_months": 24}).count() == 1
    with pytest.raises(CommandError, match="between 1 and 120 months"):
        call_command("archive", "--entity", "us", "--retention", "0")
    with pytest.raises(ArchiveRefused, match="within .* retention of 24 months"):
        archive_month(entity=us, month=Month.parse("2025-09"), actor=admin)
    assert not Archive.objects.exists() and not any(Path(settings.ARCHIVE_DIR).rglob("*"))
    us.retention_months = 13
    us.save()
    archive_month(entity=us, month=Month.parse("2025-09"), actor=admin)
    with pytest.raises(ArchiveRefused, match="already archived"):
        archive_month(entity=us, month=Month.parse("2025-09"), actor=admin)
    with pytest.raises(ArchiveRefused, match="not a month"):
        Month.parse("September")


def test_the_due_pass_finds_each_month_past_retention_once(month) -> None:
    due = [(e.code, m.first) for e, m in archives_due(today=dt.date(2026, 12, 5))]
    # September (due 1 Nov 2026) and October 2025 (due 1 Dec 2026) in the US; nothing else.
    assert due == [("us", dt.date(2025, 9, 1)), ("us", dt.date(2025, 10, 1))]
    call_command("archive", "--due")
    assert sorted(Archive.objects.values_list("month", "handoffs")) == [
        (dt.date(2025, 9, 1), 3),
        (dt.date(2025, 10, 1), 1),
    ]
    assert archives_due(today=dt.date(2026, 12, 5)) == []
