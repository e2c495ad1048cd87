"""Contract tests: the Salesforce connector against the Salesforce sandbox, over real HTTP."""

from __future__ import annotations

import datetime as dt
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from connectors import base, http
from connectors.errors import MappingError, RejectedError, TransientError, UnknownOutcomeError, WebhookRejected
from connectors.registry import connector_for
from pscsync.services import connection_save
from tests.helpers import SECRET

pytestmark = pytest.mark.django_db

API = "/services/data/v62.0"


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory("salesforce")


@pytest.fixture
def connection(sandbox, entities, monkeypatch):
    monkeypatch.setattr(base, "_tokens", {})  # each test authenticates afresh
    return connection_save(
        slug="salesforce",
        name="Salesforce",
        kind="crm",
        vendor="salesforce",
        base_url=sandbox.url,
        entities=[entities["us"]],
        credentials={
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
            "webhook_secrets": [{"secret": SECRET, "expires_at": None}],
        },
        is_sandbox=True,
        api_version="v62.0",
    )


@pytest.fixture
def salesforce(connection):
    return connector_for(connection)


def token(sandbox) -> str:
    answer = httpx.post(
        f"{sandbox.url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "sandbox-secret"},
    )
    return answer.json()["access_token"]


def api(sandbox, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token(sandbox)}", **kwargs.pop("headers", {})}
    return httpx.request(method, f"{sandbox.url}{API}{path}", headers=headers, timeout=10, **kwargs)


def token_requests(sandbox) -> int:
    return sum(1 for e in sandbox.journal()["entries"] if e["path"] == "/services/oauth2/token")


# Auth -------------------------------------------------------------------------------------------
def test_token_endpoint_answers_like_salesforce(sandbox) -> None:
    answer = httpx.post(
        f"{sandbox.url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "sandbox-secret"},
    ).json()
    assert answer["token_type"] == "Bearer"
    assert answer["instance_url"] == sandbox.url
    assert {"access_token", "signature", "issued_at", "id", "scope"} <= set(answer)


def test_wrong_client_secret_fails_the_connection_test_with_a_clear_message(sandbox, connection) -> None:
    refused = httpx.post(
        f"{sandbox.url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "wrong"},
    )
    assert refused.status_code == 400
    assert refused.json() == {"error": "invalid_client", "error_description": "invalid client credentials"}
    connection.set_credentials({"client_id": "sandbox-client", "client_secret": "wrong"})
    result = connector_for(connection).check()
    assert not result.ok
    assert "refused the connection's client id and secret" in result.message


def test_connection_test_succeeds_with_the_demo_credentials(salesforce) -> None:
    assert salesforce.check().ok
    assert salesforce.last_api_usage.startswith("api-usage=")


def test_an_expired_session_is_renewed_and_the_call_still_succeeds(sandbox, salesforce) -> None:
    sandbox.fault(token_lifetime_seconds=1)
    salesforce.upsert(entity="Account", key="ACME-1", fields={"Name": "Acme"})
    time.sleep(1.5)
    found = salesforce.lookup(entity="Account", key="ACME-1")
    assert found is not None
    assert token_requests(sandbox) == 2


# Reading ----------------------------------------------------------------------------------------
def test_read_follows_next_records_url_across_pages(sandbox, salesforce) -> None:
    records = [{"attributes": {"type": "Account"}, "Name": f"Client {n:02d}", "Industry": "Legal"} for n in range(8)]
    created = api(sandbox, "POST", "/composite/sobjects", json={"allOrNone": True, "records": records}).json()
    assert all(r["success"] for r in created)
    pages: list[str] = []
    send = salesforce.send

    def counting_send(method: str, path: str, **kwargs: Any) -> http.HttpResult:
        pages.append(path)
        return send(method, path, **kwargs)

    salesforce.send = counting_send
    salesforce.batch_size = 3
    names = [r["Name"] for r in salesforce.read("Account", where={"Industry": "Legal"}, fields=["Name"])]
    assert names == [f"Client {n:02d}" for n in range(8)]
    assert len(pages) == 3
    assert "/query/01g" in pages[1]


def test_read_since_returns_only_records_changed_after_that_moment(sandbox, salesforce) -> None:
    salesforce.upsert(entity="Account", key="OLD-1", fields={"Name": "Old"})
    time.sleep(1.1)
    since = dt.datetime.now(dt.UTC)
    time.sleep(0.1)
    salesforce.upsert(entity="Account", key="NEW-1", fields={"Name": "New"})
    assert [r["Name"] for r in salesforce.read("Account", since=since)] == ["New"]


