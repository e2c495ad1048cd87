"""Contract tests: the NetSuite connector against the NetSuite sandbox, over real HTTP."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connectors import base, http
from connectors.errors import MappingError, RejectedError, TransientError, UnknownOutcomeError, WebhookRejected
from connectors.netsuite import NetSuiteConnector, sign_assertion
from connectors.sandboxes.netsuite.keys import (
    DEMO_ACCOUNT_ID,
    DEMO_CERTIFICATE_ID,
    DEMO_CLIENT_ID,
    DEMO_PRIVATE_KEY_PEM,
)

pytestmark = pytest.mark.django_db

CREDENTIALS = {
    "account_id": DEMO_ACCOUNT_ID,
    "client_id": DEMO_CLIENT_ID,
    "certificate_id": DEMO_CERTIFICATE_ID,
    "private_key_pem": DEMO_PRIVATE_KEY_PEM,
}
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"
RECORD = "/services/rest/record/v1"
SUITEQL = "/services/rest/query/v1/suiteql"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
NORTHWIND = {"companyName": "Northwind Traders", "subsidiary": {"id": "3"}, "currency": {"id": "1"}}


@pytest.fixture
def netsuite(sandbox_factory):
    return sandbox_factory("netsuite")


def make_connector(netsuite, entities, **overrides: str) -> NetSuiteConnector:
    from pscsync.services import connection_save

    connection = connection_save(
        slug="netsuite-us",
        name="NetSuite US",
        kind="erp",
        vendor="netsuite",
        base_url=netsuite.url,
        entities=[entities["us"]],
        credentials={**CREDENTIALS, **overrides},
        is_sandbox=True,
    )
    return NetSuiteConnector(connection)


@pytest.fixture
def connector(netsuite, entities) -> NetSuiteConnector:
    base._tokens.clear()  # the sandbox was reset: tokens cached by an earlier test are gone there
    return make_connector(netsuite, entities)


@pytest.fixture
def raw(netsuite) -> Iterator[httpx.Client]:
    """A plain HTTP client holding a sandbox token, for what the connector never sends."""
    token = httpx.post(netsuite.url + TOKEN_PATH, data=_token_form(netsuite.url)).json()["access_token"]
    with httpx.Client(base_url=netsuite.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield client


@pytest.fixture
def short_timeouts(monkeypatch) -> Iterator[None]:
    monkeypatch.setattr(http, "READ_TIMEOUT", 0.5)
    http.reset_client()
    yield
    http.reset_client()


def _token_form(url: str, *, key: str = DEMO_PRIVATE_KEY_PEM, kid: str = DEMO_CERTIFICATE_ID, **claims: object) -> dict:
    now = int(time.time())
    payload = {"iss": DEMO_CLIENT_ID, "scope": ["rest_webservices"], "aud": url + TOKEN_PATH, "iat": now}
    payload["exp"] = now + 300
    payload.update(claims)
    assertion = sign_assertion(payload, private_key_pem=key, kid=kid)
    return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}


def _other_key(kind: str = "rsa") -> str:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _token_requests(netsuite) -> int:
    return sum(1 for e in netsuite.journal()["entries"] if e["path"] == TOKEN_PATH and e["status"] == 200)


# Signing in -------------------------------------------------------------------------------------
def test_test_connection_signs_in_with_the_certificate_and_answers(connector: NetSuiteConnector) -> None:
    result = connector.check()
    assert result.ok, result.message


def test_a_certificate_signed_with_the_wrong_private_key_is_refused(netsuite, entities) -> None:
    base._tokens.clear()
    connector = make_connector(netsuite, entities, private_key_pem=_other_key())
    result = connector.check()
    # An admin reads which client and certificate NetSuite refused, and why.
    assert not result.ok
    assert (
        "NetSuite refused the sign-in of client sandbox-client with certificate sandbox-certificate" in result.message
    )
    assert "signature does not match" in result.message


def test_the_token_endpoint_answers_bad_assertions_with_oauth_errors(netsuite) -> None:
    url = netsuite.url + TOKEN_PATH
    expired = httpx.post(url, data=_token_form(netsuite.url, iat=int(time.time()) - 900, exp=int(time.time()) - 600))
    wrong_key = httpx.post(url, data=_token_form(netsuite.url, key=_other_key("ec")))
    unknown_kid = httpx.post(url, data=_token_form(netsuite.url, kid="someone-elses-certificate"))
    wrong_audience = httpx.post(url, data=_token_form(netsuite.url, aud="https://example.com/token"))
    wrong_grant = httpx.post(url, data={"grant_type": "password"})
    assert (expired.status_code, expired.json()["error"]) == (400, "invalid_grant")
    assert (wrong_key.status_code, wrong_key.json()["error"]) == (401, "invalid_client")
    assert (unknown_kid.status_code, unknown_kid.json()["error"]) == (401, "invalid_client")
    assert (wrong_audience.status_code, wrong_audience.json()["error"]) == (400, "invalid_grant")
    assert (wrong_grant.status_code, wrong_grant.json()["error"]) == (400, "unsupported_grant_type")


def test_an_expired_token_is_replaced_and_calls_keep_working(connector, netsuite, monkeypatch) -> None:
    monkeypatch.setattr(base, "TOKEN_MARGIN_SECONDS", 0)
    netsuite.fault(token_lifetime_seconds=1)
    connector.ping()
    first = connector.token()
    time.sleep(1.3)
    # The old token is dead at NetSuite ...
    assert (
        httpx.get(netsuite.url + RECORD + "/customer", headers={"Authorization": f"Bearer {first}"}).status_code == 401
    )
    # ... and the connector signs in again on its own.
    connector.ping()
    assert _token_requests(netsuite) == 2


def test_a_token_netsuite_no_longer_knows_is_refreshed_once_on_401(connector, netsuite) -> None:
    connector.ping()
    netsuite.reset()  # NetSuite forgets every token (and every record)
    connector.ping()
    assert _token_requests(netsuite) == 1  # the journal was reset too: this is the refresh


# Writing ---------------------------------------------------------------------------------------
def test_the_same_upsert_twice_makes_one_customer(connector, netsuite) -> None:
    first = connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    second = connector.upsert(entity="customer", key="CUST-1", fields={**NORTHWIND, "companyName": "Northwind Ltd"})
    journal = netsuite.journal()
    assert first.external_id == second.external_id != ""
    assert journal["creates_by_key"] == {"customer/CUST-1": 1}
    assert journal["writes_by_key"] == {"customer/CUST-1": 2}
    found = connector.lookup(entity="customer", key="CUST-1")
    assert found is not None
    assert (found.external_id, found.response["companyName"]) == (first.external_id, "Northwind Ltd")
    assert first.request == {
        "method": "PUT",
        "url": f"{netsuite.url}{RECORD}/customer/eid:CUST-1",
        "json": NORTHWIND,
    }


def test_lookup_of_a_key_never_written_finds_nothing(connector) -> None:
    assert connector.lookup(entity="customer", key="CUST-404") is None


def test_an_invoice_for_a_project_is_written_by_key_with_its_lines(connector) -> None:
    customer = connector.upsert(entity="customer", key="CUST-7", fields=NORTHWIND)
    project = connector.upsert(
        entity="project",
        key="PSA-7",
        fields={
            "companyName": "Northwind ERP rollout",
            "parent": {"id": customer.external_id},
            "subsidiary": {"id": "3"},
        },
    )
    lines = {"items": [{"item": {"id": "55"}, "description": "Consulting June", "quantity": 80, "rate": 150.0}]}
    fields = {"entity": {"externalId": "CUST-7"}, "job": {"id": project.external_id}, "item": lines}
    invoice = connector.upsert(entity="invoice", key="BE-0042", fields=fields)
    found = connector.lookup(entity="invoice", key="BE-0042")
    assert found is not None and found.external_id == invoice.external_id
    assert found.response["total"] == 12000.0
    assert found.response["entity"]["refName"] == "Northwind Traders"
    assert found.response["item"]["items"][0]["item"]["refName"] == "Consulting Services"


def test_a_customer_in_a_currency_its_subsidiary_does_not_allow_is_rejected_in_plain_words(connector) -> None:
    with pytest.raises(RejectedError) as caught:
        connector.upsert(entity="customer", key="CUST-JPY", fields={**NORTHWIND, "currency": {"id": "5"}})
    assert caught.value.message == (
        "NetSuite rejected the customer: subsidiary 3 (Acme Consulting Inc.) does not allow currency JPY"
    )
    assert caught.value.http_status == 400
    assert connector.lookup(entity="customer", key="CUST-JPY") is None  # nothing half-written


def test_a_missing_required_field_is_named_in_the_message(connector) -> None:
    with pytest.raises(RejectedError) as caught:
        connector.upsert(entity="project", key="PSA-1", fields={"companyName": "Orphan project"})
    assert caught.value.message == "NetSuite rejected the project: please enter value(s) for: Parent, Subsidiary"


def test_an_injected_validation_rejection_reads_as_netsuite_s_words(connector, netsuite) -> None:
    netsuite.fault(reject={"field": "companyName", "equals": "Blocked Co", "message": "This entity is on credit hold."})
    with pytest.raises(RejectedError) as caught:
        connector.upsert(entity="customer", key="CUST-9", fields={**NORTHWIND, "companyName": "Blocked Co"})
    assert caught.value.message == "NetSuite rejected the customer: this entity is on credit hold (field companyName)"


def test_a_key_netsuite_cannot_hold_is_a_mapping_error(connector) -> None:
    with pytest.raises(MappingError):
        connector.upsert(entity="customer", key="CUST 1/2", fields=NORTHWIND)
    with pytest.raises(MappingError):
        connector.upsert(entity="spaceship", key="CUST-1", fields=NORTHWIND)


# Failures --------------------------------------------------------------------------------------
def test_a_rate_limit_is_transient_and_carries_retry_after(connector, netsuite) -> None:
    netsuite.fault(error_status=429, retry_after=7, match="/record/v1/", count=1)
    with pytest.raises(TransientError) as caught:
        connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    assert caught.value.retry_after == 7.0
    assert caught.value.message.startswith("NetSuite is busy and asked us to wait")


def test_requests_beyond_the_account_concurrency_limit_get_429_and_are_transient(connector, netsuite) -> None:
    connector.ping()  # sign in first, so both threads share the token
    netsuite.fault(concurrency_limit=1)
    netsuite.fault(latency_ms=800, match="/record/v1/customer", count=1)
    errors: list[Exception] = []

    def slow_read() -> None:
        connector.ping()

    slow = threading.Thread(target=slow_read)
    slow.start()
    time.sleep(0.3)
    try:
        connector.ping()
    except TransientError as exc:
        errors.append(exc)
    slow.join()
    assert len(errors) == 1
    assert "allows 1 requests at a time" in errors[0].message
    assert errors[0].response["o:errorDetails"][0]["o:errorCode"] == "CONCURRENCY_LIMIT_EXCEEDED"


def test_a_server_error_is_transient_on_read_and_an_unknown_outcome_on_write(connector, netsuite) -> None:
    netsuite.fault(error_status=503, match=SUITEQL, count=1)
    with pytest.raises(TransientError):
        list(connector.read("customer"))
    netsuite.fault(error_status=500, match="/eid:CUST-1", count=1)
    with pytest.raises(UnknownOutcomeError) as caught:
        connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    assert caught.value.message.startswith("NetSuite failed (500) while handling the customer")
    # What the engine does next: look up by key, then write again; still one customer.
    assert connector.lookup(entity="customer", key="CUST-1") is None
    connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    assert netsuite.journal()["creates_by_key"] == {"customer/CUST-1": 1}


def test_an_upsert_answered_without_its_location_is_an_unknown_outcome_then_found_by_key(connector, netsuite) -> None:
    # NetSuite documents 204 + Location for an upsert by external ID; an answer without it does
    # not say which record was written, so the engine must look the key up, not store "".
    netsuite.fault(malform={"header": "Location", "drop": True}, match="/eid:CUST-1", count=1)
    with pytest.raises(UnknownOutcomeError) as caught:
        connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    assert "without the address of the record it wrote" in caught.value.message
    found = connector.lookup(entity="customer", key="CUST-1")
    assert found is not None and found.external_id.isdigit()
    again = connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    assert again.external_id == found.external_id
    assert netsuite.journal()["creates_by_key"] == {"customer/CUST-1": 1}


def test_a_write_that_times_out_is_an_unknown_outcome(connector, netsuite, short_timeouts) -> None:
    connector.ping()
    netsuite.fault(timeout=True, timeout_seconds=1.0, match="/eid:CUST-1", count=1)
    with pytest.raises(UnknownOutcomeError):
        connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    netsuite.fault(timeout=True, timeout_seconds=1.0, match=SUITEQL, count=1)
    with pytest.raises(TransientError):
        list(connector.read("customer"))


# Reading and polling ---------------------------------------------------------------------------
def test_reading_follows_suiteql_pages_to_the_end(connector, netsuite) -> None:
    for n in range(7):
        connector.upsert(entity="customer", key=f"CUST-{n}", fields={**NORTHWIND, "companyName": f"Client {n}"})
    connector.upsert(entity="customer", key="CUST-UK", fields={"companyName": "Thames Ltd", "subsidiary": {"id": "2"}})
    connector.page_size = 3  # type: ignore[misc]
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    rows = list(connector.read("customer", since=since, where={"subsidiary": "3"}))
    assert sorted(r["externalid"] for r in rows) == [f"CUST-{n}" for n in range(7)]
    pages = [e for e in netsuite.journal()["entries"] if e["path"] == SUITEQL]
    assert len(pages) == 3  # 3 + 3 + 1
    assert list(connector.read("customer", since=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))) == []


def test_reading_invoices_queries_the_transaction_table(connector) -> None:
    connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    line = {"items": [{"item": {"id": "56"}, "quantity": 1, "rate": 5000.0}]}
    connector.upsert(entity="invoice", key="BE-1", fields={"entity": {"externalId": "CUST-1"}, "item": line})
    rows = list(connector.read("invoice"))
    assert [(r["externalid"], r["type"], r["total"]) for r in rows] == [("BE-1", "CustInvc", 5000.0)]
    assert list(connector.read("payment")) == []


def test_polling_sees_every_change_once_even_when_timestamps_are_equal(connector) -> None:
    connector.watched = ("customer",)  # type: ignore[misc]
    connector.settle_seconds = 1  # type: ignore[misc]
    connector.page_size = 2  # type: ignore[misc]
    for n in range(5):  # all within the same second, most likely
        connector.upsert(entity="customer", key=f"CUST-{n}", fields=NORTHWIND)
    time.sleep(2.1)
    changes, cursor = connector.poll(cursor="")
    assert [c.business_key for c in changes] == [f"CUST-{n}" for n in range(5)]
    assert connector.poll(cursor=cursor)[0] == []
    connector.upsert(entity="customer", key="CUST-2", fields={**NORTHWIND, "companyName": "Renamed"})
    time.sleep(2.1)
    again, _ = connector.poll(cursor=cursor)
    assert [c.business_key for c in again] == ["CUST-2"]
    assert again[0].source_event_id != changes[2].source_event_id  # a new change, not a duplicate


def test_a_change_still_settling_waits_for_the_next_poll(connector) -> None:
    connector.watched = ("customer",)  # type: ignore[misc]
    connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    changes, cursor = connector.poll(cursor="")
    assert changes == []  # written this second: a lower id could still land in it
    assert cursor == '{"customer": ["1970-01-01 00:00:00", 0]}'


def test_webhooks_are_refused_because_netsuite_polls(connector) -> None:
    with pytest.raises(WebhookRejected) as caught:
        connector.verify_webhook(headers={}, body=b"{}", now=dt.datetime.now(dt.UTC))
    assert caught.value.status == 404


# The sandbox speaks NetSuite -------------------------------------------------------------------
def test_bad_input_gets_netsuite_s_error_shape(raw, netsuite) -> None:
    malformed = raw.post(f"{RECORD}/customer", content=b"{not json", headers={"Content-Type": "application/json"})
    unknown = raw.get(f"{RECORD}/spaceship/1")
    missing = raw.get(f"{RECORD}/customer/999999")
    no_prefer = raw.post(SUITEQL, json={"q": "SELECT id FROM customer"})
    bad_query = raw.post(SUITEQL, json={"q": "SELEKT id FROM customer"}, headers={"Prefer": "transient"})
    bad_limit = raw.get(f"{RECORD}/customer", params={"limit": 5000})
    anonymous = httpx.get(f"{netsuite.url}{RECORD}/customer")
    for answer, status, code in (
        (malformed, 400, "INVALID_CONTENT"),
        (unknown, 404, "INVALID_RCRD_TYPE"),
        (missing, 404, "NONEXISTENT_ID"),
        (no_prefer, 400, "INVALID_HEADER"),
        (bad_query, 400, "INVALID_PARAMETER"),
        (bad_limit, 400, "INVALID_PARAMETER"),
        (anonymous, 401, "INVALID_LOGIN"),
    ):
        body = answer.json()
        assert answer.status_code == status == body["status"], answer.text
        assert body["o:errorDetails"][0]["o:errorCode"] == code
        assert body["title"] and body["type"].startswith("https://")
    assert anonymous.headers["www-authenticate"].startswith('Bearer realm="1234567_SB1", error="invalid_token"')


def test_create_answers_204_with_the_location_of_the_new_record(raw) -> None:
    answer = raw.post(f"{RECORD}/customer", json={**NORTHWIND, "externalId": "CRM-000123"})
    assert answer.status_code == 204
    location = answer.headers["location"]
    assert location.startswith(f"{raw.base_url}{RECORD}/customer/".replace("//services", "/services"))
    record = raw.get(location).json()
    assert record["externalId"] == "CRM-000123"
    assert record["subsidiary"]["refName"] == "Acme Consulting Inc."
    assert raw.patch(location, json={"email": "ap@northwind.example"}).status_code == 204
    assert raw.get(f"{RECORD}/customer/eid:CRM-000123").json()["email"] == "ap@northwind.example"
    duplicate = raw.post(f"{RECORD}/customer", json={**NORTHWIND, "externalId": "CRM-000123"})
    assert duplicate.status_code == 400


def test_record_collections_page_with_limit_offset_and_next_links(raw) -> None:
    for n in range(5):
        raw.put(f"{RECORD}/customer/eid:CUST-{n}", json=NORTHWIND)
    first = raw.get(f"{RECORD}/customer", params={"limit": 2}).json()
    assert (first["count"], first["hasMore"], first["totalResults"], first["offset"]) == (2, True, 5, 0)
    last = raw.get(next(link["href"] for link in first["links"] if link["rel"] == "next")).json()
    assert last["offset"] == 2
    filtered = raw.get(f"{RECORD}/customer", params={"q": 'externalId IS "CUST-3"'}).json()
    assert filtered["totalResults"] == 1


def test_a_sales_order_can_be_billed_by_transforming_it_into_an_invoice(raw) -> None:
    raw.put(f"{RECORD}/customer/eid:CUST-1", json=NORTHWIND)
    lines = {"items": [{"item": {"id": "55"}, "quantity": 10, "rate": 150.0}]}
    order = raw.post(f"{RECORD}/salesOrder", json={"entity": {"externalId": "CUST-1"}, "item": lines})
    invoice = raw.post(order.headers["location"] + "/!transform/invoice", json={"externalId": "INV-1"})
    assert invoice.status_code == 204
    assert raw.get(invoice.headers["location"]).json()["total"] == 1500.0


def test_the_sandbox_keeps_its_records_across_a_restart(connector, netsuite) -> None:
    written = connector.upsert(entity="customer", key="CUST-1", fields=NORTHWIND)
    netsuite.restart()
    http.reset_client()  # the old keep-alive connections died with the process
    found = connector.lookup(entity="customer", key="CUST-1")
    assert found is not None and found.external_id == written.external_id


def test_an_invoice_is_posted_only_once_approved_and_paid_by_its_payments_apply_lines(connector, netsuite) -> None:
    from decimal import Decimal

    customer = connector.upsert(entity="customer", key="CUST-L", fields=NORTHWIND).external_id or (
        connector.lookup(entity="customer", key="CUST-L").external_id
    )
    lines = {"items": [{"item": {"id": "55"}, "quantity": 10, "rate": 100.0}]}
    fields = {"entity": {"id": customer}, "tranDate": "2026-11-02", "item": lines}
    connector.upsert(entity="invoice", key="I-L1", fields=fields)
    invoice_id = connector.lookup(entity="invoice", key="I-L1").external_id

    def state() -> tuple[str, Decimal, Decimal, list[tuple[Decimal, str]]]:
        (found,) = connector.ledger_invoices(invoice_id=invoice_id)
        paid = [(p.amount, p.applied_on.isoformat()) for p in found.payments]
        return found.status, found.total, found.open_balance, paid

    # Invoice approval routing: a new invoice waits, owing nothing in the ledger.
    assert state() == ("pending_approval", Decimal("1000.00"), Decimal("0.00"), [])
    connector.upsert(entity="invoice", key="I-L1", fields={"approvalStatus": {"id": "2"}})
    assert state() == ("posted", Decimal("1000.00"), Decimal("1000.00"), [])
    (record,) = connector.ledger_invoices(invoice_id=invoice_id)
    assert record.due_date.isoformat() == "2026-12-02" and record.posting_date.isoformat() == "2026-11-02"

    def pay(key: str, day: str, amount: float) -> None:
        apply = {"items": [{"doc": {"id": invoice_id}, "apply": True, "amount": amount}]}
        connector.upsert(
            entity="payment",
            key=key,
            fields={"customer": {"id": customer}, "payment": amount, "tranDate": day, "apply": apply},
        )

    pay("PAY-L1", "2026-11-20", 400.0)
    # NetSuite keeps a partly paid invoice Open with less remaining: partly paid in the ledger.
    assert state() == ("partly_paid", Decimal("1000.00"), Decimal("600.00"), [(Decimal("400.00"), "2026-11-20")])
    pay("PAY-L2", "2026-12-01", 600.0)
    assert state()[0:3] == ("paid", Decimal("1000.00"), Decimal("0.00"))
    assert sorted(state()[3]) == [(Decimal("400.00"), "2026-11-20"), (Decimal("600.00"), "2026-12-01")]


def test_a_voided_or_rejected_invoice_is_not_posted(connector, netsuite) -> None:
    customer = connector.upsert(entity="customer", key="CUST-V", fields=NORTHWIND).external_id or (
        connector.lookup(entity="customer", key="CUST-V").external_id
    )
    lines = {"items": [{"item": {"id": "55"}, "quantity": 1, "rate": 50.0}]}
    for key, approval in (("I-V1", "2"), ("I-V2", "3")):
        connector.upsert(
            entity="invoice",
            key=key,
            fields={"entity": {"id": customer}, "item": lines, "approvalStatus": {"id": approval}},
        )
    voided = connector.lookup(entity="invoice", key="I-V1").external_id
    assert httpx.post(f"{netsuite.url}/_sandbox/void/invoice/{voided}", timeout=5).status_code == 204
    (one,) = connector.ledger_invoices(invoice_id=voided)
    (two,) = connector.ledger_invoices(invoice_id=connector.lookup(entity="invoice", key="I-V2").external_id)
    assert (one.status, one.source_status, str(one.open_balance)) == ("voided", "Voided · Approved", "0.00")
    assert (two.status, two.posted) == ("draft", False)
