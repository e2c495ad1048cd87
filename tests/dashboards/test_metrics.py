"""Each KPI on hand-built handoffs with known answers, incl. DOMAIN.md §2's edge cases."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from dashboards import ledger, metrics, wip
from dashboards.facts import rollups_rebuild_all
from dashboards.models import FlowSla, FxRate
from dashboards.sla import business_days_between
from pscsync import clock
from pscsync.models import Mismatch, ReconciliationRun, UnbilledWork
from tests.dashboards.builders import T0, handoff

H = dt.timedelta(hours=1)
OCT = metrics.Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31))


@pytest.fixture(autouse=True)
def _now(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))


def q2p(crm, entity, key, closed, activated, **kw):
    times = {"deal_closed": closed}
    if activated is not None:
        times["project_activated"] = activated
    return handoff(
        flow="quote-to-project", conn=crm, entity=entity, key=key, started=closed, finished=activated, times=times, **kw
    )


def test_business_days_skip_weekends() -> None:
    friday = dt.datetime(2026, 10, 9, 12, tzinfo=dt.UTC)
    assert business_days_between(friday, friday + dt.timedelta(days=3)) == pytest.approx(1.0)


@pytest.mark.django_db
def test_activation_median_p90_and_sla_on_known_latencies(crm, entities) -> None:
    for i, hours in enumerate([10, 20, 30]):
        q2p(crm, entities["us"], f"OPP-{i}", T0, T0 + hours * H)
    rollups_rebuild_all()
    s = metrics.flow_stats(OCT, "quote-to-project")
    assert (s.measured, s.median_hours, s.p90_hours) == (3, 20.0, 30.0)
    # Default SLA: 1 business day. 30 h from Monday 09:00 is 1.25 business days: one breach.
    assert (s.within_sla, s.breaches) == (2, 1)
    assert s.pct_within_sla == pytest.approx(66.67, abs=0.01)


@pytest.mark.django_db
def test_admin_sla_changes_the_breach_count_after_rebuild(crm, entities) -> None:
    for i, hours in enumerate([10, 20, 30]):
        q2p(crm, entities["us"], f"OPP-{i}", T0, T0 + hours * H)
    FlowSla.objects.create(flow="quote-to-project", target=Decimal("12"), unit="hours")
    rollups_rebuild_all()
    assert metrics.flow_stats(OCT, "quote-to-project").within_sla == 1


@pytest.mark.django_db
def test_censored_deal_is_not_a_latency_but_is_won_not_activated(crm, entities) -> None:
    q2p(crm, entities["us"], "OPP-DONE", T0, T0 + 4 * H)
    q2p(crm, entities["us"], "OPP-OPEN", T0, None, status="needs_attention", amount="50000.00")
    rollups_rebuild_all()
    s = metrics.flow_stats(OCT, "quote-to-project")
    assert (s.measured, s.median_hours) == (1, 4.0)
    won = metrics.won_not_activated(OCT)
    assert won["count"] == 1 and won["value"] == Decimal("50000.00")
    assert [r["business_key"] for r in won["rows"]] == ["OPP-OPEN"] and won["rows"][0]["age"] == 26
    assert (won["over_sla_count"], won["over_sla_value"]) == (1, Decimal("50000.00"))


@pytest.mark.django_db
def test_reopened_deal_uses_the_last_closed_won(crm, entities) -> None:
    q2p(crm, entities["us"], "OPP-R", T0, T0 + 5 * H)
    q2p(crm, entities["us"], "OPP-R", T0 + 48 * H, T0 + 50 * H)
    rollups_rebuild_all()
    s = metrics.flow_stats(OCT, "quote-to-project")
    assert (s.measured, s.median_hours) == (1, 2.0)


@pytest.mark.django_db
def test_one_deal_two_projects_uses_the_first_activation(crm, entities) -> None:
    q2p(crm, entities["us"], "OPP-2P", T0, T0 + 8 * H)
    q2p(crm, entities["us"], "OPP-2P", T0, T0 + 3 * H)
    rollups_rebuild_all()
    assert metrics.flow_stats(OCT, "quote-to-project").median_hours == 3.0


@pytest.mark.django_db
def test_project_before_close_is_reported_apart(crm, entities) -> None:
    q2p(crm, entities["us"], "OPP-EARLY", T0, T0 - 6 * H)
    q2p(crm, entities["us"], "OPP-OK", T0, T0 + 6 * H)
    rollups_rebuild_all()
    s = metrics.flow_stats(OCT, "quote-to-project")
    assert (s.measured, s.negative, s.median_hours) == (1, 1, 6.0)


def p2b(crm, entity, approved, released, invoiced, **kw):
    times = {"time_approved": approved, "billing_released": released}
    if invoiced:
        times["invoice_created"] = invoiced
    return handoff(
        flow="project-to-bill", conn=crm, entity=entity, started=released, finished=invoiced, times=times, **kw
    )


@pytest.mark.django_db
def test_multi_currency_billing_exceptions_in_the_reporting_currency(crm, entities) -> None:
    FxRate.objects.create(currency="GBP", month="2026-09", kind="average", rate=Decimal("1.25"))
    p2b(crm, entities["us"], T0, T0 + 24 * H, T0 + 48 * H, amount="1000.00", currency="USD")
    p2b(crm, entities["uk"], T0, T0 + 24 * H, None, status="needs_attention", amount="1000.00", currency="GBP")
    p2b(crm, entities["uk"], T0, T0 + 24 * H, T0 + 30 * H, amount="400.00", currency="EUR")
    rollups_rebuild_all()
    conv = metrics.Converter()
    ex = metrics.billing_exceptions(OCT, conv)
    # GBP at September's rate (the latest month before October); EUR has no rate: left out, named.
    assert (ex["attempted"], ex["exceptions"]) == (3, 1)
    # Value: USD 1000 + GBP 1000 × 1.25 = USD 2250 converted; EUR 400 has no rate: this figure
    # is not complete and names exactly what it misses. The exceptions (the GBP batch) are complete.
    assert (ex["value"].amount, ex["value"].missing, ex["value"].complete) == (
        Decimal("2250.00"),
        {"EUR": Decimal("400.00")},
        False,
    )
    assert ex["exception_value"] == Decimal("1250.00") and ex["exception_value"].complete
    assert ex["rate"] == pytest.approx(33.33, abs=0.01)
    # Released -> raised by pscsync (the integration's part): 24 h and 6 h.
    s = metrics.flow_stats(OCT, "project-to-bill")
    assert s.extra_median_hours == 6.0
    blocked = metrics.blocked_billing(OCT)
    assert blocked["count"] == 1 and blocked["buckets"][0]["count"] == 1


@pytest.mark.django_db
def test_days_to_pay_from_the_ledger_and_status_sync_from_the_handoffs(crm, entities) -> None:
    """Bill to cash's business cycle is the ledger's: posted (posting date) -> paid in full (the
    application that cleared it). The handoffs' own times say when pscsync heard of it."""

    def b2c(inv, posted, paid, total, remaining):
        times = {"invoice_posted": posted}
        if paid:
            times["payment_applied"] = paid
        return handoff(
            flow="bill-to-cash",
            conn=crm,
            entity=entities["us"],
            key=f"payment:{inv}",
            started=dt.datetime.combine(paid or posted, dt.time(), tzinfo=dt.UTC),
            finished=dt.datetime.combine(paid or posted, dt.time(2), tzinfo=dt.UTC),
            times={k: v.isoformat() for k, v in times.items()},
            amount=total,
            outputs={
                "read_invoice": {"invoice": {"id": inv, "total": total, "remaining": remaining, "currency": "USD"}}
            },
        )

    us = entities["us"]
    # Invoice 1: posted 1 Oct, paid by two payments, 400 on 12 Oct and 600 on 20 Oct. The
    # payment handoff pscsync ran says 12 Oct (it heard of the first payment and read the ledger
    # then); the ledger says paid in full on 20 Oct: 1 Oct -> 20 Oct = 19 days = 456 h.
    b2c("1", dt.date(2026, 10, 1), None, "1000.00", "1000.00")
    b2c("1", dt.date(2026, 10, 1), dt.date(2026, 10, 12), "1000.00", "0.00")
    ledger_invoice(
        crm, us, "1", status="paid", posted=dt.date(2026, 10, 1), due=dt.date(2026, 10, 31), total="1000.00",
        payments=[("400.00", dt.date(2026, 10, 12)), ("600.00", dt.date(2026, 10, 20))],
    )  # fmt: skip
    # Invoice 2: posted 15 Oct, 1,200 of 3,000 paid: partly paid is not paid, the cycle is open.
    b2c("2", dt.date(2026, 10, 15), None, "3000.00", "3000.00")
    ledger_invoice(
        crm, us, "2", status="partly_paid", posted=dt.date(2026, 10, 15), due=dt.date(2026, 11, 14),
        total="3000.00", payments=[("1200.00", dt.date(2026, 10, 25))],
    )  # fmt: skip
    # Invoice 3: the handoff's read said posted 2 Oct and paid 9 Oct, but the ledger now holds it
    # pending approval (NetSuite sent it back): not posted, so neither started nor paid.
    b2c("3", dt.date(2026, 10, 2), dt.date(2026, 10, 9), "500.00", "0.00")
    ledger_invoice(crm, us, "3", status="pending_approval", posted=dt.date(2026, 10, 2), due=None, total="500.00")
    rollups_rebuild_all()
    s = metrics.flow_stats(OCT, "bill-to-cash")
    assert (s.started, s.finished, s.measured, s.median_hours) == (2, 1, 1, 19 * 24)
    # Within the default 720 h (30 days): 456 h is.
    assert s.within_sla == 1
    # The integration's own clock, apart: each invoice's last handoff ran 00:00 -> 02:00 = 120 min
    # (invoice 1's payment on 12 Oct, 2's posting on 15 Oct, 3's payment on 9 Oct), over 15 min.
    assert (s.synced, s.sync_median_minutes, s.sync_within_sla) == (3, 120.0, 0)