def test_soql_subset_filters_and_follows_one_level_of_relationships(sandbox, salesforce) -> None:
    salesforce.upsert(entity="Account", key="NW-1", fields={"Name": "Northwind Traders"})
    for key, stage, amount in (("O-1", "Closed Won", 5000), ("O-2", "Prospecting", 700), ("O-3", "Closed Lost", 90)):
        salesforce.upsert(
            entity="Opportunity",
            key=key,
            fields={
                "Name": f"Deal {key}",
                "StageName": stage,
                "CloseDate": dt.date.today().isoformat(),
                "Amount": amount,
                "Account": {"pscsync_Key__c": "NW-1"},
            },
        )
    soql = (
        "SELECT Name, Amount, Account.Name FROM Opportunity WHERE Account.Name LIKE 'north%' "
        "AND (StageName IN ('Closed Won', 'Closed Lost') OR Amount >= 700) AND CloseDate = LAST_N_DAYS:3 "
        "AND StageName != 'Closed Lost' ORDER BY Amount DESC LIMIT 5"
    )
    rows = list(salesforce.query(soql))
    assert [(r["Name"], r["Account"]["Name"]) for r in rows] == [
        ("Deal O-1", "Northwind Traders"),
        ("Deal O-2", "Northwind Traders"),
    ]


# Writing ----------------------------------------------------------------------------------------
def test_the_same_upsert_twice_leaves_one_account(sandbox, salesforce) -> None:
    first = salesforce.upsert(entity="Account", key="ACME-1", fields={"Name": "Acme", "Industry": "Consulting"})
    second = salesforce.upsert(entity="Account", key="ACME-1", fields={"Name": "Acme Ltd"})
    assert first.created is True and second.created is False
    assert first.external_id == second.external_id
    assert first.external_id.startswith("001") and len(first.external_id) == 18
    assert first.request["method"] == "PATCH" and first.request["url"].endswith("/Account/pscsync_Key__c/ACME-1")
    assert sandbox.journal()["creates_by_key"] == {"Account/ACME-1": 1}
    record = salesforce.lookup(entity="Account", key="ACME-1")
    assert record is not None and record.response["Name"] == "Acme Ltd"
    assert salesforce.lookup(entity="Account", key="NOBODY") is None


def test_upsert_refuses_to_guess_when_the_key_matches_several_records(sandbox, salesforce) -> None:
    for name in ("Acme East", "Acme West"):
        assert api(sandbox, "POST", "/sobjects/Account/", json={"Name": name, "Legacy_Id__c": "L-7"}).status_code == 201
    salesforce.external_id_fields = {"Account": "Legacy_Id__c"}
    with pytest.raises(RejectedError, match="2 account records with Legacy_Id__c = L-7") as caught:
        salesforce.upsert(entity="Account", key="L-7", fields={"Name": "Acme"})
    assert caught.value.http_status == 300


def test_a_missing_required_field_is_explained(salesforce) -> None:
    with pytest.raises(RejectedError) as caught:
        salesforce.upsert(entity="Opportunity", key="OPP-1", fields={"Name": "Big deal"})
    assert caught.value.message == (
        "Salesforce rejected the opportunity OPP-1: required field(s) missing: StageName, CloseDate"
    )


def test_a_validation_rule_rejection_is_explained(sandbox, salesforce) -> None:
    sandbox.fault(reject={"field": "Name", "equals": "Blocked Co", "message": "Accounts on credit hold are locked"})
    with pytest.raises(RejectedError) as caught:
        salesforce.upsert(entity="Account", key="B-1", fields={"Name": "Blocked Co"})
    assert caught.value.message == (
        "Salesforce rejected the account B-1: "
        "a Salesforce validation rule refused it: Accounts on credit hold are locked"
    )
    assert salesforce.lookup(entity="Account", key="B-1") is None


def test_a_link_to_a_missing_record_is_explained(salesforce) -> None:
    with pytest.raises(RejectedError, match="a linked record does not exist in Salesforce \\(AccountId\\)"):
        salesforce.upsert(entity="Contact", key="C-1", fields={"LastName": "Lee", "AccountId": "001SB0000009999"})


def test_field_names_that_could_alter_the_query_are_refused(salesforce) -> None:
    with pytest.raises(MappingError):
        list(salesforce.read("Account", where={"Name = 'x' OR Name": "y"}))


