"""Reconciliation against the real sandboxes over HTTP: a clean firm, each catalogue class, clearing,
an outage, tolerances and the command."""

from __future__ import annotations

import io
import time
from decimal import Decimal

import pytest
from django.core.management import call_command

from pscsync.models import Mismatch, ReconciliationRun, ReconciliationTolerance
from pscsync.reconciliation.services import reconcile
from tests.reconciliation import seed

pytestmark = pytest.mark.django_db


def open_mismatches(**filters) -> list[Mismatch]:
    return list(Mismatch.objects.filter(status="open", **filters).order_by("comparison", "period"))


def run(entity: str = "us", period: str = "") -> ReconciliationRun:
    (result,) = reconcile(entity=entity, period=period)
    assert result.status == "complete", result.error
    return result


def only(comparison: str, **filters) -> Mismatch:
    found = open_mismatches(comparison=comparison, **filters)
    assert len(found) == 1, [(m.comparison, m.period, m.cause, m.explanation) for m in open_mismatches()]
    return found[0]


def billed(firm, **deal_options):
    """A US deal with one released billing batch (two timecard items in October)."""
    s = seed.deal(firm, **deal_options)
    batch = seed.certinia_batch(firm, s)
    return s, batch


# A clean firm --------------------------------------------------------------------------------------
def test_clean_firm_has_no_mismatches(firm):
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch)
    uk = seed.deal(firm, entity="uk", n=2, amount=50000)
    seed.kantata_batch_and_invoice(firm, uk)
    us_run, uk_run = run("us"), run("uk")
    assert open_mismatches() == []
    assert us_run.summary["deal_value"] == {"checked": 1, "matched": 1, "mismatches": {}, "cleared": 0}
    assert us_run.summary["billed_time"]["checked"] == 1 and us_run.summary["revenue"]["checked"] == 1
    assert uk_run.summary["billed_time"]["matched"] == 1 and uk_run.summary["deal_value"]["matched"] == 1


def test_reconciliation_stores_the_erp_ledger_with_posted_states_and_payments(firm):
    from pscsync.models import ErpInvoice

    s, batch = billed(firm)
    invoice_id = seed.netsuite_invoice(firm, s, batch, posted=False)  # routed for approval: pending
    uk = seed.deal(firm, entity="uk", n=2, amount=50000)
    seed.kantata_batch_and_invoice(firm, uk, posted=False)  # a BC draft
    run("us"), run("uk")
    assert list(ErpInvoice.objects.values_list("legal_entity__code", "status").order_by("legal_entity__code")) == [
        ("uk", "draft"),
        ("us", "pending_approval"),
    ]
    netsuite = firm.connector("netsuite-us")
    netsuite.upsert(entity="invoice", key=f"I-{batch['id']}", fields={"approvalStatus": {"id": "2"}})
    total = netsuite.get(entity="invoice", record_id=invoice_id)["total"]
    apply = {"items": [{"doc": {"id": invoice_id}, "apply": True, "amount": 1000.0}]}
    netsuite.upsert(
        entity="payment",
        key="PAY-R1",
        fields={"customer": {"id": s.customer}, "payment": 1000.0, "tranDate": "2026-11-15", "apply": apply},
    )
    run("us")
    stored = ErpInvoice.objects.get(legal_entity__code="us")
    assert (stored.status, stored.total, stored.open_balance) == (
        "partly_paid",
        Decimal(str(total)).quantize(Decimal("0.01")),
        Decimal(str(total - 1000)).quantize(Decimal("0.01")),
    )
    assert [(a.amount, a.applied_on.isoformat()) for a in stored.applications.all()] == [
        (Decimal("1000.00"), "2026-11-15")
    ]
    assert list(stored.status_changes.values_list("from_status", "to_status")) == [
        ("", "pending_approval"),
        ("pending_approval", "partly_paid"),
    ]


# One test per catalogue class ---------------------------------------------------------------------
def test_rounding(firm):
    ReconciliationTolerance.objects.create(
        legal_entity_id=firm.connections["netsuite-us"].legal_entities.get().pk,
        absolute=Decimal("0.00"),
        relative=Decimal("0"),
    )
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch, amounts={0: 4000.01})
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "rounding" and mismatch.difference == Decimal("0.01")
    assert s.project_key in mismatch.explanation and "one cent per line" in mismatch.explanation


