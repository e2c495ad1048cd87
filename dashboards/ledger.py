"""Money as the ERPs' ledgers hold it: receivables and their ageing, invoiced (billings), cash
collected, DSO, and the invoices still unposted in the ERP. One definition each, read by the
pages, their CSV exports and /api/v1/metrics/. Built from the ledger pscsync keeps
(pscsync.ledger: ErpInvoice, PaymentApplication), never from handoffs: an invoice counts when
the ERP has posted it, a payment when the ERP applied it (DESIGN.md rule 8).

- Invoiced in a period: totals (tax included) of invoices posted in the ERP whose posting date
  falls in the period. Drafts and invoices pending approval are not invoiced; a voided or
  credited invoice is not either (the ERP reversed it).
- Receivables at a date D: for each invoice posted on or before D and not voided, its total less
  the payments applied to it on or before D; aged by days past due at D (current, 1–30, 31–60,
  61–90, over 90 days past the due date).
- Cash collected in a period: payments applied to invoices, by the application's date.
- DSO (simple, DOMAIN.md §2.6): receivables at the period end ÷ invoiced in the 90 days ending
  then × 90.

Currency: balances (receivables, unposted invoices) at the closing rate of D's month, flows
(invoiced, cash) at the average rate of their month, through metrics.Converter. The service-line
filter does not apply (an ERP invoice carries no service line); legal entity, customer and
connection do.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.db.models import (
    Case,
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    IntegerField,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Least, TruncMonth, TruncWeek

from dashboards.metrics import AGE_BUCKETS_DAYS, Converter, Filters, bucket_index, converter_for
from dashboards.money import Money
from pscsync.models import ErpInvoice, LedgerDay, PaymentApplication

ZERO = Decimal("0")
CENT = Decimal("0.01")
DSO_WINDOW_DAYS = 90
# Days past the due date at the date of the figure: (lowest, highest, label); "current" is not due yet.
AGEING_BUCKETS: list[tuple[int | None, int | None, str]] = [
    (None, 0, "Current"),
    (1, 30, "1–30 days past due"),
    (31, 60, "31–60 days past due"),
    (61, 90, "61–90 days past due"),
    (91, None, "Over 90 days past due"),
]
DSO_DEFINITION = (
    "Simple DSO: receivables at the period end ÷ invoices posted in the 90 days up to it × 90. "
    "Receivables are posted invoices' totals less the payments the ERP applied "
    "up to that date."
)


def ledger_invoices(f: Filters) -> QuerySet[ErpInvoice]:
    """The ledger's invoices within the filter's scope (legal entities, customer, connection)."""
    qs = ErpInvoice.objects.all()
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    if f.customer:
        qs = qs.filter(customer_name=f.customer)
    if f.connection_id:
        qs = qs.filter(connection_id=f.connection_id)
    return qs


def ledger_applications(f: Filters) -> QuerySet[PaymentApplication]:
    """Payment applications to the ledger's invoices within the filter's scope, less those of
    voided or credited invoices (the ERP reversed them). Legal entity and currency are the
    application's own copies of its invoice's, so a period's applications are read without their
    invoices; a customer or connection filter goes through the join (not `invoice IN (every
    invoice in scope)`, which the planner reads whole)."""
    qs = PaymentApplication.objects.all()
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    if f.customer:
        qs = qs.filter(invoice__customer_name=f.customer)
    if f.connection_id:
        qs = qs.filter(invoice__connection_id=f.connection_id)
    # Reversed invoices are few: one small set the planner hashes, not a join per application.
    reversed_ = ErpInvoice.objects.filter(status__in=[ErpInvoice.Status.VOIDED, ErpInvoice.Status.CREDITED])
    return qs.exclude(invoice_id__in=reversed_.values("id"))


def by_day(f: Filters) -> QuerySet[LedgerDay] | None:
    """The ledger by day (pscsync.ledger_days) in the filter's scope, or None when the scope is
    finer than its rows (a customer, a connection): then the figures read the invoices. The same
    sums either way; the days are a few hundred rows where the invoices are the firm's."""
    if f.customer or f.connection_id:
        return None
    qs = LedgerDay.objects.all()
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    return qs


