"""A realistic two-entity firm for screenshots: eight weeks of deals, billing batches, invoices,
payments, mismatches and vendor calls, built through the models with a fixed random seed."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal

from dashboards.facts import rollups_rebuild_all
from dashboards.models import FxRate
from pscsync.models import LegalEntity, Mismatch, PsaAssignment, ReconciliationRun, UnbilledWork
from tests.dashboards.builders import connection, handoff

NOW = dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC)
CUSTOMERS = {
    "us": ["Contoso Health", "Northwind Traders", "Tailspin Toys", "Wide World Importers", "Litware Inc."],
    "uk": ["Fabrikam Ltd", "Adventure Works UK", "Margie's Travel", "Proseware Ltd"],
}
LINES = ["Advisory", "Implementation", "Managed Services"]


def seed_firm() -> dict[str, LegalEntity]:
    rnd = random.Random(6)
    lrnd = random.Random(15)  # the ledger's own choices, so the other records stay as they were
    us, _ = LegalEntity.objects.get_or_create(
        code="us", defaults={"name": "Northwind Consulting Inc.", "currency": "USD"}
    )
    uk, _ = LegalEntity.objects.get_or_create(
        code="uk", defaults={"name": "Northwind Consulting Ltd.", "currency": "GBP"}
    )
    ents = {"us": us, "uk": uk}
    crm = connection("salesforce", [us, uk])
    psa = {
        "us": connection("certinia-us", [us], "psa", "certinia"),
        "uk": connection("kantata-uk", [uk], "psa", "kantata"),
    }
    erp = {
        "us": connection("netsuite-us", [us], "erp", "netsuite"),
        "uk": connection("businesscentral-uk", [uk], "erp", "businesscentral"),
    }
    for month in ("2026-08", "2026-09", "2026-10"):
        FxRate.objects.get_or_create(currency="GBP", month=month, kind="average", defaults={"rate": Decimal("1.27")})
        FxRate.objects.get_or_create(currency="GBP", month=month, kind="closing", defaults={"rate": Decimal("1.26")})
    start = NOW - dt.timedelta(days=63)
    n = 0
    for day in range(60):
        for _ in range(rnd.randint(1, 3)):
            n += 1
            code = "us" if rnd.random() < 0.6 else "uk"
            cur = "USD" if code == "us" else "GBP"
            cust = rnd.choice(CUSTOMERS[code])
            line = rnd.choice(LINES)
            closed = start + dt.timedelta(days=day, hours=rnd.randint(8, 17))
            value = Decimal(rnd.randrange(20, 400) * 500)
            hours = rnd.choice([2, 3, 5, 8, 12, 20, 26, 40, 70]) * (1.6 if code == "uk" else 1)
            fails = rnd.random() < 0.12
            open_deal = day > 55 and rnd.random() < 0.5
            attempts = [
                {"at": NOW - dt.timedelta(hours=rnd.randint(1, 23)), "ms": rnd.choice([80, 140, 220, 400, 900])}
                for _ in range(3)
            ]
            if rnd.random() < 0.2:
                attempts.insert(0, {"at": attempts[0]["at"], "outcome": "transient", "http": 429, "retry_after": 20})
            handoff(
                flow="quote-to-project",
                conn=crm,
                entity=ents[code],
                key=f"006{n:05d}",
                customer=cust,
                service_line=line,
                amount=value,
                currency=cur,
                started=closed,
                status="needs_attention" if (fails and open_deal) else ("running" if open_deal else "succeeded"),
                finished=None if open_deal else closed + dt.timedelta(hours=hours),
                times={
                    "deal_closed": closed,
                    **({} if open_deal else {"project_activated": closed + dt.timedelta(hours=hours)}),
                },
                attempts=attempts,
            )
            if open_deal:
                continue
            _unbilled_work(rnd, ents[code], f"006{n:05d}", cust, line, cur, value, closed)
            # Billing batches: released a few days after work is approved; most invoiced within days.
            for b in range(rnd.randint(1, 2)):
                approved = closed + dt.timedelta(days=7 + 7 * b, hours=rnd.randint(0, 8))
                if approved > NOW - dt.timedelta(days=1):
                    continue
                released = approved + dt.timedelta(days=rnd.choice([1, 2, 3, 6]))
                stuck = rnd.random() < 0.1
                inv_at = released + dt.timedelta(hours=rnd.choice([1, 4, 20, 50]))
                amount = (value / rnd.choice([4, 6, 8])).quantize(Decimal("0.01"))
                released = min(released, NOW - dt.timedelta(hours=2))
                inv_at = min(inv_at, NOW - dt.timedelta(hours=1))
                handoff(
                    flow="project-to-bill",
                    conn=psa[code],
                    entity=ents[code],
                    key=f"a1B{n:05d}{b}",
                    customer=cust,
                    service_line=line,
                    amount=amount,
                    currency=cur,
                    started=released,
                    status="needs_attention" if stuck else "succeeded",
                    error_class="validation" if stuck else "",
                    finished=None if stuck else inv_at,
                    outputs={"read_billing": {"billing": {"project_name": f"{cust} {line.lower()}"}}},
                    times={
                        "time_approved": approved,
                        "billing_released": released,
                        **({} if stuck else {"invoice_created": inv_at}),
                    },
                    attempts=[
                        {"at": NOW - dt.timedelta(hours=rnd.randint(1, 23)), "ms": rnd.choice([120, 300, 700])},
                        *([{"at": NOW - dt.timedelta(hours=3), "outcome": "validation"}] if stuck else []),
                    ],
                )
                if stuck:
                    continue
                posted = inv_at.date()
                paid = posted + dt.timedelta(days=rnd.choice([12, 20, 28, 35, 44, 60]))
                inv = f"INV-{n}{b}"
                is_paid = paid < NOW.date()
                _ledger_invoice(lrnd, ents[code], erp[code], inv, cust, amount, cur, posted, paid if is_paid else None)
                for which, when in (("post", posted), *((("pay", paid),) if is_paid else ())):
                    at = dt.datetime.combine(when, dt.time(10), tzinfo=dt.UTC)
                    handoff(
                        flow="bill-to-cash",
                        conn=erp[code],
                        entity=ents[code],
                        key=f"{which}:{inv}",
                        customer=cust,
                        service_line=line,
                        amount=amount,
                        currency=cur,
                        started=at,
                        finished=at + dt.timedelta(minutes=rnd.choice([2, 5, 30, 90])),
                        times={
                            "invoice_posted": posted.isoformat(),
                            **({"payment_applied": paid.isoformat()} if which == "pay" else {}),
                        },
                        outputs={
                            "read_invoice": {
                                "invoice": {
                                    "id": inv,
                                    "total": str(amount),
                                    "currency": cur,
                                    "remaining": "0.00" if which == "pay" else str(amount),
                                }
                            }
                        },
                    )
    for i in range(14):
        code = "us" if i % 3 else "uk"
        plan = [{"role": "Senior Consultant", "hours": 320}, {"role": "Project Manager", "hours": 80}]
        if i % 2:
            plan.append({"role": "Architect", "hours": 120})
        handoff(
            flow="pipeline-to-demand",
            conn=crm,
            entity=ents[code],
            key=f"006P{i:04d}",
            started=NOW - dt.timedelta(days=i),
            finished=NOW - dt.timedelta(days=i) + dt.timedelta(minutes=3),
            customer=rnd.choice(CUSTOMERS[code]),
            outputs={
                "read_deal": {
                    "deal": {
                        "probability": rnd.choice([20, 40, 60, 80]),
                        "is_closed": False,
                        "contract_start": "2026-11-01",
                        "contract_end": "2027-03-31",
                        "resource_plan_text": json.dumps(plan),
                    }
                }
            },
        )
    causes = [
        ("revenue", "late_time", "-1840.00"),
        ("revenue", "fx_date", "212.40"),
        ("billed_time", "duplicate_invoice", "4500.00"),
        ("revenue", "unexplained", "96.10"),
        ("deal_value", "amendment_not_synced", "12000.00"),
        ("billed_time", "rounding", "0.04"),
    ]
    for i, (comp, cause, diff) in enumerate(causes):
        code = "us" if i % 2 == 0 else "uk"
        Mismatch.objects.create(
            comparison=comp,
            legal_entity=ents[code],
            subject_key=f"P-006{i:05d}",
            subject_name=f"Project {i + 1}",
            customer_name=CUSTOMERS[code][i % 4],
            period="" if comp == "deal_value" else "2026-10",
            cause=cause,
            explanation="seeded",
            currency="USD" if code == "us" else "GBP",
            difference=Decimal(diff),
            first_seen_at=NOW,
            last_seen_at=NOW,
        )
    for code, (checked, matched) in (("us", (48, 46)), ("uk", (31, 29))):  # Σ|ERP| kept as one USD total
        ReconciliationRun.objects.create(
            legal_entity=ents[code],
            status="complete",
            started_at=NOW - dt.timedelta(minutes=2),
            finished_at=NOW,
            summary={"revenue": {"checked": checked, "matched": matched, "erp_total": {"USD": "850000.00"}}},
        )
    # People staffed in the PSA (the US entity's Certinia; Kantata gives no scheduled hours).
    staffed = [("Senior Consultant", 6, 32), ("Project Manager", 2, 16), ("Architect", 2, 24)]
    for role, people, weekly in staffed:
        for i in range(people):
            PsaAssignment.objects.create(
                legal_entity=us,
                source_id=f"a1A-{role[:3]}-{i}",
                role=role,
                starts_on=dt.date(2026, 9, 7) + dt.timedelta(weeks=3 * i),
                ends_on=dt.date(2027, 1, 29) - dt.timedelta(weeks=2 * i),
                weekly_hours=Decimal(weekly),
                read_at=NOW - dt.timedelta(minutes=20),
            )
    _leader_records(us)
    rollups_rebuild_all()
    return ents


def _leader_records(us: LegalEntity) -> None:
    """What the leader figures read: weekly forecast snapshots of September and October, hours
    worked, and an operator's audited actions on exceptions over three weeks."""
    from django.contrib.auth import get_user_model

    from dashboards.models import DemandSnapshot
    from pscsync import clock
    from pscsync.audit import audit_record
    from pscsync.models import PsaWorkedHours

    plan = {"Senior Consultant": 900, "Project Manager": 300, "Architect": 420}
    for taken, factor in ((dt.date(2026, 6, 29), 1.3), (dt.date(2026, 7, 27), 1.1)):
        for role, hours in plan.items():
            for month in ("2026-09", "2026-10"):
                DemandSnapshot.objects.create(
                    taken_on=taken, legal_entity_id=us.pk, role=role, month=month, hours=hours * factor
                )
    for role, hours in (("Senior Consultant", 860), ("Project Manager", 250), ("Architect", 380)):
        PsaWorkedHours.objects.create(legal_entity=us, role=role, month="2026-09", hours=hours, read_at=NOW)
    ops = get_user_model().objects.create_user("olga.ops", password="a-long-seed-password")
    real_now = clock.now
    try:
        for day, minutes in ((5, (0, 12, 40)), (13, (0, 20)), (21, (0, 15, 30, 95))):
            for m in minutes:
                at = dt.datetime(2026, 10, day, 9, tzinfo=dt.UTC) + dt.timedelta(minutes=m)
                clock.now = lambda at=at: at  # the actions' own times
                audit_record(actor=ops, action="handoff.resubmit", obj=us, legal_entity=us, comment="seeded")
    finally:
        clock.now = real_now


