"""The simulated firm against the real sandboxes over HTTP (no engine: where pscsync would have
provisioned a project, the test writes it under pscsync's key, as the flow would)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from demo.simulation import anomalies
from demo.simulation.drivers import VendorUnavailable
from demo.simulation.plan import STAGES, Action, Options, Person, Plan, fx_rate, scenario_plan
from tests.simulation.conftest import QUIET, START

pytestmark = pytest.mark.django_db


def _firm_records(sim: Any) -> dict[str, Any]:
    accounts = sim.sf.query("SELECT Name, AccountNumber, Tax_Profile__c FROM Account WHERE pscsync_Key__c LIKE 'SIM-%'")
    opportunities = sim.sf.query(
        "SELECT Name, StageName, Probability, Amount, CurrencyIsoCode, Legal_Entity__c, CloseDate, "
        "Closed_At__c, Contract_Version__c FROM Opportunity WHERE pscsync_Key__c LIKE 'SIM-%'"
    )
    return {
        "accounts": sorted((a["Name"], a["AccountNumber"], a["Tax_Profile__c"]) for a in accounts),
        "opportunities": sorted(tuple(str(o[k]) for k in sorted(o) if k != "attributes") for o in opportunities),
    }


def test_a_week_of_the_firm_creates_its_accounts_and_deals_in_salesforce(simulation) -> None:
    sim = simulation()
    stats = sim.run()
    counts = sim.plan.counts()
    records = _firm_records(sim)
    assert len(records["accounts"]) == counts["account_create"] == stats["account_create"]
    assert len(records["opportunities"]) == counts["deal_create"]
    won = sim.sf.query(
        "SELECT Id, Closed_At__c, Contract_Version__c, Contract_Start__c FROM Opportunity "
        "WHERE StageName = 'Closed Won'"
    )
    assert len(won) == counts.get("deal_won", 0)
    for row in won:
        closed = dt.datetime.fromisoformat(row["Closed_At__c"])
        assert START <= closed < START + dt.timedelta(days=7)  # business time, not today
        assert row["Contract_Version__c"] == 1
        assert dt.date.fromisoformat(row["Contract_Start__c"]).weekday() == 0
    open_stages = {o["StageName"] for o in sim.sf.query("SELECT StageName FROM Opportunity WHERE IsClosed = false")}
    assert open_stages <= {s for s, _ in STAGES}


def test_the_same_seed_writes_the_same_firm(simulation, sandboxes) -> None:
    first = simulation()
    first.run()
    before = _firm_records(first)
    for sandbox in sandboxes.values():
        sandbox.reset()
    second = simulation()
    second.run()
    assert _firm_records(second) == before


# A hand-made plan: one US deal on Certinia + NetSuite and one UK deal on Kantata + BC --------------
PEOPLE = [
    Person("res-1", "Ada Okafor", "us", "Senior Consultant", 215),
    Person("res-2", "Ben Novak", "us", "Engagement Manager", 310),
    Person("res-3", "Hana Iyer", "uk", "Consultant", 125),
]


def _deal_actions(
    entity: str, n: int, *, week_anomalies: list[str] | None = None, expense: bool = False
) -> list[Action]:
    account, deal = f"acct-{entity}-{n}", f"deal-{n}"
    team = ["res-1", "res-2"] if entity == "us" else ["res-3"]
    currency = "USD" if entity == "us" else "GBP"
    week: dict[str, Any] = {
        "week_start_day": 7,
        "entries": [{"person": p, "hours": 20} for p in team],
        "anomalies": week_anomalies or [],
    }
    if expense:
        week["expense"] = {"category": "Travel", "amount": 300}
    return [
        Action(
            0,
            420,
            "account_create",
            account,
            {
                "name": f"Client {entity} {n}",
                "entity": entity,
                "number": f"N-{n}",
                "country": "US" if entity == "us" else "GB",
                "tax_profile": "US-STANDARD" if entity == "us" else "GB-VAT20",
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
                "entity": entity,
                "name": "Implementation",
                "stage": "Negotiation/Review",
                "probability": 75,
                "amount": 50000,
                "currency": currency,
                "service_line": "Implementation",
                "billing_model": "Time and Materials",
                "resource_plan": [{"role": "Consultant", "hours": 100}],
                "team": team,
                "close_day": 2,
                "term_weeks": 6,
                "anomalies": [],
            },
        ),  # fmt: skip
        Action(2, 600, "deal_won", deal, {"contract_start_day": 7, "contract_end_day": 48}),
        Action(14, 540, "week_time", deal, week),
    ]


def _provision(sim: Any, deal_ref: str) -> str:
    """What quote-to-project would have written: the PSA project under key P-<opportunity>."""
    deal = sim.deals[deal_ref]
    key = f"P-{deal.opportunity}"
    if deal.data["entity"] == "us":
        return sim.sf.upsert(
            "pse__Proj__c",
            key,
            {
                "Name": "Client project",
                "pse__Currency__c": deal.data["currency"],
                "pse__Account__c": sim.accounts[deal.data["account"]]["id"],
            },
        )
    workspace = sim.kantata.create(
        "workspaces",
        "workspace",
        {
            "title": "Client project",
            "currency": "GBP",
            "external_reference": {"service_name": "pscsync", "service_model": "project", "service_model_ref": key},
        },
    )
    return str(workspace["id"])


def _run_with_projects(sim: Any, *, provision_after_day: int = 3) -> dict[str, str]:
    for action in sim.plan.actions:
        sim.push(Plan.at(action, START), action)
    sim.ensure_people()
    sim.run_until(START + dt.timedelta(days=provision_after_day))
    projects = {ref: _provision(sim, ref) for ref, deal in sim.deals.items() if deal.won}
    sim.run_until(START + dt.timedelta(days=sim.options.days))
    return projects


def test_time_waits_for_the_project_then_is_approved_weekly_and_billed_by_the_psa(simulation) -> None:
    actions = _deal_actions("us", 1, expense=True) + _deal_actions("uk", 2)
    actions.append(Action(18, 16 * 60, "billing_run", "", {}))
    options = Options(days=21, seed=7, **QUIET)
    sim = simulation(
        plan=Plan(options=options, people=PEOPLE, actions=sorted(actions, key=lambda a: (a.day, a.minute)))
    )
    projects = _run_with_projects(sim)
    # Certinia: two approved timecards for the week of day 7 (a Monday), billed in one event
    # dated on the billing run's business day.
    cards = sim.sf.query(
        "SELECT pse__Start_Date__c, pse__End_Date__c, pse__Status__c, pse__Billed__c, pse__Approval_Date__c "  # noqa: S608  # nosec B608  # SOQL on ids read back from the vendor
        f"FROM pse__Timecard_Header__c WHERE pse__Project__c = '{projects['deal-1']}'"
    )
    assert len(cards) == 2
    assert {c["pse__Start_Date__c"] for c in cards} == {"2026-09-07"}
    assert all(c["pse__Status__c"] == "Approved" and c["pse__Billed__c"] for c in cards)
    assert {c["pse__Approval_Date__c"] for c in cards} == {"2026-09-14"}
    events = sim.sf.query(
        f"SELECT Id, pse__Date__c FROM pse__Billing_Event__c WHERE pse__Project__c = '{projects['deal-1']}'"  # noqa: S608  # nosec B608  # SOQL on ids read back from the vendor
    )
    assert [e["pse__Date__c"] for e in events] == ["2026-09-18"]
    items = sim.sf.query(
        "SELECT pse__Category__c, pse__Amount__c FROM pse__Billing_Event_Item__c "  # noqa: S608 - an id we read
        f"WHERE pse__Billing_Event__c = '{events[0]['Id']}'"
    )
    assert sorted(i["pse__Category__c"] for i in items) == ["Expense", "Timecard", "Timecard"]
    assert sum(i["pse__Amount__c"] for i in items if i["pse__Category__c"] == "Timecard") == 20 * 215 + 20 * 310
    # Kantata: the week's approved time entries, invoiced by the billing run on its business day.
    entries = sim.kantata.index("time_entries", workspace_id=projects["deal-2"])
    assert sum(e["time_in_minutes"] for e in entries) == 20 * 60 and all(e["approved"] for e in entries)
    assert min(e["date_performed"] for e in entries) == "2026-09-07"
    invoices = sim.kantata.index("invoices", workspace_id=projects["deal-2"])
    assert [i["invoice_date"] for i in invoices] == ["2026-09-18"]
    assert all(e["is_invoiced"] for e in sim.kantata.index("time_entries", workspace_id=projects["deal-2"]))


def test_time_before_the_project_exists_is_deferred_not_lost(simulation) -> None:
    options = Options(days=21, seed=7, **QUIET)
    sim = simulation(plan=Plan(options=options, people=PEOPLE, actions=_deal_actions("us", 1)))
    sim.run()  # nobody provisions the project
    assert sim.stats["week_time"] == 0 and sim.stats["deferred"] >= 1
    assert not sim.sf.query("SELECT Id FROM pse__Timecard_Header__c")


# Each anomaly leaves the condition it promises ----------------------------------------------------
def test_missing_tax_profile_and_unknown_service_line_are_in_salesforce(simulation) -> None:
    sim = simulation(days=14, missing_tax_profile=1.0, unknown_service_line=1.0)
    sim.run()
    accounts = sim.sf.query("SELECT Id, Tax_Profile__c FROM Account WHERE pscsync_Key__c LIKE 'SIM-%'")
    assert accounts and all(a["Tax_Profile__c"] in (None, "") for a in accounts)
    lines = {o["Service_Line__c"] for o in sim.sf.query("SELECT Service_Line__c FROM Opportunity")}
    assert lines and lines <= {"Cyber Security", "Data Strategy", "Digital Forensics"}
    # The operator's corrections put the data right.
    anomalies.fix_tax_profile(sim.sf, account_id=accounts[0]["Id"], entity="us")
    assert sim.sf.get("Account", accounts[0]["Id"])["Tax_Profile__c"] == "US-STANDARD"
    opportunity = next(iter(sim.deals.values())).opportunity
    anomalies.fix_service_line(sim.sf, opportunity_id=opportunity)
    assert sim.sf.get("Opportunity", opportunity)["Service_Line__c"] == "Advisory"


def test_a_duplicate_customer_is_keyed_by_hand_in_the_erp(simulation) -> None:
    sim = simulation(days=14, duplicate_customer=1.0, uk_share=0.5, de_share=0.0)
    sim.run()
    names = {a["name"]: a for a in sim.accounts.values()}
    ns_customers = {
        c["companyname"]: c for c in sim.netsuite.suiteql("SELECT id, companyname, externalid FROM customer")
    }
    bc_customers = {c["displayName"]: c for c in sim.bc.list("customers")}
    for name, account in names.items():
        found = ns_customers.get(name) if account["entity"] == "us" else bc_customers.get(name)
        assert found is not None, name
        if account["entity"] == "us":
            assert not found.get("externalid")  # keyed by hand: not linked to Salesforce
    us = next(a for a in names.values() if a["entity"] == "us")
    anomalies.fix_duplicate_customer(sim.netsuite, customer_id=us["hand_keyed"], account_id=us["id"])
    assert sim.netsuite.get("customer", us["hand_keyed"])["externalId"] == f"C-{us['id']}"
    uk = next(a for a in names.values() if a["entity"] == "uk")
    anomalies.fix_duplicate_customer(sim.bc, customer_id=uk["hand_keyed"], account_id=uk["id"])
    assert {c["number"] for c in sim.bc.list("customers") if c["displayName"] == uk["name"]} == {f"C-{uk['id']}"}


def test_an_erp_outage_and_a_rate_limit_burst_are_sandbox_faults_for_a_while(simulation, sandboxes) -> None:
    sim = simulation(days=7)
    outage = Action(1, 600, "erp_outage", "outage-1", {"sandbox": "netsuite", "hours": 3})
    sim.now = START + dt.timedelta(days=1, hours=10)
    sim.execute(outage, 0)
    sim.netsuite.patience = 0
    with pytest.raises(VendorUnavailable) as down:
        sim.netsuite.suiteql("SELECT id FROM customer")
    assert down.value.status == 503
    end_at, _, end, _ = sim.queue[0]
    assert end.kind == "incident_end" and end_at == sim.now + dt.timedelta(hours=3)
    end.data["not_before"] = 0  # as if its wall-time minimum had passed
    sim.execute(end, 0)
    assert sim.netsuite.suiteql("SELECT id FROM customer") == []
    burst = Action(2, 600, "rate_limit_burst", "burst-1", {"sandbox": "kantata", "per_minute": 3, "hours": 1})
    sim.execute(burst, 0)
    statuses = [httpx.get(f"{sandboxes['kantata'].url}/api/v1/workspaces", timeout=5).status_code for _ in range(5)]
    assert 429 in statuses


def test_late_time_is_approved_after_its_month_closed(simulation) -> None:
    actions = _deal_actions("us", 1, week_anomalies=["late_time"])
    actions[-1] = Action(40, 540, "week_time", "deal-1", actions[-1].data)  # the week of Sep 7, approved Oct 10
    options = Options(days=45, seed=7, **QUIET)
    sim = simulation(plan=Plan(options=options, people=PEOPLE, actions=actions))
    _run_with_projects(sim)
    cards = sim.sf.query("SELECT pse__End_Date__c, pse__Approval_Date__c FROM pse__Timecard_Header__c")
    assert cards and all(c["pse__End_Date__c"][:7] < c["pse__Approval_Date__c"][:7] for c in cards)


def test_a_mixed_currency_batch_has_an_item_in_another_currency(simulation) -> None:
    actions = _deal_actions("us", 1, week_anomalies=["mixed_currency"], expense=True)
    actions += [Action(18, 16 * 60, "billing_run", "", {})]
    options = Options(days=21, seed=7, **QUIET)
    sim = simulation(plan=Plan(options=options, people=PEOPLE, actions=actions))
    _run_with_projects(sim)
    items = sim.sf.query("SELECT pse__Billing_Event__c, CurrencyIsoCode FROM pse__Billing_Event_Item__c")
    assert sorted({i["CurrencyIsoCode"] or "USD" for i in items}) == ["EUR", "USD"]
    event = items[0]["pse__Billing_Event__c"]
    assert sim.anomalies_by_key[event]["mixed_currency"]["currency"] == "USD"
    anomalies.fix_mixed_currency_certinia(sim.sf, event_id=event, currency="USD")
    fixed = sim.sf.query(
        f"SELECT CurrencyIsoCode FROM pse__Billing_Event_Item__c WHERE pse__Billing_Event__c = '{event}'"  # noqa: S608  # nosec B608  # SOQL on ids read back from the vendor
    )
    assert {i["CurrencyIsoCode"] or "USD" for i in fixed} == {"USD"}


def test_an_fx_date_invoice_is_dated_and_rated_on_another_day_than_billed(simulation) -> None:
    sim = simulation(days=30, fx_date=1.0)
    customer = sim.netsuite.create(
        "customer",
        {"companyName": "Maple Ltd", "subsidiary": {"id": "3"}, "currency": {"id": "3"}, "externalId": "C-x"},
    )
    billed = "2026-09-04"
    invoice = sim.netsuite.create(
        "invoice",
        {
            "externalId": "I-a3B000000000001",
            "entity": {"id": customer},
            "currency": {"id": "3"},
            "tranDate": billed,
            "item": {"items": [{"item": {"id": "55"}, "quantity": 10, "rate": 200}]},
        },
    )
    sim.now = START + dt.timedelta(days=5, hours=17)
    sim.do_finance_round(Action(5, 0, "finance_round"))
    assert sim.invoices["I-a3B000000000001"].fx_date
    sim.now = START + dt.timedelta(days=12, hours=17)
    sim.do_finance_round(Action(12, 0, "finance_round"))
    record = sim.netsuite.get("invoice", invoice)
    assert record["tranDate"][:10] != billed
    assert record["exchangeRate"] == fx_rate("CAD", dt.date.fromisoformat(record["tranDate"][:10]))
    assert record["exchangeRate"] != fx_rate("CAD", dt.date.fromisoformat(billed))


def test_finance_posts_business_central_invoices_and_records_payments(simulation) -> None:
    sim = simulation(days=90)
    customer = sim.bc.create("customers", {"number": "C-001", "displayName": "Brit Ltd", "currencyCode": ""})
    invoice = sim.bc.create(
        "salesInvoices",
        {
            "customerId": customer["id"],
            "externalDocumentNumber": "I-K77",
            "invoiceDate": "2026-09-04",
            "salesInvoiceLines": [
                {
                    "lineType": "Account",
                    "lineObjectNumber": "40100",
                    "description": "[TE-1] time",
                    "quantity": 10,
                    "unitPrice": 100,
                }
            ],
        },
    )
    for day in range(4, 90):
        sim.now = START + dt.timedelta(days=day, hours=17)
        sim.do_finance_round(Action(day, 0, "finance_round"))
    record = next(r for r in sim.bc.list("salesInvoices") if r["id"] == invoice["id"])
    assert record["status"] in ("Open", "Paid")
    planned = sim.invoices["I-K77"]
    assert planned.posted
    payments = [p for p in sim.bc.list("customerPayments") if p.get("appliesToInvoiceId") == invoice["id"]]
    assert (record["status"] == "Paid") == (
        round(-sum(p["amount"] for p in payments), 2) >= record["totalAmountIncludingTax"]
    )


def test_the_plan_for_a_clean_firm_has_no_incidents() -> None:
    plan = scenario_plan(Options(days=30, **QUIET), start_weekday=0)
    assert not [a for a in plan.actions if a.kind in ("erp_outage", "rate_limit_burst")]


# Operators ------------------------------------------------------------------------------------------
class FakeWorkbench:
    """pscsync's workbench as the operators see it: the exceptions listed, resubmits recorded."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.resubmitted: list[tuple[int, str, bool]] = []
        self.edited: list[tuple[int, dict[str, Any], str]] = []
        self.resolved: list[tuple[int, str]] = []

    def exceptions(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["id"] not in {i for i, _, _ in self.resubmitted}]

    def resubmit(self, exception_id: int, comment: str, *, reread: bool) -> int:
        self.resubmitted.append((exception_id, comment, reread))
        return 200

    def document(self, exception_id: int) -> dict[str, Any]:
        return {"deal": {"service_line": "Cyber Security", "amount": "1000.00"}, "account": {"id": "001X"}}

    def resubmit_edited(self, exception_id: int, document: dict[str, Any], comment: str) -> int:
        self.edited.append((exception_id, document, comment))
        return 200

    def resolve(self, exception_id: int, comment: str) -> int:
        self.resolved.append((exception_id, comment))
        return 200


