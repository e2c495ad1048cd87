"""Contract tests: the Business Central connector against the Business Central sandbox, over real HTTP."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from connectors import base, http
from connectors.businesscentral import BusinessCentralConnector
from connectors.errors import RejectedError, TransientError, UnknownOutcomeError, WebhookRejected
from tests.helpers import free_port

pytestmark = pytest.mark.django_db

UK_COMPANY = "5d2f7c8e-0000-4a1b-9c00-000000000001"
CLIENT_STATE = "opaque-state-agreed-at-subscription-time"
CREDENTIALS = {
    "tenant": "sandbox-tenant",
    "environment": "production",
    "client_id": "sandbox-client",
    "client_secret": "sandbox-secret",
    "company_id": UK_COMPANY,
    "client_state": CLIENT_STATE,
}
API = "/v2.0/sandbox-tenant/production/api/v2.0"
COMPANY = f"{API}/companies({UK_COMPANY})"


@pytest.fixture
def bc(sandbox_factory):
    return sandbox_factory("businesscentral")


def make_connector(bc, entities, **overrides: str) -> BusinessCentralConnector:
    from pscsync.services import connection_save

    connection = connection_save(
        slug="bc-uk",
        name="Business Central UK",
        kind="erp",
        vendor="businesscentral",
        base_url=bc.url,
        entities=[entities["uk"]],
        credentials={**CREDENTIALS, **overrides},
        is_sandbox=True,
    )
    return BusinessCentralConnector(connection)


@pytest.fixture
def connector(bc, entities) -> BusinessCentralConnector:
    base._tokens.clear()  # the sandbox was reset: tokens cached by an earlier test are gone there
    return make_connector(bc, entities)


@pytest.fixture
def raw(bc) -> Iterator[httpx.Client]:
    """A plain HTTP client holding a sandbox token, for what the connector never sends."""
    answer = httpx.post(
        f"{bc.url}/sandbox-tenant/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
            "scope": "https://api.businesscentral.dynamics.com/.default",
        },
    )
    token = answer.json()["access_token"]
    with httpx.Client(base_url=bc.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield client


def token_requests(bc) -> int:
    return sum(1 for e in bc.journal()["entries"] if e["path"].endswith("/oauth2/v2.0/token"))


# Reading ------------------------------------------------------------------------------------------
def test_reading_customers_follows_next_links_across_pages(
    connector: BusinessCentralConnector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n in range(7):
        connector.upsert(entity="customers", key=f"C-{n:03d}", fields={"displayName": f"Client {n}"})
    connector.page_size = 3
    pages: list[str] = []
    send = connector.send
    monkeypatch.setattr(connector, "send", lambda method, path, **kw: pages.append(path) or send(method, path, **kw))

    customers = list(connector.read("customers"))

    assert [c["number"] for c in customers] == [f"C-{n:03d}" for n in range(7)]
    assert len(pages) == 3  # pages of 3, 3 and 1, each reached by the previous page's @odata.nextLink
    assert all("$skiptoken=" in page for page in pages[1:])


def test_reading_with_since_and_where_returns_only_matching_changes(connector: BusinessCentralConnector) -> None:
    connector.upsert(entity="customers", key="C-OLD", fields={"displayName": "Old", "city": "Leeds"})
    time.sleep(0.01)
    cutoff = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    connector.upsert(entity="customers", key="C-NEW", fields={"displayName": "New", "city": "Leeds"})
    connector.upsert(entity="customers", key="C-ELSE", fields={"displayName": "Else", "city": "York"})

    changed = list(connector.read("customers", since=cutoff, where={"city": "Leeds"}))

    assert [c["number"] for c in changed] == ["C-NEW"]


# Auth ---------------------------------------------------------------------------------------------
def test_an_expired_token_is_replaced_and_calls_keep_working(
    bc,
    connector: BusinessCentralConnector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base, "TOKEN_MARGIN_SECONDS", 0)
    bc.fault(token_lifetime_seconds=1)
    connector.ping()
    time.sleep(1.3)

    connector.ping()  # the cached token has expired: a new one is fetched first

    assert token_requests(bc) == 2
    # The token dies at the vendor while we still think it is valid: the 401 triggers one refresh.
    key = connector._token_key()
    base._tokens[key] = base.Token(value=base._tokens[key].value, expires_at=time.time() + 3600)
    time.sleep(1.3)
    connector.ping()
    assert token_requests(bc) == 3


def test_a_wrong_client_secret_is_reported_in_entra_words(bc, entities) -> None:
    base._tokens.clear()
    connector = make_connector(bc, entities, client_secret="not-the-secret")

    result = connector.check()

    assert not result.ok
    assert "Microsoft Entra ID refused the Business Central credentials: AADSTS7000215" in result.message


def test_msal_the_microsoft_client_acquires_a_token_from_the_sandbox(bc) -> None:
    msal = pytest.importorskip("msal")
    import requests

    class HttpsToSandbox(requests.Session):
        """MSAL insists on an https authority; the sandbox speaks http, as behind a TLS proxy."""

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "X-Forwarded-Proto": "https"}
            return super().request(method, url.replace("https://", "http://", 1), *args, **kwargs)

    app = msal.ConfidentialClientApplication(
        "sandbox-client",
        authority=f"{bc.url.replace('http://', 'https://')}/sandbox-tenant",
        client_credential="sandbox-secret",
        instance_discovery=False,
        validate_authority=False,
        http_client=HttpsToSandbox(),
    )
    token = app.acquire_token_for_client(scopes=["https://api.businesscentral.dynamics.com/.default"])

    assert "access_token" in token, token
    answer = httpx.get(f"{bc.url}{API}/companies", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert {c["name"] for c in answer.json()["value"]} == {"CRONUS UK Ltd.", "CRONUS USA, Inc."}


# Failures -----------------------------------------------------------------------------------------
def test_throttling_surfaces_as_transient_with_the_retry_after(bc, connector: BusinessCentralConnector) -> None:
    bc.fault(error_status=429, retry_after=7, match="/customers", count=1)

    with pytest.raises(TransientError) as caught:
        connector.lookup(entity="customers", key="C-1")

    assert caught.value.retry_after == 7
    assert "throttling" in caught.value.message
    bc.clear_faults()
    bc.fault(rate_limit_per_minute=2)
    connector.ping()
    connector.ping()
    with pytest.raises(TransientError) as limited:
        connector.ping()
    assert limited.value.retry_after and limited.value.retry_after > 0


def test_a_server_error_is_transient_on_read_and_unknown_outcome_on_write(
    bc,
    connector: BusinessCentralConnector,
) -> None:
    invoice = draft_invoice(connector, "BE-5XX")
    bc.fault(error_status=503, match="/salesInvoices", count=1)
    with pytest.raises(TransientError) as on_read:
        list(connector.read("salesInvoices"))
    assert "Business Central failed" in on_read.value.message

    bc.fault(error_status=500, match="Microsoft.NAV.post", count=1)
    with pytest.raises(UnknownOutcomeError):
        connector.post_invoice(invoice.external_id)


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(http, "READ_TIMEOUT", 1.0)
    http.reset_client()
    yield
    http.reset_client()


@pytest.mark.usefixtures("short_timeout")
def test_a_timeout_is_transient_on_read_and_unknown_outcome_on_write(bc, connector: BusinessCentralConnector) -> None:
    invoice = draft_invoice(connector, "BE-SLOW")
    bc.fault(timeout=True, timeout_seconds=2, match="/customers", count=1)
    with pytest.raises(TransientError):
        connector.lookup(entity="customers", key="C-1")

    bc.fault(timeout=True, timeout_seconds=2, match="Microsoft.NAV.post", count=1)
    with pytest.raises(UnknownOutcomeError):
        connector.post_invoice(invoice.external_id)


def test_business_central_validation_errors_read_as_finance_messages(
    bc,
    connector: BusinessCentralConnector,
) -> None:
    connector.upsert(entity="customers", key="C-BLOCKED", fields={"displayName": "Stopped Ltd", "blocked": "All"})

    with pytest.raises(RejectedError) as blocked:
        connector.upsert(entity="salesInvoices", key="BE-1", fields={"customerNumber": "C-BLOCKED"})
    with pytest.raises(RejectedError) as currency:
        connector.upsert(entity="customers", key="C-JPY", fields={"displayName": "Tokyo KK", "currencyCode": "JPY"})
    bc.fault(
        reject={"field": "displayName", "equals": "Refused Ltd", "message": "Customer Posting Group must have a value"}
    )
    with pytest.raises(RejectedError) as injected:
        connector.upsert(entity="customers", key="C-REF", fields={"displayName": "Refused Ltd"})

    assert blocked.value.message == (
        "Business Central rejected the sales invoice: "
        "You cannot create this type of document when Customer C-BLOCKED is blocked with type All"
    )
    assert currency.value.message.startswith(
        "Business Central rejected the customer: The field Currency Code of table Customer contains a value (JPY)"
    )
    assert injected.value.message == "Business Central rejected the customer: Customer Posting Group must have a value"
    assert "CorrelationId" not in blocked.value.message


# Idempotent writes --------------------------------------------------------------------------------
def test_the_same_upsert_twice_leaves_one_customer(bc, connector: BusinessCentralConnector) -> None:
    first = connector.upsert(entity="customers", key="C-100", fields={"displayName": "Northwind"})
    again = connector.upsert(entity="customers", key="C-100", fields={"displayName": "Northwind"})
    renamed = connector.upsert(entity="customers", key="C-100", fields={"displayName": "Northwind Traders"})

    journal = bc.journal()
    assert (first.created, again.created, renamed.created) == (True, False, False)
    assert first.external_id == again.external_id == renamed.external_id
    assert journal["creates_by_key"]["customers/C-100"] == 1
    assert journal["writes_by_key"]["customers/C-100"] == 2  # the create and the rename; no empty write
    assert renamed.request["method"] == "PATCH" and renamed.request["headers"]["If-Match"].startswith('W/"')
    assert connector.lookup(entity="customers", key="C-100").response["displayName"] == "Northwind Traders"


def test_concurrent_upserts_of_one_key_create_it_once(bc, connector: BusinessCentralConnector) -> None:
    def write(n: int) -> bool | None:
        return connector.upsert(entity="projects", key="PR-RACE", fields={"displayName": f"Race {n % 2}"}).created

    with ThreadPoolExecutor(max_workers=8) as pool:
        created = list(pool.map(write, range(16)))

    assert created.count(True) == 1
    assert bc.journal()["creates_by_key"] == {"projects/PR-RACE": 1}


def test_an_update_after_someone_else_changed_the_record_is_reapplied(
    raw: httpx.Client,
    connector: BusinessCentralConnector,
) -> None:
    created = connector.upsert(entity="customers", key="C-ETAG", fields={"displayName": "Before"})
    stale = created.response["@odata.etag"]
    url = f"{COMPANY}/customers({created.external_id})"
    assert raw.patch(url, json={"city": "Leeds"}, headers={"If-Match": "*"}).status_code == 200

    conflict = raw.patch(url, json={"city": "York"}, headers={"If-Match": stale})
    missing = raw.patch(url, json={"city": "York"})
    result = connector.upsert(entity="customers", key="C-ETAG", fields={"displayName": "After"})

    assert conflict.status_code == 412 and conflict.json()["error"]["code"] == "Request_EntityChanged"
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "BadRequest_InvalidToken"
    assert result.response["displayName"] == "After" and result.response["city"] == "Leeds"


def draft_invoice(connector: BusinessCentralConnector, key: str) -> Any:
    connector.upsert(entity="customers", key="C-INV", fields={"displayName": "Invoiced Ltd", "currencyCode": "GBP"})
    lines = [
        {"lineType": "Item", "lineObjectNumber": "CONSULT", "description": "June", "quantity": 8, "unitPrice": 150}
    ]
    return connector.upsert(
        entity="salesInvoices",
        key=key,
        fields={"customerNumber": "C-INV", "invoiceDate": "2026-06-30", "salesInvoiceLines": lines},
    )


def test_posting_an_invoice_opens_it_once_even_when_repeated(connector: BusinessCentralConnector) -> None:
    draft = draft_invoice(connector, "BE-POST")

    posted = connector.post_invoice(draft.external_id)
    repeated = connector.post_invoice(draft.external_id)

    assert draft.response["status"] == "Draft" and draft.response["totalAmountExcludingTax"] == 1200
    assert posted.response["status"] == "Open" and posted.response["number"] != draft.response["number"]
    assert posted.response["remainingAmount"] == 1200
    assert repeated.request["method"] == "GET" and repeated.response["number"] == posted.response["number"]
    with pytest.raises(RejectedError, match="already posted"):
        connector.upsert(
            entity="salesInvoices", key="BE-POST", fields={"customerNumber": "C-INV", "dueDate": "2026-08-01"}
        )


def test_records_survive_a_sandbox_restart(bc, connector: BusinessCentralConnector) -> None:
    created = connector.upsert(entity="customers", key="C-KEEP", fields={"displayName": "Kept"})

    bc.restart()
    http.reset_client()

    assert connector.lookup(entity="customers", key="C-KEEP").external_id == created.external_id


# Webhooks -----------------------------------------------------------------------------------------
class Listener:
    """Our webhook endpoint in miniature: answers the validation handshake, records notifications."""

    def __init__(self, *, echo_token: bool = True) -> None:
        self.notifications: list[bytes] = []
        self.validations = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                token = parse_qs(urlsplit(self.path).query).get("validationToken")
                if token:
                    outer.validations += 1
                    answer = (token[0] if echo_token else "not-the-token").encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                outer.notifications.append(body)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/bc"

    def wait(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.notifications:
                return self.notifications[0]
            time.sleep(0.05)
        raise AssertionError("no notification arrived")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def test_a_subscription_is_validated_then_notifies_each_customer_change(
    connector: BusinessCentralConnector,
    listener: Listener,
) -> None:
    subscription = connector.subscribe(entity="customers", notification_url=listener.url)
    expires = dt.datetime.fromisoformat(subscription["expirationDateTime"].replace("Z", "+00:00"))
    assert listener.validations == 1
    assert dt.timedelta(days=2, hours=23) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=3)

    customer = connector.upsert(entity="customers", key="C-HOOK", fields={"displayName": "Hooked"})
    body = listener.wait()
    event_id = connector.verify_webhook(headers={}, body=body, now=dt.datetime.now(dt.UTC))
    changes = connector.parse_webhook(event_id=event_id, body=body)

    assert [(c.event_type, c.business_key) for c in changes] == [("customers.created", customer.external_id)]
    assert (
        event_id
        == f"{subscription['subscriptionId']}:{json.loads(body)['value'][0]['resource']}:"
        + json.loads(body)["value"][0]["lastModifiedDateTime"]
    )
    renewed = connector.renew_subscription(subscription)
    assert listener.validations == 2 and renewed["expirationDateTime"] >= subscription["expirationDateTime"]


def test_a_subscription_whose_endpoint_does_not_echo_the_token_is_refused(connector: BusinessCentralConnector) -> None:
    wrong = Listener(echo_token=False)
    try:
        with pytest.raises(RejectedError) as refused:
            connector.subscribe(entity="customers", notification_url=wrong.url)
    finally:
        wrong.close()

    assert "could not be validated" in refused.value.message
    assert refused.value.message.startswith("Business Central rejected the webhook subscription")


def test_a_notification_with_the_wrong_client_state_is_refused(connector: BusinessCentralConnector) -> None:
    item = {
        "subscriptionId": "abc",
        "clientState": "guessed",
        "expirationDateTime": "2026-06-13T08:00:00Z",
        "resource": f"api/v2.0/companies({UK_COMPANY})/customers(f2a5738a-44e3-ea11-bb43-000d3a2feca1)",
        "changeType": "updated",
        "lastModifiedDateTime": "2026-06-10T08:13:20.467Z",
    }

    with pytest.raises(WebhookRejected) as forged:
        connector.verify_webhook(headers={}, body=json.dumps({"value": [item]}).encode(), now=dt.datetime.now(dt.UTC))
    with pytest.raises(WebhookRejected) as malformed:
        connector.verify_webhook(headers={}, body=b"{not json", now=dt.datetime.now(dt.UTC))

    assert (forged.value.status, forged.value.message) == (401, "clientState does not match")
    assert malformed.value.status == 400
    assert connector.handshake(method="POST", query={"validationToken": "tok-123"}, body=b"") == (
        200,
        "text/plain",
        b"tok-123",
    )
    assert connector.handshake(method="POST", query={}, body=b"") is None


# Bad input to the sandbox -------------------------------------------------------------------------
def test_bad_requests_get_business_centrals_error_shape(bc, raw: httpx.Client) -> None:
    malformed = raw.post(f"{COMPANY}/customers", content=b"{not json", headers={"Content-Type": "application/json"})
    unknown_set = raw.get(f"{COMPANY}/widgets")
    unknown_field = raw.post(f"{COMPANY}/customers", json={"displayName": "X", "colour": "red"})
    bad_filter = raw.get(f"{COMPANY}/customers", params={"$filter": "number eq 42"})
    unknown_company = raw.get(f"{API}/companies(5d2f7c8e-0000-4a1b-9c00-00000000ffff)/customers")
    no_token = httpx.get(f"{bc.url}{COMPANY}/customers")
    wrong_secret = httpx.post(
        f"{bc.url}/sandbox-tenant/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "nope"},
    )

    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "BadRequest")
    assert (unknown_set.status_code, unknown_set.json()["error"]["code"]) == (404, "BadRequest_ResourceNotFound")
    assert (unknown_field.status_code, unknown_field.json()["error"]["code"]) == (400, "BadRequest")
    assert "The property 'colour' does not exist" in unknown_field.json()["error"]["message"]
    assert (bad_filter.status_code, bad_filter.json()["error"]["code"]) == (400, "BadRequest")
    assert (unknown_company.status_code, unknown_company.json()["error"]["code"]) == (404, "Internal_CompanyNotFound")
    assert (no_token.status_code, no_token.json()["error"]["code"]) == (401, "Authentication_InvalidCredentials")
    assert wrong_secret.status_code == 401 and wrong_secret.json()["error"] == "invalid_client"
    assert wrong_secret.json()["error_description"].startswith("AADSTS7000215")
    assert "CorrelationId" in malformed.json()["error"]["message"]


def test_an_invoice_paid_by_two_payments_is_paid_with_both_applications(connector: BusinessCentralConnector) -> None:
    from decimal import Decimal

    draft = draft_invoice(connector, "BE-TWO")
    (before,) = connector.ledger_invoices(invoice_id=draft.external_id)
    assert (before.status, before.posted, before.open_balance) == ("draft", False, Decimal("0.00"))
    connector.post_invoice(draft.external_id)
    for key, day, amount in (("PAY-T1", "2026-07-10", -500), ("PAY-T2", "2026-07-24", -700)):
        connector.upsert(
            entity="customerPayments",
            key=key,
            fields={
                "customerNumber": "C-INV",
                "amount": amount,
                "appliesToInvoiceId": draft.external_id,
                "postingDate": day,
            },
        )
        (now,) = connector.ledger_invoices(invoice_id=draft.external_id)
        if key == "PAY-T1":  # 1,200 − 500: BC keeps it Open with 700 remaining
            assert (now.status, now.open_balance, now.source_status) == ("partly_paid", Decimal("700.00"), "Open")
    assert (now.status, now.open_balance, now.source_status) == ("paid", Decimal("0.00"), "Paid")
    assert sorted((p.amount, p.applied_on.isoformat()) for p in now.payments) == [
        (Decimal("500.00"), "2026-07-10"),
        (Decimal("700.00"), "2026-07-24"),
    ]
    assert now.posting_date.isoformat() == "2026-06-30" and now.due_date.isoformat() == "2026-07-30"


def test_a_cancelled_invoice_is_voided_and_owes_nothing(connector: BusinessCentralConnector) -> None:
    draft = draft_invoice(connector, "BE-CANCEL")
    connector.post_invoice(draft.external_id)
    connector.send("POST", f"{connector.company_path()}/salesInvoices({draft.external_id})/Microsoft.NAV.cancel")
    (found,) = connector.ledger_invoices(invoice_id=draft.external_id)
    assert (found.status, found.source_status, str(found.open_balance)) == ("voided", "Canceled", "0.00")
