"""The ledger by day (LedgerDay): per legal entity, currency and day, what the ERP ledger holds in
three sums the dashboards' money figures add up instead of reading every invoice:

- invoiced: totals of invoices in a posted state (posted, partly paid, paid) by posting day;
- collected: dated payment applications by their day, less those of voided or credited invoices;
- owed: what the open invoices (posted or partly paid, with a posting day) still owe now, total
  less their dated applications, by due day (an invoice without one under NEVER_DUE, never past due).

It is a storage shortcut of the definitions in dashboards.ledger, not a second one: a figure read
here equals the same figure read from the invoices (tests/dashboards/test_ledger_days.py).

Kept as deltas by the models' own writes (ErpInvoice.save, applications_summarise,
PaymentApplication.save, deletes through the ORM): each write subtracts what the rows gave before
and adds what they give after, as one `INSERT … ON CONFLICT DO UPDATE SET x = x + delta` per day,
so concurrent writers add up under the row lock without reading each other's sums (a recompute of
the day would need a lock around the read as well). Kept in Python, not in a database trigger,
because the embedded set-up runs on SQLite too (docs/engine.md). A write around the models (a
queryset update of these fields, raw SQL, bench/largefirm's COPY) runs `rebuild()` after it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

NEVER_DUE = dt.date(9999, 12, 31)
POSTED_STATES = ("posted", "partly_paid", "paid")
OPEN_STATES = ("posted", "partly_paid")
REVERSED_STATES = ("voided", "credited")
COLUMNS = ("invoiced", "collected", "owed")
# The invoice fields its sums depend on (attribute names), read before a write.
INVOICE_FIELDS = (
    "legal_entity_id",
    "currency",
    "status",
    "posting_date",
    "due_date",
    "total",
    "applied_total",
    "applied_through",
)
APPLICATION_FIELDS = ("legal_entity_id", "currency", "applied_on", "amount")

# (column, legal entity id, currency, day) -> [amount, count]
Deltas = dict[tuple[str, int, str, dt.date], list[Any]]


def new_deltas() -> Deltas:
    return defaultdict(lambda: [Decimal("0"), 0])


def invoice_parts(v: Mapping[str, Any] | None, deltas: Deltas, sign: int) -> None:
    """Add `sign` × what an invoice with values `v` gives to the invoiced and owed sums."""
    if not v or not v["posting_date"]:
        return
    entity, currency, total = v["legal_entity_id"], v["currency"], Decimal(v["total"])
    if v["status"] in POSTED_STATES:
        cell = deltas[("invoiced", entity, currency, v["posting_date"])]
        cell[0] += sign * total
        cell[1] += sign
    if v["status"] in OPEN_STATES:
        # As dashboards.ledger reads it: no dated application, nothing applied.
        applied = Decimal(v["applied_total"]) if v["applied_through"] else Decimal("0")
        owed = total - applied
        if owed > 0:
            cell = deltas[("owed", entity, currency, v["due_date"] or NEVER_DUE)]
            cell[0] += sign * owed
            cell[1] += sign


def application_parts(v: Mapping[str, Any] | None, deltas: Deltas, sign: int) -> None:
    """Add `sign` × what one application (of an invoice not reversed) gives to cash collected."""
    if not v or not v["applied_on"]:
        return
    cell = deltas[("collected", v["legal_entity_id"], v["currency"], v["applied_on"])]
    cell[0] += sign * Decimal(v["amount"])
    cell[1] += sign


def invoice_applications(invoice_id: int, deltas: Deltas, sign: int) -> None:
    """Add `sign` × what all of one invoice's applications give to cash collected (its reversal
    or un-reversal, its applications moved to another entity or currency)."""
    from pscsync.models import PaymentApplication

    for v in PaymentApplication.objects.filter(invoice_id=invoice_id).values(*APPLICATION_FIELDS):
        application_parts(v, deltas, sign)


UPSERT = """
INSERT INTO pscsync_ledgerday
    (legal_entity_id, currency, day, invoiced, invoiced_count, collected, collected_count, owed, owed_count)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (legal_entity_id, currency, day) DO UPDATE SET
    invoiced = pscsync_ledgerday.invoiced + excluded.invoiced,
    invoiced_count = pscsync_ledgerday.invoiced_count + excluded.invoiced_count,
    collected = pscsync_ledgerday.collected + excluded.collected,
    collected_count = pscsync_ledgerday.collected_count + excluded.collected_count,
    owed = pscsync_ledgerday.owed + excluded.owed,
    owed_count = pscsync_ledgerday.owed_count + excluded.owed_count
