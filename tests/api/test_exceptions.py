"""Working exceptions through the API: resubmit with an edited payload, resolve, cancel,
replay, and bulk jobs that a client polls."""

from __future__ import annotations

import pytest

from api.jobs import bulk_job_run
from api.models import BulkJob
from pscsync.models import AuditEntry, Handoff


@pytest.mark.django_db
def test_resubmit_with_an_edited_payload_runs_again_from_the_failed_step(
    api, world, tokens, django_capture_on_commit_callbacks, monkeypatch
) -> None:  # noqa: ANN001
    published: list[list[int]] = []
    monkeypatch.setattr("remediation.services.handoffs_publish", lambda ids: published.append(list(ids)))
    handoff = world["us"]["handoff"]
    edited = {"name": "OPP-US", "amount": "100.00", "tax_code": "US-CA"}
    with django_capture_on_commit_callbacks(execute=True):
        response = api(
            "POST",
            f"/api/v1/exceptions/{handoff.pk}/resubmit/",
            tokens["operator"],
            {"payload": edited, "comment": "tax code added"},
        )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pending"
    handoff.refresh_from_db()
    assert handoff.payload == edited and handoff.attempt_count == 0
    assert published == [[handoff.pk]]  # enqueued only after the commit
    # Finished steps stay finished: the runner resumes at the failed one.
    assert list(handoff.steps.values_list("status", flat=True)) == ["succeeded", "failed"]
    entry = AuditEntry.objects.get(action="exception.resubmit")
    assert entry.before["payload"]["name"] == "OPP-US" and entry.after["payload"] == edited
    assert entry.actor_label == "otto.operator" and entry.comment == "tax code added"
    assert entry.legal_entity_id == handoff.legal_entity_id


@pytest.mark.django_db
@pytest.mark.parametrize("payload", [[], {}, "text", 5])
def test_an_invalid_edited_payload_is_refused_and_changes_nothing(api, world, tokens, payload) -> None:  # noqa: ANN001
    handoff = world["us"]["handoff"]
    response = api("POST", f"/api/v1/exceptions/{handoff.pk}/resubmit/", tokens["operator"], {"payload": payload})
    assert response.status_code in (400, 422)
    assert set(response.json()) == {"status", "code", "detail", "errors"} and "payload" in response.json()["errors"]
    handoff.refresh_from_db()
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION and handoff.payload == {
        "name": "OPP-US",
        "amount": "100.00",
    }
    assert not AuditEntry.objects.filter(action="exception.resubmit").exists()


@pytest.mark.django_db
def test_acting_on_a_handoff_in_the_wrong_state_is_a_conflict(api, world, tokens) -> None:  # noqa: ANN001
    handoff = world["us"]["handoff"]
    assert (
        api(
            "POST", f"/api/v1/exceptions/{handoff.pk}/resolve/", tokens["operator"], {"comment": "done by hand"}
        ).status_code
        == 200
    )
    again = api("POST", f"/api/v1/exceptions/{handoff.pk}/resubmit/", tokens["operator"], {})
    assert again.status_code == 409 and "needs attention" in again.json()["detail"]


@pytest.mark.django_db
def test_resolve_needs_a_comment_that_says_something(api, world, tokens) -> None:  # noqa: ANN001
    url = f"/api/v1/exceptions/{world['us']['handoff'].pk}/resolve/"
    assert api("POST", url, tokens["operator"], {}).status_code == 400
    assert api("POST", url, tokens["operator"], {"comment": "   "}).status_code == 422


