"""The ledger figures' shortcuts for a large firm, with answers worked out by hand: cash collected
reads the payment applications alone (each carries its invoice's legal entity and currency), and
the bill-to-cash page shows the 200 largest customers and the 25 longest overdue invoices while
its CSV exports keep every row.

Period: October 2026 (D = 31 Oct 2026), figures in USD (the US entity's currency), no FX rate."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from dashboards import ledger
from dashboards.metrics import Filters
from pscsync import clock, ledger_days
from pscsync.models import ErpInvoice, PaymentApplication
from tests.dashboards.test_metrics import ledger_invoice

pytestmark = pytest.mark.django_db

OCT = dict(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31))
PERIOD = "from=2026-10-01&to=2026-10-31"
D = Decimal


def test_an_application_carries_its_invoice_entity_and_currency_and_moves_with_the_invoice(crm, entities) -> None:
    us, uk = entities["us"], entities["uk"]
    # INV-1: 1,000.00 USD posted 1 Oct; 400.00 paid 10 Oct and 600.00 paid 20 Oct -> cash 1,000.00.
    payments = [("400.00", dt.date(2026, 10, 10)), ("600.00", dt.date(2026, 10, 20))]
    ledger_invoice(
        crm, us, "INV-1", status="paid", posted=dt.date(2026, 10, 1), due=dt.date(2026, 10, 31), total="1000.00",
        payments=payments,
    )  # fmt: skip
    assert set(PaymentApplication.objects.values_list("legal_entity_id", "currency")) == {(us.pk, "USD")}
    assert ledger.cash_collected(Filters(**OCT, entity_ids=(us.pk,)))["value"] == D("1000.00")
    # The ERP's answer moves the invoice to the UK entity: its applications (and their cash) go too.
    ledger_invoice(
        crm, uk, "INV-1", status="paid", posted=dt.date(2026, 10, 1), due=dt.date(2026, 10, 31), total="1000.00",
        payments=payments,
    )  # fmt: skip
    assert set(PaymentApplication.objects.values_list("legal_entity_id", "currency")) == {(uk.pk, "USD")}
    assert ledger.cash_collected(Filters(**OCT, entity_ids=(us.pk,)))["value"] == D("0")
    cash_uk = ledger.cash_collected(Filters(**OCT, entity_ids=(uk.pk,), currency="USD"))
    assert (cash_uk["value"], cash_uk["count"], list(cash_uk["by_entity"])) == (D("1000.00"), 2, [uk.pk])


def test_a_voided_invoice_payment_is_not_cash_and_an_application_written_directly_gets_its_scope(crm, entities) -> None:
    us = entities["us"]
    # INV-2: 500.00 posted 2 Oct, 500.00 paid 12 Oct -> cash 500.00.
    ledger_invoice(
        crm, us, "INV-2", status="paid", posted=dt.date(2026, 10, 2), due=dt.date(2026, 11, 1), total="500.00",
        payments=[("500.00", dt.date(2026, 10, 12))],
    )  # fmt: skip
    # INV-3: 700.00 posted 3 Oct, 700.00 applied 13 Oct, then voided in the ERP -> not cash.
    voided = ledger_invoice(
        crm, us, "INV-3", status="voided", posted=dt.date(2026, 10, 3), due=dt.date(2026, 11, 2), total="700.00",
        payments=[("700.00", dt.date(2026, 10, 13))],
    )  # fmt: skip
    assert voided.applications.count() == 1
    # An application saved without a scope (a fixture, an admin) takes its invoice's: 250.00 on 14 Oct.
    posted = ledger_invoice(
        crm, us, "INV-4", status="posted", posted=dt.date(2026, 10, 4), due=dt.date(2026, 11, 3), total="250.00"
    )
    made = PaymentApplication.objects.create(
        invoice=posted, payment_id="P-4", amount=D("250.00"), applied_on=dt.date(2026, 10, 14), read_at=clock.now()
    )
    assert (made.legal_entity_id, made.currency) == (us.pk, "USD")
    cash = ledger.cash_collected(Filters(**OCT, entity_ids=(us.pk,)))
    # 500.00 (INV-2) + 250.00 (INV-4) = 750.00 in two applications; INV-3's 700.00 is reversed.
    assert (cash["value"], cash["count"]) == (D("750.00"), 2)
    weeks = ledger.by_week(Filters(**OCT, entity_ids=(us.pk,)))
    # Week of Mon 12 Oct: 500.00 (12 Oct) + 250.00 (14 Oct); INV-3's 13 Oct application is not there.
    assert weeks[dt.date(2026, 10, 12)][1] == 750.0


def _owing(crm, entity, customers: int) -> None:
    """Customer k (0 ≤ k < customers) owes one unpaid invoice of 1,000 + k USD, posted 1 Sep 2026 + k
    days mod 60, due 30 days later (so k = 0 is the smallest debt, and the longest overdue first)."""
    start = dt.date(2026, 8, 1)
    rows = []
    for k in range(customers):
        posted = start + dt.timedelta(days=k % 60)
        rows.append(
            ErpInvoice(
                legal_entity=entity,
                connection=crm,
                vendor_id=f"V{k:03d}",
                number=f"N{k:03d}",
                customer_name=f"Customer {k:03d}",
                currency="USD",
                total=D(1000 + k),
                open_balance=D(1000 + k),
                status="posted",
                invoice_date=posted,
                due_date=posted + dt.timedelta(days=30),
                posting_date=posted,
                first_seen_at=clock.now(),
                read_at=clock.now(),
            )  # fmt: skip
        )
    ErpInvoice.objects.bulk_create(rows)
    ledger_days.rebuild()  # bulk_create passes no model's save: the ledger by day is rebuilt after it


def test_bill_to_cash_shows_the_200_largest_customers_and_its_csv_every_one(
    client, viewer, crm, entities, monkeypatch
) -> None:
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    _owing(crm, entities["us"], 203)
    client.force_login(viewer)
    page = client.get(f"/dashboards/bill-to-cash/?{PERIOD}").content.decode()
    # 203 customers: the 200 largest are Customer 202 (1,202) down to Customer 003 (1,003).
    assert "Customer 202" in page and "Customer 003" in page
    assert "Customer 002" not in page.split("Receivables by legal entity")[0]
    assert "Showing the first 200 of 203 rows" in page
    csv = client.get(f"/dashboards/bill-to-cash/?{PERIOD}&csv=receivables-ageing").content.decode().splitlines()
    assert len(csv) == 1 + 203
    assert csv[1].split(",")[1] == "Customer 202" and csv[-1].split(",")[1] == "Customer 000"
    # Receivables at 31 Oct: Σ (1,000 + k) for k < 203 = 203,000 + 20,503 = 223,503.
    entity_table = page.split("Receivables by legal entity")[1]
    assert "USD 223,503" in entity_table
    # Open invoices: the 25 longest overdue on the page. Posted 1 Aug (k = 0, 60, 120, 180) are due
    # 31 Aug, 61 days late; then 2 Aug (k = 1, 61, 121, 181), ... the 25th is k = 6 (7 Aug: N006).
    drill = client.get(f"/dashboards/bill-to-cash/?{PERIOD}&csv=open-invoices").content.decode().splitlines()
    assert len(drill) == 1 + 203
    assert [line.split(",")[0] for line in drill[1:6]] == ["N000", "N060", "N120", "N180", "N001"]
    shown = page.split("Open invoices")[1]
    assert "N006" in shown and "N066" not in shown and "Showing the first 25 of 203 rows" in shown


def test_the_page_limits_agree_with_the_unlimited_receivables(crm, entities) -> None:
    _owing(crm, entities["us"], 30)
    f = Filters(**OCT, entity_ids=(entities["us"].pk,))
    every = ledger.receivables(f)
    first = ledger.receivables(f, rows=10, invoices=5)
    # The sums do not depend on how many rows are built; the rows are the first of every row.
    assert (first["value"], first["count"], first["customers"]) == (every["value"], 30, 30)
    assert [r["customer"] for r in first["rows"]] == [r["customer"] for r in every["rows"][:10]]
    assert [r["customer"] for r in first["every_row"]()] == [r["customer"] for r in every["rows"]]
    assert [i["number"] for i in first["invoices"]] == [i["number"] for i in every["invoices"][:5]]


def test_an_invoice_keeps_the_sum_and_date_of_its_applications_as_the_erp_changes_them(crm, entities) -> None:
    us = entities["us"]
    f = Filters(**OCT, entity_ids=(us.pk,))
    # INV-5: 900.00 posted 1 Oct, due 31 Oct; 300.00 applied 5 Oct and 200.00 applied 25 Oct.
    payments = [("300.00", dt.date(2026, 10, 5)), ("200.00", dt.date(2026, 10, 25))]
    row = ledger_invoice(
        crm, us, "INV-5", status="partly_paid", posted=dt.date(2026, 10, 1), due=dt.date(2026, 10, 31),
        total="900.00", payments=payments,
    )  # fmt: skip
    row.refresh_from_db()
    assert (row.applied_total, row.applied_through) == (D("500.00"), dt.date(2026, 10, 25))
    # Owed at 31 Oct: 900 − 500 = 400.00; at 20 Oct (before the second payment): 900 − 300 = 600.00.
    assert ledger.receivables(f)["value"] == D("400.00")
    assert ledger.receivables(f, at=dt.date(2026, 10, 20))["value"] == D("600.00")
    # A stale copy of the invoice saved again does not put back the sum it was read with.
    stale = ErpInvoice.objects.get(pk=row.pk)
    ErpInvoice.objects.filter(pk=row.pk).update(applied_total=D("0"), applied_through=None)
    ErpInvoice.applications_summarise(row.pk)
    ledger_days.rebuild()  # the update above went around the models: the ledger by day is rebuilt after it
    stale.applied_total, stale.source_status = D("1.00"), "re-read"
    stale.save()
    stale.refresh_from_db()
    assert (stale.applied_total, stale.source_status) == (D("500.00"), "re-read")
    # The ERP unapplies the 25 Oct payment: 300.00 applied through 5 Oct, 600.00 owed at 31 Oct.
    ledger_invoice(
        crm, us, "INV-5", status="partly_paid", posted=dt.date(2026, 10, 1), due=dt.date(2026, 10, 31),
        total="900.00", payments=payments[:1],
    )  # fmt: skip
    row.refresh_from_db()
    assert (row.applied_total, row.applied_through) == (D("300.00"), dt.date(2026, 10, 5))
    assert ledger.receivables(f)["value"] == D("600.00")
    # Every application gone (deleted one by one, as an admin would): nothing applied, 900.00 owed.
    for application in PaymentApplication.objects.filter(invoice=row):
        application.delete()
    row.refresh_from_db()
    assert (row.applied_total, row.applied_through) == (D("0.00"), None)
    assert ledger.receivables(f)["value"] == D("900.00")