def invoice_raised(crm, entity, key, *, approved, released, raised, **kw):
    """A project-to-bill handoff that raised ERP invoice I-<key>, as the runner leaves it: the
    business times the flow recorded and the cross reference its upsert_invoice wrote."""
    from pscsync.models import CrossReference

    times = {"time_approved": approved, "billing_released": released, "invoice_created": raised}
    released_at = dt.datetime.combine(released, dt.time(), tzinfo=dt.UTC)
    h = handoff(
        flow="project-to-bill",
        conn=crm,
        entity=entity,
        key=key,
        started=released_at,
        finished=raised,
        times=times,
        **kw,
    )
    CrossReference.objects.create(
        entity_type="invoice", canonical_id=f"I-{key}", connection=crm, external_id=f"ns-{key}",
        legal_entity=entity, handoff=h, created_at=raised, updated_at=raised,
    )  # fmt: skip
    return h


@pytest.mark.django_db
def test_approved_time_to_invoice_ends_when_the_erp_posts_it(crm, entities) -> None:
    """Project to bill's business cycle ends on the ledger's posting date, not when pscsync raised
    the invoice: a draft or an invoice pending approval in the ERP is not billed yet."""
    us = entities["us"]
    day = dt.date
    # A: approved Mon 5 Oct, released 6 Oct, raised by pscsync Wed 7 Oct 09:00, posted in the ERP
    # Fri 9 Oct: 5 Oct 00:00 -> 9 Oct 00:00 = 96 h (not the 57 h to the raise); 4 business days.
    invoice_raised(crm, us, "A", approved=day(2026, 10, 5), released=day(2026, 10, 6), raised=T0 + 48 * H)
    ledger_invoice(crm, us, "A", status="posted", posted=day(2026, 10, 9), due=day(2026, 11, 8), total="800.00")
    # B: approved 5 Oct, raised 5 Oct 09:00, pending approval until the ERP posted it Wed 14 Oct:
    # 9 days = 216 h; business days Mon 5 – Tue 13 Oct less the weekend and Columbus Day (Mon 12
    # Oct, a US federal holiday) = 6 > the 5-day default SLA.
    invoice_raised(crm, us, "B", approved=day(2026, 10, 5), released=day(2026, 10, 5), raised=T0)
    ledger_invoice(crm, us, "B", status="posted", posted=day(2026, 10, 14), due=day(2026, 11, 13), total="400.00")
    # C: raised 5 Oct, still a draft in the ERP on 31 Oct: open, censored from the latency.
    invoice_raised(crm, us, "C", approved=day(2026, 10, 5), released=day(2026, 10, 5), raised=T0)
    ledger_invoice(crm, us, "C", status="draft", posted=day(2026, 10, 5), due=None, total="300.00")
    # D: raised, not read from the ledger yet: not posted as far as anyone knows.
    invoice_raised(crm, us, "D", approved=day(2026, 10, 5), released=day(2026, 10, 5), raised=T0)
    rollups_rebuild_all()
    s = metrics.flow_stats(OCT, "project-to-bill")
    assert (s.started, s.finished, s.measured) == (4, 2, 2)
    assert (s.median_hours, s.p90_hours) == (96.0, 216.0)
    assert (s.within_sla, s.pct_within_sla) == (1, 50.0)
    # Released -> raised (the integration's part): A 6 Oct 00:00 -> 7 Oct 09:00 = 33 h; B, C, D 9 h.
    assert s.extra_median_hours == 9.0


