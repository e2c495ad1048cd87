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


class RecordSchema(models.Model):
    """What the vendor last said one of its records looks like (connectors.schema.RecordShape as
    data): the schema check compares the next description with it to see what changed."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="record_schemas")
    record = models.CharField(max_length=120, help_text="The vendor's name for the record.")
    fields = models.JSONField(default=dict)
    read_at = models.DateTimeField()

    class Meta:
        ordering = ["connection", "record"]
        constraints = [models.UniqueConstraint(fields=["connection", "record"], name="record_schema_one_per_record")]

    def __str__(self) -> str:
        return f"{self.connection.slug}:{self.record}"


class GovernanceFinding(models.Model):
    """A change in a vendor's schema that breaks a published mapping, found by the schema check
    before a handoff fails on it. One open row per (connection, record, field, kind); seen again
    it is touched, no longer seen it is resolved."""

    class Kind(models.TextChoices):
        FIELD_MISSING = "field_missing", "Field no longer exists"
        TYPE_CHANGED = "type_changed", "Field changed type"
        BECAME_REQUIRED = "became_required", "Field became required"
        VALUE_REMOVED = "value_removed", "Pick-list value removed"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="governance_findings")
    record = models.CharField(max_length=120, help_text="The vendor's name for the record.")
    field = models.CharField(max_length=120)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    detail = models.TextField(help_text="What changed and what it breaks, in words.")
    # Who is affected, as people read them: mapping names with their version, flow labels.
    mappings = models.JSONField(default=list)
    flows = models.JSONField(default=list)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at", "connection", "record", "field"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "record", "field", "kind"],
                condition=models.Q(resolved_at__isnull=True),
                name="governance_finding_one_open",
            )
        ]

    def __str__(self) -> str:
        return f"{self.connection.slug}:{self.record}.{self.field} {self.kind}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None
