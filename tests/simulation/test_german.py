"""The German entity in the simulated firm: its deals, time, milestones and Kantata invoices in its
own Kantata account, its ERP invoices posted and paid in Dynamics 365 Finance, in EUR; against the
real sandboxes over HTTP (no engine: what pscsync would write, the test writes under its keys).

Figures worked by hand: 10 h at EUR 180 (a German Senior Consultant's rate) in one week is
1,800.00 of time; a D365 free text invoice of one line, 10 x 100.00 = 1,000.00 net, to a customer
in sales tax group DE-VAT19 (19 %) is 1,190.00."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest

from demo.simulation.plan import Action, Options, Person, Plan, scenario_plan
from tests.simulation.conftest import QUIET, START
from tests.simulation.test_sandboxes import FakeWorkbench

pytestmark = pytest.mark.django_db

GERMAN = Person("res-9", "Lena Moreau", "de", "Senior Consultant", 180)


def test_the_plan_gives_the_german_entity_its_share_of_deals_time_and_billing_in_eur() -> None:
    plan = scenario_plan(Options(days=90, seed=7), start_weekday=START.weekday())
    deals = {a.ref: a.data for a in plan.actions if a.kind == "deal_create"}
    by_entity = Counter(d["entity"] for d in deals.values())
    german = {ref for ref, d in deals.items() if d["entity"] == "de"}
    # Every entity has deals; the German one a smaller share than the UK (0.2 against 0.35).
    assert set(by_entity) == {"us", "uk", "de"}
    assert 0 < by_entity["de"] < by_entity["uk"] + by_entity["us"]
    assert {deals[r]["currency"] for r in german} == {"EUR"}
    assert {deals[r]["billing_model"] for r in german} == {"Time and Materials"}
    people = {p.ref: p for p in plan.people}
    assert all(people[member].entity == "de" for r in german for member in deals[r]["team"])
    won = {a.ref for a in plan.actions if a.kind == "deal_won"} & german
    weeks = [a for a in plan.actions if a.kind == "week_time" and a.ref in german]
    assert won and weeks and {w.ref for w in weeks} <= won
    # German accounts are German companies with the German tax profile (or none: the anomaly).
    accounts = [a.data for a in plan.actions if a.kind == "account_create" and a.data["entity"] == "de"]
    assert accounts and {a["country"] for a in accounts} == {"DE"}
    assert {a["tax_profile"] for a in accounts} <= {"DE-VAT19", None}
    assert not [a for a in accounts if "duplicate_customer" in a["anomalies"]]  # staged only in NetSuite and BC
    # New to the firm's systems: its first won deal's account lacks its tax profile and its first
    # expense comes in pounds, so the operators have German exceptions to correct whatever the seed.
    first_won = min((a for a in plan.actions if a.kind == "deal_won" and a.ref in german), key=lambda a: a.day)
    account = next(
        a.data for a in plan.actions if a.kind == "account_create" and a.ref == deals[first_won.ref]["account"]
    )
    assert account["tax_profile"] is None and account["anomalies"] == ["missing_tax_profile"]
    assert [w for w in weeks if "mixed_currency" in w.data["anomalies"]]
    clean = scenario_plan(Options(days=90, seed=7, missing_tax_profile=0.0, mixed_currency=0.0), START.weekday())
    assert not [
        a for a in clean.actions if {"missing_tax_profile", "mixed_currency"} & set(a.data.get("anomalies", []))
    ]


def _german_deal() -> list[Action]:
    account, deal = "acct-de-1", "deal-1"
    return [
        Action(
            0,
            420,
            "account_create",
            account,
            {
                "name": "Globex GmbH",
                "entity": "de",
                "number": "DE-1001",
                "country": "DE",
                "tax_profile": "DE-VAT19",
                "parent": None,
                "anomalies": [],
            },
        ),  # fmt: skip
        Action(
            0,
            600,
            "deal_create",
            deal,
            {
                "account": account,
                "entity": "de",
                "name": "Advisory project",
                "stage": "Negotiation/Review",
                "probability": 75,
                "amount": 40000,
                "currency": "EUR",
                "service_line": "Advisory",
                "billing_model": "Time and Materials",
                "resource_plan": [{"role": "Senior Consultant", "hours": 100}],
                "team": [GERMAN.ref],
                "close_day": 2,
                "term_weeks": 6,
                "anomalies": [],
            },
        ),  # fmt: skip
        Action(2, 600, "deal_won", deal, {"contract_start_day": 7, "contract_end_day": 48}),
        Action(
            14,
            540,
            "week_time",
            deal,
            {
                "week_start_day": 7,
                "entries": [{"person": GERMAN.ref, "hours": 10}],
                "expense": {"category": "Travel", "amount": 240},
                "anomalies": [],
            },
        ),  # fmt: skip
        Action(18, 16 * 60, "billing_run", "", {}),
    ]


def _run_german_deal(sim: Any) -> str:
    """Run the German deal's plan, writing its workspace and two milestones in the German account
    as quote-to-project would; returns the workspace id."""
    plan = sim.plan
    for action in plan.actions:
        sim.push(Plan.at(action, START), action)
    sim.run_until(START + dt.timedelta(days=3))
    # What quote-to-project writes in the German account: the workspace under P-<opportunity>, and
    # a milestone due in the first week, another later.
    key = f"P-{sim.deals['deal-1'].opportunity}"
    workspace = sim.kantata_de.create(
        "workspaces",
        "workspace",
        {
            "title": "Globex GmbH Advisory",
            "currency": "EUR",
            "external_reference": {"service_name": "pscsync", "service_model": "project", "service_model_ref": key},
        },
    )["id"]
    for title, due in (("Kick-off", "2026-09-11"), ("Final report", "2026-10-16")):
        sim.kantata_de.create(
            "stories",
            "story",
            {"workspace_id": workspace, "title": title, "story_type": "milestone", "due_date": due},
        )
    sim.run_until(START + dt.timedelta(days=21))
    return str(workspace)


def test_german_time_and_milestones_go_to_the_german_kantata_account_and_its_billing_run_invoices_them(
    simulation,
) -> None:
    sim = simulation(plan=Plan(options=Options(days=21, seed=7, **QUIET), people=[GERMAN], actions=_german_deal()))
    workspace = _run_german_deal(sim)

    entries = sim.kantata_de.index("time_entries", workspace_id=workspace)
    assert sum(e["time_in_minutes"] for e in entries) == 10 * 60
    assert {e["rate_in_cents"] for e in entries} == {18000} and min(
        e["date_performed"] for e in entries
    ) == "2026-09-07"
    (expense,) = sim.kantata_de.index("expenses", workspace_id=workspace)
    assert (expense["amount_in_cents"], expense["currency"]) == (24000, "EUR")
    states = {s["title"]: s["state"] for s in sim.kantata_de.index("stories", workspace_id=workspace)}
    assert states == {"Kick-off": "completed", "Final report": "not started"}
    (invoice,) = sim.kantata_de.index("invoices", workspace_id=workspace)
    assert invoice["invoice_date"] == "2026-09-18"  # the billing run's business day
    assert int(invoice["id"]) >= 9_100_000  # the German account's ids never meet the UK's
    assert all(e["is_invoiced"] for e in sim.kantata_de.index("time_entries", workspace_id=workspace))
    # Nothing German in the UK's account.
    assert sim.kantata.index("workspaces") == [] and sim.kantata.index("time_entries") == []
    assert sim.stats["kantata_invoices:de"] == 1 and sim.stats["milestones_completed"] == 1


def test_finance_posts_german_invoices_in_d365_and_records_payments_against_them(simulation) -> None:
    sim = simulation(days=90)
    d365 = sim.d365
    d365.create(
        "CustomersV3",
        {
            "dataAreaId": "demf",
            "CustomerAccount": "C-001",
            "OrganizationName": "Globex GmbH",
            "CustomerGroupId": "10",
            "SalesCurrencyCode": "EUR",
            "SalesTaxGroup": "DE-VAT19",
        },
    )
    header = d365.create(
        "FreeTextInvoiceHeaders",
        {
            "dataAreaId": "demf",
            "CustomerAccount": "C-001",
            "CustomerReference": "I-K9100008",
            "InvoiceDate": "2026-09-04T12:00:00Z",
        },
    )
    d365.create(
        "FreeTextInvoiceLines",
        {
            "dataAreaId": "demf",
            "ParentRecId": header["InvoiceIdentifier"],
            "LineNumber": 1,
            "Description": "[TE-1] time",
            "MainAccountDisplayValue": "401100",
            "Quantity": 10,
            "UnitPrice": 100,
        },
    )
    for day in range(4, 90):
        sim.now = START + dt.timedelta(days=day, hours=17)
        sim.do_finance_round(Action(day, 0, "finance_round"))

    planned = sim.invoices["I-K9100008"]
    assert (planned.erp, planned.total, planned.currency, planned.posted) == ("dynamicsfinance", 1190.0, "EUR", True)
    (posted,) = d365.list("SalesInvoiceHeadersV2", "dataAreaId eq 'demf'")
    assert (posted["InvoiceNumber"], posted["TotalInvoiceAmount"]) == (planned.number, 1190.0)
    assert posted["CustomersOrderReference"] == "I-K9100008"
    paid = [p for p in d365.list("CustomerPaymentJournalLines") if p["MarkedInvoice"] == planned.number]
    # This invoice's customer pays (the generator seeded with its key says so): in full by day 90,
    # in one or two payments, each a journal line marked with the posted invoice's number.
    assert paid and round(sum(p["CreditAmount"] for p in paid), 2) == 1190.0
    assert {p["AccountDisplayValue"] for p in paid} <= {"C-001"} and {p["CurrencyCode"] for p in paid} <= {"EUR"}
    assert len(paid) == sim.stats["payments"]


def test_operators_convert_a_german_projects_expense_in_pounds_to_euros_and_resubmit(simulation) -> None:
    actions = _german_deal()
    actions[3].data["anomalies"].append("mixed_currency")  # the week's expense comes in pounds
    options = Options(days=21, seed=7, **{**QUIET, "operator_fix_share": 1.0, "operator_delay_hours": 0.0})
    sim = simulation(plan=Plan(options=options, people=[GERMAN], actions=actions))
    workspace = _run_german_deal(sim)
    (expense,) = sim.kantata_de.index("expenses", workspace_id=workspace)
    assert (expense["amount_in_cents"], expense["currency"]) == (24000, "GBP")
    (invoice,) = sim.kantata_de.index("invoices", workspace_id=workspace)
    key = f"kantata-invoice:{invoice['id']}"
    # pscsync stops the batch (one item in GBP in a EUR project); the operator works it.
    sim.workbench = FakeWorkbench([{"id": 11, "flow": "project-to-bill", "business_key": key,
                                    "last_error_class": "validation"}])  # fmt: skip
    sim.operator_round(final=True)

    # GBP 240.00 at the firm's policy rate 1.16 is EUR 278.40, in the German account.
    (fixed,) = sim.kantata_de.index("expenses", workspace_id=workspace)
    assert (fixed["amount_in_cents"], fixed["currency"]) == (27840, "EUR")
    ((exception_id, comment, reread),) = sim.workbench.resubmitted
    assert exception_id == 11 and reread and f"converted expense(s) {expense['id']} to EUR" in comment