@pytest.mark.django_db
def test_a_back_dated_posting_ends_the_cycle_when_the_invoice_was_raised(crm, entities) -> None:
    """An ERP may date an invoice before it existed (NetSuite's transaction date defaults to the
    billing event's day; a person back-dates to close a month). That is the accounting date: the
    bill went out when pscsync raised it, so the cycle ends at the later of the two."""
    from dashboards.facts import bill_posted_at
    from dashboards.models import FlowFact

    us, day = entities["us"], dt.date
    raised = dt.datetime(2026, 10, 7, 9, tzinfo=dt.UTC)
    assert bill_posted_at(day(2026, 10, 5), raised) == raised  # back-dated: the raise
    assert bill_posted_at(day(2026, 10, 9), raised) == dt.datetime(2026, 10, 9, tzinfo=dt.UTC)  # posted later
    assert bill_posted_at(None, raised) is None  # not posted: open
    # F: approved Mon 5 Oct, released Tue 6 Oct, raised Wed 7 Oct 09:00, the ERP's posting date
    # Mon 5 Oct. Ends 7 Oct 09:00: 5 Oct 00:00 -> 7 Oct 09:00 = 48 h + 9 h = 57 h (not 0 h).
    invoice_raised(crm, us, "F", approved=day(2026, 10, 5), released=day(2026, 10, 6), raised=raised)
    ledger_invoice(crm, us, "F", status="posted", posted=day(2026, 10, 5), due=day(2026, 11, 4), total="500.00")
    # G: approved and released Thu 1 Oct, raised Fri 2 Oct 15:00, back-dated into September (30
    # Sep) to close the month. Ends 2 Oct 15:00: 24 h + 15 h = 39 h, in October, not September.
    g_raised = dt.datetime(2026, 10, 2, 15, tzinfo=dt.UTC)
    invoice_raised(crm, us, "G", approved=day(2026, 10, 1), released=day(2026, 10, 1), raised=g_raised)
    ledger_invoice(crm, us, "G", status="paid", posted=day(2026, 9, 30), due=day(2026, 10, 30), total="250.00",
                   payments=[("250.00", day(2026, 10, 20))])  # fmt: skip
    # H: raised Mon 5 Oct 09:00, pending approval on 31 Oct (its transaction date 5 Oct): open.
    invoice_raised(crm, us, "H", approved=day(2026, 10, 5), released=day(2026, 10, 5), raised=T0)
    ledger_invoice(crm, us, "H", status="pending_approval", posted=None, due=None, total="300.00")
    rollups_rebuild_all()
    facts = {f.key: f for f in FlowFact.objects.filter(flow="project-to-bill")}
    assert (facts["F"].end_at, facts["F"].latency_hours) == (raised, 57.0)
    assert (facts["G"].end_day, facts["G"].latency_hours) == (day(2026, 10, 2), 39.0)
    assert (facts["H"].end_at, facts["H"].latency_hours) == (None, None)
    # Two ended in October, [39, 57] h: median rank ceil(0.5 x 2) = 1 -> 39, p90 rank 2 -> 57;
    # F 2.4 and G 1.6 business days, both within the 5-day default.
    s = metrics.flow_stats(OCT, "project-to-bill")
    assert (s.finished, s.measured, s.median_hours, s.p90_hours) == (2, 2, 39.0, 57.0)
    assert (s.within_sla, s.pct_within_sla) == (2, 100.0)


