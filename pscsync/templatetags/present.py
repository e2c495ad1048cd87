"""Template filters for everything a person reads: money, durations, moments, counts and the
glossary's names. Templates never print a timedelta, datetime, slug or step code raw."""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings
from django.utils.html import format_html

from pscsync import glossary

register = template.Library()


@register.filter
def money(amount: Any, currency: str = "") -> str:
    """{{ handoff.amount|money:handoff.currency }} -> "£12,435.00"."""
    return glossary.money_words(amount, currency)


@register.filter
def duration(value: Any) -> str:
    """{{ age|duration }} -> "16 days 7 h"."""
    return glossary.duration_words(value)


@register.filter
def when(moment: Any) -> str:
    """{{ handoff.created_at|when }} -> "3 Dec 2026 10:06 UTC"."""
    return glossary.when_words(moment)


@register.filter
def day(moment: Any) -> str:
    return glossary.when_words(moment, with_time=False)


@register.filter
def counted(n: Any, words: str) -> str:
    """{{ n|counted:"deal" }} -> "1 deal" / "2 deals"; {{ n|counted:"batch,batches" }}."""
    singular, _, plural = words.partition(",")
    return glossary.count_words(n, singular, plural)


@register.filter
def trace(trace_id: str) -> str:
    """{{ handoff.trace_id|trace }} -> "Trace 4bf92f35…", linked to PSCSYNC_TRACE_URL when set;
    the whole id in the title, to copy into a tracing tool."""
    if not trace_id:
        return "Not traced"
    label = f"Trace {trace_id[:8]}…"
    if settings.TRACE_URL:
        url = settings.TRACE_URL.replace("{trace_id}", trace_id)
        return format_html('<a href="{}" title="{}" rel="noopener">{}</a>', url, trace_id, label)
    return format_html('<span title="{}">{}</span>', trace_id, label)


@register.filter
def step_key(key: Any, code: str) -> str:
    """A step's record key as worth showing: ours ("C-001…", "P-006…"), or "" for the engine's
    own per-step key ("read_deal:006…"), which names nothing in another system."""
    key = str(key or "")
    return "" if not key or key.startswith(f"{code}:") else key


# The glossary's names as filters, registered as they are (no wrapper per name).
for _name, _function in (
    ("flow_name", glossary.flow_name),
    ("step_name", glossary.step_name),
    ("state_name", glossary.state_name),
    ("entity_name", glossary.entity_name),
    ("error_kind", glossary.error_kind_name),
    ("sla", glossary.sla_words),
    ("error_words", glossary.error_words),
):
    register.filter(_name, _function)