def test_fx_rate_date(firm):
    s = seed.deal(firm, currency="CAD")
    batch = seed.certinia_batch(firm, s, currency="CAD", fx_rate=0.72)
    seed.netsuite_invoice(firm, s, batch, exchangeRate=0.73)
    run()
    found = {m.comparison: m for m in open_mismatches()}
    assert {m.cause for m in found.values()} == {"fx_date"}
    assert found["revenue"].difference == Decimal("60.00")  # 6000 x (0.73 - 0.72)
    assert "0.72" in found["revenue"].explanation and "0.73" in found["revenue"].explanation


def test_amendment_not_synced(firm):
    s = seed.deal(firm, amount=150000, version=2, psa_amount=120000, erp_amount=120000, psa_version=1, erp_version=1)
    run()
    mismatch = only("deal_value")
    assert mismatch.cause == "amendment_not_synced"
    assert mismatch.subject_key == s.opportunity and mismatch.difference == Decimal("-30000.00")
    assert "version 2" in mismatch.explanation and "contract change" in mismatch.explanation
    assert mismatch.amounts == {"crm": "150000.00", "psa": "120000.00", "erp": "120000.00"}


def test_time_invoiced_later_than_the_billing_terms_allow(firm):
    # Time and materials bills monthly in arrears: October may post August's work no more. By hand:
    # 2026-08: PSA 3000.00 (worked 27 Aug) vs ERP 0 -> -3000.00; 2026-10: PSA 1000.00 (4 Oct) vs
    # ERP 4000.00 (the whole invoice, dated 5 Oct) -> +3000.00. Both are late time.
    s = seed.deal(firm)
    batch = seed.certinia_batch(firm, s, date="2026-10-05", items=[("2026-08-27", 3000.0), ("2026-10-04", 1000.0)])
    seed.netsuite_invoice(firm, s, batch)
    run()
    (august, october) = open_mismatches(comparison="billed_time")
    assert (august.period, october.period) == ("2026-08", "2026-10")
    assert august.cause == october.cause == "late_time"
    assert (august.difference, october.difference) == (Decimal("-3000.00"), Decimal("3000.00"))
    assert "worked in 2026-08" in august.explanation and "a4T" in august.explanation
    assert "1 month(s) in arrears" in august.explanation
    assert open_mismatches(comparison="revenue") == []


def test_billing_in_arrears_is_not_a_mismatch(firm):
    # October's time (4000.00 on 23 Oct + 2000.00 on 30 Oct) billed by the PSA's run on 2 November
    # and invoiced on 2 November: one month in arrears, as time and materials is billed. Billed time
    # compares 6000.00 with 6000.00 in 2026-11, revenue 6000.00 with 6000.00 in 2026-11.
    s = seed.deal(firm)
    batch = seed.certinia_batch(firm, s, date="2026-11-02")
    seed.netsuite_invoice(firm, s, batch)
    # A second project: the PSA's run dated 30 October, the ERP posting on 3 November (the
    # revenue comparison's month end); October work, so billed time also compares in 2026-11.
    t = seed.deal(firm, n=2)
    late_posted = seed.certinia_batch(firm, t, date="2026-10-30")
    seed.netsuite_invoice(firm, t, late_posted, date="2026-11-03")
    summary = run().summary
    assert open_mismatches() == []
    # Σ|ERP| over the checked subjects: the two invoices, 6000.00 each.
    totals = {"erp_total": {"USD": "12000.00"}}
    assert summary["billed_time"] == {"checked": 2, "matched": 2, "mismatches": {}, "cleared": 0, **totals}
    assert summary["revenue"] == {"checked": 2, "matched": 2, "mismatches": {}, "cleared": 0, **totals}


def test_duplicate_invoice(firm):
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch)
    seed.netsuite_invoice(firm, s, batch, key=None, date="2026-11-01")  # keyed again by hand, two days later
    run()
    mismatch = only("billed_time", period="2026-11")
    assert mismatch.cause == "duplicate_invoice" and mismatch.difference == Decimal("6000.00")
    assert "same customer, amount and date within 3 days" in mismatch.explanation