@pytest.mark.django_db(transaction=True)
def test_a_posting_read_after_the_handoff_finished_ends_the_cycle(crm, entities) -> None:
    """The ledger tells the dashboards after its commit: an invoice raised while the ERP held it
    for approval, posted three days later and read by the next sync, ends its batch's cycle then."""
    from dashboards.models import FlowFact

    us, day = entities["us"], dt.date
    h = invoice_raised(crm, us, "E", approved=day(2026, 10, 5), released=day(2026, 10, 5), raised=T0)
    rollups_rebuild_all()
    ledger_invoice(crm, us, "E", status="pending_approval", posted=None, due=None, total="900.00")
    fact = FlowFact.objects.get(flow="project-to-bill", key="E")
    assert (fact.end_day, fact.latency_hours) == (None, None)
    # Posted Thu 8 Oct: 5 Oct -> 8 Oct = 72 h, on the fact and in the rollups the pages read.
    ledger_invoice(crm, us, "E", status="posted", posted=day(2026, 10, 8), due=day(2026, 11, 7), total="900.00")
    fact.refresh_from_db()
    assert (fact.end_day, fact.latency_hours, fact.handoff_id) == (day(2026, 10, 8), 72.0, h.pk)
    s = metrics.flow_stats(OCT, "project-to-bill")
    assert (s.finished, s.measured, s.median_hours) == (1, 1, 72.0)
    # Paid 30 Oct: the batch's cycle does not move (it ended at posting).
    ledger_invoice(
        crm, us, "E", status="paid", posted=day(2026, 10, 8), due=day(2026, 11, 7), total="900.00",
        payments=[("900.00", day(2026, 10, 30))],
    )  # fmt: skip
    fact.refresh_from_db()
    assert fact.latency_hours == 72.0


