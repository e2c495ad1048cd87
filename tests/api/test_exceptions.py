"""Working exceptions through the API with the workbench's services: resubmit (stored, edited,
re-mapped), resolve, cancel, reopen, assign, comment, and bulk jobs that a client polls."""

from __future__ import annotations

import pytest

from pscsync.models import AuditEntry, Handoff, Step
from remediation.models import BulkJob
from remediation.services import bulk_job_run
from tests.helpers import status_force


@pytest.mark.django_db
def test_resubmit_with_an_edited_document_resumes_at_the_failed_step(
    api, world, tokens, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    published: list[list[int]] = []
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: published.append(list(ids)))
    handoff = world["us"]["handoff"]
    edited = {"name": "OPP-US", "tax_code": "US-CA"}
    with django_capture_on_commit_callbacks(execute=True):
        response = api(
            "POST",
            f"/api/v1/exceptions/{handoff.pk}/resubmit/",
            tokens["operator"],
            {"mode": "edit", "document": edited, "reason": "tax code added"},
        )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pending"
    handoff.refresh_from_db()
    assert published == [[handoff.pk]]  # enqueued only after the commit
    read = Step.objects.get(handoff=handoff, name="upsert_customer")
    assert read.output == edited and read.status == Step.Status.SUCCEEDED  # finished steps stay finished
    entry = AuditEntry.objects.get(action="handoff.resubmit")
    assert entry.after["document_after"] == edited and entry.comment == "tax code added"
    assert entry.actor_label == "otto.operator" and entry.legal_entity_id == handoff.legal_entity_id


@pytest.mark.django_db
def test_edit_mode_needs_a_document(api, world, tokens) -> None:
    url = f"/api/v1/exceptions/{world['us']['handoff'].pk}/resubmit/"
    response = api("POST", url, tokens["operator"], {"mode": "edit", "reason": "x"})
    assert response.status_code == 422 and "document" in response.json()["errors"]
    assert Handoff.objects.get(pk=world["us"]["handoff"].pk).status == Handoff.Status.NEEDS_ATTENTION


@pytest.mark.django_db
def test_acting_on_a_handoff_in_the_wrong_state_is_a_conflict(api, world, tokens) -> None:
    url = f"/api/v1/exceptions/{world['us']['handoff'].pk}"
    assert api("POST", f"{url}/resolve/", tokens["operator"], {"reason": "done by hand"}).status_code == 200
    again = api("POST", f"{url}/resubmit/", tokens["operator"], {"reason": "again"})
    assert again.status_code == 409 and "Nothing was done" in again.json()["detail"]
    reopened = api("POST", f"{url}/reopen/", tokens["operator"], {"reason": "resolved by mistake"})
    assert reopened.status_code == 200 and reopened.json()["status"] == "needs_attention"


@pytest.mark.django_db
def test_a_reason_is_required(api, world, tokens) -> None:
    url = f"/api/v1/exceptions/{world['us']['handoff'].pk}/resolve/"
    assert api("POST", url, tokens["operator"], {}).status_code == 400
    assert api("POST", url, tokens["operator"], {"reason": "   "}).status_code == 409


