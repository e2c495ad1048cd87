"""The ERP ledger as pscsync keeps it: each ERP invoice in canonical states (draft, pending
approval, posted, partly paid, paid, voided, credited), the dated moves between them, and the
payments applied to it. The ERP connectors read and map (posted and paid are vendor knowledge);
this module only stores what they answered, so the dashboards' money figures are the ledger's.

Written from two places, both reading the ERP over its API: every bill-to-cash sync (the invoice
and its project's other invoices) and every reconciliation run (all of them). Recording the same
answer twice changes nothing; a new answer moves the invoice and adds one history row.

Listeners (`listener_add`) are told the invoice's id after the commit of every write that moved
it or changed its posting or paid day: the dashboards end their money cycles on those days."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable
from decimal import Decimal

from django.db import IntegrityError, transaction

from connectors.base import InvoiceStatus, LedgerInvoice
from connectors.models import Connection
from pscsync import clock, ledger_days
from pscsync.models import ErpInvoice, InvoiceStatusChange, LegalEntity, PaymentApplication

log = logging.getLogger("pscsync.ledger")
Listener = Callable[[int], None]
_listeners: dict[str, Listener] = {}


def listener_add(name: str, listener: Listener) -> Listener:
    """Register (or replace, by name) a listener told the id of each ERP invoice whose ledger
    state or dates moved, after the commit that moved it."""
    _listeners[name] = listener
    return listener


def listener_remove(name: str) -> None:
    _listeners.pop(name, None)


def listeners_tell(invoice_id: int) -> None:
    """Runs after commit; never raises (a listener has its own repair job)."""
    for name, listener in list(_listeners.items()):
        try:
            listener(invoice_id)
        except Exception:
            log.exception("ledger listener %s failed on ERP invoice %s", name, invoice_id)


def _move_date(invoice: LedgerInvoice, status: str, today: dt.date) -> dt.date | None:
    """When the ledger made the move: posting on the posting date, paid and partly paid on the
    latest application's date; the rest (drafts, approvals, voids) on the day pscsync saw them."""
    applied = [p.applied_on for p in invoice.payments if p.applied_on]
    if status == InvoiceStatus.POSTED:
        return invoice.posting_date or today
    if status in (InvoiceStatus.PAID, InvoiceStatus.PARTLY_PAID):
        return max(applied) if applied else today
    return today


@transaction.atomic
def ledger_record_invoice(
    *,
    legal_entity: LegalEntity,
    connection: Connection,
    invoice: LedgerInvoice,
    seen_at: dt.datetime | None = None,
) -> ErpInvoice:
    """Store one invoice as the ERP answered: its figures, a status-change row when its state
    moved, and exactly the payment applications the ERP lists for it now."""
    seen_at = seen_at or clock.now()
    today = seen_at.date()
    fields = {
        "legal_entity": legal_entity,
        "number": invoice.number[:100],
        "key": invoice.key[:200],
        "customer_id": invoice.customer_id[:100],
        "customer_name": invoice.customer_name[:200],
        "project_key": invoice.project_key[:200],
        "batch_key": invoice.batch_key[:200],
        # An invoice in the company's local currency may carry none (Business Central).
        "currency": (invoice.currency or legal_entity.currency).upper()[:3],
        "total": invoice.total,
        "tax": invoice.tax,
        "open_balance": invoice.open_balance,
        "status": invoice.status,
        "source_status": invoice.source_status[:100],
        "invoice_date": invoice.invoice_date,
        "due_date": invoice.due_date,
        "posting_date": invoice.posting_date,
        "read_at": seen_at,
    }
    row = ErpInvoice.objects.select_for_update().filter(connection=connection, vendor_id=invoice.id).first()
    before = row.status if row else ""
    dates_before = (row.posting_date, row.paid_on) if row else (None, None)
    scope_before = (row.legal_entity_id, row.currency) if row else None
    if row is None:
        try:
            with transaction.atomic():
                row = ErpInvoice.objects.create(
                    connection=connection, vendor_id=invoice.id, first_seen_at=seen_at, **fields
                )
        except IntegrityError:  # another worker recorded it first: take its row and update it
            row = ErpInvoice.objects.select_for_update().get(connection=connection, vendor_id=invoice.id)
            before = row.status
            dates_before = (row.posting_date, row.paid_on)
            scope_before = (row.legal_entity_id, row.currency)
    for name, value in fields.items():
        setattr(row, name, value)
    applied = [p.applied_on for p in invoice.payments if p.applied_on]
    row.paid_on = (max(applied) if applied else today) if invoice.status == InvoiceStatus.PAID else None
    if invoice.status in InvoiceStatus.REVERSED_STATES:
        row.voided_on = row.voided_on or today
    else:
        row.voided_on = None
    row.save()
    if scope_before is not None and scope_before != (row.legal_entity_id, row.currency):
        # The applications carry their invoice's legal entity and currency (cash collected reads
        # them alone): an invoice re-read under another entity or currency moves them with it.
        # Cash collected by day moves with them (a queryset update passes no model's save).
        moved = ledger_days.new_deltas()
        ledger_days.invoice_applications(row.pk, moved, -1)
        row.applications.update(legal_entity_id=row.legal_entity_id, currency=row.currency)
        ledger_days.invoice_applications(row.pk, moved, +1)
        if row.status not in ledger_days.REVERSED_STATES:
            ledger_days.apply(moved)
    if before != invoice.status:
        InvoiceStatusChange.objects.create(
            invoice=row,
            from_status=before,
            to_status=invoice.status,
            on=_move_date(invoice, invoice.status, today),
            seen_at=seen_at,
        )
    if before != invoice.status or dates_before != (row.posting_date, row.paid_on):
        transaction.on_commit(functools.partial(listeners_tell, row.pk))
    _applications_store(row, invoice, seen_at)
    return row


