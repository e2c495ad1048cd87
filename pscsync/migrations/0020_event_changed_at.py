"""Event.changed_at: when the source changed, for the sync clock, where it differs from the
change's business time (occurred_at). Null for every event stored before: the sync clock keeps
reading their occurred_at, as it did."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("pscsync", "0019_handoff_failed_step_key"),
    ]

    operations = [
        migrations.AddField(
            model_name="event",
            name="changed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