def test_duplicate_invoice_for_one_billing_event(firm):
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch)
    seed.netsuite_invoice(firm, s, batch, key="I-again-" + batch["id"])  # a second one naming the same batch
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "duplicate_invoice" and "billed by 2 invoices" in mismatch.explanation


def test_missing_customer(firm):
    s, batch = billed(firm, customer=False)
    run()
    found = open_mismatches()
    assert {m.cause for m in found} == {"missing_customer"}
    billed_time = only("billed_time")
    assert f"C-{s.account}" in billed_time.explanation and batch["id"] in billed_time.explanation
    # No ERP contract for the 120,000.00 deal: the whole deal value is at stake (CRM 120000 vs
    # nothing in the ERP -> -120000.00), not a difference of 0.
    assert only("deal_value").difference == Decimal("-120000.00")


def test_deal_missing_in_the_erp_carries_its_value(firm):
    # UK: the customer is in Business Central but its project P-<opp> is not. CRM 50,000.00, the
    # PSA price 50,000.00 agrees; the ERP has no record: at stake 0 - 50,000.00 = -50,000.00.
    s = seed.deal(firm, entity="uk", n=3, amount=50000)
    bc = firm.connector("businesscentral-uk")
    project = bc.lookup(entity="projects", key=s.project_key)
    bc.withdraw(entity="projects", record_id=project.external_id)
    run("uk")
    mismatch = only("deal_value")
    assert mismatch.cause == "missing_record" and mismatch.difference == Decimal("-50000.00")


def test_missing_invoice(firm):
    s, batch = billed(firm)
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "missing_record" and f"I-{batch['id']}" in mismatch.explanation
    assert mismatch.amounts == {"psa": "6000.00", "erp": "0.00"}


def test_only_posted_invoices_are_erp_revenue(firm):
    """A draft, an invoice pending approval, a voided or a cancelled invoice is no revenue: the ERP
    has not billed it (or took it back). Only what the ledger posted is compared with the PSA."""
    import httpx

    s, batch = billed(firm)  # 4,000.00 (23 Oct) + 2,000.00 (30 Oct), released 30 Oct
    seed.netsuite_invoice(firm, s, batch, posted=False)  # its invoice waits for approval
    # Two invoices keyed by hand on the same project in October, no batch: 700.00 pending
    # approval, and 900.00 approved then voided.
    by_hand = {"id": "", "date": "2026-10-15", "currency": "USD"}
    seed.netsuite_invoice(
        firm, s, {**by_hand, "items": [{"id": "h1", "date": "2026-10-15", "amount": 700.0}]}, key=None, posted=False
    )
    voided = seed.netsuite_invoice(
        firm, s, {**by_hand, "items": [{"id": "h2", "date": "2026-10-16", "amount": 900.0}]}, key=None
    )
    httpx.post(f"{firm.sandboxes['netsuite'].url}/_sandbox/void/invoice/{voided}", timeout=5).raise_for_status()
    result = run()
    # The project's October: PSA 6,000.00 vs posted 0.00 (not 6,000 + 700 + 900 = 7,600.00).
    for comparison in ("billed_time", "revenue"):
        mismatch = only(comparison)
        assert (mismatch.period, mismatch.amounts, mismatch.difference) == (
            "2026-10",
            {"psa": "6000.00", "erp": "0.00"},
            Decimal("-6000.00"),
        )
        assert mismatch.cause == "missing_record" and "pending approval" in mismatch.explanation
        assert f"I-{batch['id']}" in mismatch.explanation
        # One project-month compared; the ERP recognised nothing in it.
        assert (result.summary[comparison]["checked"], result.summary[comparison]["erp_total"]) == (
            1,
            {"USD": "0.00"},
        )
    # Approved in NetSuite, the batch's invoice is revenue: 6,000.00 vs 6,000.00, nothing open
    # (the pending 700 and the voided 900 still count for nothing).
    netsuite = firm.connector("netsuite-us")
    netsuite.upsert(entity="invoice", key=f"I-{batch['id']}", fields={"approvalStatus": {"id": "2"}})
    result = run()
    assert open_mismatches() == []
    assert result.summary["revenue"]["erp_total"] == {"USD": "6000.00"}


