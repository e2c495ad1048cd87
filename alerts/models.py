"""Outbound alerts: admins' subscriptions, their noise state (topics) and deliveries.

The models moved here from the api app (migration alerts 0001 and api 0003 move them in Django's
state only): their tables keep the names they were created with, `api_alert…`, so no row moves.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models

from pscsync import crypto


class AlertSubscription(models.Model):
    """An admin's subscription of an e-mail address or a webhook URL to alert events."""

    class Channel(models.TextChoices):
        EMAIL = "email", "E-mail"
        WEBHOOK = "webhook", "Webhook (Standard Webhooks signature)"

    class EventType(models.TextChoices):
        EXCEPTION_GROUP_NEW = "exception_group.new", "New exception group"
        EXCEPTION_SPIKE = "exception.spike", "Exception spike"
        SLA_BREACH = "handoff.sla_breach", "SLA breach"
        HANDOFF_STUCK = "handoff.stuck", "Handoff stuck"
        MISMATCH_OVER_VALUE = "mismatch.over_value", "Reconciliation mismatch over a value"
        SCHEMA_DRIFT = "schema.drift", "A vendor schema change breaks a mapping"

    name = models.CharField(max_length=120)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    target = models.CharField(max_length=400, help_text="An e-mail address or an https URL.")
    event_types = models.JSONField(default=list)
    # Blank means every legal entity (only an admin who sees all entities may subscribe so).
    legal_entities = models.ManyToManyField("pscsync.LegalEntity", blank=True, related_name="+")
    all_entities = models.BooleanField(default=False)
    spike_count = models.PositiveIntegerField(default=10, help_text="Exceptions within the window that make a spike.")
    spike_window_minutes = models.PositiveIntegerField(default=15)
    stuck_minutes = models.PositiveIntegerField(default=30, help_text="Minutes unfinished without needing a person.")
    mismatch_min_amount = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("1000.00"))
    digest_minutes = models.PositiveIntegerField(default=60, help_text="At most one digest of repeats this often.")
    is_active = models.BooleanField(default=True)
    # Webhook signing secret, sealed like connector credentials and shown once on creation.
    secret_binding = models.UUIDField(default=uuid.uuid4, editable=False)
    secret_key_id = models.CharField(max_length=40, blank=True, editable=False)
    secret_sealed = models.BinaryField(blank=True, default=b"", editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()
    last_digest_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_alertsubscription"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<AlertSubscription {self.pk} {self.channel}>"

    def set_secret(self, secret: str) -> None:
        sealed = crypto.seal({"secret": secret}, bound_to=f"alert-subscription:{self.secret_binding}")
        self.secret_key_id, self.secret_sealed = sealed.key_id, sealed.blob

    def secret(self) -> str:
        if not self.secret_sealed:
            return ""
        sealed = crypto.Sealed(key_id=self.secret_key_id, blob=bytes(self.secret_sealed))
        data: dict[str, Any] = crypto.unseal(sealed, bound_to=f"alert-subscription:{self.secret_binding}")
        return data["secret"]


class AlertTopic(models.Model):
    """Noise control: one row per (subscription, event type, group). The first sighting sends a
    message; growth after that is counted into the next digest. Closed when the condition clears,
    so a recurrence is news again."""

    subscription = models.ForeignKey(AlertSubscription, on_delete=models.CASCADE, related_name="topics")
    event_type = models.CharField(max_length=40)
    group_key = models.CharField(max_length=300)
    summary = models.CharField(max_length=300)
    first_notified_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    last_count = models.PositiveIntegerField(default=0)
    pending_repeats = models.PositiveIntegerField(default=0)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_alerttopic"
        constraints = [
            models.UniqueConstraint(fields=["subscription", "event_type", "group_key"], name="alert_topic_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.group_key}"


class AlertDelivery(models.Model):
    """One message to one subscription, with its attempts. The database is the retry queue."""

    class Kind(models.TextChoices):
        ALERT = "alert", "Alert"
        DIGEST = "digest", "Digest"
        TEST = "test", "Test message"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (gave up)"

    subscription = models.ForeignKey(AlertSubscription, on_delete=models.CASCADE, related_name="deliveries")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    event_type = models.CharField(max_length=40)
    msg_id = models.CharField(max_length=64, unique=True)
    subject = models.CharField(max_length=300)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        db_table = "api_alertdelivery"
        ordering = ["-created_at"]
        verbose_name_plural = "alert deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="alert_delivery_due")]

    def __str__(self) -> str:
        return f"{self.kind} {self.event_type} → {self.subscription_id} ({self.status})"