# Failures ---------------------------------------------------------------------------------------
def test_request_limit_is_transient_and_carries_retry_after(sandbox, salesforce) -> None:
    salesforce.ping()
    sandbox.fault(rate_limit_per_minute=1)
    salesforce.ping()
    with pytest.raises(TransientError) as caught:
        salesforce.ping()
    assert caught.value.http_status == 403
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 61
    assert "request limit" in caught.value.message


def test_spent_daily_allowance_is_transient_with_a_default_wait(sandbox, salesforce) -> None:
    salesforce.ping()
    sandbox.fault(daily_api_limit=1)
    with pytest.raises(TransientError) as caught:
        salesforce.ping()
    assert caught.value.retry_after == salesforce.limit_retry_seconds
    assert "API request limit is reached (TotalRequests Limit exceeded.)" in caught.value.message


def test_server_error_is_transient_on_read_and_unknown_outcome_on_write(sandbox, salesforce) -> None:
    salesforce.ping()
    sandbox.fault(error_status=503, match="/query", count=1)
    with pytest.raises(TransientError):
        list(salesforce.read("Account"))
    sandbox.fault(error_status=500, match="/sobjects/Account", count=1)
    with pytest.raises(UnknownOutcomeError, match="may or may not have saved"):
        salesforce.upsert(entity="Account", key="X-1", fields={"Name": "X"})


def test_timeout_is_transient_on_read_and_unknown_outcome_on_write(sandbox, salesforce, monkeypatch) -> None:
    salesforce.ping()
    monkeypatch.setattr(http, "READ_TIMEOUT", 0.5)
    http.reset_client()
    try:
        sandbox.fault(timeout=True, timeout_seconds=1.5, match="/query", count=1)
        with pytest.raises(TransientError, match="no answer"):
            list(salesforce.read("Account"))
        sandbox.fault(timeout=True, timeout_seconds=1.5, match="/sobjects/Account", count=1)
        with pytest.raises(UnknownOutcomeError, match="no answer"):
            salesforce.upsert(entity="Account", key="T-1", fields={"Name": "Slow"})
    finally:
        monkeypatch.undo()
        http.reset_client()