def test_a_business_central_draft_or_cancelled_invoice_is_no_revenue(firm):
    # 600 min x 150.00/h = 1,500.00 invoiced by Kantata on 30 Oct; its BC invoice a draft.
    uk = seed.deal(firm, entity="uk", n=2, amount=50000)
    kantata = seed.kantata_batch_and_invoice(firm, uk, posted=False)
    run("uk")
    mismatch = only("revenue")
    assert (mismatch.amounts, mismatch.difference) == ({"psa": "1500.00", "erp": "0.00"}, Decimal("-1500.00"))
    assert "draft" in mismatch.explanation
    bc = firm.connector("businesscentral-uk")
    invoice = bc.lookup(entity="salesInvoices", key=f"I-K{kantata['invoice']}").external_id
    bc.post_invoice(invoice)
    run("uk")
    assert open_mismatches() == []  # posted: 1,500.00 vs 1,500.00
    bc.send("POST", f"{bc.company_path()}/salesInvoices({invoice})/Microsoft.NAV.cancel")
    run("uk")
    # Cancelled: taken back, no revenue again: 1,500.00 vs 0.00.
    assert only("revenue").amounts == {"psa": "1500.00", "erp": "0.00"}


def test_tax_code(firm):
    s, batch = billed(firm, customer_tax_code="US-EXEMPT")
    seed.netsuite_invoice(firm, s, batch)
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "tax_code" and "US-STD" in mismatch.explanation and "US-EXEMPT" in mismatch.explanation


def test_tax_charged_to_exempt_customer(firm):
    s, batch = billed(firm, tax_profile="US-EXEMPT")
    seed.netsuite_invoice(firm, s, batch, taxTotal=480)
    run()
    mismatch = only("billed_time")
    assert (
        mismatch.cause == "tax_code" and "480.00" in mismatch.explanation and mismatch.difference == Decimal("480.00")
    )


def test_currency_mix(firm):
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch, currency="CAD")
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "currency_mix" and "CAD" in mismatch.explanation


def test_entity_mismatch(firm):
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch, subsidiary="2")
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "entity_mismatch" and "subsidiary 2" in mismatch.explanation


def test_credit_not_in_psa(firm):
    s, batch = billed(firm)
    credit = {"item": {"id": "55"}, "quantity": 1, "rate": -500, "amount": -500, "description": "Goodwill write-off"}
    seed.netsuite_invoice(firm, s, batch, extra_lines=[credit])
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "credit_not_in_psa" and "Goodwill write-off" in mismatch.explanation
    assert mismatch.difference == Decimal("-500.00")


def test_retro_change(firm):
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch)
    time.sleep(1.1)  # NetSuite stamps whole seconds
    certinia = firm.connector("certinia-us")
    certinia.update(entity="billing_event_item", record_id=batch["items"][0]["id"], fields={"pse__Amount__c": 4400})
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "retro_change" and batch["items"][0]["id"] in mismatch.explanation


def test_unexplained(firm):
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch, amounts={1: 2300.0})
    run()
    mismatch = only("billed_time")
    assert mismatch.cause == "unexplained" and mismatch.difference == Decimal("300.00")


# Lifecycle, outage, tolerance -----------------------------------------------------------------------
def test_mismatch_clears_when_the_difference_is_gone(firm):
    s, batch = billed(firm)
    run()
    first = only("billed_time")
    seen = first.last_seen_at
    run()
    again = only("billed_time")
    assert again.pk == first.pk and again.last_seen_at > seen and again.first_seen_at == first.first_seen_at
    seed.netsuite_invoice(firm, s, batch)
    result = run()
    first.refresh_from_db()
    assert first.status == "cleared" and first.cleared_at is not None
    assert result.summary["billed_time"]["cleared"] == 1 and open_mismatches() == []


