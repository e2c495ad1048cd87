"""Ledger meanings, known answers: invoices and payments written into the NetSuite and Business
Central sandboxes over HTTP as finance would, read by the bill-to-cash flow (which stores the
ledger), then receivables with ageing, invoiced, cash collected, DSO and the unposted part of
unbilled WIP, each worked out by hand below to the cent.

The figures are for December 2026 (period end D = 31 Dec 2026; DSO window 3 Oct – 31 Dec, 90 days).
Each entity is measured in its own currency (reporting currency set to it), so no FX rate enters.

NetSuite, legal entity US, USD, Net 30 (due = date + 30 days):
  N1 15 Oct, 10,000.00, approved; paid 4,000.00 on 20 Nov and 6,000.00 on 10 Dec -> paid, owes 0
  N2 10 Nov,  5,000.00, approved, due 10 Dec; paid 1,500.00 on 5 Dec -> owes 3,500.00, 21 days late
  N3 20 Dec,  8,000.00, pending approval -> not posted: not invoiced, not owed; unbilled WIP
  N4  1 Sep,  2,000.00, approved, due 1 Oct, unpaid -> owes 2,000.00, 91 days late (over 90)
  N5  1 Dec,  3,000.00, approved then voided -> nothing
  N6 15 Dec,  1,200.00, approved, due 14 Jan 2027 -> owes 1,200.00, current
Business Central, legal entity UK, GBP (no tax on these lines), due = date + 30 days:
  B1  2 Nov, 12,000.00, posted; paid 7,000.00 on 30 Nov and 5,000.00 on 3 Dec -> status Paid, owes 0
  B2  8 Dec,  4,000.00, posted, due 7 Jan 2027; paid 1,000.00 on 18 Dec -> owes 3,000.00, current
  B3 22 Dec,  2,500.00, draft -> not posted; unbilled WIP
  B4 20 Oct,  6,000.00, posted, due 19 Nov, unpaid -> owes 6,000.00, 42 days late (31–60)
  B5  2 Dec,    900.00, posted then cancelled -> nothing
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import httpx
import pytest

from dashboards import ledger, wip
from dashboards.metrics import Filters
from pscsync import clock
from pscsync.models import ErpInvoice, Handoff, InvoiceStatusChange
from tests.flows.conftest import run, trigger

pytestmark = pytest.mark.django_db

DEC = dict(start=dt.date(2026, 12, 1), end=dt.date(2026, 12, 31))
D = Decimal


def synced(firm, slug: str, key: str, n: int = 0) -> None:
    handoff = run(trigger(firm, "bill-to-cash", key, slug=slug, minutes_later=n))
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message


def netsuite_firm(firm) -> dict[str, str]:
    ns = firm.connector("netsuite-us")
    customer = (
        ns.upsert(
            entity="customer",
            key="C-KA-US",
            fields={"companyName": "Initech", "subsidiary": {"id": "3"}, "currency": {"id": "1"}},
        ).external_id
        or ns.lookup(entity="customer", key="C-KA-US").external_id
    )

    def invoice(name: str, day: str, amount: float, *, approved: bool) -> str:
        fields = {
            "entity": {"id": customer},
            "tranDate": day,
            "currency": {"id": "1"},
            "item": {"items": [{"item": {"id": "55"}, "quantity": 1, "rate": amount, "amount": amount}]},
        }
        if approved:
            fields["approvalStatus"] = {"id": "2"}
        ns.upsert(entity="invoice", key=f"KA-{name}", fields=fields)
        return ns.lookup(entity="invoice", key=f"KA-{name}").external_id

    ids = {
        "N1": invoice("N1", "2026-10-15", 10000, approved=True),
        "N2": invoice("N2", "2026-11-10", 5000, approved=True),
        "N3": invoice("N3", "2026-12-20", 8000, approved=False),
        "N4": invoice("N4", "2026-09-01", 2000, approved=True),
        "N5": invoice("N5", "2026-12-01", 3000, approved=True),
        "N6": invoice("N6", "2026-12-15", 1200, approved=True),
    }

    def payment(name: str, day: str, doc: str, amount: float) -> str:
        ns.upsert(
            entity="payment",
            key=f"KA-{name}",
            fields={
                "customer": {"id": customer},
                "payment": amount,
                "tranDate": day,
                "apply": {"items": [{"doc": {"id": ids[doc]}, "apply": True, "amount": amount}]},
            },
        )
        return ns.lookup(entity="payment", key=f"KA-{name}").external_id

    ids["P1"] = payment("P1", "2026-11-20", "N1", 4000)
    ids["P2"] = payment("P2", "2026-12-10", "N1", 6000)
    ids["P3"] = payment("P3", "2026-12-05", "N2", 1500)
    return ids


def bc_firm(firm) -> dict[str, str]:
    bc = firm.connector("businesscentral-uk")
    bc.upsert(entity="customers", key="C-KA-UK", fields={"displayName": "Umbrella Ltd", "type": "Company"})

    def invoice(name: str, day: str, amount: float, *, post: bool) -> str:
        fields = {
            "customerNumber": "C-KA-UK",
            "invoiceDate": day,
            "salesInvoiceLines": [
                {
                    "lineType": "Item",
                    "lineObjectNumber": "CONSULT",
                    "description": name,
                    "quantity": 1,
                    "unitPrice": amount,
                }
            ],
        }
        invoice_id = bc.upsert(entity="salesInvoices", key=f"KA-{name}", fields=fields).external_id
        if post:
            bc.post_invoice(invoice_id)
        return invoice_id

    ids = {
        "B1": invoice("B1", "2026-11-02", 12000, post=True),
        "B2": invoice("B2", "2026-12-08", 4000, post=True),
        "B3": invoice("B3", "2026-12-22", 2500, post=False),
        "B4": invoice("B4", "2026-10-20", 6000, post=True),
        "B5": invoice("B5", "2026-12-02", 900, post=True),
    }

    def payment(name: str, day: str, doc: str, amount: float) -> str:
        return bc.upsert(
            entity="customerPayments",
            key=f"KA-{name}",
            fields={
                "customerNumber": "C-KA-UK",
                "amount": -amount,
                "appliesToInvoiceId": ids[doc],
                "postingDate": day,
            },
        ).external_id

    ids["Q1"] = payment("Q1", "2026-11-30", "B1", 7000)
    ids["Q2"] = payment("Q2", "2026-12-03", "B1", 5000)
    ids["Q3"] = payment("Q3", "2026-12-18", "B2", 1000)
    return ids


def test_receivables_ageing_invoiced_cash_and_dso_match_the_ledgers_to_the_cent(firm, entities, settings) -> None:
    # NetSuite: every invoice synced once, N5 voided in NetSuite and synced again, payments synced.
    ns_ids = netsuite_firm(firm)
    for name in ("N1", "N2", "N3", "N4", "N5", "N6"):
        synced(firm, "netsuite-us", f"invoice:{ns_ids[name]}")
    # A NetSuite user voids N5 (the Void button; REST has no void, the sandbox takes it here).
    voided = httpx.post(f"{firm.sandboxes['netsuite'].url}/_sandbox/void/invoice/{ns_ids['N5']}", timeout=5)
    assert voided.status_code == 204
    synced(firm, "netsuite-us", f"invoice:{ns_ids['N5']}", 1)
    for name in ("P1", "P2", "P3"):
        synced(firm, "netsuite-us", f"payment:{ns_ids[name]}")
    # Business Central: B5 cancelled in BC (a corrective credit memo) after its first sync.
    bc_ids = bc_firm(firm)
    for name in ("B1", "B2", "B3", "B4", "B5"):
        synced(firm, "businesscentral-uk", f"bc-invoice:{bc_ids[name]}")
    bc = firm.connector("businesscentral-uk")
    bc.send("POST", f"{bc.company_path()}/salesInvoices({bc_ids['B5']})/Microsoft.NAV.cancel")
    synced(firm, "businesscentral-uk", f"bc-invoice:{bc_ids['B5']}", 1)
    for name in ("Q1", "Q2", "Q3"):
        synced(firm, "businesscentral-uk", f"bc-payment:{bc_ids[name]}")

    # The ledger holds each invoice in the ERP's own state, moves dated.
    states = {i.key: i.status for i in ErpInvoice.objects.filter(key__startswith="KA-")}
    assert states == {
        "KA-N1": "paid",
        "KA-N2": "partly_paid",
        "KA-N3": "pending_approval",
        "KA-N4": "posted",
        "KA-N5": "voided",
        "KA-N6": "posted",
        "KA-B1": "paid",
        "KA-B2": "partly_paid",
        "KA-B3": "draft",
        "KA-B4": "posted",
        "KA-B5": "voided",
    }
    b1 = ErpInvoice.objects.get(key="KA-B1")
    assert sorted(b1.applications.values_list("amount", flat=True)) == [D("5000.00"), D("7000.00")]
    assert b1.paid_on == dt.date(2026, 12, 3) and b1.open_balance == D("0.00")  # the second payment cleared it
    n1_moves = list(InvoiceStatusChange.objects.filter(invoice__key="KA-N1").values_list("to_status", "on"))
    assert n1_moves[-1] == ("paid", dt.date(2026, 12, 10))
    n5 = list(InvoiceStatusChange.objects.filter(invoice__key="KA-N5").values_list("from_status", "to_status"))
    assert n5 == [("", "posted"), ("posted", "voided")]

    # US, in USD.
    settings.PSCSYNC_REPORTING_CURRENCY = "USD"
    us = Filters(**DEC, entity_ids=(entities["us"].pk,))
    owed = ledger.receivables(us)
    # N2 5,000 − 1,500 = 3,500 (21 days late) + N4 2,000 (91 days late) + N6 1,200 (current) = 6,700.00;
    # N1 10,000 − 4,000 − 6,000 = 0; N3 pending and N5 voided are not receivables.
    assert owed["value"] == D("6700.00")
    assert owed["buckets"] == [D("1200.00"), D("3500.00"), D("0"), D("0"), D("2000.00")]
    assert [(r["customer"], r["total"]) for r in owed["rows"]] == [("Initech", D("6700.00"))]
    # As of 30 Nov: N1 10,000 − 4,000 = 6,000 + N2 5,000 + N4 2,000 = 13,000.00 (P2, P3 came later).
    assert ledger.receivables(us, at=dt.date(2026, 11, 30))["value"] == D("13000.00")
    # Invoiced in December: N6 1,200 only (N3 pending, N5 voided).
    assert ledger.invoiced(us) == {"value": D("1200.00"), "count": 1}
    # Cash collected in December: P2 6,000 + P3 1,500 = 7,500.00 (P1 was in November).
    cash = ledger.cash_collected(us)
    assert (cash["value"], cash["count"]) == (D("7500.00"), 2)
    # DSO: billings 3 Oct – 31 Dec = N1 10,000 + N2 5,000 + N6 1,200 = 16,200 (N4 is from 1 Sep);
    # 6,700 ÷ 16,200 × 90 = 37.222… days.
    d = ledger.dso(us)
    assert (d["receivables"], d["billings"], d["invoices"]) == (D("6700.00"), D("16200.00"), 3)
    assert d["days"] == pytest.approx(37.2222, abs=1e-4)

    # UK, in GBP.
    settings.PSCSYNC_REPORTING_CURRENCY = "GBP"
    uk = Filters(**DEC, entity_ids=(entities["uk"].pk,))
    owed = ledger.receivables(uk)
    # B2 4,000 − 1,000 = 3,000 (current) + B4 6,000 (42 days late) = 9,000.00; B1 12,000 − 7,000 − 5,000 = 0.
    assert owed["value"] == D("9000.00")
    assert owed["buckets"] == [D("3000.00"), D("0"), D("6000.00"), D("0"), D("0")]
    # Invoiced in December: B2 4,000 (B3 draft, B5 cancelled).
    assert ledger.invoiced(uk) == {"value": D("4000.00"), "count": 1}
    # Cash collected in December: Q2 5,000 + Q3 1,000 = 6,000.00 (Q1 was on 30 Nov).
    cash = ledger.cash_collected(uk)
    assert (cash["value"], cash["count"]) == (D("6000.00"), 2)
    # DSO: billings = B1 12,000 + B2 4,000 + B4 6,000 = 22,000; 9,000 ÷ 22,000 × 90 = 36.8181… days.
    d = ledger.dso(uk)
    assert (d["receivables"], d["billings"], d["invoices"]) == (D("9000.00"), D("22000.00"), 3)
    assert d["days"] == pytest.approx(36.8182, abs=1e-4)

    # Unbilled WIP's part on unposted ERP invoices: N3 8,000 (USD) and B3 2,500 (GBP), each 9–11
    # days old on 31 Dec, so in the 0–30 days bucket.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clock, "now", lambda: dt.datetime(2026, 12, 31, 12, tzinfo=dt.UTC))
        assert wip.unbilled_wip(uk, detail=False)["by_kind"]["unposted"] == [D("2500.00"), D("0"), D("0"), D("0")]
        settings.PSCSYNC_REPORTING_CURRENCY = "USD"
        assert wip.unbilled_wip(us, detail=False)["by_kind"]["unposted"] == [D("8000.00"), D("0"), D("0"), D("0")]


def test_one_netsuite_payment_over_two_invoices_settles_both_in_the_ledger(firm, entities) -> None:
    ns = firm.connector("netsuite-us")
    customer = (
        ns.upsert(
            entity="customer", key="C-KA-2", fields={"companyName": "Hooli", "subsidiary": {"id": "3"}}
        ).external_id
        or ns.lookup(entity="customer", key="C-KA-2").external_id
    )
    ids = []
    for name, amount in (("M1", 300.0), ("M2", 700.0)):
        lines = {"items": [{"item": {"id": "55"}, "quantity": 1, "rate": amount, "amount": amount}]}
        fields = {"entity": {"id": customer}, "tranDate": "2026-12-01", "item": lines, "approvalStatus": {"id": "2"}}
        ns.upsert(entity="invoice", key=f"KA-{name}", fields=fields)
        ids.append(ns.lookup(entity="invoice", key=f"KA-{name}").external_id)
    # One wire of 800.00: 300.00 clears M1, 500.00 goes to M2.
    apply = {"items": [{"doc": {"id": ids[0]}, "amount": 300.0}, {"doc": {"id": ids[1]}, "amount": 500.0}]}
    ns.upsert(
        entity="payment",
        key="KA-W1",
        fields={"customer": {"id": customer}, "payment": 800.0, "tranDate": "2026-12-12", "apply": apply},
    )
    synced(firm, "netsuite-us", f"payment:{ns.lookup(entity='payment', key='KA-W1').external_id}")
    stored = {i.key: (i.status, i.open_balance) for i in ErpInvoice.objects.filter(key__in=["KA-M1", "KA-M2"])}
    assert stored == {"KA-M1": ("paid", D("0.00")), "KA-M2": ("partly_paid", D("200.00"))}
    cash = ledger.cash_collected(Filters(**DEC, entity_ids=(entities["us"].pk,)))
    assert cash["value"] == D("800.00")  # 300.00 + 500.00 on 12 Dec