# Bad input gets Salesforce's own errors ----------------------------------------------------------
def test_bad_requests_get_salesforce_error_arrays(sandbox) -> None:
    malformed = api(
        sandbox, "POST", "/sobjects/Account/", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    unknown = api(sandbox, "POST", "/sobjects/Invoice/", json={"Name": "x"})
    assert unknown.status_code == 404
    assert unknown.json() == [
        {"message": "The requested resource does not exist", "errorCode": "NOT_FOUND", "fields": []}
    ]
    bad_field = api(sandbox, "POST", "/sobjects/Account/", json={"Name": "x", "Colour": "red"})
    assert bad_field.status_code == 400 and bad_field.json()[0]["errorCode"] == "INVALID_FIELD"
    bad_query = api(sandbox, "GET", "/query", params={"q": "SELECT Id FROM Account WHERE"})
    assert bad_query.status_code == 400 and bad_query.json()[0]["errorCode"] == "MALFORMED_QUERY"
    no_session = httpx.get(f"{sandbox.url}{API}/sobjects", headers={"Authorization": "Bearer expired"})
    assert no_session.status_code == 401
    assert no_session.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    assert api(sandbox, "GET", "/limits").headers["sforce-limit-info"].startswith("api-usage=")
    old_version = httpx.get(
        f"{sandbox.url}/services/data/v12.0/limits", headers={"Authorization": f"Bearer {token(sandbox)}"}
    )
    assert old_version.status_code == 404


def test_upsert_with_update_only_does_not_create(sandbox) -> None:
    answer = api(sandbox, "PATCH", "/sobjects/Account/pscsync_Key__c/NEW-9?updateOnly=true", json={"Name": "New"})
    assert answer.status_code == 404 and answer.json()[0]["errorCode"] == "NOT_FOUND"
    assert api(sandbox, "GET", "/sobjects/Account/pscsync_Key__c/NEW-9").status_code == 404


def test_collection_all_or_none_rolls_every_record_back(sandbox) -> None:
    records = [
        {"attributes": {"type": "Account"}, "Name": "Good Co"},
        {"attributes": {"type": "Opportunity"}, "Name": "No stage"},
    ]
    answer = api(sandbox, "POST", "/composite/sobjects", json={"allOrNone": True, "records": records}).json()
    assert answer[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert answer[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    count = api(sandbox, "GET", "/query", params={"q": "SELECT COUNT() FROM Account"}).json()
    assert count["totalSize"] == 0


def test_records_survive_a_sandbox_restart(sandbox, salesforce) -> None:
    written = salesforce.upsert(entity="Account", key="KEEP-1", fields={"Name": "Kept"})
    sandbox.restart()
    http.reset_client()
    found = salesforce.lookup(entity="Account", key="KEEP-1")
    assert found is not None and found.external_id == written.external_id


# Change events ----------------------------------------------------------------------------------
class _Receiver:
    """A subscriber endpoint that keeps what the sandbox pushes."""

    def __init__(self) -> None:
        self.deliveries: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        deliveries = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                deliveries.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/salesforce"


def test_pushed_change_events_are_verified_and_parsed(sandbox, salesforce) -> None:
    receiver = _Receiver()
    try:
        httpx.post(
            f"{sandbox.url}/_sandbox/subscribers", json={"url": receiver.url, "secret": SECRET}
        ).raise_for_status()
        written = salesforce.upsert(entity="Account", key="HOOK-1", fields={"Name": "Hooked"})
        headers, body = receiver.deliveries.get(timeout=10)
    finally:
        receiver.server.shutdown()
    now = dt.datetime.now(dt.UTC)
    event_id = salesforce.verify_webhook(headers=headers, body=body, now=now)
    [change] = salesforce.parse_webhook(event_id=event_id, body=body)
    assert change.event_type == "Account.CREATE"
    assert change.business_key == written.external_id
    assert change.source_event_id == json.loads(body)["data"]["event"]["EventUuid"]
    assert change.payload["data"]["payload"]["ChangeEventHeader"]["changeOrigin"].endswith("client=pscsync")
    assert abs((change.occurred_at - now).total_seconds()) < 30
    with pytest.raises(WebhookRejected) as refused:
        salesforce.verify_webhook(headers=headers, body=body.replace(b"Hooked", b"Hacked"), now=now)
    assert refused.value.status == 401


def test_a_malformed_change_event_is_refused(salesforce) -> None:
    with pytest.raises(WebhookRejected) as refused:
        salesforce.parse_webhook(event_id="x", body=b'{"data": {"payload": {}}}')
    assert refused.value.status == 400


def test_polling_returns_changes_in_replay_order_and_resumes_from_the_cursor(sandbox, salesforce) -> None:
    written = salesforce.upsert(entity="Account", key="POLL-1", fields={"Name": "Polled"})
    salesforce.upsert(entity="Account", key="POLL-1", fields={"Name": "Polled again"})
    salesforce.upsert(entity="Account", key="POLL-1", fields={"Name": "Polled again"})  # no change: no event
    changes, cursor = salesforce.poll(cursor="")
    assert [c.event_type for c in changes] == ["Account.CREATE", "Account.UPDATE"]
    assert all(c.business_key == written.external_id for c in changes)
    assert changes[0].sequence < changes[1].sequence
    assert cursor == str(changes[1].sequence)
    assert salesforce.poll(cursor=cursor) == ([], cursor)


# A real client library, unchanged --------------------------------------------------------------
def test_simple_salesforce_works_against_the_sandbox(sandbox) -> None:
    simple_salesforce = pytest.importorskip("simple_salesforce")
    import requests
    from requests.adapters import HTTPAdapter

    class PlainHttp(HTTPAdapter):
        """simple-salesforce always builds https:// URLs; the sandbox speaks plain http locally."""

        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            request.url = request.url.replace("https://", "http://", 1)
            return super().send(request, **kwargs)

    session = requests.Session()
    session.mount("https://127.0.0.1", PlainHttp())
    sf = simple_salesforce.Salesforce(
        instance_url=sandbox.url, session_id=token(sandbox), session=session, version="62.0"
    )
    created = sf.Account.create({"Name": "Library Co"})
    assert created["success"] is True
    assert sf.Account.upsert("pscsync_Key__c/LIB-1", {"Name": "Library Two"}) == 201
    assert sf.Account.get(created["id"])["Name"] == "Library Co"
    result = sf.query("SELECT Id, Name FROM Account ORDER BY Name")
    assert [r["Name"] for r in result["records"]] == ["Library Co", "Library Two"]
