"""Causes grouped like Sentry: a failure's fingerprint is its message with the variable parts
(ids, names, amounts, dates, counts, quoted values, lists) replaced by a placeholder, so five
billing batches missing the same kind of ERP customer are one cause, not five. The title people
read is the latest occurrence's real message in full; the cause page counts how many distinct
values each placeholder had ("3 customers: C-001, C-002, C-003").

The rules are ordered: the named subjects first (they contain free-text names no generic rule
can find), then the generic shapes. A copy of these rules is frozen in the migration that merged
the causes stored before them (remediation/migrations/0003_cause_fingerprints.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDER = "…"

# (pattern, replacement). Replacements keep the word that says what the value was.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # "billing batch Acme Nov (a1b2) for project Acme rollout: ..." — names are free text.
    (re.compile(r"\bbilling batch .+? \([^()]+\) for project .+?(?=: | has | mixes | would |$)"),
     "billing batch … for project …"),
    (re.compile(r"\bbilling batch .+? (?=would bill again)"), "billing batch … "),
    # "would bill again: time 1 (already on invoice I-9), ... — fix" — the list is the detail.
    (re.compile(r"(would bill again: ).+?(?= — |$)"), r"\1…"),
    # "(known: Advisory, Cloud)" lists what the table holds today; it changes as values are added.
    (re.compile(r"\(known: [^)]*\)"), "(known: …)"),
    # A mapping named by its version: the same missing value in v3 and v4 is the same cause.
    (re.compile(r"(\b[\w-]+/\w+)@v\d+"), r"\1@v…"),
    # "mixes currencies (GBP: 2 items, USD: 1 items)".
    (re.compile(r"mixes currencies \([^)]*\)"), "mixes currencies (…)"),
    # Quoted values: names, service lines, billing models.
    # (An apostrophe inside a word, "the deal's", is not a quote.)
    (re.compile(r"(?<![A-Za-z])'[^']*'(?![A-Za-z])|\"[^\"]*\"|“[^”]*”"), "…"),
    # ISO dates and date-times.
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?"), "…"),
    # Ids in brackets after a name: "(006000000000001AAA)", "(a1b2c3)".
    (re.compile(r"\((?=[\w:-]*\d)[\w:-]{4,}\)"), "(…)"),
    # Keys and ids after the word saying what they are: "customer C-0015", "invoice I-K77".
    (re.compile(
        r"\b(customer|project|invoice|batch|event|item|order|account|opportunity|contract|payment|deal|time|expense"
        r"|milestone|record|workspace|id|key)s? (?=[\w:./-]*\d)[\w:./-]+"),
     r"\1 …"),
    # Keys like OPP-1042, long hex ids, long numbers, amounts.
    (re.compile(r"\b[A-Z]{1,}-[\w-]*\d[\w-]*"), "…"),
    (re.compile(r"\b[0-9a-f]{8,}\b"), "…"),
    (re.compile(r"\d[\d,]*\.\d+"), "…"),
    (re.compile(r"\d{4,}"), "…"),
    # Counts: "3 items", "after 5 attempts" (a status like "(422)" stays: it tells causes apart).
    (re.compile(r"\b\d+ (?=[a-z]+s\b)"), "… "),
)  # fmt: skip
_RUNS = re.compile(r"…(?:[ ,]*…)+")


def fingerprint(message: str) -> str:
    """The message with its variable parts replaced: same cause, same text."""
    text = message or ""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return _RUNS.sub(PLACEHOLDER, text).strip()


@dataclass(frozen=True)
class Placeholder:
    """One placeholder of a cause's fingerprint and the distinct values it had."""

    word: str  # what the value is ("customer", "billing batch"), from the text before it
    values: tuple[str, ...]

    @property
    def words(self) -> str:
        shown = ", ".join(self.values[:5]) + (", …" if len(self.values) > 5 else "")
        noun = self.word or "value"
        plural = noun if len(self.values) == 1 else _plural(noun)
        return f"{len(self.values)} {plural}: {shown}"


def _plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z ]{0,30}?)\s*\(?$")


def placeholders(template: str, messages: list[str]) -> list[Placeholder]:
    """For each placeholder of `template`, the distinct values it had in `messages` (only the
    ones that vary are returned; a value every message shares tells nothing apart)."""
    pieces = template.split(PLACEHOLDER)
    if len(pieces) < 2:
        return []
    pattern = re.compile("^" + "(.+?)".join(re.escape(p) for p in pieces) + "$", re.DOTALL)
    seen: list[dict[str, None]] = [{} for _ in pieces[1:]]
    for message in messages:
        match = pattern.match(message)
        if match is None:
            continue
        for index, value in enumerate(match.groups()):
            seen[index].setdefault(value.strip(" '\"“”"), None)
    out = []
    for index, values in enumerate(seen):
        if len(values) < 2:
            continue
        before = _WORD_BEFORE.search(pieces[index].rstrip(" '\"“(:"))
        word = before.group(1).strip().split(" ")[-1].lower() if before else ""
        out.append(Placeholder(word, tuple(values)))
    return out