@pytest.mark.django_db
def test_unknown_or_protected_fields_are_refused_not_ignored(api, world, tokens) -> None:
    url = f"/api/v1/exceptions/{world['us']['handoff'].pk}/resubmit/"
    response = api("POST", url, tokens["operator"], {"reason": "x", "status": "succeeded", "legal_entity": "uk"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"status", "legal_entity"}


@pytest.mark.django_db
def test_assign_and_comment(api, world, tokens) -> None:
    url = f"/api/v1/exceptions/{world['us']['handoff'].pk}"
    assigned = api("POST", f"{url}/assign/", tokens["operator"], {"assignee": "otto.operator"})
    assert assigned.status_code == 200 and assigned.json()["assignee"] == "otto.operator"
    assert api("POST", f"{url}/assign/", tokens["operator"], {"assignee": "vera.viewer"}).status_code == 422
    comment = api("POST", f"{url}/comment/", tokens["operator"], {"body": "waiting for the tax team"})
    assert comment.status_code == 201 and comment.json()["author"] == "otto.operator"
    detail = api("GET", f"{url}/", tokens["operator"]).json()
    assert [c["body"] for c in detail["comments"]] == ["waiting for the tax team"]


@pytest.mark.django_db
def test_a_bulk_job_is_polled_to_its_per_handoff_results(api, world, tokens, entities) -> None:
    from tests.api.conftest import make_exception

    second = make_exception(
        world["us"]["connection"], entities["us"], "OPP-US-2", "the customer 'Beta' has no tax code"
    )
    status_force(second.pk, Handoff.Status.RESOLVED)
    body = {"kind": "retry", "handoffs": [world["us"]["handoff"].pk, second.pk], "reason": "vendor back up"}
    created = api("POST", "/api/v1/jobs/", tokens["operator"], body)
    assert created.status_code == 202 and created.json()["status"] == "queued"
    job_url = created["Location"]
    assert job_url.endswith(f"/api/v1/jobs/{created.json()['id']}/")
    assert bulk_job_run(created.json()["id"]) == "done"
    polled = api("GET", job_url, tokens["operator"]).json()
    assert polled["status"] == "done" and (polled["succeeded"], polled["skipped"]) == (1, 1)
    items = {i["handoff"]: i for i in polled["items"]}
    assert items[world["us"]["handoff"].pk]["outcome"] == "done"
    assert items[second.pk]["outcome"] == "skipped" and "Nothing was done" in items[second.pk]["detail"]


@pytest.mark.django_db
def test_a_bulk_job_by_exception_group(api, world, tokens) -> None:
    groups = api("GET", "/api/v1/exception-groups/", tokens["operator"]).json()["results"]
    assert len(groups) == 1
    body = {"kind": "resolve", "group": groups[0]["id"], "reason": "known issue"}
    created = api("POST", "/api/v1/jobs/", tokens["operator"], body)
    assert created.status_code == 202 and created.json()["handoffs"] == groups[0]["handoffs"]


@pytest.mark.django_db
def test_a_bulk_job_never_touches_another_entitys_handoffs(api, world, tokens) -> None:
    uk = world["uk"]["handoff"].pk
    body = {"kind": "retry", "handoffs": [world["us"]["handoff"].pk, uk], "reason": "x"}
    refused = api("POST", "/api/v1/jobs/", tokens["operator"], body)
    assert refused.status_code == 422 and str(uk) in refused.json()["errors"]["handoffs"][0]
    # Nothing was created: the operator still has only the job the fixture made.
    assert BulkJob.objects.filter(created_by__username="otto.operator").count() == 1


@pytest.mark.django_db
def test_mappings_are_published_through_the_service_and_audited(api, world, tokens) -> None:
    mapping = world["us"]["mapping"]
    body = {"rules": [{"target": "companyName", "source": "name", "required": True}], "comment": "rename"}
    response = api("POST", f"/api/v1/mappings/{mapping.pk}/publish/", tokens["admin"], body)
    assert response.status_code == 201
    assert [v["status"] for v in response.json()["versions"]] == ["published", "retired"]
    bad_body = {"rules": [{"target": "x", "source": "{{"}], "comment": "c"}
    bad = api("POST", f"/api/v1/mappings/{mapping.pk}/publish/", tokens["admin"], bad_body)
    assert bad.status_code == 422 and bad.json()["errors"]
    assert AuditEntry.objects.filter(action="mapping.publish").count() == 3  # two from the fixture, one here


@pytest.mark.django_db
def test_connection_credentials_are_write_only(api, world, tokens) -> None:
    connection = world["us"]["connection"]
    body = {"credentials": {"token": "rotated-secret"}}
    response = api("PATCH", f"/api/v1/connections/{connection.pk}/", tokens["admin"], body)
    assert response.status_code == 200 and "rotated-secret" not in response.content.decode()
    connection.refresh_from_db()
    assert connection.credentials() == {"token": "rotated-secret"}
    entry = AuditEntry.objects.filter(action="connection.save").latest("created_at")
    assert entry.after["credentials_changed"] is True and "rotated-secret" not in str(entry.after)


@pytest.mark.django_db
def test_a_connection_url_must_pass_the_egress_check(api, world, tokens) -> None:
    connection = world["us"]["connection"]
    body = {"base_url": "http://169.254.169.254/latest/", "is_sandbox": False}
    response = api("PATCH", f"/api/v1/connections/{connection.pk}/", tokens["admin"], body)
    assert response.status_code == 422 and "base_url" in response.json()["errors"]


@pytest.mark.django_db
def test_handoff_detail_has_steps_and_attempts_with_secrets_masked(api, world, tokens) -> None:
    body = api("GET", f"/api/v1/handoffs/{world['us']['handoff'].pk}/", tokens["viewer"]).json()
    assert [s["name"] for s in body["steps"]] == ["upsert_customer", "upsert_project"]
    assert body["steps"][0]["attempts"][0]["request"]["authorization"] == "••••••"
    assert body["steps"][1]["attempts"][0]["outcome"] == "validation"


@pytest.mark.django_db
def test_filters_and_cursor_pagination(api, world, tokens, entities) -> None:
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
    keyed = api("GET", "/api/v1/handoffs/?business_key=OPP-P1", tokens["viewer"]).json()
    assert keyed["results"][0]["business_key"] == "OPP-P1"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "value", ["0319-04-27T00:39:23-17:38", "5516-11-18T14:12:12.330655+22:48", "0001-01-01T00:00:00+23:00"]
)
def test_any_rfc3339_date_time_filters_also_on_postgresql(api, world, tokens, value) -> None:
    # PostgreSQL refuses offsets beyond ±15:59 (schemathesis found it); filters compare in UTC.
    from urllib.parse import quote

    assert api("GET", f"/api/v1/handoffs/?created_after={quote(value)}", tokens["viewer"]).status_code == 200


@pytest.mark.django_db
def test_a_handoff_id_beyond_the_databases_range_is_a_400(api, world, tokens) -> None:
    body = {"kind": "resolve", "handoffs": [2**70], "reason": "r"}
    response = api("POST", "/api/v1/jobs/", tokens["operator"], body)
    assert response.status_code == 400 and "handoffs" in response.json()["errors"]