def ledger_invoice(crm, entity, number, *, status, posted, due, total, payments=(), tax="0.00"):
    """An ERP invoice as a connector maps it, stored through the ledger service."""
    from connectors.base import LedgerInvoice, PaymentApplied
    from pscsync.ledger import ledger_record_invoice

    applied = tuple(PaymentApplied(f"{number}-{i}", number, Decimal(a), on) for i, (a, on) in enumerate(payments))
    paid = sum((p.amount for p in applied), Decimal("0"))
    invoice = LedgerInvoice(
        id=number,
        number=number,
        key=f"I-{number}",
        project_key="",
        batch_key="",
        customer_id="C1",
        customer_name="Globex",
        currency="USD",
        total=Decimal(total),
        tax=Decimal(tax),
        open_balance=Decimal(total) - paid if status in ("posted", "partly_paid", "paid") else Decimal("0"),
        status=status,
        source_status=status,
        invoice_date=posted,
        due_date=due,
        posting_date=posted if status in ("posted", "partly_paid", "paid", "voided") else None,
        payments=applied,
    )
    return ledger_record_invoice(legal_entity=entity, connection=crm, invoice=invoice)


@pytest.mark.django_db
def test_dso_receivables_and_cash_from_the_ledger_not_from_handoffs(crm, entities) -> None:
    us = entities["us"]
    # 1: 1,000 posted 1 Oct, paid 20 Oct. 2: 3,000 posted 15 Oct, 1,200 paid 25 Oct, due 14 Nov.
    # 3: 500 pending approval (not invoiced, not owed). 4: 700 posted then voided (nothing).
    ledger_invoice(
        crm, us, "1", status="paid", posted=dt.date(2026, 10, 1), due=dt.date(2026, 10, 31), total="1000.00",
        payments=[("1000.00", dt.date(2026, 10, 20))],
    )  # fmt: skip
    ledger_invoice(
        crm, us, "2", status="partly_paid", posted=dt.date(2026, 10, 15), due=dt.date(2026, 11, 14),
        total="3000.00", payments=[("1200.00", dt.date(2026, 10, 25))],
    )  # fmt: skip
    ledger_invoice(crm, us, "3", status="pending_approval", posted=dt.date(2026, 10, 20), due=None, total="500.00")
    ledger_invoice(crm, us, "4", status="voided", posted=dt.date(2026, 10, 5), due=None, total="700.00")
    d = ledger.dso(OCT)
    # Receivables at 31 Oct: 3,000 − 1,200 = 1,800 (not yet due: current); invoice 1 is paid.
    # Billings 3 Aug – 31 Oct: 1,000 + 3,000 = 4,000 (pending and voided left out).
    assert (d["receivables"], d["billings"], d["invoices"]) == (Decimal("1800.00"), Decimal("4000.00"), 2)
    assert d["days"] == pytest.approx(40.5)  # 1,800 ÷ 4,000 × 90
    assert d["ageing"]["buckets"][0] == Decimal("1800.00")
    # At 19 Oct invoice 1 was still owed in full: 1,000 + 3,000 = 4,000.
    assert ledger.receivables(OCT, at=dt.date(2026, 10, 19))["value"] == Decimal("4000.00")
    # Cash in October: 1,000 on 20 Oct + 1,200 on 25 Oct.
    assert ledger.cash_collected(OCT)["value"] == Decimal("2200.00")
    # In November, with nothing more paid, invoice 2 is 16 days past due (14 Nov → 30 Nov).
    nov = metrics.Filters(start=dt.date(2026, 11, 1), end=dt.date(2026, 11, 30))
    assert ledger.receivables(nov)["buckets"][1] == Decimal("1800.00")
    # The pending invoice is unbilled WIP, 11 days old on 31 Oct.
    assert ledger.unposted_invoices(OCT)["buckets"] == [Decimal("500.00"), 0, 0, 0]


@pytest.mark.django_db
def test_revenue_accuracy_from_mismatches_and_the_latest_run(entities) -> None:
    at = dt.datetime(2026, 10, 30, tzinfo=dt.UTC)
    for i, (diff, cause) in enumerate([("-120.00", "late_time"), ("30.00", "unexplained")]):
        Mismatch.objects.create(
            comparison="revenue",
            legal_entity=entities["us"],
            subject_key=f"P-{i}",
            period="2026-10",
            cause=cause,
            explanation="x",
            currency="USD",
            difference=Decimal(diff),
            first_seen_at=at,
            last_seen_at=at,
        )
    ReconciliationRun.objects.create(
        legal_entity=entities["us"],
        status="complete",
        started_at=at - H,
        summary={"revenue": {"checked": 8, "matched": 5}},
    )
    ReconciliationRun.objects.create(
        legal_entity=entities["us"],
        status="complete",
        started_at=at,
        summary={"revenue": {"checked": 10, "matched": 8}},
    )
    r = metrics.revenue_accuracy(OCT)
    assert (r["open"], r["value"], r["match_rate"]) == (2, Decimal("150.00"), 80.0)
    risk = metrics.money_at_risk(OCT)
    assert risk["value"] == Decimal("150.00")


