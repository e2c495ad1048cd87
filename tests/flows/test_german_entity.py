"""The third legal entity: the German firm (EUR) on Salesforce + Kantata + Dynamics 365 Finance,
through all five flows and reconciliation, against the sandboxes over HTTP. Nothing in the
flows knows Dynamics 365 Finance: it is one connector module and its shipped mappings.

Figures worked by hand: a Kantata invoice of two approved days at 120.00/h, 8 h and 6.5 h, is
14.5 h x 120.00 = 1,740.00 net; the customer's sales tax group DE-VAT19 adds 19 %: 330.60;
the invoice is 2,070.60 EUR."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from connectors import base
from pscsync.models import Handoff, Mismatch
from tests.connectors.conftest import sandbox_factory  # noqa: F401  (the fixture, shared)
from tests.flows.conftest import Firm, run, trigger, won_deal

pytestmark = pytest.mark.django_db


@pytest.fixture
def firm_de(sandbox_factory, entities, monkeypatch):  # noqa: F811
    from demo.firm import firm_connections_save
    from pscsync.models import LegalEntity

    monkeypatch.setattr(base, "_tokens", {})
    de = LegalEntity.objects.create(code="de", name="Acme Consulting GmbH", currency="EUR", country="DE")
    names = ("salesforce", "kantata", "netsuite", "businesscentral", "dynamicsfinance", "kantata-de")
    sandboxes = {name: sandbox_factory(name) for name in names}
    connections = firm_connections_save(
        us=entities["us"], uk=entities["uk"], de=de, sandbox_urls={name: s.url for name, s in sandboxes.items()}
    )
    return Firm(connections=connections, sandboxes=sandboxes)


def german_deal(firm: Firm, key: str, **overrides: object) -> dict[str, str]:
    fields: dict[str, object] = {
        "CurrencyIsoCode": "EUR",
        "Billing_Model__c": "Time and Materials",
        "Service_Line__c": "Advisory",
        "Amount": 90000,
        "account": {"BillingCountry": "DE", "Tax_Profile__c": "DE-VAT19"},
        **overrides,
    }
    return won_deal(firm, entity="de", key=key, **fields)


def provisioned(firm: Firm, key: str) -> dict[str, str]:
    deal = german_deal(firm, key)
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    return deal


def kantata_invoice(firm: Firm, opportunity: str) -> str:
    """Two approved days at 120/h (8 h and 6.5 h) invoiced in Kantata on 14 Dec: 1,740.00."""
    kantata = firm.connector("kantata-de")
    workspace = kantata.lookup(entity="workspaces", key=f"P-{opportunity}").external_id
    entries = []
    for day, minutes in (("2026-12-07", 480), ("2026-12-08", 390)):
        entry = {
            "workspace_id": workspace,
            "date_performed": day,
            "time_in_minutes": minutes,
            "rate_in_cents": 12000,
            "billable": True,
            "approved": True,
        }
        answer = kantata.send("POST", "/api/v1/time_entries", json={"time_entry": entry}).body
        entries.append(next(iter(answer["time_entries"])))
    invoice = {"workspace_id": workspace, "time_entry_ids": entries, "invoice_date": "2026-12-14"}
    return next(iter(kantata.send("POST", "/api/v1/invoices", json={"invoice": invoice}).body["invoices"]))


def polled(firm: Firm) -> list[Handoff]:
    """Poll D365 as beat does and run the handoffs the changes opened."""
    from pscsync.intake import connection_poll

    connection = firm.connections["dynamicsfinance-de"]
    before = set(Handoff.objects.values_list("pk", flat=True))
    connection_poll(connection=connection)
    opened = Handoff.objects.exclude(pk__in=before).order_by("pk")
    return [run(h) for h in opened]


def opportunity(firm: Firm, opp: str) -> dict:
    fields = ["Billing_Status__c", "Amount_Invoiced__c", "Amount_Paid__c", "Project_Status__c", "ERP_Customer_Id__c"]
    return next(firm.salesforce.read("opportunity", where={"Id": opp}, fields=fields))


def test_a_german_deal_becomes_a_d365_customer_and_project_contract_and_a_kantata_project(firm_de) -> None:
    deal = provisioned(firm_de, "81")

    opp, d365 = deal["opportunity"], firm_de.connector("dynamicsfinance-de")
    customer = d365.lookup(entity="customer", key=f"C-{deal['account']}").response
    assert (customer["dataAreaId"], customer["SalesCurrencyCode"], customer["SalesTaxGroup"]) == (
        "demf",
        "EUR",
        "DE-VAT19",
    )
    assert customer["AddressCountryRegionId"] == "DEU"
    project = d365.lookup(entity="project", key=f"P-{opp}").response
    assert (project["ProjectContractID"], project["CustomerAccount"]) == (f"P-{opp}", f"C-{deal['account']}")
    workspace = firm_de.connector("kantata-de").lookup(entity="workspaces", key=f"P-{opp}").response
    assert workspace["currency"] == "EUR" and workspace["price"] == 9000000
    assert opportunity(firm_de, opp)["ERP_Customer_Id__c"] == f"C-{deal['account']}"


def test_a_kantata_invoice_becomes_a_d365_invoice_then_payment_in_full_shows_paid(firm_de) -> None:
    deal = provisioned(firm_de, "82")
    invoice_id = kantata_invoice(firm_de, deal["opportunity"])
    billed = run(trigger(firm_de, "project-to-bill", f"kantata-invoice:{invoice_id}", slug="kantata-de"))
    assert billed.status == Handoff.Status.SUCCEEDED, billed.last_error_message

    d365 = firm_de.connector("dynamicsfinance-de")
    found = d365.lookup(entity="invoice", key=f"I-K{invoice_id}")
    (draft,) = d365.ledger_invoices(invoice_id=found.external_id)
    assert (draft.total, draft.tax, draft.currency) == (Decimal("2070.60"), Decimal("330.60"), "EUR")
    drafted = run(trigger(firm_de, "bill-to-cash", f"d365-invoice:{found.external_id}", slug="dynamicsfinance-de"))
    assert drafted.status == Handoff.Status.SUCCEEDED, drafted.last_error_message
    assert opportunity(firm_de, deal["opportunity"])["Billing_Status__c"] == "Invoice in draft"

    # Finance posts it in D365 and the customer pays in full; pscsync hears both by polling D365.
    sandbox = firm_de.sandboxes["dynamicsfinance"].url
    httpx.post(
        f"{sandbox}/_sandbox/post-invoice", json={"dataAreaId": "demf", "InvoiceIdentifier": int(found.external_id)}
    )
    posted = polled(firm_de)
    assert [(h.flow, h.business_key, h.status) for h in posted] == [
        ("bill-to-cash", f"I-K{invoice_id}", Handoff.Status.SUCCEEDED)
    ]
    assert opportunity(firm_de, deal["opportunity"])["Billing_Status__c"] == "Invoiced"
    batch = d365.send(
        "POST",
        d365.data_url("CustomerPaymentJournalHeaders?cross-company=true"),
        json={"dataAreaId": "demf", "JournalName": "CustPay"},
    ).body["JournalBatchNumber"]
    d365.send(
        "POST",
        d365.data_url("CustomerPaymentJournalLines?cross-company=true"),
        json={
            "dataAreaId": "demf",
            "JournalBatchNumber": batch,
            "AccountDisplayValue": f"C-{deal['account']}",
            "CreditAmount": 2070.60,
            "TransactionDate": "2027-01-12T12:00:00Z",
            "MarkedInvoice": "FTI-000001",
        },
    )
    (paid,) = polled(firm_de)

    assert paid.status == Handoff.Status.SUCCEEDED, paid.last_error_message
    assert paid.business_key == f"d365-payment:{batch}:1.0" and polled(firm_de) == []  # the cursor moved on
    status = opportunity(firm_de, deal["opportunity"])
    assert status["Billing_Status__c"] == "Paid" and float(status["Amount_Paid__c"]) == 2070.60
    marked = next(firm_de.connector("kantata-de").read("invoices", where={"only": invoice_id}))
    assert marked["status"] == "accepted payment"


def test_a_german_amendment_and_pipeline_demand_reach_kantata(firm_de) -> None:
    deal = provisioned(firm_de, "83")
    firm_de.salesforce.update(
        entity="opportunity", record_id=deal["opportunity"], fields={"Amount": 99000, "Contract_Version__c": 2}
    )
    amended = run(trigger(firm_de, "contract-change", deal["opportunity"]))
    assert amended.status == Handoff.Status.SUCCEEDED, amended.last_error_message
    kantata = firm_de.connector("kantata-de")
    assert kantata.lookup(entity="workspaces", key=f"P-{deal['opportunity']}").response["price"] == 9900000

    pipeline = german_deal(firm_de, "84", StageName="Proposal", Probability=60)
    forecast = run(trigger(firm_de, "pipeline-to-demand", pipeline["opportunity"]))
    assert forecast.status == Handoff.Status.SUCCEEDED, forecast.last_error_message
    workspace = kantata.lookup(entity="workspaces", key=f"P-{pipeline['opportunity']}").external_id
    stories = [s["title"] for s in kantata.read("stories", where={"workspace_id": workspace})]
    assert any(title.startswith("Resource request") for title in stories)


def test_the_german_entity_reconciles_cleanly_after_its_flows(firm_de) -> None:
    from pscsync.reconciliation.services import reconcile

    deal = provisioned(firm_de, "85")
    invoice_id = kantata_invoice(firm_de, deal["opportunity"])
    assert run(trigger(firm_de, "project-to-bill", f"kantata-invoice:{invoice_id}", slug="kantata-de")).status == (
        Handoff.Status.SUCCEEDED
    )
    # Finance posts the invoice in D365: only a posted invoice is revenue.
    found = firm_de.connector("dynamicsfinance-de").lookup(entity="invoice", key=f"I-K{invoice_id}")
    httpx.post(
        f"{firm_de.sandboxes['dynamicsfinance'].url}/_sandbox/post-invoice",
        json={"dataAreaId": "demf", "InvoiceIdentifier": int(found.external_id)},
    )

    runs = reconcile(entity="de")

    assert all(r.status == "complete" for r in runs), [(r.legal_entity_id, r.error) for r in runs]
    assert list(Mismatch.objects.filter(status="open").values_list("explanation", flat=True)) == []

    # Someone makes the customer tax-exempt in D365 while Salesforce says DE-VAT19: caught.
    d365 = firm_de.connector("dynamicsfinance-de")
    d365.upsert(entity="customer", key=f"C-{deal['account']}", fields={"SalesTaxGroup": "DE-EXEMPT"})
    reconcile(entity="de")
    taxed = list(Mismatch.objects.filter(status="open", cause="tax_code"))
    assert taxed and all(f"customer C-{deal['account']}" in m.explanation for m in taxed)
    assert all("has tax code DE-EXEMPT in Dynamics 365 Finance (DE)" in m.explanation for m in taxed)

    # Another batch is billed and its draft is deleted in D365 (a posted one cannot be):
    # reconciliation reads D365 and finds the batch unbilled.
    other = provisioned(firm_de, "86")
    other_invoice = kantata_invoice(firm_de, other["opportunity"])
    assert run(trigger(firm_de, "project-to-bill", f"kantata-invoice:{other_invoice}", slug="kantata-de")).status == (
        Handoff.Status.SUCCEEDED
    )
    d365.withdraw(entity="invoice", record_id=d365.lookup(entity="invoice", key=f"I-K{other_invoice}").external_id)
    reconcile(entity="de")
    missing = Mismatch.objects.filter(status="open", cause="missing_record")
    assert {m.subject_key for m in missing} == {f"P-{other['opportunity']}"}
    assert all(f"has no invoice I-K{other_invoice} in Dynamics 365 Finance (DE)" in m.explanation for m in missing)


def test_the_german_ledgers_exchange_rates_feed_the_rate_table(firm_de) -> None:
    import datetime as dt

    from dashboards.fx import fx_rates_read
    from dashboards.models import ExchangeRate

    market = [
        {"currency": "GBP", "date": "2026-10-01", "usd": "1.25"},
        {"currency": "EUR", "date": "2026-10-01", "usd": "1.10"},
    ]
    httpx.post(f"{firm_de.sandboxes['dynamicsfinance'].url}/_sandbox/rates", json={"rates": market}).raise_for_status()
    for slug in ("netsuite-us", "businesscentral-uk"):  # only D365 is read here
        firm_de.connections[slug].is_active = False
        firm_de.connections[slug].save(update_fields=["is_active"])

    summary = fx_rates_read(now=dt.datetime(2026, 10, 20, 6, tzinfo=dt.UTC))

    assert summary["connections"] == 1 and summary["failed"] == {}
    stored = {
        (r.from_currency, r.to_currency): r.rate
        for r in ExchangeRate.objects.filter(connection=firm_de.connections["dynamicsfinance-de"], rate_type="daily")
    }
    # Into the German ledger's EUR: 1 GBP = 1.25 / 1.10 = 1.136364 EUR, 1 USD = 1 / 1.10 = 0.909091 EUR.
    assert stored == {("GBP", "EUR"): Decimal("1.136364"), ("USD", "EUR"): Decimal("0.909091")}


def test_the_german_kantata_account_is_its_own_and_is_polled_for_german_invoices_only(firm_de) -> None:
    from connectors.models import Connection
    from pscsync.tasks import connection_poll_task

    german, uk = firm_de.connections["kantata-de"], firm_de.connections["kantata-uk"]
    assert german.intake == Connection.Intake.POLL == uk.intake  # beat polls both accounts
    assert german.base_url == firm_de.sandboxes["kantata-de"].url != uk.base_url
    deal = provisioned(firm_de, "87")
    invoice_id = kantata_invoice(firm_de, deal["opportunity"])
    # The UK bills in its own account at the same time; the German poll must not see it.
    uk_kantata = firm_de.connector("kantata-uk")
    workspace = next(
        iter(uk_kantata.send("POST", "/api/v1/workspaces", json={"workspace": {"title": "UK"}}).body["workspaces"])
    )
    entry = {"workspace_id": workspace, "date_performed": "2026-12-07", "time_in_minutes": 60, "rate_in_cents": 9000,
             "billable": True, "approved": True}  # fmt: skip
    uk_entry = next(
        iter(uk_kantata.send("POST", "/api/v1/time_entries", json={"time_entry": entry}).body["time_entries"])
    )
    uk_invoice = {"workspace_id": workspace, "time_entry_ids": [uk_entry], "invoice_date": "2026-12-14"}
    uk_invoice_id = next(
        iter(uk_kantata.send("POST", "/api/v1/invoices", json={"invoice": uk_invoice}).body["invoices"])
    )
    assert uk_invoice_id != invoice_id  # Kantata numbers objects across accounts

    before = set(Handoff.objects.values_list("pk", flat=True))
    connection_poll_task(german.pk)  # what beat runs for each polled connection
    opened = list(Handoff.objects.exclude(pk__in=before).order_by("pk"))

    assert [(h.flow, h.business_key) for h in opened] == [("project-to-bill", f"kantata-invoice:{invoice_id}")]
    billed = run(opened[0])
    assert billed.status == Handoff.Status.SUCCEEDED, billed.last_error_message
    d365 = firm_de.connector("dynamicsfinance-de")
    (draft,) = d365.ledger_invoices(invoice_id=d365.lookup(entity="invoice", key=f"I-K{invoice_id}").external_id)
    assert (draft.total, draft.currency) == (Decimal("2070.60"), "EUR")  # 1,740.00 + 19 % (module docstring)