def owed_by_day(f: Filters, at: dt.date) -> QuerySet[LedgerDay] | None:
    """The ledger by day's `owed` (what open invoices owe now, by due day) when it is also what
    was owed at `at`: nothing in the ledger posted, paid or applied after `at` (the usual case,
    `at` today). Else None, and receivables read the invoices. Three index lookups, firm-wide."""
    days = by_day(f)
    if days is None:
        return None
    posted = ErpInvoice.objects.aggregate(posted=Max("posting_date"), paid=Max("paid_on"))
    applied = PaymentApplication.objects.aggregate(on=Max("applied_on"))["on"]
    if any(day is not None and day > at for day in (posted["posted"], posted["paid"], applied)):
        return None
    return days


def ledger_read_at(f: Filters) -> dt.datetime | None:
    """When the ledger in scope was last read from an ERP; None: never (the figures are not
    measured yet, which is not the same as nothing owed)."""
    return ledger_invoices(f).aggregate(at=Max("read_at"))["at"]


def ageing_index(days_past_due: int) -> int:
    for index, (low, high, _label) in enumerate(AGEING_BUCKETS):
        if (low is None or days_past_due >= low) and (high is None or days_past_due <= high):
            return index
    return len(AGEING_BUCKETS) - 1


AMOUNT = DecimalField(max_digits=16, decimal_places=2)


def _band(due: str, at: dt.date) -> Case:
    """The ageing band (AGEING_BUCKETS' index) of a due date at `at`, in SQL so that the sums are
    made there: not yet due (or no due date) is current."""
    bands = [When(**{f"{due}__isnull": True}, then=Value(0))]
    for index, (_low, high, _label) in enumerate(AGEING_BUCKETS):
        if high is not None:
            bands.append(When(**{f"{due}__gte": at - dt.timedelta(days=high)}, then=Value(index)))
    return Case(*bands, default=Value(len(AGEING_BUCKETS) - 1), output_field=IntegerField())


def _open_invoices(f: Filters, at: dt.date) -> list[QuerySet[ErpInvoice]]:
    """Invoices with something owed at `at`, each annotated with `open_amount` (total less the
    payments applied up to `at`) and `bucket` (its ageing band by days past the due date at `at`),
    as two disjoint querysets: those whose every dated payment is on or before `at` (read with
    the invoice's own applied sum) and those paid in part after it (their applications summed up
    to `at`). Two queries, not one CASE: with the rare second branch in its plan, PostgreSQL
    costed the first (11k open invoices at the 1M-handoff firm) as if every row ran it, and spent
    45 ms compiling the query (JIT) for 10 ms of work."""
    # Open at `at`: posted by then and not paid in full by then. A paid invoice's applications sum
    # to its total by its paid_on day, so only those paid after `at` can still owe something at it;
    # reading the rest (years of paid invoices) would only sum to zero.
    open_then = Q(status__in=[ErpInvoice.Status.POSTED, ErpInvoice.Status.PARTLY_PAID]) | Q(
        status=ErpInvoice.Status.PAID, paid_on__gt=at
    )
    summed = Subquery(
        PaymentApplication.objects.filter(invoice=OuterRef("pk"), applied_on__lte=at)
        .order_by()
        .values("invoice")
        .annotate(s=Sum("amount"))
        .values("s"),
        output_field=AMOUNT,
    )
    bucket = _band("due_date", at)
    scope = ledger_invoices(f).filter(open_then, posting_date__lte=at)
    settled = Q(applied_through__isnull=True) | Q(applied_through__lte=at)
    # Applied up to `at`: nothing when no dated payment was applied, else the invoice's own sum.
    applied = Case(When(applied_through__isnull=True, then=Value(ZERO)), default=F("applied_total"))
    return [
        scope.filter(settled)
        .annotate(open_amount=ExpressionWrapper(F("total") - applied, output_field=AMOUNT), bucket=bucket)
        .filter(open_amount__gt=0),
        scope.exclude(settled)
        .annotate(
            open_amount=ExpressionWrapper(F("total") - Coalesce(summed, Value(ZERO)), output_field=AMOUNT),
            bucket=bucket,
        )
        .filter(open_amount__gt=0),
    ]


