"""One name for each thing a person reads: flows, steps, handoff states, entities, and the words
for amounts, durations, moments and counts. Every page, CSV and API label reads these, so one
state has one name everywhere ("Needs attention", never "Dead-lettered" on one page and "Open" on
another) and no slug, step code, ISO timestamp or repr reaches a person.

The template filters in pscsync/templatetags/present.py are thin wrappers around these functions.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.utils import timezone

# Handoff states: the model's labels are the one name (the API serves them as labels too); a
# handoff waiting on another one's failure is a state of the workbench, named here.
EXTRA_STATE_NAMES = {"blocked": "Waiting on another handoff", "open": "Needs attention"}

STEP_NAMES = {
    "read_deal": "Read the deal",
    "validate_deal": "Check the deal",
    "upsert_customer": "Create the customer in the ERP",
    "upsert_project": "Create the project in the PSA",
    "upsert_milestones": "Create the milestones",
    "upsert_contract": "Set up billing in the ERP",
    "upsert_resource_requests": "Publish resource demand",
    "update_opportunity": "Write the ids back to the deal",
    "read_billing": "Read approved time, expenses and milestones",
    "validate_billing": "Check the billing batch",
    "upsert_invoice": "Create the invoice in the ERP",
    "mark_billed_in_psa": "Mark the items billed in the PSA",
    "read_invoice": "Read the invoice or payment",
    "update_opportunity_billing": "Show billing on the deal",
    "update_psa_billing": "Show billing on the project",
    "validate_amendment": "Check the amendment",
    "upsert_budget": "Update the project budget",
    "upsert_estimate": "Update the estimate",
    "decide_demand": "Decide the demand change",
    "upsert_forecast_demand": "Update forecast demand",
    "echo": "Echo",
}

ENTITY_NAMES = {
    "customer": "customer",
    "project": "project",
    "milestone": "milestone",
    "contract": "billing set-up",
    "resource_request": "resource request",
    "invoice": "invoice",
    "opportunity": "deal",
    "deal_status": "deal status",
    "budget": "budget",
    "estimate": "estimate",
    "forecast_demand": "forecast demand",
    "billing_status": "billing status",
}

ERROR_KIND_NAMES = {
    "transient": "Temporary failure",
    "deferred": "Waited for the rate limit",
    "unknown": "Outcome unknown",
    "validation": "Source data problem",
    "mapping": "Mapping problem",
    "rejected": "Rejected by the target system",
    "auth": "Credentials problem",
    "defect": "Defect in pscsync",
    "blocked": "Waiting on another handoff",
}

# What a person did (or the engine did for them) to a handoff, as the timeline says it.
ACTION_NAMES = {
    "handoff.resubmit": "Resubmitted",
    "handoff.resubmit.bulk": "Resubmitted with others (bulk)",
    "handoff.rerun": "Re-run after a mapping change",
    "handoff.resolve": "Resolved without retry",
    "handoff.cancel": "Cancelled",
    "handoff.reopen": "Reopened",
    "handoff.compensate": "Undone in the target systems",
    "handoff.compensate.request": "Undo requested",
    "handoff.compensate.failed": "Undo failed",
    "handoff.sla_breach": "SLA breached",
    "handoff.stuck": "Found stuck",
}

CURRENCY_SYMBOLS = {"GBP": "£", "USD": "$", "EUR": "€", "JPY": "¥", "AUD": "A$", "CAD": "C$", "CHF": "CHF "}
CURRENCY_DECIMALS = {"JPY": 0, "KRW": 0, "HUF": 0}


def _words(code: str) -> str:
    text = str(code or "").replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:]


# A step code standing alone in a message (the runner prefixes every error with the step's code).
_STEP_CODE = re.compile(r"\b(" + "|".join(sorted((k for k in STEP_NAMES if "_" in k), key=len, reverse=True)) + r")\b")


def error_words(message: Any) -> str:
    """A stored error message as a person reads it: "validate_deal: account … has no tax profile"
    becomes "Check the deal: account … has no tax profile" (every step code named)."""
    return _STEP_CODE.sub(lambda m: STEP_NAMES[m.group(1)], str(message or ""))


def document_text(value: Any) -> str:
    """A stored document (what a step sent or received, an audit entry's before and after) as a
    person reads it: indented JSON, "—" when empty, step codes named."""
    if value in ({}, None, ""):
        return "—"
    return error_words(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def flow_name(code: str) -> str:
    """A flow by its label ("Quote to project"), whatever the slug."""
    from pscsync.flows import flow_get

    flow = flow_get(str(code or ""))
    return flow.label if flow is not None else _words(code)


def step_name(code: str) -> str:
    return STEP_NAMES.get(str(code or ""), _words(code))


def state_name(code: str) -> str:
    from pscsync.models import Handoff

    names = dict(Handoff.Status.choices)
    code = str(code or "")
    return names.get(code) or EXTRA_STATE_NAMES.get(code) or _words(code)


def entity_name(code: str) -> str:
    return ENTITY_NAMES.get(str(code or ""), _words(code).lower())


def action_name(code: str) -> str:
    """An audit action ("handoff.resubmit") as the timeline says it ("Resubmitted")."""
    code = str(code or "")
    return ACTION_NAMES.get(code) or _words(code.replace(".", " "))


def error_kind_name(code: str) -> str:
    return ERROR_KIND_NAMES.get(str(code or ""), _words(code))


def count_words(n: Any, singular: str, plural: str = "") -> str:
    """ "1 deal", "2 deals", "1,204 handoffs"."""
    try:
        number = int(n)
    except (TypeError, ValueError):
        return f"{n} {plural or singular + 's'}"
    word = singular if number == 1 else (plural or singular + "s")
    return f"{number:,} {word}"


def money_words(amount: Any, currency: str = "") -> str:
    """An amount with its currency's symbol and decimals: "£12,435.00", "¥1,200", "12,435.00 SEK"."""
    if amount is None or amount == "":
        return "—"
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    code = str(currency or "").upper()
    places = CURRENCY_DECIMALS.get(code, 2)
    sign = "−" if value < 0 else ""
    text = f"{abs(value):,.{places}f}"
    if code in CURRENCY_SYMBOLS:
        return f"{sign}{CURRENCY_SYMBOLS[code]}{text}"
    return f"{sign}{text} {code}".strip()


def duration_words(value: Any) -> str:
    """ "16 days 7 h", "3 h 20 min", "45 s": two units at most, rounded to the nearest."""
    if value is None or value == "":
        return "—"
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    sign = "−" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{sign}{minutes} min"
    hours, mins = divmod(minutes, 60)
    if hours < 24:
        return f"{sign}{hours} h" + (f" {mins} min" if mins else "")
    hours = round(seconds / 3600)
    days, hrs = divmod(hours, 24)
    unit = "day" if days == 1 else "days"
    return f"{sign}{days} {unit}" + (f" {hrs} h" if hrs else "")


def when_words(moment: Any, *, with_time: bool = True) -> str:
    """A moment in the site's time zone, with the zone: "3 Dec 2026 10:06 UTC"."""
    if moment is None or moment == "":
        return "—"
    if isinstance(moment, str):
        try:
            moment = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return moment
    if isinstance(moment, dt.datetime):
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment, dt.UTC)
        local = timezone.localtime(moment)
        zone = local.tzname() or settings.TIME_ZONE
        if not with_time:
            return f"{local.day} {local:%b %Y}"
        return f"{local.day} {local:%b %Y %H:%M} {zone}"
    if isinstance(moment, dt.date):
        return f"{moment.day} {moment:%b %Y}"
    return str(moment)


def later_words(moment: dt.datetime, *, since: dt.datetime) -> str:
    """A moment after `since`, as short as it stays clear: "10:42 UTC" on the same local day,
    else with its date ("7 Dec 2026 10:42 UTC")."""
    local, start = timezone.localtime(moment), timezone.localtime(since)
    if local.date() == start.date():
        return f"{local:%H:%M} {local.tzname() or settings.TIME_ZONE}"
    return when_words(moment)


def sla_words(remaining_seconds: float | None) -> str:
    """How an SLA stands: "3 h over" when breached, "due in 2 h" when not, "—" without one."""
    if remaining_seconds is None:
        return "—"
    if remaining_seconds < 0:
        return f"{duration_words(-remaining_seconds)} over"
    return f"due in {duration_words(remaining_seconds)}"
