"""An attempt the shared limiter deferred (nothing sent, no retry spent) gets its own outcome,
"deferred", instead of "transient". Attempts stored before keep "transient": they were counted
as such in the attempt rollups already, and a rollup and its attempts must agree."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("pscsync", "0020_ledger_days"),
    ]

    operations = [
        migrations.AlterField(
            model_name="attempt",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("in_flight", "In flight"),
                    ("succeeded", "Succeeded"),
                    ("adopted", "Found already written, adopted"),
                    ("transient", "Temporary failure"),
                    ("unknown", "Outcome unknown"),
                    ("validation", "Validation failed"),
                    ("mapping", "Mapping failed"),
                    ("rejected", "Rejected by the target"),
                    ("worker_lost", "Worker died"),
                    ("deferred", "Waited for the rate limit"),
                ],
                default="in_flight",
                max_length=12,
            ),
        ),
    ]