def receivables(
    f: Filters,
    conv: Converter | None = None,
    *,
    at: dt.date | None = None,
    detail: bool = True,
    rows: int | None = None,
    invoices: int | None = None,
) -> dict[str, Any]:
    """Open balances at `at` (default: the period end), aged by due date, by customer and legal
    entity, summed in the database. With `detail`: `rows`, one per (legal entity, customer),
    largest first, `entity_buckets` (legal entity id → its sum per band) and `invoices`, the
    open invoices (open_invoices()), for the tables and their drill-down; without (the overview,
    the JSON), only the sums. `rows` and `invoices` limit how many of each are built (the page
    shows the first 200 customers and 25 invoices; None: all): `customers` says how many rows
    there are and `every_row()` builds each of them. `native`: the open amounts per currency,
    unconverted."""
    conv = conv or converter_for(f)
    at = at or f.end
    by = ("legal_entity_id", "currency", "bucket", *(("customer_name",) if detail else ()))
    # Each group's open amount and invoice count over both parts, summed before it is converted
    # (one conversion per group, as one query gave it).
    merged: dict[tuple[Any, ...], list[Any]] = {}
    owed = None if detail else owed_by_day(f, at)
    if owed is not None:
        # Without the per-customer detail, the ledger by day's open balances by due day, banded at `at`.
        days = owed.filter(owed_count__gt=0).annotate(bucket=_band("day", at))
        for *key, v, k in days.values_list(*by).annotate(v=Sum("owed"), k=Sum("owed_count")).order_by():
            merged[tuple(key)] = [v, k]
    for part in _open_invoices(f, at) if owed is None else []:
        for *key, v, k in part.values_list(*by).annotate(v=Sum("open_amount"), k=Count("id")).order_by():
            found = merged.get(tuple(key))
            if found is None:
                merged[tuple(key)] = [v, k]
            else:
                found[0] += v
                found[1] += k
    n = len(AGEING_BUCKETS)
    # Plain decimal sums (and what could not be converted, per band) while reading the groups, a
    # Money made only for what is returned: at the 1M-handoff firm the detail is ~7k groups of
    # ~5,000 customers, and a Money per group or addition cost more than the query did.
    buckets, counts = [ZERO] * n, [0] * n
    gaps: list[dict[str, Decimal]] = [{} for _ in range(n)]
    by_entity: dict[int, list[Decimal]] = defaultdict(lambda: [ZERO] * n)
    entity_gaps: dict[int, list[dict[str, Decimal]]] = defaultdict(lambda: [{} for _ in range(n)])
    by_customer: dict[tuple[int, str], list[Decimal]] = defaultdict(lambda: [ZERO] * n)
    customer_gaps: dict[tuple[int, str], list[dict[str, Decimal]]] = {}
    native: dict[str, Decimal] = defaultdict(Decimal)
    # Every group converts at the closing rate of `at`'s month: one rate per currency, looked up once;
    # each group rounded to the cent as Converter.money rounds it.
    month = f"{at.year:04d}-{at.month:02d}"
    rates: dict[str, Decimal | None] = {}
    for (entity, cur, index, *customer), (v, k) in merged.items():
        if cur not in rates:
            rates[cur] = conv.rate(cur, month, "closing")
        rate = rates[cur]
        counts[index] += k
        native[cur] += v
        cells = by_customer[(entity, customer[0])] if detail else None
        if rate is not None or not v:
            amount = (v * rate).quantize(CENT) if v and rate is not None else ZERO
            buckets[index] += amount
            by_entity[entity][index] += amount
            if cells is not None:
                cells[index] += amount
            continue
        conv.unconverted[cur] += v  # no rate: named as missing on the figure, as Converter.money does
        by_entity.setdefault(entity, [ZERO] * n)
        for gap in (gaps[index], entity_gaps[entity][index]):
            gap[cur] = gap.get(cur, ZERO) + v
        if detail:
            gap = customer_gaps.setdefault((entity, customer[0]), [{} for _ in range(n)])[index]
            gap[cur] = gap.get(cur, ZERO) + v
    target = conv.target
    values = [Money(target, buckets[i], gaps[i]) for i in range(n)]
    entity_values = {
        entity: [Money(target, sums[i], entity_gaps[entity][i] if entity in entity_gaps else {}) for i in range(n)]
        for entity, sums in by_entity.items()
    }
    # Largest first by the converted total (the customer's name breaks ties), sorted as decimals.
    totals = {key: sum(amounts, ZERO) for key, amounts in by_customer.items()}
    order = sorted(by_customer, key=lambda key: (-totals[key], key[1]))

    def row(key: tuple[int, str]) -> dict[str, Any]:
        missing = customer_gaps.get(key) or [{} for _ in range(n)]
        cells = [Money(target, amount, missing[i]) for i, amount in enumerate(by_customer[key])]
        return {"legal_entity_id": key[0], "customer": key[1], "buckets": cells, "total": sum(cells, conv.zero())}

    def every_row() -> Iterator[dict[str, Any]]:
        return (row(key) for key in order)

    return {
        "at": at,
        "value": sum(values, conv.zero()),
        "count": sum(counts),
        "labels": [label for _low, _high, label in AGEING_BUCKETS],
        "buckets": values,
        "counts": counts,
        "past_due": sum(values[1:], conv.zero()),
        "rows": [row(key) for key in (order if rows is None else order[:rows])],
        "customers": len(order),
        "every_row": every_row,
        "by_entity": {entity: sum(cells, conv.zero()) for entity, cells in entity_values.items()},
        "entity_buckets": entity_values,
        "native": dict(native),
        # The drill-down: every invoice behind the figure (or the first `invoices`), the longest overdue first.
        "invoices": list(open_invoices(f, at, limit=invoices)) if detail and invoices != 0 else [],
    }


