"""Causes grouped by fingerprint (remediation.fingerprints): the causes stored before are merged
when their messages now share one fingerprint (five billing batches missing one kind of ERP
customer become one cause). The rules are frozen here, as they were when this ran."""

import hashlib
import re

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Max, Min, Sum

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


def _fingerprint(message):
    text = message or ""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return _RUNS.sub("…", text).strip()


def merge_causes(apps, schema_editor):
    Cause = apps.get_model("remediation", "ExceptionCause")
    Item = apps.get_model("remediation", "HandoffException")
    Comment = apps.get_model("remediation", "Comment")
    groups = {}
    for cause in Cause.objects.order_by("pk"):
        message = _fingerprint(cause.message)
        raw = "\x1f".join((cause.flow, cause.step_name, cause.error_class, message))
        groups.setdefault(hashlib.sha256(raw.encode()).hexdigest(), []).append((cause, message))
    # Free every signature first: a merged cause may take a signature another one holds now.
    freed = []
    for members in groups.values():
        for cause, _ in members:
            cause.signature = f"old:{cause.pk}"
            freed.append(cause)
    Cause.objects.bulk_update(freed, ["signature"], batch_size=500)
    for signature, members in groups.items():
        keep, message = members[0]
        others = [c.pk for c, _ in members[1:]]
        if others:
            Item.objects.filter(cause_id__in=others).update(cause=keep)
            Comment.objects.filter(cause_id__in=others).update(cause=keep)
        every = Cause.objects.filter(pk__in=[keep.pk, *others])
        totals = every.aggregate(n=Sum("occurrences"), first=Min("first_seen_at"), last=Max("last_seen_at"))
        if others:
            Cause.objects.filter(pk__in=others).delete()
        Cause.objects.filter(pk=keep.pk).update(
            signature=signature,
            message=message,
            title=keep.title or keep.message,
            occurrences=totals["n"] or 0,
            first_seen_at=totals["first"],
            last_seen_at=totals["last"],
        )


class Migration(migrations.Migration):
    dependencies = [
        ("pscsync", "0009_psa_unbilled_work_and_assignments"),
        ("remediation", "0002_compensation"),
    ]

    operations = [
        migrations.AddField(
            model_name="exceptioncause",
            name="title",
            field=models.TextField(blank=True, help_text="The latest occurrence's message, with its real values."),
        ),
        migrations.AddField(
            model_name="handoffexception",
            name="blocked_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="blocking",
                to="pscsync.handoff",
            ),
        ),
        migrations.AlterField(
            model_name="exceptioncause",
            name="message",
            field=models.TextField(help_text="The message with its variable parts replaced by placeholders."),
        ),
        migrations.RunPython(merge_causes, migrations.RunPython.noop),
    ]