"""


def apply(deltas: Deltas) -> None:
    """Write the non-zero deltas, one upsert per (entity, currency, day), in key order (two
    writers lock the same days in the same order: no deadlock between them)."""
    rows: dict[tuple[int, str, dt.date], list[Any]] = {}
    for (column, entity, currency, day), (amount, count) in deltas.items():
        if not amount and not count:
            continue
        row = rows.setdefault((entity, currency, day), [Decimal("0"), 0] * len(COLUMNS))
        at = COLUMNS.index(column) * 2
        row[at] += amount
        row[at + 1] += count
    if not rows:
        return
    with transaction.atomic(), connection.cursor() as cursor:
        for key in sorted(rows):
            cursor.execute(UPSERT, [*key, *rows[key]])


REBUILD = [
    "DELETE FROM pscsync_ledgerday",
    # Invoiced by posting day.
    """
    INSERT INTO pscsync_ledgerday
        (legal_entity_id, currency, day, invoiced, invoiced_count, collected, collected_count, owed, owed_count)
    SELECT legal_entity_id, currency, posting_date, SUM(total), COUNT(*), 0, 0, 0, 0
    FROM pscsync_erpinvoice
    WHERE status IN ('posted', 'partly_paid', 'paid') AND posting_date IS NOT NULL
    GROUP BY legal_entity_id, currency, posting_date
    """,
    # Cash collected by application day, less reversed invoices'.
    """
    INSERT INTO pscsync_ledgerday
        (legal_entity_id, currency, day, invoiced, invoiced_count, collected, collected_count, owed, owed_count)
    SELECT a.legal_entity_id, a.currency, a.applied_on, 0, 0, SUM(a.amount), COUNT(*), 0, 0
    FROM pscsync_paymentapplication a
    WHERE a.applied_on IS NOT NULL AND a.invoice_id NOT IN (
        SELECT id FROM pscsync_erpinvoice WHERE status IN ('voided', 'credited')
    )
    GROUP BY a.legal_entity_id, a.currency, a.applied_on
    ON CONFLICT (legal_entity_id, currency, day) DO UPDATE SET
        collected = excluded.collected, collected_count = excluded.collected_count
    """,
    # Owed now by due day.
    """
    INSERT INTO pscsync_ledgerday
        (legal_entity_id, currency, day, invoiced, invoiced_count, collected, collected_count, owed, owed_count)
    SELECT legal_entity_id, currency, due, 0, 0, 0, 0, SUM(owed), COUNT(*)
    FROM (
        SELECT legal_entity_id, currency, COALESCE(due_date, '9999-12-31') AS due,
            total - CASE WHEN applied_through IS NULL THEN 0 ELSE applied_total END AS owed
        FROM pscsync_erpinvoice
        WHERE status IN ('posted', 'partly_paid') AND posting_date IS NOT NULL
    ) o
    WHERE owed > 0
    GROUP BY legal_entity_id, currency, due
    ON CONFLICT (legal_entity_id, currency, day) DO UPDATE SET
        owed = excluded.owed, owed_count = excluded.owed_count
    """,
]


def rebuild(cursor: Any = None) -> None:
    """Recompute every day from the invoices and applications, set-based (the migration's
    backfill, and after a write around the models)."""
    with transaction.atomic():
        if cursor is not None:
            for sql in REBUILD:
                cursor.execute(sql)
            return
        with connection.cursor() as own:
            for sql in REBUILD:
                own.execute(sql)


def _invoice_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    from pscsync.models import ErpInvoice

    deltas = new_deltas()
    invoice_parts(ErpInvoice.objects.filter(pk=instance.pk).values(*INVOICE_FIELDS).first(), deltas, -1)
    apply(deltas)


def _application_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    from pscsync.models import ErpInvoice, PaymentApplication

    status = ErpInvoice.objects.filter(pk=instance.invoice_id).values_list("status", flat=True).first()
    if status in REVERSED_STATES:
        return
    deltas = new_deltas()
    application_parts(PaymentApplication.objects.filter(pk=instance.pk).values(*APPLICATION_FIELDS).first(), deltas, -1)
    apply(deltas)


def connect() -> None:
    """Deletes through the ORM (one row, a queryset, an invoice's cascade) take their rows' sums
    out before the rows go: every row is still there when pre_delete is sent."""
    from django.db.models.signals import pre_delete

    from pscsync.models import ErpInvoice, PaymentApplication

    pre_delete.connect(_invoice_deleted, sender=ErpInvoice, dispatch_uid="ledger_days.invoice")
    pre_delete.connect(_application_deleted, sender=PaymentApplication, dispatch_uid="ledger_days.application")