def test_vendor_outage_changes_nothing(firm):
    s, batch = billed(firm)
    run()
    before = only("billed_time")
    count = Mismatch.objects.count()
    seed.netsuite_invoice(firm, s, batch)  # fixed in the ERP, but the ERP now fails
    firm.sandboxes["netsuite"].fault(error_status=503, count=1000)
    try:
        (result,) = reconcile(entity="us")
    finally:
        firm.sandboxes["netsuite"].clear_faults()
    assert result.status == "incomplete" and "NetSuite" in result.error and "no mismatch was changed" in result.error
    after = only("billed_time")
    assert (after.pk, after.status, after.last_seen_at) == (before.pk, "open", before.last_seen_at)
    assert Mismatch.objects.count() == count == 2  # billed time and revenue, both still open


def test_tolerance_per_entity(firm):
    s, batch = billed(firm)
    seed.netsuite_invoice(firm, s, batch, amounts={1: 2000.5})
    run()
    assert open_mismatches() == []  # default: 1.00 absolute
    ReconciliationTolerance.objects.create(
        legal_entity=firm.connections["netsuite-us"].legal_entities.get(),
        absolute=Decimal("0.10"),
        relative=Decimal("0"),
    )
    run()
    assert only("billed_time").cause == "unexplained"


def test_uk_deal_value_is_crm_against_psa(firm):
    uk = seed.deal(firm, entity="uk", amount=50000, psa_amount=45000)
    seed.kantata_batch_and_invoice(firm, uk, bc_amount=1400.0)
    run("uk")
    deal = only("deal_value")
    assert deal.amounts == {"crm": "50000.00", "psa": "45000.00"} and deal.cause == "unexplained"
    assert "no contract value" in deal.details["note"]
    billed_time = only("billed_time")
    assert billed_time.amounts == {"psa": "1500.00", "erp": "1400.00"} and billed_time.cause == "unexplained"


def test_command_prints_a_summary(firm):
    s, batch = billed(firm)
    out = io.StringIO()
    call_command("reconcile", "--entity", "us", "--period", "2026-10", stdout=out)
    text = out.getvalue()
    assert "billed_time" in text and "missing_record" in text and "complete" in text


def test_command_waits_for_the_queued_handoffs_before_it_reconciles(firm, monkeypatch):
    """--after-backlog: a batch still queued for its handoff is not reported missing from the ERP
    while the engine works through its queue (the demo, right after its history)."""
    from pscsync.lifecycle import handoff_move
    from pscsync.management.commands import reconcile as command
    from tests.dashboards.builders import handoff

    billed(firm)
    queued = handoff(
        flow="project-to-bill", conn=firm.connections["certinia-us"], entity=None, status="pending", amount=None
    )
    waits: list[int] = []

    def sleep(_seconds: float) -> None:  # the worker takes the handoff while the command waits
        waits.append(ReconciliationRun.objects.count())
        handoff_move(queued.pk, from_states=["pending"], to="running", actor=None)
        handoff_move(queued.pk, from_states=["running"], to="succeeded", actor=None)

    monkeypatch.setattr(command.time, "sleep", sleep)
    call_command("reconcile", "--entity", "us", "--after-backlog", "600", stdout=io.StringIO())
    # One wait, during which no run had started; then the run, once nothing was queued.
    assert waits == [0] and ReconciliationRun.objects.filter(status="complete").count() == 1
    # Without the option it does not wait for another queued one.
    handoff(flow="project-to-bill", conn=firm.connections["certinia-us"], entity=None, status="pending", amount=None)
    call_command("reconcile", "--entity", "us", stdout=io.StringIO())
    assert waits == [0] and ReconciliationRun.objects.count() == 2


def test_beat_runs_the_task_for_every_entity(firm, settings):
    from pscsync.tasks import reconcile_task

    assert settings.CELERY_BEAT_SCHEDULE["reconcile"]["task"] == "pscsync.tasks.reconcile_task"
    assert settings.CELERY_BEAT_SCHEDULE["reconcile"]["schedule"] == float(settings.RECONCILE_SECONDS)
    billed(firm)
    assert reconcile_task() == {"uk": "complete", "us": "complete"}
    assert {m.cause for m in open_mismatches()} == {"missing_record"}