@pytest.mark.django_db
def test_money_at_risk_counts_a_refused_batch_once(crm, entities) -> None:
    """A batch the ERP refused is stuck (released, not invoiced) and, at the next reconciliation,
    shows in both the billed-time and the revenue comparison of its project: its money counts
    once, and so does any other project's difference seen by both comparisons."""
    us, at = entities["us"], dt.datetime(2026, 10, 30, tzinfo=dt.UTC)
    # BE-4: 1,500.00 released 6 Oct, refused by the ERP, waiting for a person.
    p2b(crm, us, T0, T0 + 24 * H, None, key="BE-4", status="needs_attention", amount="1500.00")
    # BE-2: 3,000.00 raised (the handoff is done); its invoice waits for approval in the ERP.
    p2b(crm, us, T0, T0 + 24 * H, T0 + 30 * H, key="BE-2", amount="3000.00")
    rollups_rebuild_all()

    def mismatch(comparison, subject, period, difference, batches):
        Mismatch.objects.create(
            comparison=comparison, legal_entity=us, subject_key=subject, period=period, cause="missing_record",
            explanation="x", currency="USD", difference=Decimal(difference), details={"batches": batches},
            first_seen_at=at, last_seen_at=at,
        )  # fmt: skip

    # P-1: BE-4's item has no work date (no period), its total falls in October: 1,500 twice.
    mismatch("billed_time", "P-1", "", "-1500.00", ["BE-4"])
    mismatch("revenue", "P-1", "2026-10", "-1500.00", ["BE-4"])
    # P-2: BE-2 not posted: 3,000 short in both comparisons.
    mismatch("billed_time", "P-2", "2026-10", "-3000.00", ["BE-2"])
    mismatch("revenue", "P-2", "2026-10", "-3000.00", ["BE-2"])
    # An ERP invoice of 1,200 no batch explains, in both comparisons.
    mismatch("billed_time", "invoice:N6", "2026-10", "1200.00", [])
    mismatch("revenue", "invoice:N6", "2026-10", "1200.00", [])
    risk = metrics.money_at_risk(OCT)
    # Released, not invoiced: BE-4 1,500. Mismatches per project, the larger comparison: P-1
    # 1,500 less BE-4's 1,500 already counted = 0; P-2 3,000 (BE-2 is not stuck); N6 1,200.
    # 1,500 + 0 + 3,000 + 1,200 = 5,700.00 (counting every mismatch and the stuck batch gave
    # 1,500 + 2 x 1,500 + 2 x 3,000 + 2 x 1,200 = 12,900.00: BE-4 three times).
    assert [p["value"] for p in risk["parts"]] == [Decimal("1500.00"), Decimal("0"), Decimal("4200.00")]
    assert risk["value"] == Decimal("5700.00")
    assert risk["parts"][2]["count"] == 6  # the mismatches behind it, all six still listed
    # Once BE-4 is invoiced (no longer stuck), its project's 1,500 counts as a mismatch, once.
    from pscsync.models import Handoff
    from tests.helpers import status_force

    status_force(Handoff.objects.get(business_key="BE-4").pk, "succeeded")
    assert metrics.mismatch_at_stake(OCT) == ({"USD": Decimal("5700.00")}, 6)


@pytest.mark.django_db
def test_entity_filter_limits_every_figure(crm, entities) -> None:
    q2p(crm, entities["us"], "OPP-US", T0, T0 + 2 * H)
    q2p(crm, entities["uk"], "OPP-UK", T0, T0 + 9 * H)
    rollups_rebuild_all()
    uk_only = metrics.Filters(start=OCT.start, end=OCT.end, entity_ids=(entities["uk"].pk,))
    assert metrics.flow_stats(uk_only, "quote-to-project").median_hours == 9.0
    by_customer = metrics.Filters(start=OCT.start, end=OCT.end, customer="Nobody")
    assert metrics.flow_stats(by_customer, "quote-to-project").measured == 0