def open_invoices(f: Filters, at: dt.date, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The invoices behind the receivables at `at`, the longest overdue first (then by number),
    each with its open amount in its own currency; the first `limit` (None: all, read in chunks
    for a CSV export)."""
    fields = ("legal_entity_id", "customer_name", "currency", "due_date", "total", "number", "status")
    # Days past due at `at` = at − due date, none before the due date or without one: the earlier
    # of the due date and `at` orders them as the days do (ascending date = most days first).
    overdue_from = Least(Coalesce(F("due_date"), Value(at)), Value(at))
    settled, paid_later = (
        part.annotate(overdue_from=overdue_from).values(
            *fields, "posting_date", "open_amount", "bucket", "id", "overdue_from"
        )
        for part in _open_invoices(f, at)
    )
    qs = settled.union(paid_later, all=True).order_by("overdue_from", "number", "id")
    rows = qs[:limit] if limit is not None else qs.iterator(chunk_size=2000)
    for row in rows:
        late = (at - row["due_date"]).days if row["due_date"] else 0
        yield {**row, "open": row["open_amount"], "days_past_due": max(0, late)}


def invoiced(f: Filters, conv: Converter | None = None, *, start: dt.date | None = None) -> dict[str, Any]:
    """Invoices posted from `start` (default: the period start) to the period end: count and
    value, each month at its average rate."""
    conv = conv or converter_for(f)
    window = (start or f.start, f.end)
    days = by_day(f)
    if days is not None:
        posted = days.filter(day__range=window, invoiced_count__gt=0).annotate(month=TruncMonth("day"))
        groups = posted.values("currency", "month").annotate(v=Sum("invoiced"), n=Sum("invoiced_count"))
    else:
        qs = ledger_invoices(f).filter(status__in=ErpInvoice.POSTED_STATES, posting_date__range=window)
        qs = qs.annotate(month=TruncMonth("posting_date"))
        groups = qs.values("currency", "month").annotate(v=Sum("total"), n=Count("id"))
    value, count = conv.zero(), 0
    for g in groups.order_by():
        value += conv.money(g["v"] or ZERO, g["currency"], _day(g["month"]))
        count += g["n"]
    return {"value": value, "count": count}


def cash_collected(f: Filters, conv: Converter | None = None) -> dict[str, Any]:
    """Payments the ERP applied to invoices in scope, dated in the period (month's average rate)."""
    conv = conv or converter_for(f)
    days = by_day(f)
    if days is not None:
        paid = days.filter(day__range=(f.start, f.end), collected_count__gt=0).annotate(month=TruncMonth("day"))
        groups = paid.values("currency", "legal_entity_id", "month").annotate(
            v=Sum("collected"), n=Sum("collected_count")
        )
    else:
        qs = ledger_applications(f).filter(applied_on__range=(f.start, f.end))
        qs = qs.annotate(month=TruncMonth("applied_on"))
        groups = qs.values("currency", "legal_entity_id", "month").annotate(v=Sum("amount"), n=Count("id"))
    value, count = conv.zero(), 0
    by_entity: dict[int, Money] = defaultdict(conv.zero)
    for g in groups.order_by():
        converted = conv.money(g["v"] or ZERO, g["currency"], _day(g["month"]))
        value += converted
        count += g["n"]
        by_entity[g["legal_entity_id"]] += converted
    return {"value": value, "count": count, "by_entity": dict(by_entity)}


def dso(
    f: Filters,
    conv: Converter | None = None,
    *,
    window_days: int = DSO_WINDOW_DAYS,
    detail: bool = True,
    rows: int | None = None,
    invoices: int | None = None,
) -> dict[str, Any]:
    """Simple DSO at the period end (DSO_DEFINITION). None when nothing was invoiced in the window.
    `detail`: the receivables' rows and invoices too (receivables(), with its `rows` and `invoices`)."""
    conv = conv or converter_for(f)
    owed = receivables(f, conv, detail=detail, rows=rows, invoices=invoices)
    billed = invoiced(f, conv, start=f.end - dt.timedelta(days=window_days - 1))
    # A DSO from partly converted amounts would be a wrong number: none until every amount converts.
    complete = owed["value"].complete and billed["value"].complete
    days = (
        float(owed["value"].amount / billed["value"].amount * window_days) if complete and billed["value"] > 0 else None
    )
    return {
        "days": days,
        "as_of": ledger_read_at(f),
        "receivables": owed["value"],
        "billings": billed["value"],
        "invoices": billed["count"],
        "window": window_days,
        "ageing": owed,
    }


def by_week(f: Filters, conv: Converter | None = None) -> dict[dt.date, list[float]]:
    """Invoiced (by posting week) and cash collected (by application week) per ISO week start."""
    conv = conv or converter_for(f)
    weeks: dict[dt.date, list[float]] = defaultdict(lambda: [0.0, 0.0])
    window = (f.start, f.end)
    days = by_day(f)
    if days is not None:
        posted_weeks = days.filter(day__range=window, invoiced_count__gt=0).annotate(week=TruncWeek("day"))
        posted_weeks = posted_weeks.values("currency", "week").annotate(v=Sum("invoiced"))
        paid_weeks = days.filter(day__range=window, collected_count__gt=0).annotate(week=TruncWeek("day"))
        paid_weeks = paid_weeks.values("currency", "week").annotate(v=Sum("collected"))
    else:
        posted = ledger_invoices(f).filter(status__in=ErpInvoice.POSTED_STATES, posting_date__range=window)
        posted_weeks = (
            posted.annotate(week=TruncWeek("posting_date")).values("currency", "week").annotate(v=Sum("total"))
        )
        paid = ledger_applications(f).filter(applied_on__range=window)
        paid_weeks = paid.annotate(week=TruncWeek("applied_on")).values("currency", "week").annotate(v=Sum("amount"))
    for column, groups in ((0, posted_weeks), (1, paid_weeks)):
        for g in groups.order_by():
            weeks[_day(g["week"])][column] += float(conv.convert(g["v"] or ZERO, g["currency"], _day(g["week"])))
    return dict(sorted(weeks.items()))


def unposted_invoices(f: Filters, conv: Converter | None = None, *, as_of: dt.date | None = None) -> dict[str, Any]:
    """Work on an ERP invoice that is not posted yet (a draft, or pending approval): still
    unbilled WIP (DOMAIN.md §2.3). Valued net of tax at the closing rate, aged by invoice date
    in unbilled WIP's buckets. `by_entity`: legal entity id → value per age bucket."""
    conv = conv or converter_for(f)
    as_of = as_of or f.end
    empty = [conv.zero()] * len(AGE_BUCKETS_DAYS)
    buckets = list(empty)
    by_entity: dict[int, list[Money]] = defaultdict(lambda: list(empty))
    count = 0
    qs = ledger_invoices(f).filter(status__in=ErpInvoice.UNPOSTED_STATES)
    groups = qs.values("legal_entity_id", "currency", "invoice_date").annotate(
        v=Sum("total"), tax=Sum("tax"), n=Count("id")
    )
    for g in groups.order_by():
        age = max(0, (as_of - g["invoice_date"]).days) if g["invoice_date"] else 0
        index = bucket_index(age, AGE_BUCKETS_DAYS)
        value = conv.money((g["v"] or ZERO) - (g["tax"] or ZERO), g["currency"], f.end, "closing")
        buckets[index] += value
        by_entity[g["legal_entity_id"]][index] += value
        count += g["n"]
    return {"count": count, "value": sum(buckets, conv.zero()), "buckets": buckets, "by_entity": dict(by_entity)}


def _day(value: dt.date | dt.datetime) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value
