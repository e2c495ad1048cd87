"""Unbilled WIP read from the PSA with each reconciliation: approved billable work no billing batch
holds yet, priced as the PSA's billing run would price it, replaced as a whole on every run."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import httpx
import pytest

from connectors.kantata import API as KANTATA_API
from pscsync.models import PsaAssignment, UnbilledWork
from pscsync.reconciliation.services import reconcile
from tests.reconciliation import seed

pytestmark = pytest.mark.django_db


def create(connector, sobject: str, fields: dict) -> str:
    return connector.send("POST", connector.api_path(f"sobjects/{sobject}/"), json=fields).body["id"]


def certinia_work(firm, s: seed.Seeded) -> dict[str, str]:
    """One approved timecard (10 h at 180), one approved expense, one approved milestone, and one
    timecard still submitted (not approved: not WIP yet)."""
    certinia = firm.connector("certinia-us")
    contact = create(certinia, "Contact", {"LastName": "Rivera", "FirstName": "Ana"})
    pattern = {f"pse__{day}_Hours__c": 6 for day in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")}
    schedule = create(
        certinia, "pse__Schedule__c", {"pse__Start_Date__c": "2026-10-01", "pse__End_Date__c": "2026-12-31", **pattern}
    )
    assignment = create(
        certinia,
        "pse__Assignment__c",
        {
            "pse__Project__c": s.project,
            "pse__Resource__c": contact,
            "pse__Schedule__c": schedule,
            "pse__Bill_Rate__c": 180,
            "pse__Role__c": "Architect",
        },
    )
    week = {"pse__Project__c": s.project, "pse__Resource__c": contact, "pse__Assignment__c": assignment}
    ids = {
        "time": create(
            certinia,
            "pse__Timecard_Header__c",
            {
                **week,
                "pse__Start_Date__c": "2026-10-19",
                "pse__End_Date__c": "2026-10-25",
                "pse__Monday_Hours__c": 6,
                "pse__Tuesday_Hours__c": 4,
                "pse__Billable__c": True,
                "pse__Status__c": "Approved",
            },
        ),
        "submitted": create(
            certinia,
            "pse__Timecard_Header__c",
            {
                **week,
                "pse__Start_Date__c": "2026-10-26",
                "pse__End_Date__c": "2026-11-01",
                "pse__Monday_Hours__c": 8,
                "pse__Billable__c": True,
                "pse__Status__c": "Submitted",
            },
        ),
        "expense": create(
            certinia,
            "pse__Expense__c",
            {
                "pse__Project__c": s.project,
                "pse__Resource__c": contact,
                "pse__Expense_Date__c": "2026-10-21",
                "pse__Amount__c": 412.5,
                "pse__Billable__c": True,
                "pse__Status__c": "Approved",
                "CurrencyIsoCode": "USD",
            },
        ),
        "milestone": create(
            certinia,
            "pse__Milestone__c",
            {
                "Name": "Design signed off",
                "pse__Project__c": s.project,
                "pse__Milestone_Amount__c": 25000,
                "pse__Target_Date__c": "2026-10-16",
                "pse__Actual_Date__c": "2026-10-14",
                "pse__Status__c": "Approved",
                "pse__Approved_for_Billing__c": True,
            },
        ),
    }
    return ids


def test_certinia_unbilled_time_expense_and_milestones(firm):
    s = seed.deal(firm)
    ids = certinia_work(firm, s)
    (result,) = reconcile(entity="us")
    assert result.status == "complete", result.error
    rows = {w.kind: w for w in UnbilledWork.objects.all()}
    assert set(rows) == {"time", "expense", "milestone"}  # the submitted timecard is not WIP yet
    assert (rows["time"].source_id, rows["time"].amount, rows["time"].work_date) == (
        ids["time"],
        Decimal("1800.00"),
        dt.date(2026, 10, 25),
    )
    assert (rows["expense"].amount, rows["expense"].currency) == (Decimal("412.50"), "USD")
    milestone = rows["milestone"]
    assert (milestone.amount, milestone.work_date) == (Decimal("25000.00"), dt.date(2026, 10, 14))
    assert milestone.project_key == s.project_key and milestone.customer_name == "Globex us 1"
    assert all(w.legal_entity.code == "us" for w in rows.values())


def test_billing_run_takes_work_out_of_wip(firm):
    s = seed.deal(firm)
    certinia_work(firm, s)
    reconcile(entity="us")
    assert UnbilledWork.objects.count() == 3
    url = f"{firm.sandboxes['salesforce'].url}/_sandbox/certinia/billing-events"
    assert len(httpx.post(url, json={"project": s.project}).json()["billingEvents"]) == 1
    reconcile(entity="us")
    assert UnbilledWork.objects.count() == 0  # all three are in a billing event now


def test_kantata_unbilled_time_and_expenses(firm):
    s = seed.deal(firm, entity="uk", n=2, amount=50000)
    seed.kantata_batch_and_invoice(firm, s)  # one entry already invoiced: not WIP
    kantata = firm.connector("kantata-uk")
    for day, minutes, billable in (("2026-11-02", 450, True), ("2026-11-03", 60, False)):
        entry = {"workspace_id": s.project, "date_performed": day, "time_in_minutes": minutes}
        entry.update(rate_in_cents=14000, approved=True, billable=billable)
        kantata.send("POST", f"{KANTATA_API}/time_entries", json={"time_entry": entry})
    (result,) = reconcile(entity="uk")
    assert result.status == "complete", result.error
    (work,) = UnbilledWork.objects.all()
    assert (work.kind, work.amount, work.currency, work.work_date) == (
        "time",
        Decimal("1050.00"),
        "GBP",
        dt.date(2026, 11, 2),
    )
    assert work.legal_entity.code == "uk" and work.project_key == s.project_key


def test_vendor_outage_keeps_the_last_snapshot(firm):
    s = seed.deal(firm)
    certinia_work(firm, s)
    reconcile(entity="us")
    before = sorted(UnbilledWork.objects.values_list("source_id", "read_at"))
    firm.sandboxes["salesforce"].fault(error_status=503, count=1000)
    try:
        (result,) = reconcile(entity="us")
    finally:
        firm.sandboxes["salesforce"].clear_faults()
    assert result.status == "incomplete"
    assert sorted(UnbilledWork.objects.values_list("source_id", "read_at")) == before


def test_assignments_are_read_as_supply(firm):
    s = seed.deal(firm)
    certinia_work(firm, s)
    reconcile(entity="us")
    (assignment,) = PsaAssignment.objects.all()
    assert (assignment.role, assignment.weekly_hours, assignment.project_key) == ("Architect", 30, s.project_key)
    assert (assignment.starts_on, assignment.ends_on) == (dt.date(2026, 10, 1), dt.date(2026, 12, 31))


def test_approved_hours_worked_are_read_by_role_and_month(firm):
    from pscsync.models import PsaWorkedHours

    s = seed.deal(firm)
    ids = certinia_work(firm, s)
    # A second approved week across the month end: Thu 29 Oct 5 h, Fri 30 Oct 3 h, Sun 1 Nov 2 h
    # (week starting Mon 26 Oct). The submitted timecard (8 h) is not approved: not counted.
    certinia = firm.connector("certinia-us")
    soql = f"SELECT pse__Assignment__c, pse__Resource__c FROM pse__Timecard_Header__c WHERE Id = '{ids['time']}'"  # noqa: S608
    (first_week,) = list(certinia.query(soql))
    create(
        certinia,
        "pse__Timecard_Header__c",
        {
            "pse__Project__c": s.project,
            "pse__Resource__c": first_week["pse__Resource__c"],
            "pse__Assignment__c": first_week["pse__Assignment__c"],
            "pse__Start_Date__c": "2026-10-26",
            "pse__End_Date__c": "2026-11-01",
            "pse__Thursday_Hours__c": 5,
            "pse__Friday_Hours__c": 3,
            "pse__Sunday_Hours__c": 2,
            "pse__Billable__c": False,  # non-billable hours are still hours worked
            "pse__Status__c": "Approved",
        },
    )
    reconcile(entity="us")
    worked = {(w.role, w.month): w.hours for w in PsaWorkedHours.objects.all()}
    # October: 6 + 4 (week of 19 Oct) + 5 + 3 = 18 h; November: 2 h (Sunday 1 Nov).
    assert worked == {("Architect", "2026-10"): Decimal("18.00"), ("Architect", "2026-11"): Decimal("2.00")}
