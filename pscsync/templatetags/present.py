"""Template filters for everything a person reads: money, durations, moments, counts and the
glossary's names. Templates never print a timedelta, datetime, slug or step code raw."""

from __future__ import annotations

from typing import Any

from django import template

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
def flow_name(code: str) -> str:
    return glossary.flow_name(code)


@register.filter
def step_name(code: str) -> str:
    return glossary.step_name(code)


@register.filter
def state_name(code: str) -> str:
    return glossary.state_name(code)


@register.filter
def entity_name(code: str) -> str:
    return glossary.entity_name(code)


@register.filter
def error_kind(code: str) -> str:
    return glossary.error_kind_name(code)


@register.filter
def sla(remaining_seconds: float | None) -> str:
    return glossary.sla_words(remaining_seconds)
