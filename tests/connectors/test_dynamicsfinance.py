"""Contract tests: the Dynamics 365 Finance connector against its sandbox, over real HTTP.

What each test holds the connector to is D365's documented protocol (VENDOR_APIS.md §5b): an Entra
client-credentials token for the environment's /.default scope, OData v4 entity sets under /data,
@odata.nextLink paging, dataAreaId per legal entity with cross-company=true, $batch change sets
applied all or nothing, 429 with Retry-After, and the {"error": {..., "innererror"}} envelope.
Figures are worked out by hand in each test."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from connectors import base, limiter
from connectors.base import InvoiceStatus
from connectors.dynamicsfinance import BatchRequest, DynamicsFinanceConnector, batch_decode, batch_encode
from connectors.errors import RejectedError, TransientError

pytestmark = pytest.mark.django_db

CREDENTIALS = {
    "tenant": "sandbox-tenant",
    "client_id": "sandbox-client",
    "client_secret": "sandbox-secret",
    "data_area_id": "demf",
}


@pytest.fixture
def d365(sandbox_factory):
    return sandbox_factory("dynamicsfinance")


def make_connector(d365, entities, **overrides: str) -> DynamicsFinanceConnector:
    from pscsync.services import connection_save

    connection = connection_save(
        slug="d365-de",
        name="Dynamics 365 Finance DE",
        kind="erp",
        vendor="dynamicsfinance",
        base_url=d365.url,
        entities=[entities["uk"]],
        credentials={**CREDENTIALS, **overrides},
        is_sandbox=True,
    )
    return DynamicsFinanceConnector(connection)


@pytest.fixture
def connector(d365, entities) -> DynamicsFinanceConnector:
    base._tokens.clear()  # the sandbox was reset: tokens cached by an earlier test are gone there
    return make_connector(d365, entities)


@pytest.fixture
def raw(d365) -> Iterator[httpx.Client]:
    """A plain HTTP client holding a sandbox token, for what the connector never sends."""
    answer = httpx.post(
        f"{d365.url}/sandbox-tenant/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
            "scope": f"{d365.url}/.default",
        },
    )
    token = answer.json()["access_token"]
    with httpx.Client(base_url=d365.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield client


def journal(d365, method: str, pattern: str) -> list[dict]:
    return [e for e in d365.journal()["entries"] if e["method"] == method and re.search(pattern, e["path"])]


def customer(connector: DynamicsFinanceConnector, key: str, name: str = "Kunde GmbH", **extra: object) -> None:
    fields = {
        "OrganizationName": name,
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "EUR",
        "SalesTaxGroup": "DE-VAT19",
    }
    connector.upsert(entity="CustomersV3", key=key, fields={**fields, **extra})


# Auth -----------------------------------------------------------------------------------------------
def test_the_token_is_a_client_credentials_grant_for_the_environment(d365, connector) -> None:
    connector.ping()
    connector.ping()  # the token is cached per connection: one grant for both calls

    grants = journal(d365, "POST", r"^/sandbox-tenant/oauth2/v2\.0/token$")
    assert len(grants) == 1 and grants[0]["status"] == 200


def test_a_wrong_client_secret_is_reported_in_entra_words(d365, entities) -> None:
    base._tokens.clear()
    result = make_connector(d365, entities, client_secret="not-the-secret").check()

    assert not result.ok
    assert "Microsoft Entra ID refused the Dynamics 365 Finance credentials: AADSTS7000215" in result.message


def test_a_token_for_another_resource_is_refused(d365) -> None:
    answer = httpx.post(
        f"{d365.url}/sandbox-tenant/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client",
            "client_secret": "sandbox-secret",
            "scope": "https://api.businesscentral.dynamics.com/.default",
        },
    )
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_scope"


# Legal entities and paging -----------------------------------------------------------------------------
def test_reading_follows_next_links_within_the_connections_legal_entity(
    connector, raw, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        customer(connector, f"C-{n:03d}", f"Kunde {n}")
    # A customer of another legal entity (usmf, the app user's default company) is not ours.
    raw.post(
        "/data/CustomersV3",
        json={
            "dataAreaId": "usmf",
            "CustomerAccount": "C-US",
            "OrganizationName": "US Inc",
            "CustomerGroupId": "10",
            "SalesCurrencyCode": "USD",
        },
    ).raise_for_status()
    connector.page_size = 3
    pages: list[str] = []
    send = connector.send
    monkeypatch.setattr(connector, "send", lambda method, path, **kw: pages.append(path) or send(method, path, **kw))

    found = list(connector.read("CustomersV3"))

    assert [c["CustomerAccount"] for c in found] == [f"C-{n:03d}" for n in range(7)]
    assert {c["dataAreaId"] for c in found} == {"demf"}
    assert len(pages) == 3  # pages of 3, 3 and 1, each reached by the previous page's @odata.nextLink
    assert all("$skiptoken=" in page and "cross-company=true" in page for page in pages[1:])


def test_another_companys_records_need_cross_company(connector, raw) -> None:
    customer(connector, "C-DE1")

    plain = raw.get("/data/CustomersV3").json()["value"]
    crossed = raw.get("/data/CustomersV3", params={"cross-company": "true"}).json()["value"]
    by_key = raw.get("/data/CustomersV3(dataAreaId='demf',CustomerAccount='C-DE1')")

    assert plain == []  # the mapped user's default company is usmf
    assert [(c["dataAreaId"], c["CustomerAccount"]) for c in crossed] == [("demf", "C-DE1")]
    assert by_key.status_code == 404
    assert connector.lookup(entity="customer", key="C-DE1") is not None  # the connector always says it


# Writes -----------------------------------------------------------------------------------------------
def test_an_upsert_writes_only_what_differs_and_a_repeat_writes_nothing(d365, connector) -> None:
    customer(connector, "C-1", "Alpha GmbH")
    customer(connector, "C-1", "Alpha GmbH")
    customer(connector, "C-1", "Alpha AG")

    writes = [e for e in d365.journal()["entries"] if e["method"] in ("POST", "PATCH") and "/data/" in e["path"]]
    # one create, no write for the repeat, one PATCH: each inside its own $batch
    assert [e["method"] for e in writes if e["path"] != "/data/$batch"] == ["POST", "PATCH"]
    assert connector.lookup(entity="customer", key="C-1").response["OrganizationName"] == "Alpha AG"


def test_many_customers_go_in_one_batch_and_a_bad_one_fails_alone(d365, connector) -> None:
    records = [
        (
            f"C-B{n}",
            {"OrganizationName": f"Batch {n}", "CustomerGroupId": "99" if n == 2 else "30", "SalesCurrencyCode": "EUR"},
        )
        for n in range(5)
    ]

    with pytest.raises(RejectedError) as caught:
        connector.upsert_many(entity="CustomersV3", records=records)

    assert len(journal(d365, "POST", r"^/data/\$batch$")) == 1
    assert caught.value.http_status == 400
    assert "Customer group 99 does not exist" in caught.value.message
    kept = sorted(c["CustomerAccount"] for c in connector.read("CustomersV3"))
    assert kept == ["C-B0", "C-B1", "C-B3", "C-B4"]  # each record its own change set


def test_a_contract_and_its_project_land_together_or_not_at_all(connector) -> None:
    fields = connector.shape("contract", {"Name": "Cloud migration", "SalesCurrency": "EUR", "_customer": "C-NONE"})

    with pytest.raises(RejectedError) as caught:
        connector.upsert(entity="ProjectContracts", key="P-006A", fields=fields)

    assert "Customer account C-NONE does not exist in company demf" in caught.value.message
    assert connector.lookup(entity="contract", key="P-006A") is None  # the change set was undone
    customer(connector, "C-OK")
    fields = connector.shape("contract", {"Name": "Cloud migration", "SalesCurrency": "EUR", "_customer": "C-OK"})
    written = connector.upsert(entity="ProjectContracts", key="P-006A", fields=fields)
    project = connector.lookup(entity="project", key="P-006A")
    assert written.created and project is not None
    assert (project.response["ProjectContractID"], project.response["CustomerAccount"]) == ("P-006A", "C-OK")


def test_the_batch_format_round_trips() -> None:
    body = batch_encode([[BatchRequest("POST", "http://x/data/CustomersV3", {"a": 1})]], "b1").decode()
    assert body.startswith("--batch_b1\r\nContent-Type: multipart/mixed; boundary=changeset_b1_1\r\n")
    answer = (
        "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_1\r\n\r\n"
        "--changesetresponse_1\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 201 Created\r\n"
        'Content-Type: application/json\r\n\r\n{"CustomerAccount": "C-1"}\r\n--changesetresponse_1--\r\n'
        "--batchresponse_1\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 429 Too Many Requests\r\n"
        "Retry-After: 9\r\n\r\n\r\n--batchresponse_1--\r\n"
    )
    decoded = batch_decode(answer, "multipart/mixed; boundary=batchresponse_1")
    assert [[a.status for a in cs] for cs in decoded] == [[201], [429]]
    assert decoded[0][0].body == {"CustomerAccount": "C-1"} and decoded[1][0].headers["retry-after"] == "9"


# Failures -----------------------------------------------------------------------------------------------
def test_throttling_is_transient_with_the_retry_after(d365, connector) -> None:
    d365.fault(error_status=429, retry_after=7, match="/data/CustomersV3", count=1)

    with pytest.raises(TransientError) as caught:
        connector.lookup(entity="customer", key="C-1")

    assert caught.value.retry_after == 7
    assert "throttling" in caught.value.message
    d365.clear_faults()
    d365.fault(rate_limit_per_minute=2)
    connector.ping()
    connector.ping()
    with pytest.raises(TransientError) as limited:
        connector.ping()
    assert limited.value.retry_after and limited.value.retry_after > 0


def test_throttling_inside_a_batch_is_transient_too(d365, connector) -> None:
    customer(connector, "C-T0")
    d365.fault(error_status=429, retry_after=4, match="/data/CustomersV3", count=1)

    with pytest.raises(TransientError) as caught:
        connector.upsert_many(
            entity="CustomersV3",
            records=[
                ("C-T1", {"OrganizationName": "T1", "CustomerGroupId": "30", "SalesCurrencyCode": "EUR"}),
                ("C-T2", {"OrganizationName": "T2", "CustomerGroupId": "30", "SalesCurrencyCode": "EUR"}),
            ],
        )

    assert caught.value.retry_after == 4


def test_the_error_envelope_reads_as_the_infolog(connector) -> None:
    with pytest.raises(RejectedError) as caught:
        customer(connector, "C-JPY", SalesCurrencyCode="JPY")

    assert caught.value.http_status == 400
    assert caught.value.message == (
        "Dynamics 365 Finance rejected the customer: Write failed for table row of type 'CustCustomerV3Entity'. "
        "Infolog: Error: Currency JPY does not exist."
    )
    inner = caught.value.response["error"]["innererror"]
    assert caught.value.response["error"]["message"] == "An error has occurred." and "stacktrace" in inner


# The ledger -----------------------------------------------------------------------------------------------
def invoice(connector: DynamicsFinanceConnector, key: str) -> str:
    customer(connector, "C-INV", "Rechnung GmbH")
    lines = connector.invoice_lines(
        [
            {"kind": "Time", "label": "[TE-1] Time 2026-11-03", "quantity": "10", "unit_price": "150.00"},
            {"kind": "Expense", "label": "[EX-2] Expense 2026-11-04", "quantity": "1", "unit_price": "250.00"},
        ],
        batch_date="2026-11-05",
        value_maps={"main_account": {"Time": "401100", "Expense": "401300"}},
    )
    refs = connector.references("invoice", customer_key="C-INV", lines=lines)
    fields = {"InvoiceDate": "2026-11-05", "CurrencyCode": "EUR", "CustomerRequisition": "P-006A", **refs}
    return connector.upsert(entity="invoice", key=key, fields=connector.shape("invoice", fields)).external_id


def test_an_invoice_goes_from_draft_to_posted_to_paid_in_ledger_words(d365, connector, raw) -> None:
    invoice_id = invoice(connector, "I-a0B1")
    again = invoice(connector, "I-a0B1")  # a repeat writes no second set of lines
    assert again == invoice_id

    (draft,) = connector.ledger_invoices(invoice_id=invoice_id)
    # 10 x 150.00 + 1 x 250.00 = 1,750.00 net; German VAT 19% = 332.50; total 2,082.50.
    assert (draft.status, draft.total, draft.tax, draft.open_balance) == (
        InvoiceStatus.DRAFT,
        Decimal("2082.50"),
        Decimal("332.50"),
        Decimal("0.00"),
    )
    assert not draft.posted and draft.key == "I-a0B1" and draft.project_key == "P-006A"

    httpx.post(f"{d365.url}/_sandbox/post-invoice", json={"dataAreaId": "demf", "InvoiceIdentifier": int(invoice_id)})
    (posted,) = connector.ledger_invoices(project_key="P-006A")
    assert (posted.status, posted.number, posted.open_balance) == (
        InvoiceStatus.POSTED,
        "FTI-000001",
        Decimal("2082.50"),
    )

    journal_batch = raw.post(
        "/data/CustomerPaymentJournalHeaders?cross-company=true", json={"dataAreaId": "demf", "JournalName": "CustPay"}
    ).json()["JournalBatchNumber"]
    for amount in (1000.00, 1082.50):
        raw.post(
            "/data/CustomerPaymentJournalLines?cross-company=true",
            json={
                "dataAreaId": "demf",
                "JournalBatchNumber": journal_batch,
                "AccountDisplayValue": "C-INV",
                "CreditAmount": amount,
                "TransactionDate": "2026-11-20T12:00:00Z",
                "MarkedInvoice": "FTI-000001",
            },
        ).raise_for_status()
        (paid,) = connector.ledger_invoices(invoice_id=invoice_id)
        if amount == 1000.00:
            # 2,082.50 - 1,000.00 = 1,082.50 still owed
            assert (paid.status, paid.open_balance) == (InvoiceStatus.PARTLY_PAID, Decimal("1082.50"))
    assert (paid.status, paid.open_balance, paid.paid_amount) == (
        InvoiceStatus.PAID,
        Decimal("0.00"),
        Decimal("2082.50"),
    )
    assert [p.applied_on for p in paid.payments] == [dt.date(2026, 11, 20)] * 2

    with pytest.raises(RejectedError, match="is posted and cannot be changed"):
        connector.upsert(
            entity="invoice", key="I-a0B1", fields={"InvoiceDate": "2026-11-06T12:00:00Z", "CustomerAccount": "C-INV"}
        )


def test_a_draft_invoice_can_be_withdrawn_and_a_posted_one_cannot(d365, connector) -> None:
    draft = invoice(connector, "I-W1")
    assert connector.withdraw(entity="invoice", record_id=draft).output == {"already_gone": False}
    assert connector.withdraw(entity="invoice", record_id=draft).output == {"already_gone": True}
    posted = invoice(connector, "I-W2")
    httpx.post(f"{d365.url}/_sandbox/post-invoice", json={"dataAreaId": "demf", "InvoiceIdentifier": int(posted)})

    with pytest.raises(RejectedError, match="it is posted"):
        connector.withdraw(entity="invoice", record_id=posted)
    assert connector.lookup(entity="invoice", key="I-W2") is not None


def test_reconciliation_reads_customers_contracts_and_invoices_with_their_lines(connector) -> None:
    invoice(connector, "I-R1")
    connector.upsert(entity="ProjectContracts", key="P-006R", fields={"Name": "Audit", "SalesCurrency": "EUR"})

    held = connector.erp_holdings(currency="EUR", value_maps={})

    assert held.customers["C-INV"].tax_code == "DE-VAT19"
    assert list(held.contracts) == ["006R"] and held.contracts["006R"].amount is None
    (inv,) = held.invoices
    assert [(line.ref, line.amount) for line in inv.lines] == [
        ("TE-1", Decimal("1500.00")),
        ("EX-2", Decimal("250.00")),
    ]
    assert inv.net == Decimal("1750.00") and inv.ledger is not None and inv.ledger.status == InvoiceStatus.DRAFT


# Schema and rates -----------------------------------------------------------------------------------------
def test_metadata_describes_the_real_entity_sets(raw) -> None:
    text = raw.get("/data/$metadata").text

    assert '<EntitySet Name="CustomersV3" EntityType="Microsoft.Dynamics.DataEntities.CustomerV3" />' in text
    assert '<PropertyRef Name="dataAreaId" /><PropertyRef Name="CustomerAccount" />' in text
    assert '<EntitySet Name="FreeTextInvoiceHeaders"' in text and '<EntitySet Name="ExchangeRates"' in text


def test_exchange_rates_are_read_per_unit_into_the_legal_entitys_currency(d365, connector) -> None:
    rates = [
        {"currency": "EUR", "date": "2026-10-01", "usd": "1.10"},
        {"currency": "GBP", "date": "2026-10-01", "usd": "1.25"},
    ]
    httpx.post(f"{d365.url}/_sandbox/rates", json={"rates": rates}).raise_for_status()

    found = {(r.from_currency, r.to_currency): r for r in connector.exchange_rates(since=dt.date(2026, 10, 1))}

    # The connection serves the GBP entity: 1 EUR = 1.10 / 1.25 = 0.88 GBP (D365 quotes it per
    # 100 units: 88.0); 1 USD = 1 / 1.25 = 0.80 GBP. Rates into other currencies are not its ledger's.
    assert set(found) == {("EUR", "GBP"), ("USD", "GBP")}
    assert (found[("EUR", "GBP")].rate, found[("USD", "GBP")].rate) == (Decimal("0.88000000"), Decimal("0.80000000"))
    assert found[("EUR", "GBP")].effective_date == dt.date(2026, 10, 1)


def test_an_expired_token_is_replaced(d365, connector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "TOKEN_MARGIN_SECONDS", 0)
    d365.fault(token_lifetime_seconds=1)
    connector.ping()
    time.sleep(1.3)
    connector.ping()

    assert len(journal(d365, "POST", r"oauth2/v2\.0/token$")) == 2


def test_a_server_error_is_transient_on_read_and_unknown_outcome_on_a_write_batch(d365, connector) -> None:
    from connectors.errors import UnknownOutcomeError

    d365.fault(error_status=503, match="/data/CustomersV3", count=1)
    with pytest.raises(TransientError) as on_read:
        list(connector.read("CustomersV3"))
    assert "Dynamics 365 Finance failed while handling the customer (503" in on_read.value.message

    customer(connector, "C-5XX")
    d365.fault(error_status=500, match="/data/$batch", count=1)  # the write may or may not have landed
    with pytest.raises(UnknownOutcomeError):
        customer(connector, "C-5XX", "Renamed GmbH")


def test_many_writes_cost_two_calls_not_one_per_record(d365, connector, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = connector.call
    monkeypatch.setattr(connector, "call", lambda method, url, **kw: calls.append(method) or real(method, url, **kw))
    records = [
        (f"C-M{n:02d}", {"OrganizationName": f"Mass {n}", "CustomerGroupId": "30", "SalesCurrencyCode": "EUR"})
        for n in range(20)
    ]

    written = connector.upsert_many(entity="CustomersV3", records=records)

    assert [w.created for w in written] == [True] * 20
    assert calls.count("GET") == 1 and calls.count("POST") == 2  # one lookup, one $batch (and the token)


def test_several_contracts_each_land_with_their_project(connector) -> None:
    customer(connector, "C-TWO")
    shaped = [
        (key, connector.shape("contract", {"Name": f"Contract {key}", "SalesCurrency": "EUR", "_customer": "C-TWO"}))
        for key in ("P-0061", "P-0062")
    ]

    written = connector.upsert_many(entity="ProjectContracts", records=shaped)

    assert [w.external_id for w in written] == ["P-0061", "P-0062"]
    projects = {p["ProjectID"]: p["ProjectContractID"] for p in connector.read("Projects")}
    assert projects == {"P-0061": "P-0061", "P-0062": "P-0062"}


def test_a_key_with_characters_unsafe_in_a_path_is_found_by_it(connector) -> None:
    customer(connector, "C-A/B #1 'x'")

    found = connector.lookup(entity="customer", key="C-A/B #1 'x'")

    assert found is not None and found.response["CustomerAccount"] == "C-A/B #1 'x'"
    assert connector.ledger_invoices(invoice_id="not-a-number") == []


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from connectors import http

    monkeypatch.setattr(http, "READ_TIMEOUT", 1.0)
    http.reset_client()
    yield
    http.reset_client()


@pytest.mark.usefixtures("short_timeout")
def test_a_batch_that_times_out_is_an_unknown_outcome_and_the_lookup_tells(d365, connector) -> None:
    from connectors.errors import UnknownOutcomeError

    d365.fault(timeout=True, timeout_seconds=2, match="/data/$batch", count=1)
    with pytest.raises(UnknownOutcomeError):
        customer(connector, "C-SLOW")

    # The sandbox dropped the request before applying it: the engine's lookup finds nothing, so it writes again.
    assert connector.lookup(entity="customer", key="C-SLOW") is None
    customer(connector, "C-SLOW")
    assert connector.lookup(entity="customer", key="C-SLOW") is not None


def _new_customer(connector: DynamicsFinanceConnector, key: str) -> BatchRequest:
    fields = {"dataAreaId": "demf", "CustomerAccount": key, "OrganizationName": key}
    fields |= {"CustomerGroupId": "30", "SalesCurrencyCode": "EUR"}
    return BatchRequest("POST", connector.data_url("CustomersV3?cross-company=true"), fields)


@pytest.mark.parametrize("where", ["inside", "on"])
def test_a_429_in_or_on_a_batch_pauses_the_connection_until_its_retry_after(
    d365, connector, settings, where: str
) -> None:
    # D365 throttles the app, not one request: its Retry-After holds every call of the connection,
    # in this worker and the others (the shared limiter in Redis), whether the 429 answered one
    # part of a $batch or the $batch itself.
    connector.ping()  # the token is fetched before the throttling starts
    match = "/data/CustomersV3" if where == "inside" else "/data/$batch"
    d365.fault(error_status=429, retry_after=2, match=match, count=1)

    with pytest.raises(TransientError) as throttled:
        for answer in connector.batch([[_new_customer(connector, "C-B1")]])[0]:
            connector.raise_for_answer(answer)
    throttled_at = time.monotonic()
    assert (throttled.value.http_status, throttled.value.retry_after) == (429, 2)
    assert "Dynamics 365 Finance is throttling our requests" in throttled.value.message
    # The health page counts the 429 either way: one $batch call, one 429 (inside, the call
    # itself was answered 200 and only its part was throttled).
    seen = limiter.usage([connector.connection.pk])
    assert seen is not None and seen[connector.connection.pk].rate_limited == 1

    # The next call, if it may not wait that long, is deferred and nothing reaches D365.
    settings.LIMITER_MAX_WAIT_SECONDS = 0.5
    written = len(journal(d365, "POST", r"^/data/"))
    with pytest.raises(limiter.SlotDeferred) as deferred:
        connector.batch([[_new_customer(connector, "C-B2")]])
    assert "the vendor asked us to pause" in deferred.value.message
    assert len(journal(d365, "POST", r"^/data/")) == written

    # If it may wait, it goes out once the two seconds are over, and lands.
    settings.LIMITER_MAX_WAIT_SECONDS = 10
    [[answer]] = connector.batch([[_new_customer(connector, "C-B2")]])
    assert time.monotonic() - throttled_at >= 2 - 0.1  # 0.1 s: Redis's clock against ours
    assert answer.status == 201, answer.body
    assert connector.lookup(entity="customer", key="C-B2") is not None
