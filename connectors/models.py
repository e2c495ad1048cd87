"""Connection: one configured system instance (a CRM, PSA or ERP), and its polling cursor."""

from __future__ import annotations

from typing import Any

from django.db import models

from pscsync import crypto


class Connection(models.Model):
    class Kind(models.TextChoices):
        CRM = "crm", "CRM"
        PSA = "psa", "PSA"
        ERP = "erp", "ERP"
        TEST = "test", "Test target"

    class Vendor(models.TextChoices):
        SALESFORCE = "salesforce", "Salesforce"
        CERTINIA = "certinia", "Certinia PSA"
        KANTATA = "kantata", "Kantata OX"
        NETSUITE = "netsuite", "NetSuite"
        BUSINESS_CENTRAL = "businesscentral", "Dynamics 365 Business Central"
        DYNAMICS_FINANCE = "dynamicsfinance", "Dynamics 365 Finance"
        ECHO = "echo", "Echo (engine test target)"

    class Intake(models.TextChoices):
        WEBHOOK = "webhook", "Webhook (pushed to us)"
        POLL = "poll", "Polling (we ask)"
        NONE = "none", "No inbound changes"

    slug = models.SlugField(unique=True, help_text="Used in the webhook URL: /webhooks/<slug>/")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    vendor = models.CharField(max_length=20, choices=Vendor.choices)
    base_url = models.URLField(max_length=400)
    api_version = models.CharField(max_length=20, blank=True)
    intake = models.CharField(max_length=8, choices=Intake.choices, default=Intake.WEBHOOK)
    rate_limit_per_minute = models.PositiveIntegerField(default=600)
    is_sandbox = models.BooleanField(default=False, help_text="Points at a pscsync sandbox, not the vendor.")
    is_active = models.BooleanField(default=True)
    legal_entities = models.ManyToManyField("pscsync.LegalEntity", related_name="connections", blank=True)
    # Write-only: sealed with AES-GCM bound to this row (pscsync.crypto). Never rendered.
    credentials_key_id = models.CharField(max_length=40, blank=True, editable=False)
    credentials_sealed = models.BinaryField(blank=True, default=b"", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        # Deliberately without credentials: reprs end up in logs and error pages.
        return f"<Connection {self.slug} {self.vendor}>"

    @property
    def _credentials_binding(self) -> str:
        return f"connection:{self.slug}"

    def set_credentials(self, data: dict[str, Any]) -> None:
        sealed = crypto.seal(data, bound_to=self._credentials_binding)
        self.credentials_key_id = sealed.key_id
        self.credentials_sealed = sealed.blob

    def credentials(self) -> dict[str, Any]:
        if not self.credentials_sealed:
            return {}
        sealed = crypto.Sealed(key_id=self.credentials_key_id, blob=bytes(self.credentials_sealed))
        return crypto.unseal(sealed, bound_to=self._credentials_binding)

    @property
    def has_credentials(self) -> bool:
        return bool(self.credentials_sealed)


class PollCursor(models.Model):
    """Where polling intake stopped for a connection; advanced in the same transaction as the events."""

    connection = models.OneToOneField(Connection, on_delete=models.CASCADE, related_name="poll_cursor")
    position = models.CharField(max_length=200, blank=True)
    polled_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.connection.slug}@{self.position or 'start'}"