def _unbilled_work(
    rnd: random.Random,
    entity: LegalEntity,
    opportunity: str,
    customer: str,
    line: str,
    currency: str,
    value: Decimal,
    closed: dt.datetime,
) -> None:
    """What the PSA holds unbilled for one project: the last week or two of approved time, now and
    then an expense, and for some fixed-fee projects a completed milestone nobody has billed."""
    rows = []
    project = {"project_key": f"P-{opportunity}", "project_name": f"{customer} {line.lower()}"}
    for week in range(rnd.choice([0, 1, 1, 2])):
        work = NOW.date() - dt.timedelta(days=3 + 7 * week + rnd.randint(0, 2))
        if work > closed.date():
            amount = Decimal(rnd.randrange(8, 60) * 180)
            rows.append(("time", f"TC-{opportunity}-{week}", f"Timecard week of {work:%d %b}", work, amount))
    if rnd.random() < 0.15:
        rows.append(("expense", f"EX-{opportunity}", "Travel", NOW.date() - dt.timedelta(days=12), Decimal("640.00")))
    if rnd.random() < 0.12:
        done = max(closed.date(), NOW.date() - dt.timedelta(days=rnd.choice([9, 24, 41, 75])))
        rows.append(("milestone", f"MS-{opportunity}", "Design signed off", done, (value / 5).quantize(Decimal("1"))))
    UnbilledWork.objects.bulk_create(
        UnbilledWork(
            legal_entity=entity,
            kind=kind,
            source_id=source,
            description=text,
            customer_name=customer,
            service_line=line,
            work_date=work,
            amount=amount,
            currency=currency,
            read_at=NOW - dt.timedelta(minutes=20),
            **project,
        )
        for kind, source, text, work, amount in rows
    )


