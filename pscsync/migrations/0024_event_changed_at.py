"""Event.changed_at: when the source changed, for the sync clock, where it differs from the
change's business time (occurred_at). Filled once for the events already polled from Dynamics 365
Finance, whose occurred_at is an accounting date: for a polled event, received_at is when pscsync
first saw the change, which is what the connector now stamps. Every other event keeps it empty
(its occurred_at is the source's modification time). Run `rollups_rebuild_all` afterwards to
re-measure stored history. Historical models only (apps.get_model)."""

from __future__ import annotations

from django.db import migrations, models

# The stored Connection.vendor value of Dynamics 365 Finance, frozen here.
DATED_ONLY_VENDORS = ("dynamicsfinance",)


def forwards(apps, schema_editor):
    Event = apps.get_model("pscsync", "Event")
    Event.objects.filter(connection__vendor__in=DATED_ONLY_VENDORS, changed_at__isnull=True).update(
        changed_at=models.F("received_at")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("pscsync", "0023_partitions"),
        ("connectors", "0004_dynamicsfinance_vendor"),
    ]

    operations = [
        migrations.AddField(
            model_name="event",
            name="changed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
