"""Contract tests: the Kantata connector against the Kantata sandbox, over real HTTP.

No maintained Kantata/Mavenlink client library exists on PyPI, so there is no "real client works
unchanged" test here; the raw-HTTP tests below pin the protocol instead.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import httpx
import pytest

from connectors import base, http
from connectors import kantata as kantata_module
from connectors.errors import MappingError, RejectedError, TransientError, UnknownOutcomeError, WebhookRejected
from connectors.kantata import KantataConnector

pytestmark = pytest.mark.django_db


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory("kantata")


@pytest.fixture
def connection(sandbox, entities):
    from pscsync.services import connection_save

    return connection_save(
        slug="kantata-us",
        name="Kantata US",
        kind="psa",
        vendor="kantata",
        base_url=sandbox.url,
        entities=[entities["us"]],
        credentials={"client_id": "sandbox-client", "client_secret": "sandbox-secret"},
        intake="poll",
        is_sandbox=True,
    )


@pytest.fixture
def kantata(connection, monkeypatch):
    monkeypatch.setattr(base, "_tokens", {})  # each test authenticates afresh
    return KantataConnector(connection)


def api(sandbox, method: str, path: str, *, token: str | None = None, **kwargs):
    """A raw call to the sandbox, as another Kantata user or integration would make it."""
    if token is None:
        answer = httpx.post(
            f"{sandbox.url}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "sandbox-secret"},
        )
        token = answer.json()["access_token"]
    return httpx.request(method, f"{sandbox.url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}, **kwargs)


def token_requests(sandbox) -> int:
    return sum(1 for e in sandbox.journal()["entries"] if e["path"] == "/oauth/token" and e["status"] == 200)


def project(title: str = "Northwind - ERP rollout", **more: object) -> dict[str, object]:
    return {"title": title, "budgeted": True, "price": 12_000_000, "currency": "USD", **more}


# Reading ------------------------------------------------------------------------------------------
def test_reading_projects_follows_every_page_to_the_last(sandbox, kantata, monkeypatch) -> None:
    for n in range(45):
        kantata.upsert(entity="project", key=f"OPP-{n:03}", fields=project(f"Project {n}"))
    pages: list[int] = []
    real_send = kantata.send

    def counting_send(method: str, path: str, **kwargs: object) -> http.HttpResult:
        if path.endswith("/workspaces") and method == "GET" and "page" in kwargs.get("params", {}):  # type: ignore[operator]
            pages.append(kwargs["params"]["page"])  # type: ignore[index]
        return real_send(method, path, **kwargs)

    monkeypatch.setattr(kantata_module, "PAGE_SIZE", 20)
    monkeypatch.setattr(kantata, "send", counting_send)
    titles = [p["title"] for p in kantata.read("project")]
    assert sorted(titles) == sorted(f"Project {n}" for n in range(45))
    assert pages == [1, 2, 3]


def test_the_sandbox_answers_in_kantatas_envelope_and_caps_pages_at_200(sandbox, kantata) -> None:
    kantata.upsert(entity="project", key="OPP-1", fields=project())
    body = api(sandbox, "GET", "/workspaces.json", params={"per_page": 500}).json()
    assert body["count"] == 1
    assert body["meta"] == {"count": 1, "page_count": 1, "page_number": 1, "page_size": 200}
    (pointer,) = body["results"]
    assert pointer["key"] == "workspaces"
    assert body["workspaces"][pointer["id"]]["title"] == "Northwind - ERP rollout"


def test_a_time_entry_is_read_back_with_kantatas_fields(sandbox, kantata) -> None:
    workspace = kantata.upsert(entity="project", key="OPP-1", fields=project())
    kantata.upsert(
        entity="time_entry",
        key="TE-1",
        fields={
            "workspace_id": int(workspace.external_id),
            "date_performed": "2024-06-10",
            "time_in_minutes": 480,
            "rate_in_cents": 15000,
            "notes": "Workshop",
        },
    )
    (entry,) = kantata.read("time_entries", where={"workspace_id": workspace.external_id})
    assert entry["workspace_id"] == workspace.external_id  # ids are strings in answers
    assert (entry["time_in_minutes"], entry["billable"], entry["approved"], entry["currency"]) == (
        480,
        True,
        False,
        "USD",
    )


def test_invoiced_time_cannot_be_invoiced_twice(sandbox, kantata) -> None:
    workspace = kantata.upsert(entity="project", key="OPP-1", fields=project())
    entry = kantata.upsert(
        entity="time_entry",
        key="TE-1",
        fields={"workspace_id": workspace.external_id, "date_performed": "2024-06-10", "time_in_minutes": 90},
    )
    kantata.upsert(entity="time_entry", key="TE-1", fields={"rate_in_cents": 20000, "approved": True})
    invoice = kantata.upsert(
        entity="invoice",
        key="INV-1",
        fields={"workspace_id": workspace.external_id, "time_entry_ids": [entry.external_id]},
    )
    billed = invoice.response["invoices"][invoice.external_id]
    assert (billed["balance_in_cents"], billed["status"], billed["currency"]) == (30000, "new", "USD")
    (time_entry,) = kantata.read("time_entries")
    assert time_entry["is_invoiced"] is True
    with pytest.raises(RejectedError) as caught:
        kantata.upsert(
            entity="invoice",
            key="INV-2",
            fields={"workspace_id": workspace.external_id, "time_entry_ids": [entry.external_id]},
        )
    assert f"TimeEntry {entry.external_id} has already been invoiced" in caught.value.message


# Authentication -----------------------------------------------------------------------------------
def test_an_expired_token_is_renewed_and_the_call_still_works(sandbox, kantata) -> None:
    sandbox.fault(token_lifetime_seconds=1)
    kantata.ping()
    time.sleep(1.5)
    kantata.ping()
    assert token_requests(sandbox) == 2


def test_a_revoked_token_is_refreshed_once_on_401(sandbox, kantata) -> None:
    kantata.ping()
    sandbox.reset()  # the sandbox forgets every token, as when a user revokes the app
    kantata.ping()
    assert token_requests(sandbox) == 1  # counted after the reset: just the refresh


def test_wrong_client_secret_fails_test_connection_with_a_clear_message(connection, sandbox) -> None:
    connection.set_credentials({"client_id": "sandbox-client", "client_secret": "wrong"})
    connection.save()
    result = KantataConnector(connection).check()
    assert not result.ok
    assert "client id and secret" in result.message


def test_test_connection_succeeds_with_the_demo_credentials(kantata) -> None:
    assert kantata.check().ok


# Failures -----------------------------------------------------------------------------------------
def test_rate_limit_surfaces_as_transient_with_retry_after(sandbox, kantata) -> None:
    kantata.ping()  # authenticate first: the token call counts towards the limit too
    sandbox.fault(rate_limit_per_minute=1)
    kantata.ping()
    with pytest.raises(TransientError) as caught:
        kantata.ping()
    assert caught.value.http_status == 429
    assert caught.value.retry_after and caught.value.retry_after > 0
    assert "limiting" in caught.value.message


def test_a_server_error_is_transient_on_read_and_of_unknown_outcome_on_write(sandbox, kantata) -> None:
    first = kantata.upsert(entity="project", key="OPP-1", fields=project())
    sandbox.fault(error_status=503, match="/api/v1/users/me", count=1)
    with pytest.raises(TransientError) as on_read:
        kantata.ping()
    assert "Kantata failed (503)" in on_read.value.message
    sandbox.fault(error_status=502, match=f"/api/v1/workspaces/{first.external_id}", count=1)
    with pytest.raises(UnknownOutcomeError):
        kantata.upsert(entity="project", key="OPP-1", fields=project("Renamed"))


def test_a_call_kantata_never_answers_times_out_as_the_right_class(sandbox, kantata, monkeypatch) -> None:
    first = kantata.upsert(entity="project", key="OPP-1", fields=project())
    monkeypatch.setattr(http, "READ_TIMEOUT", 0.5)
    http.reset_client()
    try:
        sandbox.fault(timeout=True, timeout_seconds=1.5, match="/api/v1/users/me", count=1)
        with pytest.raises(TransientError):
            kantata.ping()
        sandbox.fault(timeout=True, timeout_seconds=1.5, match=f"/api/v1/workspaces/{first.external_id}", count=1)
        with pytest.raises(UnknownOutcomeError):
            kantata.upsert(entity="project", key="OPP-1", fields=project("Renamed"))
    finally:
        monkeypatch.undo()
        http.reset_client()


def test_a_project_without_a_title_is_rejected_in_words_a_person_understands(sandbox, kantata) -> None:
    with pytest.raises(RejectedError) as caught:
        kantata.upsert(entity="project", key="OPP-9", fields={"price": 100})
    assert caught.value.http_status == 422
    assert caught.value.message == (
        "Kantata rejected the change: Please give your project a title (field: title) [project OPP-9]"
    )
    assert sandbox.journal()["creates_by_key"] == {}


def test_an_injected_rejection_reads_as_a_validation_failure(sandbox, kantata) -> None:
    kantata.ping()
    sandbox.fault(reject={"field": "title", "equals": None, "message": "Projects are locked for month end"})
    with pytest.raises(RejectedError) as caught:
        kantata.upsert(entity="project", key="OPP-1", fields=project())
    assert "Projects are locked for month end (field: title)" in caught.value.message


def test_an_unknown_object_is_a_mapping_problem_not_a_call(kantata) -> None:
    with pytest.raises(MappingError, match="Kantata has no object called 'widget'"):
        kantata.upsert(entity="widget", key="W-1", fields={})


# Idempotency --------------------------------------------------------------------------------------
def test_the_same_upsert_twice_makes_one_project_and_one_external_reference(sandbox, kantata) -> None:
    first = kantata.upsert(entity="project", key="OPP-1", fields=project())
    second = kantata.upsert(entity="project", key="OPP-1", fields=project("Northwind - ERP rollout, phase 2"))
    assert (first.created, second.created) == (True, False)
    assert first.external_id == second.external_id
    assert second.request["method"] == "PUT"
    assert sandbox.journal()["creates_by_key"] == {"OPP-1": 1}
    refs = api(sandbox, "GET", "/external_references", params={"service_model_ref": "OPP-1"})
    assert refs.status_code == 200
    assert refs.json()["count"] == 1
    body = api(
        sandbox,
        "GET",
        "/workspaces",
        params={"external_reference_service_model_ref": "OPP-1", "include": "external_references"},
    ).json()
    assert body["count"] == 1
    assert len(body["external_references"]) == 1
    assert body["workspaces"][first.external_id]["title"] == "Northwind - ERP rollout, phase 2"


def test_concurrent_upserts_of_one_key_make_one_project(sandbox, kantata) -> None:
    kantata.ping()
    results = []

    def write() -> None:
        results.append(kantata.upsert(entity="project", key="OPP-RACE", fields=project()))

    threads = [threading.Thread(target=write) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.external_id for r in results}) == 1
    assert [r.created for r in results].count(True) == 1
    assert sandbox.journal()["creates_by_key"] == {"OPP-RACE": 1}


def test_a_create_whose_answer_was_lost_is_found_and_updated_not_created_again(sandbox, kantata) -> None:
    # Our earlier POST reached Kantata (with its external reference) but the answer never came back.
    landed = api(
        sandbox,
        "POST",
        "/workspaces",
        json={
            "workspace": {
                **project(),
                "external_reference": {
                    "service_name": "pscsync",
                    "service_model": "workspace",
                    "service_model_ref": "OPP-LOST",
                    "status": "successful",
                },
            }
        },
    ).json()
    landed_id = landed["results"][0]["id"]
    retried = kantata.upsert(entity="project", key="OPP-LOST", fields=project("Northwind - retried"))
    assert retried.created is False
    assert retried.external_id == landed_id
    assert sandbox.journal()["creates_by_key"] == {"OPP-LOST": 1}
    assert kantata.lookup(entity="project", key="OPP-LOST").external_id == landed_id


def test_lookup_of_a_key_never_written_finds_nothing(kantata) -> None:
    assert kantata.lookup(entity="project", key="OPP-NONE") is None


def test_projects_survive_a_sandbox_restart(sandbox, kantata) -> None:
    written = kantata.upsert(entity="project", key="OPP-KEEP", fields=project())
    sandbox.restart()
    http.reset_client()
    assert kantata.lookup(entity="project", key="OPP-KEEP").external_id == written.external_id


# Change intake ------------------------------------------------------------------------------------
def test_polling_reads_created_and_updated_events_with_their_changes(sandbox, kantata) -> None:
    written = kantata.upsert(entity="project", key="OPP-1", fields=project())
    changes, cursor = kantata.poll(cursor="")
    assert [c.event_type for c in changes] == ["workspace:created"]
    assert changes[0].business_key == f"Workspace:{written.external_id}"
    assert changes[0].payload["subject"]["title"] == "Northwind - ERP rollout"
    assert cursor

    kantata.upsert(entity="project", key="OPP-1", fields=project("Renamed"))
    changes, next_cursor = kantata.poll(cursor=cursor)
    updated = [c for c in changes if c.event_type == "workspace:updated"]
    assert len(updated) == 1
    assert updated[0].payload["event"]["payload_changes"] == {"title": ["Northwind - ERP rollout", "Renamed"]}
    assert dt.datetime.fromisoformat(next_cursor) >= dt.datetime.fromisoformat(cursor)
    # What the overlap re-reads keeps its event id, so the engine stores it once.
    assert {c.source_event_id for c in changes} >= {updated[0].source_event_id}


def test_duplicated_and_out_of_order_events_come_out_once_in_order(sandbox, kantata) -> None:
    written = kantata.upsert(entity="project", key="OPP-1", fields=project())
    kantata.upsert(entity="story", key="TASK-1", fields={"workspace_id": written.external_id, "title": "Discovery"})
    sandbox.fault(duplicate_events=True, reverse_events=True)
    changes, _ = kantata.poll(cursor="")
    assert [c.event_type for c in changes] == ["workspace:created", "story:created"]


def test_pushed_deliveries_are_refused_because_kantata_only_polls(kantata) -> None:
    with pytest.raises(WebhookRejected) as caught:
        kantata.verify_webhook(headers={}, body=b"{}", now=dt.datetime.now(tz=dt.UTC))
    assert caught.value.status == 404
    assert caught.value.message == "Kantata does not push changes; this connection polls"


# Bad input to the sandbox -------------------------------------------------------------------------
def test_malformed_json_gets_kantatas_error_shape(sandbox) -> None:
    answer = api(sandbox, "POST", "/workspaces", content=b'{"workspace": ')
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["type"] == "system"
    assert "malformed JSON" in answer.json()["errors"][0]["message"]


def test_an_unknown_object_is_404_in_kantatas_error_shape(sandbox) -> None:
    answer = api(sandbox, "GET", "/widgets")
    assert answer.status_code == 404
    assert set(answer.json()["errors"][0]) == {"type", "message"}


def test_a_wrong_token_is_401_with_kantatas_oauth_error(sandbox) -> None:
    answer = api(sandbox, "GET", "/workspaces", token="not-a-token")
    assert answer.status_code == 401
    assert answer.json() == {"errors": [{"type": "oauth", "message": "Invalid OAuth 2 Request"}]}


def test_a_time_entry_for_a_missing_project_is_a_422_naming_the_field(sandbox) -> None:
    answer = api(
        sandbox,
        "POST",
        "/time_entries",
        json={"time_entry": {"workspace_id": 999999, "date_performed": "2024-06-10", "time_in_minutes": 60}},
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0] == {
        "type": "validation",
        "message": "Workspace 999999 could not be found",
        "field": "workspace_id",
    }