@pytest.mark.django_db
def test_attempts_counted_once_with_rate_limits(crm, entities) -> None:
    from dashboards.facts import attempts_roll

    h = q2p(
        crm,
        entities["us"],
        "OPP-A",
        T0,
        T0 + H,
        attempts=[
            {"at": dt.datetime(2026, 10, 31, 2, tzinfo=dt.UTC), "outcome": "transient", "http": 429, "retry_after": 30},
            {"at": dt.datetime(2026, 10, 31, 2, 5, tzinfo=dt.UTC), "outcome": "succeeded", "ms": 400},
        ],
    )
    attempts_roll(h.pk)
    attempts_roll(h.pk)  # safe to repeat
    (row,) = metrics.attempt_stats(OCT, dt.datetime(2026, 10, 30, tzinfo=dt.UTC))
    assert (row["attempts"], row["failures"], row["rate_limited"], row["retry_after_seconds"]) == (2, 1, 1, 30)
    assert row["p95_ms"] == 500.0


@pytest.mark.django_db(transaction=True)
def test_a_finished_handoff_updates_the_rollups_as_it_commits(crm, entities) -> None:
    h = q2p(crm, entities["us"], "OPP-LIVE", T0, None, status="running")
    assert metrics.flow_stats(OCT, "quote-to-project").measured == 0
    from pscsync.lifecycle import handoff_move

    handoff_move(
        h,
        from_states=["running"],
        to="succeeded",
        actor="test",
        fields={"business_times": {**h.business_times, "project_activated": (T0 + 7 * H).isoformat()}},
    )
    assert metrics.flow_stats(OCT, "quote-to-project").median_hours == 7.0


def unbilled(entity, kind: str, source: str, work_date: dt.date, amount: str, currency: str = "USD", **kw):
    return UnbilledWork.objects.create(
        legal_entity=entity,
        kind=kind,
        source_id=source,
        project_key=kw.pop("project", "P-006A"),
        work_date=work_date,
        amount=Decimal(amount),
        currency=currency,
        read_at=dt.datetime(2026, 10, 31, 8, tzinfo=dt.UTC),
        **kw,
    )


@pytest.mark.django_db
def test_unbilled_wip_ages_psa_work_and_released_batches_and_respects_scope(
    crm, entities, django_capture_on_commit_callbacks
) -> None:
    FxRate.objects.create(currency="GBP", month="2026-10", kind="closing", rate=Decimal("1.20"))
    us, uk = entities["us"], entities["uk"]
    unbilled(us, "time", "a4T1", dt.date(2026, 10, 25), "1800.00", customer_name="Contoso")  # 6 days
    unbilled(us, "milestone", "a2M1", dt.date(2026, 8, 20), "25000.00", description="Design signed off")  # 72 days
    unbilled(uk, "time", "time_entry:9", dt.date(2026, 7, 1), "1000.00", "GBP", project="P-006B")  # 122 days
    # A batch released 40 days ago with no invoice yet (an open project-to-bill handoff).
    released = T0 - dt.timedelta(days=14)
    with django_capture_on_commit_callbacks(execute=True):  # the open backlog's hook, as after a commit
        p2b(crm, us, released, released, None, status="needs_attention", amount="500.00", currency="USD")
    everything = wip.unbilled_wip(OCT)
    assert everything["count"] == 4 and everything["as_of"] == dt.date(2026, 10, 31)
    assert everything["by_kind"]["time"] == [Decimal("1800.00"), 0, 0, Decimal("1200.00")]  # GBP 1000 at 1.20
    assert everything["by_kind"]["milestone"] == [0, 0, Decimal("25000.00"), 0]
    assert everything["by_kind"]["released"] == [0, Decimal("500.00"), 0, 0]
    assert everything["value"] == Decimal("28500.00") and everything["over_60"] == Decimal("26200.00")
    assert [m["source_id"] for m in everything["milestones"]] == ["a2M1"]
    # The overview and the JSON sum in the database: the same figures.
    summary = wip.unbilled_wip(OCT, detail=False)
    assert (summary["by_kind"], summary["count"], summary["value"]) == (
        everything["by_kind"],
        everything["count"],
        everything["value"],
    )
    assert everything["projects"][0]["key"] == "P-006A" and everything["projects"][0]["items"] == 2
    # A user who sees only the UK entity sees only its work, in every breakdown.
    # ... in its own currency: GBP 1000, not converted at all.
    uk_only = wip.unbilled_wip(metrics.Filters(start=OCT.start, end=OCT.end, entity_ids=(uk.pk,)))
    assert uk_only["value"] == Decimal("1000.00") and uk_only["value"].currency == "GBP"
    assert list(uk_only["by_entity"]) == [uk.name]
    assert uk_only["milestones"] == [] and [p["key"] for p in uk_only["projects"]] == ["P-006B"]
    # A customer filter applies to the PSA's work as to handoffs.
    contoso = wip.unbilled_wip(metrics.Filters(start=OCT.start, end=OCT.end, customer="Contoso"))
    assert contoso["by_kind"]["time"][0] == Decimal("1800.00") and contoso["by_kind"]["milestone"] == [0, 0, 0, 0]


