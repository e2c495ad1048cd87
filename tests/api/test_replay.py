"""Replay of a connection's time window (preview, then a job to poll) and cancelling a bulk job:
the workbench's services (remediation.services.replay_scope, bulk_job_create, bulk_job_cancel)."""

from __future__ import annotations

import pytest

from pscsync.models import AuditEntry
from remediation.models import BulkJob
from remediation.services import bulk_job_run

WINDOW = "start=2026-10-31T00:00:00Z&end=2026-11-02T00:00:00Z"


@pytest.mark.django_db
def test_a_replay_preview_counts_the_windows_events_and_handoffs(api, world, tokens) -> None:
    preview = api("GET", f"/api/v1/replays/preview/?connection=echo-us&{WINDOW}", tokens["operator"])
    assert preview.status_code == 200
    assert preview.json() | {"start": None, "end": None} == {
        "connection": "echo-us",
        "start": None,
        "end": None,
        "events": 1,
        "handoffs": 1,
        "handoff_ids": [world["us"]["handoff"].pk],
    }
    empty = api(
        "GET",
        "/api/v1/replays/preview/?connection=echo-us&start=2026-11-05T00:00:00Z&end=2026-11-06T00:00:00Z",
        tokens["operator"],
    )
    assert empty.json()["events"] == 0 and empty.json()["handoffs"] == 0
    assert not BulkJob.objects.filter(kind="replay").exists()  # a preview changes nothing


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field", "status"),
    [
        ("connection=echo-us&start=yesterday&end=2026-11-01T00:00:00Z", "start", 400),
        ("connection=echo-us&start=2026-11-01T00:00:00Z", "end", 400),
        ("connection=&" + WINDOW, "connection", 400),
        # Well-formed but refused: another entity's connection is as unknown as one that does not exist.
        ("connection=echo-uk&" + WINDOW, "connection", 422),
        ("connection=nope&" + WINDOW, "connection", 422),
        ("connection=echo-us&start=2026-11-02T00:00:00Z&end=2026-11-01T00:00:00Z", "end", 422),
    ],
)
def test_a_bad_replay_window_is_refused_naming_the_parameter(api, world, tokens, query, field, status) -> None:
    response = api("GET", f"/api/v1/replays/preview/?{query}", tokens["operator"])
    assert response.status_code == status and field in response.json()["errors"], response.json()


@pytest.mark.django_db
def test_a_replay_job_is_created_polled_and_runs_the_workbench_replay(api, world, tokens) -> None:
    body = {"connection": "echo-us", "start": "2026-10-31T00:00:00Z", "end": "2026-11-02T00:00:00Z", "reason": "outage"}
    created = api("POST", "/api/v1/replays/", tokens["operator"], body)
    assert created.status_code == 202 and created["Location"].endswith(f"/api/v1/jobs/{created.json()['id']}/")
    job = BulkJob.objects.get(pk=created.json()["id"])
    assert job.kind == "replay" and job.handoff_ids == [world["us"]["handoff"].pk]
    assert job.params == {
        "connection": "echo-us",
        "start": "2026-10-31T00:00:00+00:00",
        "end": "2026-11-02T00:00:00+00:00",
    }
    bulk_job_run(job.pk)  # what the worker does
    polled = api("GET", created["Location"], tokens["operator"]).json()
    assert polled["status"] == "done" and polled["succeeded"] == 1
    assert AuditEntry.objects.filter(action="handoff.resubmit.bulk", object_id=str(world["us"]["handoff"].pk)).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"connection": "echo-uk"}, "connection"),
        ({"reason": "  "}, "non_field_errors"),
        ({"start": "2026-11-05T00:00:00Z", "end": "2026-11-06T00:00:00Z"}, "non_field_errors"),  # nothing to replay
        ({"end": "2026-10-30T00:00:00Z"}, "end"),
    ],
)
def test_a_replay_that_cannot_run_is_refused_and_makes_no_job(api, world, tokens, change, field) -> None:
    body = {"connection": "echo-us", "start": "2026-10-31T00:00:00Z", "end": "2026-11-02T00:00:00Z", "reason": "x"}
    response = api("POST", "/api/v1/replays/", tokens["operator"], body | change)
    assert response.status_code == 422 and field in response.json()["errors"], response.json()
    assert not BulkJob.objects.filter(kind="replay").exists()


@pytest.mark.django_db
def test_a_queued_job_is_cancelled_and_a_finished_one_is_a_conflict(api, world, tokens) -> None:
    job = world["us"]["job"]
    assert api("POST", f"/api/v1/jobs/{job.pk}/cancel/", tokens["outsider"], {}).status_code == 404  # not theirs
    cancelled = api("POST", f"/api/v1/jobs/{job.pk}/cancel/", tokens["operator"], {})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert bulk_job_run(job.pk) == "skipped"  # the worker that picks it up later does nothing
    again = api("POST", f"/api/v1/jobs/{job.pk}/cancel/", tokens["operator"], {})
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert AuditEntry.objects.filter(action="bulk.cancel").count() == 1


@pytest.mark.django_db
def test_a_running_job_stops_before_its_next_handoff(api, world, tokens) -> None:
    job = world["us"]["job"]
    BulkJob.objects.filter(pk=job.pk).update(status="running")
    response = api("POST", f"/api/v1/jobs/{job.pk}/cancel/", tokens["operator"], {})
    assert response.status_code == 200 and response.json()["status"] == "running"  # asked, not yet stopped
    assert bulk_job_run(job.pk) == "cancelled"
    assert api("GET", f"/api/v1/jobs/{job.pk}/", tokens["operator"]).json()["done"] == 0