def _ledger_invoice(
    rnd: random.Random,
    entity: LegalEntity,
    erp: object,
    number: str,
    customer: str,
    amount: Decimal,
    currency: str,
    posted: dt.date,
    paid: dt.date | None,
) -> None:
    """The invoice as the ERP's ledger holds it: one in eight still pending approval (NetSuite)
    or a draft (BC), one paid invoice in four paid in two parts, one open invoice in three partly
    paid; Net 30."""
    from connectors.base import LedgerInvoice, PaymentApplied
    from pscsync.ledger import ledger_record_invoice

    payments: list[PaymentApplied] = []
    if rnd.random() < 0.125:
        status = "pending_approval" if entity.code == "us" else "draft"
    elif paid is not None:
        status = "paid"
        if rnd.random() < 0.25:
            first = (amount * Decimal("0.4")).quantize(Decimal("0.01"))
            payments = [
                PaymentApplied(f"{number}-1", number, first, paid - dt.timedelta(days=10)),
                PaymentApplied(f"{number}-2", number, amount - first, paid),
            ]
        else:
            payments = [PaymentApplied(f"{number}-1", number, amount, paid)]
    elif rnd.random() < 0.33:
        status = "partly_paid"
        part = (amount * Decimal("0.5")).quantize(Decimal("0.01"))
        payments = [PaymentApplied(f"{number}-1", number, part, min(posted + dt.timedelta(days=20), NOW.date()))]
    else:
        status = "posted"
    is_posted = status in ("posted", "partly_paid", "paid")
    ledger_record_invoice(
        legal_entity=entity,
        connection=erp,
        invoice=LedgerInvoice(
            id=number,
            number=number,
            key=f"I-{number}",
            project_key="",
            batch_key="",
            customer_id=customer,
            customer_name=customer,
            currency=currency,
            total=amount,
            tax=Decimal("0.00"),
            open_balance=amount - sum((p.amount for p in payments), Decimal("0")) if is_posted else Decimal("0"),
            status=status,
            source_status=status,
            invoice_date=posted,
            due_date=posted + dt.timedelta(days=30),
            posting_date=posted if is_posted else None,
            payments=tuple(payments),
        ),
        seen_at=NOW,
    )
