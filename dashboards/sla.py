"""The one SLA rule, with a business calendar per legal entity.

A business-day SLA counts the elapsed time on the entity's working days only: Monday to Friday,
less the public holidays of the entity's country (`LegalEntity.country`, national holidays from
the `holidays` package; regional ones such as England's summer bank holiday are not counted).
Days are cut at midnight UTC. An hour SLA counts calendar hours. The facts (within SLA), the
tiles and tables (past SLA), the alerts (SLA breach) and the API all call these functions, so
a deal won on Friday afternoon with a one-business-day SLA is late on Monday afternoon
everywhere, and on Tuesday afternoon if Monday is a public holiday.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

import holidays

from dashboards.models import FlowSla


@lru_cache(maxsize=64)
def _public_holidays(country: str) -> Any:
    """The country's national public holidays (a dict-like of dates), or None when the country is
    unknown to the package or not set: then only weekends are non-working days."""
    if not country:
        return None
    try:
        return holidays.country_holidays(country.upper())
    except NotImplementedError:
        return None


def is_business_day(day: dt.date, country: str = "") -> bool:
    if day.weekday() >= 5:
        return False
    calendar = _public_holidays(country)
    return calendar is None or day not in calendar


def holiday_name(day: dt.date, country: str = "") -> str:
    calendar = _public_holidays(country)
    return (calendar.get(day) or "") if calendar is not None else ""


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def business_days_between(start: dt.datetime, end: dt.datetime, country: str = "") -> float:
    """Elapsed business days between two instants: the fraction of each working day (UTC) of the
    entity's country that lies between them. Weekends and public holidays add nothing."""
    if end < start:
        return -business_days_between(end, start, country)
    total = 0.0
    cursor = start
    while cursor < end:
        segment_end = min(end, _midnight(cursor.astimezone(dt.UTC).date() + dt.timedelta(days=1)))
        if is_business_day(cursor.astimezone(dt.UTC).date(), country):
            total += (segment_end - cursor).total_seconds() / 86400
        cursor = segment_end
    return total


def business_instant_before(now: dt.datetime, days: float, country: str = "") -> dt.datetime:
    """The instant `days` business days before `now`: the inverse of business_days_between."""
    remaining = dt.timedelta(days=days)
    cursor = now.astimezone(dt.UTC)
    while True:
        day_start = _midnight(cursor.date())
        if day_start == cursor:
            day_start -= dt.timedelta(days=1)
        if is_business_day(day_start.date(), country):
            if cursor - day_start >= remaining:
                return cursor - remaining
            remaining -= cursor - day_start
        cursor = day_start


def sla_deadline(sla: FlowSla, now: dt.datetime, country: str = "") -> dt.datetime:
    """Anything that started before this instant and is not finished is past its SLA at `now`."""
    if sla.unit == FlowSla.Unit.BUSINESS_DAYS:
        return business_instant_before(now, float(sla.target), country)
    return now - dt.timedelta(hours=float(sla.target))


def elapsed(start: dt.datetime, end: dt.datetime, sla: FlowSla, country: str = "") -> float:
    """Time from start to end in the SLA's own unit (business days or hours)."""
    if sla.unit == FlowSla.Unit.BUSINESS_DAYS:
        return business_days_between(start, end, country)
    return (end - start).total_seconds() / 3600


def within_sla(start: dt.datetime, end: dt.datetime, sla: FlowSla, country: str = "") -> bool:
    """Finished within the SLA: the elapsed time in the SLA's unit is at most its target."""
    return elapsed(start, end, sla, country) <= float(sla.target)


def past_sla(start: dt.datetime, now: dt.datetime, sla: FlowSla, country: str = "") -> bool:
    """Still open and already late: more than the target has elapsed since it started."""
    return start < sla_deadline(sla, now, country)
