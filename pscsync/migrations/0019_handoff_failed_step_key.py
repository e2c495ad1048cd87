"""Where a handoff stopped, as data (Handoff.failed_step, failed_key, failure_reason), so the
workbench stops parsing it out of last_error_message. Open failures stored before these fields
are filled in once, from what the runner wrote then: the step its move recorded (or the
"<step>: " it put before the message), the failed step's key when the step wrote a record, and
the message without that prefix and the attempt count. Historical models only (apps.get_model)."""

from __future__ import annotations

import re

from django.db import migrations, models

STOPPED = ("needs_attention", "waiting_retry")
_STEP_PREFIX = re.compile(r"^([a-z_]+): ")
# What the runner added after the target's words: " after N attempts" or " (retry N in S s)".
_RUNNER_SUFFIX = re.compile(r"( after \d+ attempts| \(retry \d+ in \d+ s\))$")


def forwards(apps, schema_editor):
    Handoff = apps.get_model("pscsync", "Handoff")
    HandoffTransition = apps.get_model("pscsync", "HandoffTransition")
    Step = apps.get_model("pscsync", "Step")
    rows = Handoff.objects.filter(status__in=STOPPED).exclude(last_error_message="").only("pk", "last_error_message")
    batch = []
    for handoff in rows.iterator(chunk_size=2000):
        message = handoff.last_error_message
        step = (
            HandoffTransition.objects.filter(handoff_id=handoff.pk, to_status__in=STOPPED, user__isnull=True)
            .order_by("-pk")
            .values_list("step", flat=True)
            .first()
        )
        prefix = _STEP_PREFIX.match(message)
        step = step or (prefix.group(1) if prefix else "")
        if step and Step.objects.filter(handoff_id=handoff.pk, name=step).exists():
            failed = Step.objects.filter(handoff_id=handoff.pk, name=step).values_list("idempotency_key", flat=True)[0]
            # A read's or a check's key is the engine's own ("read_deal:…"), naming no record.
            handoff.failed_key = "" if failed.startswith(f"{step}:") else failed
        else:
            step = ""
        handoff.failed_step = step
        handoff.failure_reason = _RUNNER_SUFFIX.sub("", message.removeprefix(f"{step}: ") if step else message)
        batch.append(handoff)
        if len(batch) == 2000:
            Handoff.objects.bulk_update(batch, ["failed_step", "failed_key", "failure_reason"])
            batch = []
    if batch:
        Handoff.objects.bulk_update(batch, ["failed_step", "failed_key", "failure_reason"])


class Migration(migrations.Migration):
    dependencies = [
        ("pscsync", "0018_ledger_read_shortcuts"),
    ]

    operations = [
        migrations.AddField(
            model_name="handoff",
            name="failed_step",
            field=models.CharField(blank=True, db_default="", max_length=60),
        ),
        migrations.AddField(
            model_name="handoff",
            name="failed_key",
            field=models.CharField(blank=True, db_default="", max_length=200),
        ),
        migrations.AddField(
            model_name="handoff",
            name="failure_reason",
            field=models.TextField(blank=True, db_default=""),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
