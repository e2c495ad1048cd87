"""Exchange rates: read daily from each ERP, kept as the ERP gave them (ExchangeRate), and turned
into the month average and month closing per currency pair that figures convert with (FxRate).

Where a rate comes from, in order:
1. an admin's override of that month's rate (audited) wins;
2. the ERP's own period rate for the month (NetSuite OneWorld's consolidated average and current
   rates);
3. else derived from the ERP's daily rates: the average is the mean of the rates the ERP
   published in the month (the rate in effect when it published none), the closing is the rate in
   effect on the month's last day (for the month under way: the latest rate, until the month ends).
If two ERPs give the same pair, the first connection to be set up (lowest id) keeps it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Max

from connectors.base import ExchangeRate as ErpRate
from connectors.errors import ConnectorError
from connectors.models import Connection
from connectors.registry import connector_for
from dashboards.metrics import reporting_currency
from dashboards.models import ExchangeRate, FxRate
from pscsync import clock
from pscsync.audit import audit_record
from pscsync.models import LegalEntity

log = logging.getLogger(__name__)

HISTORY_DAYS = 730  # a connection's first read goes back two years (the demo's first day, trends)
REREAD_DAYS = 35  # later reads repeat the last month: ERPs correct recent rates
PLACES = Decimal("0.00000001")


def fx_rates_read(*, now: dt.datetime | None = None) -> dict[str, Any]:
    """Read every active ERP connection's exchange rates, store them with the connection and the
    read time, and refresh the month rates they feed. Safe to repeat: rows are keyed by day."""
    now = now or clock.now()
    summary: dict[str, Any] = {"connections": 0, "rates": 0, "month_rates": 0, "failed": {}}
    for connection in Connection.objects.filter(kind=Connection.Kind.ERP, is_active=True).order_by("pk"):
        connector = connector_for(connection)
        if not connector.reads_exchange_rates:
            continue
        since = _read_since(connection, now.date())
        try:
            rates = connector.exchange_rates(since=since)
        except ConnectorError as exc:
            # One ERP down must not stop the others; the month rates it fed stay as last read.
            log.warning("exchange rates of %s not read: %s", connection.slug, exc)
            summary["failed"][connection.slug] = str(exc)
            continue
        # Months run to the latest rate the ERP gave (a demo whose business clock is still in the
        # past reads today's table) or to today.
        through = max([now.date(), *(r.effective_date for r in rates)])
        with transaction.atomic():
            _store(connection, rates, now)
            summary["month_rates"] += fx_months_refresh(connection=connection, rates=rates, today=through, now=now)
        summary["connections"] += 1
        summary["rates"] += len(rates)
    return summary


def _read_since(connection: Connection, today: dt.date) -> dt.date:
    last = (
        ExchangeRate.objects.filter(connection=connection, rate_type="daily")
        .order_by("-effective_date")
        .values_list("effective_date", flat=True)
        .first()
    )
    return (last - dt.timedelta(days=REREAD_DAYS)) if last else today - dt.timedelta(days=HISTORY_DAYS)


def _store(connection: Connection, rates: list[ErpRate], now: dt.datetime) -> None:
    rows = {
        (r.from_currency, r.to_currency, r.rate_type, r.effective_date): ExchangeRate(
            connection=connection,
            from_currency=r.from_currency,
            to_currency=r.to_currency,
            rate_type=r.rate_type,
            effective_date=r.effective_date,
            rate=r.rate.quantize(PLACES),
            read_at=now,
        )
        for r in rates
    }
    ExchangeRate.objects.bulk_create(
        rows.values(),
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["connection", "from_currency", "to_currency", "rate_type", "effective_date"],
        update_fields=["rate", "read_at"],
    )


def _month(day: dt.date) -> str:
    return day.strftime("%Y-%m")


def _months(first: dt.date, last: dt.date) -> list[tuple[str, dt.date, dt.date]]:
    """(YYYY-MM, first day, last day) of each month from `first`'s to `last`'s."""
    out, day = [], first.replace(day=1)
    while day <= last:
        nxt = (day + dt.timedelta(days=32)).replace(day=1)
        out.append((_month(day), day, nxt - dt.timedelta(days=1)))
        day = nxt
    return out


def fx_months_refresh(
    *, connection: Connection, rates: list[ErpRate], today: dt.date, now: dt.datetime | None = None
) -> int:
    """The month average and closing of every pair in `rates`, for every month from the earliest
    rate read to `today`'s (see the module docstring for which rate wins). Returns how many
    month rates were written."""
    if not rates:
        return 0
    pairs = {(r.from_currency, r.to_currency) for r in rates}
    first = min(r.effective_date for r in rates)
    stored = ExchangeRate.objects.filter(
        connection=connection, effective_date__gte=first - dt.timedelta(days=31), effective_date__lte=today
    ).order_by("effective_date")
    daily: dict[tuple[str, str], list[tuple[dt.date, Decimal]]] = defaultdict(list)
    period: dict[tuple[str, str, str, str], Decimal] = {}
    for r in stored.values_list("from_currency", "to_currency", "rate_type", "effective_date", "rate"):
        cur, to, rate_type, day, rate = r
        if (cur, to) not in pairs:
            continue
        if rate_type == "daily":
            daily[(cur, to)].append((day, rate))
        else:
            period[(cur, to, _month(day), rate_type)] = rate
    written = 0
    for cur, to in sorted(pairs):
        days = daily.get((cur, to), [])
        for month, start, end in _months(first, today):
            for kind in ("average", "closing"):
                erp = period.get((cur, to, month, kind))
                value = erp if erp is not None else _derived(days, kind, start, min(end, today))
                if value is None:
                    continue
                source = FxRate.Source.ERP if erp is not None else FxRate.Source.DERIVED
                written += _month_rate_set(connection, cur, to, month, kind, value, source, now or clock.now())
    return written


def _derived(days: list[tuple[dt.date, Decimal]], kind: str, start: dt.date, end: dt.date) -> Decimal | None:
    """From daily rates (sorted by day): the mean of those published in [start, end] (the rate in
    effect at `start` if none was), or the rate in effect on `end`."""
    in_effect = [rate for day, rate in days if day <= end]
    if not in_effect:
        return None
    if kind == "closing":
        return in_effect[-1]
    published = [rate for day, rate in days if start <= day <= end]
    if not published:
        return in_effect[-1]
    return (sum(published, Decimal("0")) / len(published)).quantize(PLACES)


def _month_rate_set(
    connection: Connection, cur: str, to: str, month: str, kind: str, value: Decimal, source: str, now: dt.datetime
) -> int:
    row = FxRate.objects.filter(currency=cur, to_currency=to, month=month, kind=kind).first()
    if row is None:
        FxRate.objects.create(
            currency=cur,
            to_currency=to,
            month=month,
            kind=kind,
            rate=value,
            erp_rate=value,
            source=source,
            connection=connection,
            read_at=now,
        )
        return 1
    if row.connection_id is not None and row.connection_id < connection.pk:
        return 0  # an earlier-configured ERP gives this pair: it keeps it
    if row.source == FxRate.Source.MANUAL and row.connection_id is None and row.override_rate is None:
        # A rate an admin typed before the ERPs were read is kept, as their override.
        row.override_rate = row.rate
        row.override_reason = row.override_reason or "Entered by hand before rates were read from the ERP"
    if row.erp_rate == value and row.source == source and row.connection_id == connection.pk:
        FxRate.objects.filter(pk=row.pk).update(read_at=now)
        return 0
    row.erp_rate, row.source, row.connection, row.read_at = value, source, connection, now
    row.rate = row.override_rate if row.override_rate is not None else value
    row.save()
    return 1


def fx_rate_override(
    *,
    actor: User,
    currency: str,
    to_currency: str,
    month: str,
    kind: str,
    rate: Decimal | None,
    reason: str = "",
) -> FxRate | None:
    """Set an admin's rate for one currency pair, month and kind, or clear it (`rate` None): the
    override wins over the ERP's rate until cleared; both moves are audited."""
    with transaction.atomic():
        row = (
            FxRate.objects.select_for_update()
            .filter(currency=currency, to_currency=to_currency, month=month, kind=kind)
            .first()
        )
        before = _override_state(row)
        if row is None:
            if rate is None:
                return None
            row = FxRate(currency=currency, to_currency=to_currency, month=month, kind=kind)
        row.override_rate = rate
        row.overridden_by = actor if rate is not None else None
        row.overridden_at = clock.now() if rate is not None else None
        row.override_reason = reason if rate is not None else ""
        effective = rate if rate is not None else row.erp_rate
        action = "fx_rate.override" if rate is not None else "fx_rate.override_cleared"
        if effective is None:
            # Cleared on a month no ERP gave: nothing is left to convert with.
            audit_record(actor=actor, action=action, obj=row, before=before, after={"rate": None})
            row.delete()
            return None
        row.rate = effective
        row.save()
        audit_record(actor=actor, action=action, obj=row, before=before, after=_override_state(row), comment=reason)
        return row


def _override_state(row: FxRate | None) -> dict[str, Any]:
    if row is None:
        return {}
    return {
        "rate": str(row.rate),
        "override_rate": None if row.override_rate is None else str(row.override_rate),
        "erp_rate": None if row.erp_rate is None else str(row.erp_rate),
    }


def known_currencies() -> list[str]:
    """The currencies figures can be shown in: the reporting currency, each legal entity's, and
    each one a rate is held for."""
    codes = {reporting_currency(), *LegalEntity.objects.values_list("currency", flat=True)}
    codes |= set(FxRate.objects.values_list("currency", flat=True).distinct())
    codes |= set(FxRate.objects.values_list("to_currency", flat=True).distinct())
    return sorted(c for c in codes if c)


def fx_last_read() -> list[dict[str, Any]]:
    """Per ERP connection: when its rates were last read and the latest rate day it gave."""
    rows = (
        ExchangeRate.objects.values("connection__name")
        .annotate(read_at=Max("read_at"), latest=Max("effective_date"), pairs=Count("from_currency", distinct=True))
        .order_by("connection__name")
    )
    return [
        {"connection": r["connection__name"], "read_at": r["read_at"], "latest": r["latest"], "currencies": r["pairs"]}
        for r in rows
    ]
