"""project-to-bill end to end: PSA billing batches become ERP invoices, each item billed once."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from pscsync.models import BilledItem, Handoff
from tests.flows.conftest import run, trigger, won_deal

pytestmark = pytest.mark.django_db


def provisioned(firm, entity: str, key: str, **deal: object) -> dict[str, str]:
    ids = won_deal(firm, entity=entity, key=key, **deal)
    handoff = run(trigger(firm, "quote-to-project", ids["opportunity"]))
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    return ids


def certinia_approved_week(
    certinia,
    opportunity: str,
    *,
    hours: tuple[float, ...] = (8, 7.5),
    monday: str = "2026-11-16",
    approved: str = "2026-11-24",
    name: str = "",
    schedule_start: str = "2026-12-01",
):
    """A resource on the project at 150/h with one approved, billable week (by default 16-22 Nov
    2026, approved on 24 Nov; `hours` from Monday on). Returns the timecard's id. `name` keys the
    resource, schedule, assignment and timecard (default: the opportunity)."""
    name = name or opportunity
    project = certinia.lookup(entity="project", key=f"P-{opportunity}").external_id
    resource = certinia.upsert(
        entity="resource", key=f"R-{name}", fields={"LastName": "Okafor", "pse__Is_Resource__c": True}
    ).external_id
    schedule = certinia.upsert(
        entity="schedule",
        key=f"S-{name}",
        fields={"pse__Start_Date__c": schedule_start, "pse__End_Date__c": "2027-05-31"},
    ).external_id
    assignment = certinia.upsert(
        entity="assignment",
        key=f"A-{name}",
        fields={
            "pse__Project__c": project,
            "pse__Resource__c": resource,
            "pse__Schedule__c": schedule,
            "pse__Bill_Rate__c": 150,
        },
    ).external_id
    days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
    sunday = dt.date.fromisoformat(monday) + dt.timedelta(days=6)
    return certinia.upsert(
        entity="timecard",
        key=f"T-{name}",
        fields={
            "pse__Project__c": project,
            "pse__Resource__c": resource,
            "pse__Assignment__c": assignment,
            "pse__Start_Date__c": monday,
            "pse__End_Date__c": sunday.isoformat(),
            **{f"pse__{day}_Hours__c": h for day, h in zip(days, hours, strict=False)},
            "pse__Status__c": "Approved",
            "pse__Billable__c": True,
            # Approved after the week worked (by default the Tuesday after): the approved-time clock starts here.
            "pse__Approval_Date__c": approved,
        },
    ).external_id


def certinia_billing_event(firm, opportunity: str) -> str:
    """15.5 approved hours at 150/h and the first milestone approved; the PSA's billing run
    bundles them into one billing event."""
    certinia = firm.connector("certinia-us")
    project = certinia.lookup(entity="project", key=f"P-{opportunity}").external_id
    certinia_approved_week(certinia, opportunity)
    certinia.upsert(
        entity="milestone",
        key=f"M-{opportunity}-1",
        fields={"pse__Status__c": "Approved", "pse__Actual_Date__c": "2026-11-20"},
    )
    url = f"{firm.sandboxes['salesforce'].url}/_sandbox/certinia/billing-events"
    [event] = httpx.post(url, json={"project": project}).json()["billingEvents"]
    # The billing run is dated at the month end it bills (the sandbox would stamp today's date).
    certinia.update(entity="billing_event", record_id=event, fields={"pse__Date__c": "2026-11-30"})
    return event


def test_a_certinia_billing_event_becomes_one_netsuite_invoice_line_per_item(firm) -> None:
    deal = provisioned(firm, "us", "21")
    event = certinia_billing_event(firm, deal["opportunity"])

    handoff = run(trigger(firm, "project-to-bill", event, slug="certinia-us"))

    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    invoice = firm.connector("netsuite-us").lookup(entity="invoice", key=f"I-{event}").response
    lines = invoice["item"]["items"]
    assert sorted(line["amount"] for line in lines) == [2325.0, 24000.0]  # 15.5 h x 150, milestone 1 of 3
    assert invoice["total"] == 26325.0
    assert all(line["custcol_source_ref"].startswith("a3C") for line in lines)  # each names its PSA item
    billed = list(
        firm.connector("certinia-us").read("billing_event", where={"Id": event}, fields=["pse__Invoice_Number__c"])
    )
    assert billed[0]["pse__Invoice_Number__c"] == handoff.steps.get(name="upsert_invoice").external_id
    assert BilledItem.objects.filter(invoice_key=f"I-{event}").count() == 2
    assert handoff.amount == 26325 and "invoice_created" in handoff.business_times
    # Business dates: released on the billing run's date; the clock of approved time -> invoice
    # starts at the latest approval (the timecard approved 24 Nov; the milestone done 20 Nov),
    # not at the latest work date (the week ended 22 Nov).
    assert handoff.business_times["billing_released"] == "2026-11-30"
    assert handoff.business_times["time_approved"] == "2026-11-24"
    assert handoff.business_started_at == dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


def test_an_item_already_billed_is_never_billed_again(firm) -> None:
    deal = provisioned(firm, "us", "22")
    event = certinia_billing_event(firm, deal["opportunity"])
    assert run(trigger(firm, "project-to-bill", event, slug="certinia-us")).status == Handoff.Status.SUCCEEDED
    # Someone regenerates a billing event holding the same timecard.
    certinia = firm.connector("certinia-us")
    [original] = list(
        certinia.read(
            "billing_event_item",
            where={"pse__Billing_Event__c": event, "pse__Category__c": "Timecard"},
            fields=["pse__Object_Id__c", "pse__Project__c"],
        )
    )
    again = certinia.upsert(
        entity="billing_event", key="BE-again", fields={"pse__Project__c": original["pse__Project__c"]}
    )
    certinia.upsert(
        entity="billing_event_item",
        key="BEI-again",
        fields={
            "pse__Billing_Event__c": again.external_id,
            "pse__Object_Id__c": original["pse__Object_Id__c"],
            "pse__Category__c": "Timecard",
            "pse__Quantity__c": 15.5,
            "pse__Unit_Price__c": 150,
            "pse__Amount__c": 2325,
        },
    )

    handoff = run(trigger(firm, "project-to-bill", again.external_id, slug="certinia-us"))

    assert handoff.status == Handoff.Status.NEEDS_ATTENTION
    assert handoff.last_error_class == "validation"
    assert (
        original["pse__Object_Id__c"] in handoff.last_error_message
        and "already on invoice" in handoff.last_error_message
    )
    assert firm.connector("netsuite-us").lookup(entity="invoice", key=f"I-{again.external_id}") is None


def test_a_batch_mixing_currencies_is_stopped_before_the_erp(firm) -> None:
    deal = provisioned(firm, "us", "23")
    certinia = firm.connector("certinia-us")
    project = certinia.lookup(entity="project", key=f"P-{deal['opportunity']}").external_id
    event = certinia.upsert(entity="billing_event", key="BE-mixed", fields={"pse__Project__c": project}).external_id
    for n, currency in enumerate(("USD", "EUR")):
        certinia.upsert(
            entity="billing_event_item",
            key=f"BEI-mixed-{n}",
            fields={
                "pse__Billing_Event__c": event,
                "pse__Object_Id__c": f"EXP{n}",
                "pse__Category__c": "Expense",
                "pse__Amount__c": 100,
                "pse__Quantity__c": 1,
                "pse__Unit_Price__c": 100,
                "CurrencyIsoCode": currency,
            },
        )

    handoff = run(trigger(firm, "project-to-bill", event, slug="certinia-us"))

    assert handoff.last_error_class == "validation"
    assert "mixes currencies (EUR: 1 items, USD: 1 items)" in handoff.last_error_message
    assert not BilledItem.objects.exists()


def kantata_time(firm, opportunity: str, entries: tuple[tuple[str, int], ...]) -> list[str]:
    """Approved billable time entries at 120/h on the deal's Kantata workspace: (day, minutes)."""
    kantata = firm.connector("kantata-uk")
    workspace = kantata.lookup(entity="workspaces", key=f"P-{opportunity}").external_id
    ids = []
    for day, minutes in entries:
        entry = {
            "workspace_id": workspace,
            "date_performed": day,
            "time_in_minutes": minutes,
            "rate_in_cents": 12000,
            "billable": True,
            "approved": True,
        }
        answer = kantata.send("POST", "/api/v1/time_entries", json={"time_entry": entry}).body
        ids.append(next(iter(answer["time_entries"])))
    return ids


