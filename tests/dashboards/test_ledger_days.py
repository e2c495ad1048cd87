"""The ledger by day (pscsync.ledger_days) is a storage shortcut, not a second definition: the money
figures read from it equal the answers worked out by hand from the invoices and payments below, and
the same figures read from the invoices (the path a customer or connection filter takes); after
every move through pscsync.ledger its rows equal a rebuild from scratch.

The ledger, written through pscsync.ledger as the ERP connectors write it:

US (USD)
  A  1,000.00 posted 1 Oct, due 31 Oct; 400.00 paid 10 Oct, 600.00 paid 20 Oct (paid).
  B  3,000.00 posted 15 Oct, due 14 Nov; 1,200.00 paid 25 Oct (partly paid).
  C    700.00 posted 3 Oct, due 2 Nov; 700.00 applied 13 Oct, then voided in the ERP (nothing).
  D  2,000.00 raised 28 Oct (pending approval), posted 2 Nov, after the handoff; due 2 Dec.
  E    500.00 posted 20 Sep, due 20 Oct, unpaid.
UK (GBP)
  F    800.00 posted 5 Oct, due 4 Nov; 300.00 paid 30 Oct, 100.00 applied 3 Nov then unapplied.
  G  1,200.00 posted 1 Aug, due 31 Aug, unpaid.
  H    250.00 posted 12 Oct, no due date, unpaid.

Period 1 Oct – 5 Nov 2026 (D = 5 Nov: nothing posted, paid or applied after it)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from connectors.base import LedgerInvoice, PaymentApplied
from dashboards import ledger
from dashboards.metrics import Filters
from pscsync import ledger_days
from pscsync.ledger import ledger_record_invoice
from pscsync.models import LedgerDay

pytestmark = pytest.mark.django_db
D = Decimal
PERIOD = dict(start=dt.date(2026, 10, 1), end=dt.date(2026, 11, 5))


def record(crm, entity, number, *, status, total, posted, due, currency, payments=(), raised=None):
    applied = tuple(PaymentApplied(f"{number}-{i}", number, D(a), on) for i, (a, on) in enumerate(payments))
    paid = sum((p.amount for p in applied), D("0"))
    invoice = LedgerInvoice(
        id=number, number=number, key=f"I-{number}", project_key="", batch_key="", customer_id="C1",
        customer_name="Globex", currency=currency, total=D(total), tax=D("0.00"),
        open_balance=D(total) - paid if status in ("posted", "partly_paid", "paid") else D("0"),
        status=status, source_status=status, invoice_date=raised or posted, due_date=due, posting_date=posted,
        payments=applied,
    )  # fmt: skip
    return ledger_record_invoice(legal_entity=entity, connection=crm, invoice=invoice)


def day(month: int, d: int) -> dt.date:
    return dt.date(2026, month, d)


@pytest.fixture
def books(crm, entities):
    us, uk = entities["us"], entities["uk"]
    usd = dict(currency="USD")
    record(crm, us, "A", status="paid", total="1000.00", posted=day(10, 1), due=day(10, 31),
           payments=[("400.00", day(10, 10)), ("600.00", day(10, 20))], **usd)  # fmt: skip
    record(crm, us, "B", status="partly_paid", total="3000.00", posted=day(10, 15), due=day(11, 14),
           payments=[("1200.00", day(10, 25))], **usd)  # fmt: skip
    # C: paid, then voided (its application leaves cash collected).
    record(crm, us, "C", status="paid", total="700.00", posted=day(10, 3), due=day(11, 2),
           payments=[("700.00", day(10, 13))], **usd)  # fmt: skip
    record(crm, us, "C", status="voided", total="700.00", posted=day(10, 3), due=day(11, 2),
           payments=[("700.00", day(10, 13))], **usd)  # fmt: skip
    # D: raised and pending approval, then posted after the handoff.
    record(crm, us, "D", status="pending_approval", total="2000.00", posted=None, due=day(12, 2),
           raised=day(10, 28), **usd)  # fmt: skip
    record(crm, us, "D", status="posted", total="2000.00", posted=day(11, 2), due=day(12, 2),
           raised=day(10, 28), **usd)  # fmt: skip
    record(crm, us, "E", status="posted", total="500.00", posted=day(9, 20), due=day(10, 20), **usd)
    gbp = dict(currency="GBP")
    # F: two payments, then the ERP unapplies the second.
    record(crm, uk, "F", status="partly_paid", total="800.00", posted=day(10, 5), due=day(11, 4),
           payments=[("300.00", day(10, 30)), ("100.00", day(11, 3))], **gbp)  # fmt: skip
    record(crm, uk, "F", status="partly_paid", total="800.00", posted=day(10, 5), due=day(11, 4),
           payments=[("300.00", day(10, 30))], **gbp)  # fmt: skip
    record(crm, uk, "G", status="posted", total="1200.00", posted=day(8, 1), due=day(8, 31), **gbp)
    record(crm, uk, "H", status="posted", total="250.00", posted=day(10, 12), due=None, **gbp)
    return us, uk


def _figures(f: Filters) -> dict:
    owed = ledger.receivables(f, detail=False)
    billed, cash, dso = ledger.invoiced(f), ledger.cash_collected(f), ledger.dso(f, detail=False)
    return {
        "invoiced": (billed["value"], billed["count"]),
        "cash": (cash["value"], cash["count"], cash["by_entity"]),
        "owed": (owed["value"], owed["count"], owed["buckets"], owed["counts"], owed["by_entity"], owed["native"]),
        "dso": (dso["days"], dso["billings"], dso["invoices"]),
        "weeks": ledger.by_week(f),
    }


def _from_invoices(f: Filters, monkeypatch) -> dict:
    """The same figures read from the invoices and applications (no ledger by day)."""
    with monkeypatch.context() as m:
        m.setattr(ledger, "by_day", lambda f: None)
        return _figures(f)


def test_figures_from_the_ledger_by_day_are_the_hand_worked_ones(books) -> None:
    us, uk = books
    f = Filters(**PERIOD, entity_ids=(us.pk,), currency="USD")
    assert ledger.owed_by_day(f, f.end) is not None  # read from the days, not the invoices
    # Invoiced: A 1,000 + B 3,000 + D 2,000 (posted 2 Nov) = 6,000.00 in 3; C voided, E before the period.
    assert (ledger.invoiced(f)["value"], ledger.invoiced(f)["count"]) == (D("6000.00"), 3)
    # Cash: A 400 + 600, B 1,200 = 2,200.00 in 3; C's 700 was reversed with its invoice.
    assert (ledger.cash_collected(f)["value"], ledger.cash_collected(f)["count"]) == (D("2200.00"), 3)
    # Owed at 5 Nov: B 1,800 and D 2,000 not yet due (current), E 500 16 days past due (1–30).
    owed = ledger.receivables(f, detail=False)
    assert (owed["value"], owed["count"]) == (D("4300.00"), 3)
    assert owed["buckets"] == [D("3800.00"), D("500.00"), D("0"), D("0"), D("0")]
    # DSO: 4,300 ÷ (A + B + D + E posted since 8 Aug = 6,500) × 90 = 59.54 days.
    assert round(ledger.dso(f, detail=False)["days"], 2) == 59.54
    # Weeks (Mondays): 28 Sep: A 1,000 invoiced; 12 Oct: B 3,000 / A 600; 5 Oct: A 400 cash;
    # 19 Oct: B 1,200 cash; 2 Nov: D 2,000.
    assert ledger.by_week(f) == {
        day(9, 28): [1000.0, 0.0], day(10, 5): [0.0, 400.0], day(10, 12): [3000.0, 0.0],
        day(10, 19): [0.0, 600.0 + 1200.0], day(11, 2): [2000.0, 0.0],
    }  # fmt: skip
    g = Filters(**PERIOD, entity_ids=(uk.pk,), currency="GBP")
    # Invoiced: F 800 + H 250 = 1,050.00 in 2 (G posted 1 Aug). Cash: F's 300 (the 100 was unapplied).
    assert (ledger.invoiced(g)["value"], ledger.invoiced(g)["count"]) == (D("1050.00"), 2)
    assert (ledger.cash_collected(g)["value"], ledger.cash_collected(g)["count"]) == (D("300.00"), 1)
    # Owed at 5 Nov: H 250 (no due date: current), F 500 (1 day past due), G 1,200 (66 days: 61–90).
    owed = ledger.receivables(g, detail=False)
    assert owed["buckets"] == [D("250.00"), D("500.00"), D("0"), D("1200.00"), D("0")]
    assert (owed["value"], owed["count"]) == (D("1950.00"), 3)


@pytest.mark.parametrize(
    "scope",
    [
        "firm",  # both currencies, no rate between them: the GBP amounts stay named as missing
        "us",
        "uk",
        "october",  # ends before D's posting (2 Nov): receivables read the invoices, the flows the days
        "past",  # 20 Oct, after some payments and before others
    ],
)
def test_figures_from_the_ledger_by_day_equal_a_recompute_from_the_invoices(books, scope, monkeypatch) -> None:
    us, uk = books
    f = {
        "firm": Filters(**PERIOD, currency="USD"),
        "us": Filters(**PERIOD, entity_ids=(us.pk,), currency="USD"),
        "uk": Filters(**PERIOD, entity_ids=(uk.pk,), currency="GBP"),
        "october": Filters(start=day(10, 1), end=day(10, 31), currency="USD"),
        "past": Filters(start=day(9, 1), end=day(10, 20), entity_ids=(us.pk, uk.pk), currency="USD"),
    }[scope]
    assert _figures(f) == _from_invoices(f, monkeypatch)


def test_the_days_kept_by_each_write_equal_a_rebuild(books) -> None:
    kept = _days()
    assert kept  # the writes above made rows
    ledger_days.rebuild()
    assert _days() == kept
    # Deleting an invoice (and its applications, by cascade) takes its sums out.
    from pscsync.models import ErpInvoice

    ErpInvoice.objects.get(number="B").delete()
    after_delete = _days()
    ledger_days.rebuild()
    assert _days() == after_delete
    assert after_delete != kept


def _days() -> dict:
    """Non-empty rows only: a rebuild writes no row whose sums are all zero, the deltas leave them."""
    rows = LedgerDay.objects.values_list(
        "legal_entity_id", "currency", "day", "invoiced", "invoiced_count", "collected", "collected_count",
        "owed", "owed_count",
    )  # fmt: skip
    return {r[:3]: r[3:] for r in rows if any(r[3:])}