@pytest.mark.django_db
def test_unknown_or_protected_fields_are_refused_not_ignored(api, world, tokens) -> None:  # noqa: ANN001
    url = f"/api/v1/exceptions/{world['us']['handoff'].pk}/resubmit/"
    response = api("POST", url, tokens["operator"], {"status": "succeeded", "legal_entity": "uk"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"status", "legal_entity"}


@pytest.mark.django_db
def test_replay_of_a_finished_handoff_starts_a_new_one(api, world, tokens) -> None:  # noqa: ANN001
    handoff = world["us"]["handoff"]
    Handoff.objects.filter(pk=handoff.pk).update(status=Handoff.Status.SUCCEEDED)
    response = api("POST", f"/api/v1/handoffs/{handoff.pk}/replay/", tokens["operator"], {"comment": "mapping fixed"})
    assert response.status_code == 201
    replayed = Handoff.objects.get(pk=response.json()["id"])
    assert replayed.pk != handoff.pk and replayed.trigger_event_id == handoff.trigger_event_id
    assert replayed.status == Handoff.Status.PENDING
    # Only the newest handoff of a key may be replayed: an older change never overwrites a newer one.
    Handoff.objects.filter(pk=replayed.pk).update(status=Handoff.Status.SUCCEEDED)
    older = api("POST", f"/api/v1/handoffs/{handoff.pk}/replay/", tokens["operator"], {})
    assert older.status_code == 409 and str(replayed.pk) in older.json()["detail"]


@pytest.mark.django_db
def test_a_bulk_job_is_polled_to_its_per_handoff_results(api, world, tokens, entities) -> None:  # noqa: ANN001
    from tests.api.conftest import make_exception

    second = make_exception(
        world["us"]["connection"], entities["us"], "OPP-US-2", "the customer 'Beta' has no tax code"
    )
    Handoff.objects.filter(pk=second.pk).update(status=Handoff.Status.RESOLVED)
    created = api(
        "POST",
        "/api/v1/jobs/",
        tokens["operator"],
        {"action": "resubmit", "handoffs": [world["us"]["handoff"].pk, second.pk]},
    )
    assert created.status_code == 202 and created.json()["status"] == "queued"
    job_url = created["Location"]
    assert job_url.endswith(f"/api/v1/jobs/{created.json()['id']}/")
    assert bulk_job_run(job_id=created.json()["id"]) == "finished"
    polled = api("GET", job_url, tokens["operator"]).json()
    assert polled["status"] == "finished" and (polled["succeeded"], polled["failed"]) == (1, 1)
    results = {r["handoff"]: r for r in polled["results"]}
    assert results[world["us"]["handoff"].pk]["ok"] is True
    assert results[second.pk]["ok"] is False and "resolved" in results[second.pk]["detail"]
    # A second delivery of the same job message does nothing.
    assert bulk_job_run(job_id=polled["id"]) == "skipped"


@pytest.mark.django_db
def test_a_bulk_job_by_exception_group(api, world, tokens) -> None:  # noqa: ANN001
    groups = api("GET", "/api/v1/exception-groups/", tokens["operator"]).json()["results"]
    assert len(groups) == 1
    created = api(
        "POST",
        "/api/v1/jobs/",
        tokens["operator"],
        {"action": "resolve", "group": groups[0]["id"], "comment": "known issue"},
    )
    assert created.status_code == 202 and created.json()["handoffs"] == groups[0]["handoffs"]


@pytest.mark.django_db
def test_a_bulk_job_never_touches_another_entitys_handoffs(api, world, tokens) -> None:  # noqa: ANN001
    uk = world["uk"]["handoff"].pk
    refused = api(
        "POST", "/api/v1/jobs/", tokens["operator"], {"action": "resubmit", "handoffs": [world["us"]["handoff"].pk, uk]}
    )
    assert refused.status_code == 422 and str(uk) in refused.json()["errors"]["handoffs"][0]
    # Nothing was created: the operator still has only the job the fixture made.
    assert BulkJob.objects.filter(created_by__username="otto.operator").count() == 1


@pytest.mark.django_db
def test_a_job_rechecks_scope_when_it_runs(world, people) -> None:  # noqa: ANN001
    from api.jobs import bulk_job_create
    from pscsync.models import AccessProfile

    job = bulk_job_create(
        actor=people["operator"], action="resolve", handoff_ids=[world["us"]["handoff"].pk], comment="x"
    )
    AccessProfile.objects.get(user=people["operator"]).legal_entities.clear()
    bulk_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.results == [{"handoff": world["us"]["handoff"].pk, "ok": False, "detail": "not found"}]


@pytest.mark.django_db
def test_mappings_are_published_through_the_service_and_audited(api, world, tokens) -> None:  # noqa: ANN001
    mapping = world["us"]["mapping"]
    body = {"rules": [{"target": "companyName", "source": "name", "required": True}], "comment": "rename"}
    response = api("POST", f"/api/v1/mappings/{mapping.pk}/publish/", tokens["admin"], body)
    assert response.status_code == 201
    assert [v["status"] for v in response.json()["versions"]] == ["published", "retired"]
    bad = api(
        "POST",
        f"/api/v1/mappings/{mapping.pk}/publish/",
        tokens["admin"],
        {"rules": [{"target": "x", "source": "{{"}], "comment": "c"},
    )
    assert bad.status_code == 422 and bad.json()["errors"]
    assert AuditEntry.objects.filter(action="mapping.publish").count() == 3  # two from the fixture, one here


@pytest.mark.django_db
def test_connection_credentials_are_write_only(api, world, tokens) -> None:  # noqa: ANN001
    connection = world["us"]["connection"]
    response = api(
        "PATCH", f"/api/v1/connections/{connection.pk}/", tokens["admin"], {"credentials": {"token": "rotated-secret"}}
    )
    assert response.status_code == 200 and "rotated-secret" not in response.content.decode()
    connection.refresh_from_db()
    assert connection.credentials() == {"token": "rotated-secret"}
    entry = AuditEntry.objects.filter(action="connection.save").latest("created_at")
    assert entry.after["credentials_changed"] is True and "rotated-secret" not in str(entry.after)


@pytest.mark.django_db
def test_a_connection_url_must_pass_the_egress_check(api, world, tokens) -> None:  # noqa: ANN001
    connection = world["us"]["connection"]
    response = api(
        "PATCH",
        f"/api/v1/connections/{connection.pk}/",
        tokens["admin"],
        {"base_url": "http://169.254.169.254/latest/", "is_sandbox": False},
    )
    assert response.status_code == 422 and "base_url" in response.json()["errors"]


@pytest.mark.django_db
def test_handoff_detail_has_steps_and_attempts_with_secrets_masked(api, world, tokens) -> None:  # noqa: ANN001
    body = api("GET", f"/api/v1/handoffs/{world['us']['handoff'].pk}/", tokens["viewer"]).json()
    assert [s["name"] for s in body["steps"]] == ["read", "write"]
    assert body["steps"][0]["attempts"][0]["request"]["authorization"] == "••••••"
    assert body["steps"][1]["attempts"][0]["outcome"] == "validation"


@pytest.mark.django_db
def test_filters_and_cursor_pagination(api, world, tokens, entities) -> None:  # noqa: ANN001
    from tests.api.conftest import make_exception

    for n in range(3):
        make_exception(world["us"]["connection"], entities["us"], f"OPP-P{n}", "budget is missing")
    first = api("GET", "/api/v1/handoffs/?page_size=2&status=needs_attention", tokens["viewer"]).json()
    assert len(first["results"]) == 2 and first["next"] and "cursor=" in first["next"]
    second = api("GET", first["next"], tokens["viewer"]).json()
    ids = [r["id"] for r in first["results"] + second["results"]]
    assert len(ids) == len(set(ids)) == 4
    assert api("GET", "/api/v1/handoffs/?status=nonsense", tokens["viewer"]).status_code == 400
    assert api("GET", "/api/v1/handoffs/?created_after=yesterday", tokens["viewer"]).status_code == 400
    assert api("GET", "/api/v1/handoffs/?page_size=0", tokens["viewer"]).status_code == 400
    assert (
        api("GET", "/api/v1/handoffs/?business_key=OPP-P1", tokens["viewer"]).json()["results"][0]["business_key"]
        == "OPP-P1"
    )


@pytest.mark.django_db
def test_a_job_whose_message_was_lost_is_published_again(world, people, monkeypatch) -> None:  # noqa: ANN001
    import datetime as dt

    from api import tasks
    from api.jobs import bulk_jobs_sweep
    from pscsync import clock

    sent: list[int] = []
    monkeypatch.setattr(tasks.bulk_job_run_task, "delay", lambda pk: sent.append(pk))
    job = world["us"]["job"]
    assert bulk_jobs_sweep() == []  # queued just now: its message is still on its way
    BulkJob.objects.filter(pk=job.pk).update(created_at=clock.now() - dt.timedelta(minutes=2))
    assert bulk_jobs_sweep() == [job.pk] and sent == [job.pk]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "value", ["0319-04-27T00:39:23-17:38", "5516-11-18T14:12:12.330655+22:48", "0001-01-01T00:00:00+23:00"]
)
def test_any_rfc3339_date_time_filters_also_on_postgresql(api, world, tokens, value) -> None:  # noqa: ANN001
    # PostgreSQL refuses offsets beyond ±15:59 (schemathesis found it); filters compare in UTC.
    from urllib.parse import quote

    assert api("GET", f"/api/v1/handoffs/?created_after={quote(value)}", tokens["viewer"]).status_code == 200