def kantata_invoice(firm, opportunity: str) -> str:
    """Two approved days at 120/h (8 h and 6.5 h) invoiced in Kantata on 14 Dec: 1,740.00."""
    kantata = firm.connector("kantata-uk")
    workspace = kantata.lookup(entity="workspaces", key=f"P-{opportunity}").external_id
    entries = kantata_time(firm, opportunity, (("2026-12-07", 480), ("2026-12-08", 390)))
    invoice = {"workspace_id": workspace, "time_entry_ids": entries, "invoice_date": "2026-12-14"}
    answer = kantata.send("POST", "/api/v1/invoices", json={"invoice": invoice}).body
    return next(iter(answer["invoices"]))


def test_a_kantata_invoice_becomes_a_business_central_invoice(firm) -> None:
    deal = provisioned(firm, "uk", "24", Billing_Model__c="Time and Materials", Service_Line__c="Advisory")
    invoice_id = kantata_invoice(firm, deal["opportunity"])

    handoff = run(trigger(firm, "project-to-bill", f"kantata-invoice:{invoice_id}", slug="kantata-uk"))

    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    bc = firm.connector("businesscentral-uk")
    written = bc.lookup(entity="salesInvoices", key=f"I-K{invoice_id}").response
    assert written["customerNumber"] == f"C-{deal['account']}" and written["totalAmountExcludingTax"] == 1740.0
    # Kantata gives no approval date: the batch's clock starts at its release (the invoice date).
    assert handoff.business_times["billing_released"] == "2026-12-14"
    assert "time_approved" not in handoff.business_times
    kantata = firm.connector("kantata-uk")
    marked = list(kantata.read("invoices", where={"only": invoice_id}))[0]
    assert marked["user_invoice_number"] == handoff.steps.get(name="upsert_invoice").external_id
