"""The alert models moved to the alerts app (alerts 0001): removed from the api app's state only.
Their tables stay where they are, under the names this app gave them (api_alert…)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0002_subscription_sla_is_the_flows"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="AlertTopic"),
                migrations.DeleteModel(name="AlertDelivery"),
                migrations.DeleteModel(name="AlertSubscription"),
            ],
            database_operations=[],
        ),
    ]
