from django.db import migrations, models

# Copy each exception's handoff business start (the SLA clock) onto it. A correlated subquery, so
# the same statement runs on PostgreSQL and SQLite; no app code imported.
FILL = """
UPDATE remediation_handoffexception
SET business_started_at = (
    SELECT h.business_started_at FROM pscsync_handoff h WHERE h.id = remediation_handoffexception.handoff_id
)
"""


class Migration(migrations.Migration):
    dependencies = [
        ("remediation", "0004_bulk_real_outcomes"),
        ("pscsync", "0016_event_received_doorbell"),
    ]

    operations = [
        migrations.AddField(
            model_name="handoffexception",
            name="business_started_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunSQL(FILL, migrations.RunSQL.noop),
    ]