def test_operators_correct_the_source_then_resubmit_the_deal_first_and_its_other_exceptions(simulation) -> None:
    sim = simulation(
        days=14, missing_tax_profile=1.0, operator_fix_share=1.0, operator_resolve_share=0.0, operator_delay_hours=0
    )
    sim.run()
    won = next(d for d in sim.deals.values() if d.won)
    account = sim.accounts[won.data["account"]]
    assert sim.anomalies_by_key[won.opportunity]["missing_tax_profile"]["account"] == account["id"]
    rows = [
        {"id": 2, "flow": "contract-change", "business_key": won.opportunity, "last_error_class": "validation"},
        {"id": 5, "flow": "quote-to-project", "business_key": won.opportunity, "last_error_class": "validation"},
        {"id": 9, "flow": "project-to-bill", "business_key": "a3B1", "last_error_class": "validation"},
    ]
    sim.workbench = FakeWorkbench(rows)
    sim.operator_round(final=True)
    assert sim.sf.get("Account", account["id"])["Tax_Profile__c"] in ("US-STANDARD", "GB-VAT20", "DE-VAT19")
    assert [(i, reread) for i, _, reread in sim.workbench.resubmitted] == [(5, True), (2, True)]
    assert "set Tax Profile" in sim.workbench.resubmitted[0][1]
    # Nothing they can correct in a source: left for a person, looked at again later.
    assert 9 in sim.operator_queue