@pytest.mark.django_db
def test_unbilled_wip_before_any_psa_read_says_so(entities) -> None:
    empty = wip.unbilled_wip(OCT)
    assert (empty["count"], empty["value"], empty["as_of"]) == (0, 0, None)
    assert "not been read yet" in wip.as_of_text(empty)


@pytest.mark.django_db
def test_assigned_hours_by_role_and_month_on_weekdays_within_scope(entities) -> None:
    from pscsync.models import PsaAssignment

    def assign(entity, source, role, starts, ends, weekly):
        PsaAssignment.objects.create(
            legal_entity=entity,
            source_id=source,
            role=role,
            starts_on=starts,
            ends_on=ends,
            weekly_hours=Decimal(weekly),
            read_at=clock.now(),
        )

    # Two working weeks in November at 30 h a week; then one crossing into December (Mon 30 Nov - Fri 4 Dec).
    assign(entities["us"], "a1A1", "Architect", dt.date(2026, 11, 2), dt.date(2026, 11, 13), "30")
    assign(entities["us"], "a1A2", "Architect", dt.date(2026, 11, 30), dt.date(2026, 12, 4), "40")
    assign(entities["uk"], "a1A3", "Architect", dt.date(2026, 11, 2), dt.date(2026, 11, 13), "35")
    months = ["2026-11", "2026-12"]
    everything = wip.assigned_hours(OCT, months)
    assert everything[("Architect", "2026-11")] == pytest.approx(60 + 70 + 8)  # 10×6 + 10×7 + Monday 30 Nov
    assert everything[("Architect", "2026-12")] == pytest.approx(32)  # 1-4 December: 4 weekdays × 8
    us_only = wip.assigned_hours(metrics.Filters(start=OCT.start, end=OCT.end, entity_ids=(entities["us"].pk,)), months)
    assert us_only[("Architect", "2026-11")] == pytest.approx(68)


@pytest.mark.django_db
def test_per_entity_rollups_equal_the_detailed_ones_as_handoffs_finish(
    crm, entities, django_capture_on_commit_callbacks
) -> None:
    """Pages without a service-line or connection filter read rollups summed per entity; they must
    give the figures the detailed rollups give, kept up to date as each handoff finishes."""
    from dashboards.facts import entity_rollup_values
    from dashboards.models import DailyRollup, EntityDailyRollup

    with django_capture_on_commit_callbacks(execute=True):
        for i, (line, hours) in enumerate([("Advisory", 3), ("Advisory", 30), ("Delivery", 7), ("Delivery", 90)]):
            q2p(crm, entities["us" if i % 2 else "uk"], f"OPP-L{i}", T0, T0 + hours * H, service_line=line)
    whole = metrics.flow_stats(OCT, "quote-to-project")
    lines = [
        metrics.flow_stats(metrics.Filters(start=OCT.start, end=OCT.end, service_line=line), "quote-to-project")
        for line in ("Advisory", "Delivery")
    ]
    assert whole.measured == 4 == sum(s.measured for s in lines)
    assert whole.hist == metrics.merge(s.hist for s in lines) and (whole.median_hours, whole.p90_hours) == (7.0, 90.0)
    assert {r["service_line"] for r in metrics.latency_by(OCT, "quote-to-project", "service_line")} == {
        "Advisory",
        "Delivery",
    }

    def kept() -> list[tuple]:
        return sorted(
            (v["day"], v["legal_entity_id"], v["measured"], sorted(v["hist"].items()))
            for v in EntityDailyRollup.objects.values("day", "legal_entity_id", "measured", "hist")
        )

    incremental = kept()
    assert incremental == sorted(
        (v["day"], v["legal_entity_id"], v["measured"], sorted(v["hist"].items()))
        for v in entity_rollup_values(DailyRollup.objects.all())
    )
    rollups_rebuild_all()
    assert kept() == incremental


@pytest.mark.django_db
def test_a_batch_not_read_yet_is_counted_apart_not_taken_for_nothing_waiting(crm, entities) -> None:
    uk = entities["uk"]
    p2b(crm, uk, T0, T0 + 24 * H, None, status="needs_attention", amount="2500.00", currency="GBP")
    # Released and waiting for the worker: its handoff has not read the batch, so no value yet.
    p2b(crm, uk, T0, T0 + 24 * H, None, status="pending", amount=None, currency="")
    rollups_rebuild_all()
    only_uk = metrics.Filters(start=OCT.start, end=OCT.end, entity_ids=(uk.pk,))
    blocked = metrics.blocked_billing(only_uk)
    assert (blocked["count"], blocked["unread"], blocked["value"]) == (2, 1, Decimal("2500.00"))
    assert blocked["value"].currency == "GBP"