def _applications_store(row: ErpInvoice, invoice: LedgerInvoice, seen_at: dt.datetime) -> None:
    """Make the stored applications the ERP's list: a payment unapplied or deleted there goes."""
    by_payment: dict[str, tuple[Decimal, dt.date | None, str]] = {}
    for p in invoice.payments:
        amount, on, reference = by_payment.get(p.payment_id, (Decimal("0"), p.applied_on, p.reference))
        by_payment[p.payment_id] = (amount + p.amount, on, reference)  # one payment, two lines: one sum
    existing = {a.payment_id: a for a in row.applications.all()}
    for payment_id, (amount, on, reference) in by_payment.items():
        found = existing.pop(payment_id, None)
        if found is None:
            PaymentApplication.objects.create(
                invoice=row,
                legal_entity_id=row.legal_entity_id,
                currency=row.currency,
                payment_id=payment_id,
                amount=amount,
                applied_on=on,
                reference=reference[:100],
                read_at=seen_at,
            )
        elif (found.amount, found.applied_on, found.reference) != (amount, on, reference[:100]):
            found.amount, found.applied_on, found.reference, found.read_at = amount, on, reference[:100], seen_at
            found.save(update_fields=["amount", "applied_on", "reference", "read_at"])
    if existing:
        PaymentApplication.objects.filter(pk__in=[a.pk for a in existing.values()]).delete()
        ErpInvoice.applications_summarise(row.pk)  # a queryset's delete does not pass through the model


def ledger_record_invoices(
    *,
    legal_entity: LegalEntity,
    connection: Connection,
    invoices: Iterable[LedgerInvoice],
    complete: bool = False,
    seen_at: dt.datetime | None = None,
) -> int:
    """Store several invoices. `complete`: they are everything the ERP holds for this legal
    entity (a reconciliation read), so a stored invoice the ERP no longer has was deleted there
    (NetSuite deletes an unpaid invoice, BC a draft): it is marked voided, its history kept."""
    seen_at = seen_at or clock.now()
    seen: set[str] = set()
    for invoice in invoices:
        ledger_record_invoice(legal_entity=legal_entity, connection=connection, invoice=invoice, seen_at=seen_at)
        seen.add(invoice.id)
    if complete:
        gone = (
            ErpInvoice.objects.filter(legal_entity=legal_entity, connection=connection)
            .exclude(vendor_id__in=seen)
            .exclude(status__in=[InvoiceStatus.VOIDED, InvoiceStatus.CREDITED])
        )
        for row in gone:
            _mark_deleted(row, seen_at)
    return len(seen)


@transaction.atomic
def _mark_deleted(row: ErpInvoice, seen_at: dt.datetime) -> None:
    before = row.status
    row.status, row.source_status = InvoiceStatus.VOIDED, "deleted in the ERP"
    row.open_balance, row.voided_on, row.read_at = Decimal("0.00"), seen_at.date(), seen_at
    row.save(update_fields=["status", "source_status", "open_balance", "voided_on", "read_at"])
    InvoiceStatusChange.objects.create(
        invoice=row, from_status=before, to_status=row.status, on=seen_at.date(), seen_at=seen_at
    )
    transaction.on_commit(functools.partial(listeners_tell, row.pk))
