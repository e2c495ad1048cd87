"""The alert models, moved here from the api app: in Django's state only (api 0003 removed them
there). Their tables were made by api 0001 and keep their names (db_table), so nothing is created
and no row moves."""

import django.db.models.deletion
import uuid
from decimal import Decimal
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('api', '0003_alerts_to_their_own_app'),
        ('pscsync', '0007_audit_hash_chain'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='AlertSubscription',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=120)),
                        ('channel', models.CharField(choices=[('email', 'E-mail'), ('webhook', 'Webhook (Standard Webhooks signature)')], max_length=8)),
                        ('target', models.CharField(help_text='An e-mail address or an https URL.', max_length=400)),
                        ('event_types', models.JSONField(default=list)),
                        ('all_entities', models.BooleanField(default=False)),
                        ('spike_count', models.PositiveIntegerField(default=10, help_text='Exceptions within the window that make a spike.')),
                        ('spike_window_minutes', models.PositiveIntegerField(default=15)),
                        ('stuck_minutes', models.PositiveIntegerField(default=30, help_text='Minutes unfinished without needing a person.')),
                        ('mismatch_min_amount', models.DecimalField(decimal_places=2, default=Decimal('1000.00'), max_digits=16)),
                        ('digest_minutes', models.PositiveIntegerField(default=60, help_text='At most one digest of repeats this often.')),
                        ('is_active', models.BooleanField(default=True)),
                        ('secret_binding', models.UUIDField(default=uuid.uuid4, editable=False)),
                        ('secret_key_id', models.CharField(blank=True, editable=False, max_length=40)),
                        ('secret_sealed', models.BinaryField(blank=True, default=b'')),
                        ('created_at', models.DateTimeField()),
                        ('last_digest_at', models.DateTimeField(blank=True, null=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('legal_entities', models.ManyToManyField(blank=True, related_name='+', to='pscsync.legalentity')),
                    ],
                    options={
                        'db_table': 'api_alertsubscription',
                        'ordering': ['name'],
                    },
                ),
                migrations.CreateModel(
                    name='AlertDelivery',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('kind', models.CharField(choices=[('alert', 'Alert'), ('digest', 'Digest'), ('test', 'Test message')], max_length=8)),
                        ('event_type', models.CharField(max_length=40)),
                        ('msg_id', models.CharField(max_length=64, unique=True)),
                        ('subject', models.CharField(max_length=300)),
                        ('payload', models.JSONField(default=dict)),
                        ('status', models.CharField(choices=[('pending', 'Pending'), ('delivered', 'Delivered'), ('failed', 'Failed (gave up)')], default='pending', max_length=10)),
                        ('attempts', models.PositiveIntegerField(default=0)),
                        ('created_at', models.DateTimeField()),
                        ('next_attempt_at', models.DateTimeField(blank=True, null=True)),
                        ('last_attempt_at', models.DateTimeField(blank=True, null=True)),
                        ('delivered_at', models.DateTimeField(blank=True, null=True)),
                        ('response_status', models.PositiveSmallIntegerField(blank=True, null=True)),
                        ('last_error', models.TextField(blank=True)),
                        ('subscription', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='deliveries', to='alerts.alertsubscription')),
                    ],
                    options={
                        'verbose_name_plural': 'alert deliveries',
                        'db_table': 'api_alertdelivery',
                        'ordering': ['-created_at'],
                        'indexes': [models.Index(fields=['status', 'next_attempt_at'], name='alert_delivery_due')],
                    },
                ),
                migrations.CreateModel(
                    name='AlertTopic',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('event_type', models.CharField(max_length=40)),
                        ('group_key', models.CharField(max_length=300)),
                        ('summary', models.CharField(max_length=300)),
                        ('first_notified_at', models.DateTimeField()),
                        ('last_seen_at', models.DateTimeField()),
                        ('last_count', models.PositiveIntegerField(default=0)),
                        ('pending_repeats', models.PositiveIntegerField(default=0)),
                        ('closed_at', models.DateTimeField(blank=True, null=True)),
                        ('subscription', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='topics', to='alerts.alertsubscription')),
                    ],
                    options={
                        'db_table': 'api_alerttopic',
                        'constraints': [models.UniqueConstraint(fields=('subscription', 'event_type', 'group_key'), name='alert_topic_unique')],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