def test_operators_leave_a_share_of_exceptions_to_people(simulation) -> None:
    sim = simulation(days=7, operator_fix_share=0.0)
    sim.workbench = FakeWorkbench(
        [{"id": 1, "flow": "quote-to-project", "business_key": "006X", "last_error_class": "transient"}]
    )
    sim.operator_round(final=True)
    assert sim.workbench.resubmitted == [] and sim.stats["operator_left"] == 1


def test_operators_correct_a_retired_service_line_in_the_workbench_and_resolve_what_they_handle_by_hand(
    simulation,
) -> None:
    sim = simulation(days=7, operator_fix_share=1.0, operator_resolve_share=1.0, operator_delay_hours=0)
    sim.anomalies_by_key["006A"] = {"unknown_service_line": {}}
    sim.workbench = FakeWorkbench(
        [
            {"id": 3, "flow": "quote-to-project", "business_key": "006A", "last_error_class": "mapping"},
            {"id": 4, "flow": "project-to-bill", "business_key": "a3B9", "last_error_class": "validation"},
        ]
    )
    sim.operator_round(final=True)
    # The read deal resubmitted with its service line corrected, the rest of the document as read.
    ((edited_id, document, comment),) = sim.workbench.edited
    assert edited_id == 3 and document["deal"] == {"service_line": "Advisory", "amount": "1000.00"}
    assert "service_line → Advisory" in comment
    # The billing batch nothing in a source can fix: invoiced by hand and resolved.
    assert sim.workbench.resolved == [(4, "handled outside pscsync: invoiced by hand in the ERP")]
    assert (sim.stats["operator_edits"], sim.stats["operator_resolves"]) == (1, 1)
    assert "operator fixes 2" in sim.summary()
