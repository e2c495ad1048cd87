"""The engine's records: legal entities, access scopes, events, handoffs, steps, attempts,
cross references and the audit trail. State changes happen in services, never in save()."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from contextvars import ContextVar
from decimal import Decimal
from typing import Any, ClassVar, Self

from django.conf import settings
from django.db import models, transaction
from django.db.models import Max, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce


class LegalEntity(models.Model):
    """A subsidiary: the unit a user's access is limited to and a connection serves."""

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=120)
    currency = models.CharField(max_length=3, default="USD")
    country = models.CharField(max_length=2, blank=True)
    # pscsync.archive: how long a finished handoff keeps its bodies (source event, vendor calls)
    # in the database before they move to an archive file.
    retention_months = models.PositiveSmallIntegerField(
        default=13, help_text="Months a finished handoff's source event and vendor calls stay in the database."
    )

    class Meta:
        ordering = ["code"]
        verbose_name_plural = "legal entities"

    def __str__(self) -> str:
        return self.name


class AccessProfile(models.Model):
    """Which legal entities a user sees. Neither entities nor all_entities means nothing at all."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access")
    all_entities = models.BooleanField(default=False)
    legal_entities = models.ManyToManyField(LegalEntity, blank=True, related_name="+")

    def __str__(self) -> str:
        return f"access of {self.user}"


class Event(models.Model):
    """An inbound change, stored raw before anything else happens. Unique per (connection, id):
    held by its EventKey, written by the same statement (pscsync.intake), because on PostgreSQL the
    table is partitioned by month of `received_at` (pscsync.partitions) and a partitioned table's
    unique constraints must hold that column. The database's primary key is (id, received_at);
    ids still come from one identity sequence, so `id` alone stays unique."""

    class Status(models.TextChoices):
        # Stored by intake and not routed yet: a worker takes it from the doorbell (pscsync.dispatch),
        # or the sweeper rings again for it if the doorbell lost it.
        RECEIVED = "received", "Received, not routed yet"
        ACCEPTED = "accepted", "Accepted"  # started a handoff
        QUEUED = "queued", "Queued behind an open handoff for the same key"
        SUPERSEDED = "superseded", "Superseded by a later change"
        STALE = "stale", "Older than a change already applied"
        IGNORED = "ignored", "Not handled by any flow"

    connection = models.ForeignKey("connectors.Connection", on_delete=models.PROTECT, related_name="events")
    source_event_id = models.CharField(max_length=200)
    event_type = models.CharField(max_length=80, blank=True)
    flow = models.CharField(max_length=40, blank=True)
    business_key = models.CharField(max_length=200, blank=True)
    legal_entity = models.ForeignKey(LegalEntity, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # Source order: when the change happened in the source system, then its version there.
    occurred_at = models.DateTimeField()
    source_sequence = models.BigIntegerField(default=0)
    # When the source changed, for the sync latency only (dashboards.facts): set when it differs
    # from occurred_at, as for a source that records only a business date, where it is when
    # pscsync first observed the change. Null: occurred_at is that time.
    changed_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()
    # When the doorbell was last rung for it (intake, then the sweeper if the ring was lost):
    # only while it is "received", not routed yet.
    rung_at = models.DateTimeField(null=True, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    raw_body = models.TextField()
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ACCEPTED)
    handoff = models.ForeignKey("Handoff", null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    # The W3C traceparent of the intake that stored it ("" when tracing is off): the handoff it
    # starts, now or after waiting in a queue, continues that trace (ops.tracing).
    traceparent = models.CharField(max_length=55, blank=True, default="")

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            models.Index(fields=["flow", "business_key", "status"], name="event_key_status"),
            # The health page's per-connection latest event and last day's count.
            models.Index(fields=["connection", "received_at"], name="event_connection_received"),
            # The sweeper's look for events whose doorbell was lost: few rows, none once routed.
            models.Index(fields=["rung_at"], name="event_not_routed", condition=Q(status="received")),
        ]

    def __str__(self) -> str:
        return f"{self.connection_id}:{self.source_event_id}"

    @property
    def source_position(self) -> tuple:
        return (self.occurred_at, self.source_sequence)


class EventKey(models.Model):
    """The dedupe key of an event, kept in a small unpartitioned table: one per (connection, source
    event id) across every month. Intake writes it in the statement that stores the event, and
    a delivery whose key is here is a duplicate. It outlives its event's partition (a redelivery
    of a change whose month was dropped is still a duplicate); `event_id` then names a row that
    is in the archive file, not in the database."""

    # No constraint in the database: the event written by the same statement has it, and a
    # second check of the connection per delivery would only cost.
    connection = models.ForeignKey(
        "connectors.Connection", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    source_event_id = models.CharField(max_length=200)
    event_id = models.BigIntegerField()
    # The event's partition key: a look-up by key reads one partition.
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "source_event_id"], name="eventkey_unique_per_connection"),
        ]

    def __str__(self) -> str:
        return f"{self.connection_id}:{self.source_event_id}"


# Set only by pscsync.lifecycle while it moves a handoff: every other write of a handoff's status
# (a queryset update, a save of a changed status, a bulk update) is refused, so a new code path
# cannot change a status without the transition check, the history row and the listeners.
status_write_allowed: ContextVar[bool] = ContextVar("handoff_status_write_allowed", default=False)


class StatusWriteRefused(RuntimeError):
    """A handoff's status was written outside pscsync.lifecycle.handoff_move."""


def _refuse_status_write() -> None:
    if not status_write_allowed.get():
        raise StatusWriteRefused("a handoff's status changes only through pscsync.lifecycle.handoff_move")


class HandoffQuerySet(models.QuerySet):
    def update(self, **kwargs: Any) -> int:
        if "status" in kwargs:
            _refuse_status_write()
        return super().update(**kwargs)

    def bulk_update(self, objs: Any, fields: Any, *args: Any, **kwargs: Any) -> int:
        if "status" in fields:
            _refuse_status_write()
        return super().bulk_update(objs, fields, *args, **kwargs)


class Handoff(models.Model):
    """One run of one flow for one business key, e.g. quote-to-project for an opportunity."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        WAITING_RETRY = "waiting_retry", "Waiting to retry"
        SUCCEEDED = "succeeded", "Succeeded"
        NEEDS_ATTENTION = "needs_attention", "Needs attention"
        RESOLVED = "resolved", "Resolved by a person"
        CANCELLED = "cancelled", "Cancelled"

    OPEN: ClassVar[frozenset[str]] = frozenset({"pending", "running", "waiting_retry", "needs_attention"})
    TERMINAL: ClassVar[frozenset[str]] = frozenset({"succeeded", "resolved", "cancelled"})
    # The only legal moves (pscsync.lifecycle.handoff_move refuses any other). A move to the same
    # state is real work: a newer change superseding a pending one, a worker taking over a run
    # whose worker died. docs/engine.md has the table with who makes each move and why.
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "pending": frozenset({"pending", "running", "cancelled", "needs_attention"}),
        "running": frozenset({"running", "succeeded", "waiting_retry", "needs_attention"}),
        "waiting_retry": frozenset({"pending", "running", "cancelled", "needs_attention"}),
        "needs_attention": frozenset({"pending", "resolved", "cancelled"}),
        "resolved": frozenset({"needs_attention"}),
        "cancelled": frozenset({"needs_attention"}),
        "succeeded": frozenset(),
    }

    objects = HandoffQuerySet.as_manager()

    flow = models.CharField(max_length=40)
    business_key = models.CharField(max_length=200)
    legal_entity = models.ForeignKey(LegalEntity, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    source_connection = models.ForeignKey("connectors.Connection", on_delete=models.PROTECT, related_name="+")
    # No constraint in the database: a partitioned table's id is not unique on its own there.
    # Kept by code instead: a month of events is dropped only when every handoff it triggered
    # is finished and archived (pscsync.partitions), and PROTECT still holds in Django.
    trigger_event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    # The trigger event's source position and change time, copied when the handoff opens: the
    # stale rule (pscsync.intake) and the sync latency (dashboards.facts) read them here, so they
    # hold after the event's month of rows left the database.
    source_occurred_at = models.DateTimeField(null=True, blank=True)
    source_sequence = models.BigIntegerField(default=0)
    source_changed_at = models.DateTimeField(null=True, blank=True)
    payload = models.JSONField(default=dict, help_text="The input the steps map from (the trigger event's).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Business time: when it happened in the source system (e.g. the deal closed).
    business_started_at = models.DateTimeField()
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    business_finished_at = models.DateTimeField(null=True, blank=True)
    # Scheduling: retries wait in the database, not in the broker (RELIABILITY.md CQ-3).
    attempt_count = models.PositiveIntegerField(default=0, help_text="Runs that ended in a retryable failure.")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=120, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker_crashes = models.PositiveIntegerField(default=0)
    superseded_count = models.PositiveIntegerField(default=0)
    last_error_class = models.CharField(max_length=40, blank=True)
    last_error_message = models.TextField(blank=True)
    # Where the handoff stopped, as data the runner stores with the failure, so the workbench never
    # parses it back out of the message: the step ("" when it stopped outside a step, e.g. its
    # worker kept dying), our key of the record that step was about ("C-…", "P-…"; "" when it was
    # a read or a check that named none) and the target's own words, without the step and the
    # attempt count that last_error_message adds for people. Cleared when the handoff succeeds.
    failed_step = models.CharField(max_length=60, blank=True, db_default="")
    failed_key = models.CharField(max_length=200, blank=True, db_default="")
    failure_reason = models.TextField(blank=True, db_default="")
    # What the failure is about, as the raiser knew it (ConnectorError): the mapping version whose
    # rules failed, the fields it names (the read document's paths for a failed check, the
    # mapping's target fields for a failed mapping) and the value map that lacked an entry. The
    # workbench links and warns from these, never from the message. Cleared with the above.
    failed_mapping = models.ForeignKey(
        "MappingVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    failed_fields = models.JSONField(default=list, blank=True, db_default=[])
    failed_value_map = models.CharField(max_length=100, blank=True, db_default="")
    mapping_version = models.CharField(max_length=40, blank=True)
    # Business facts the flow found in the source, for dashboards, filters and the workbench.
    business_times = models.JSONField(
        default=dict, blank=True, help_text="Timestamps from the source systems: deal_closed, project_activated, ..."
    )
    customer_name = models.CharField(max_length=200, blank=True)
    service_line = models.CharField(max_length=80, blank=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    # Its trace (ops.tracing): every run joins the trace of the change that started it, whatever
    # delivered the run. The id on its own is indexed so an id quoted from a tracing UI finds it.
    traceparent = models.CharField(max_length=55, blank=True, default="")
    trace_id = models.CharField(max_length=32, blank=True, default="", db_index=True)
    # Set when its bodies (events' raw bodies and payloads, attempts' requests and responses)
    # moved to an archive file (pscsync.archive); cleared when restored.
    archive = models.ForeignKey(
        "Archive", null=True, blank=True, on_delete=models.PROTECT, related_name="handoffs_archived"
    )
    # Set when archived: one of its attempts needed a person or was rejected. The facts' exception
    # flag reads it once the attempts' partition is dropped (pscsync.partitions).
    attempts_flagged = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One open handoff per business key (Temporal's workflow-id guard).
            models.UniqueConstraint(
                fields=["flow", "business_key"],
                condition=Q(status__in=["pending", "running", "waiting_retry", "needs_attention"]),
                name="one_open_handoff_per_key",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="handoff_due"),
            models.Index(fields=["flow", "business_key", "-created_at"], name="handoff_key"),
            # Recently finished: the health page's last hour and the rollups' catch-up job.
            models.Index(fields=["finished_at"], name="handoff_finished"),
        ]
        permissions = [
            ("view_dashboards", "Can read dashboards"),
            ("work_exceptions", "Can work exceptions: edit, resubmit, resolve, assign, replay"),
            ("configure_integrations", "Can configure connections, credentials, mappings and SLAs"),
            ("manage_users", "Can manage users and their access"),
        ]

    def __str__(self) -> str:
        return f"{self.flow} {self.business_key}"

    @property
    def is_open(self) -> bool:
        return self.status in self.OPEN

    def source_position_copy(self, event: Event) -> None:
        self.source_occurred_at = event.occurred_at
        self.source_sequence = event.source_sequence
        self.source_changed_at = event.changed_at or event.occurred_at

    def can_move_to(self, new: str) -> bool:
        return new in self.TRANSITIONS.get(self.status, frozenset())

    # The status as loaded: save() refuses to write a different one (see status_write_allowed).
    # A new handoff is created in any state (intake opens it pending; tests and loaders build
    # records as they need them), which is not a move.
    @classmethod
    def from_db(cls, db: str | None, field_names: Collection[str], values: Collection[Any], **kwargs: Any) -> Self:
        instance = super().from_db(db, field_names, values, **kwargs)
        instance._status_loaded = instance.__dict__.get("status")
        return instance

    def refresh_from_db(self, *args: Any, **kwargs: Any) -> None:
        super().refresh_from_db(*args, **kwargs)
        self._status_loaded = self.__dict__.get("status")

    def save(self, *args: Any, **kwargs: Any) -> None:
        update_fields = kwargs.get("update_fields")
        writes_status = update_fields is None or "status" in update_fields
        if not self._state.adding and writes_status and self.status != getattr(self, "_status_loaded", self.status):
            _refuse_status_write()
        if self._state.adding and self.source_occurred_at is None and self.trigger_event_id is not None:
            self.source_position_copy(self.trigger_event)
        super().save(*args, **kwargs)
        self._status_loaded = self.status


class HandoffTransition(models.Model):
    """One move of a handoff's status: from, to, when, who and why (written by
    pscsync.lifecycle.handoff_move in the transaction that makes the move). Append-only."""

    handoff = models.ForeignKey(Handoff, on_delete=models.CASCADE, related_name="transitions")
    # Blank: the handoff was opened (intake created it).
    from_status = models.CharField(max_length=16, choices=Handoff.Status.choices, blank=True)
    to_status = models.CharField(max_length=16, choices=Handoff.Status.choices)
    at = models.DateTimeField()
    # Who moved it: a person (user) or a part of the engine (actor: "intake", "worker <name>", ...).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    # Context: the step it stopped at or ran, and the runs that had ended in a retryable failure.
    step = models.CharField(max_length=60, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["handoff", "at", "pk"]
        indexes = [models.Index(fields=["handoff", "at"], name="transition_handoff_at")]

    def __str__(self) -> str:
        return f"{self.handoff_id}: {self.from_status or 'opened'} -> {self.to_status}"


class Step(models.Model):
    """One step of a handoff. Succeeded steps are never sent again (recovery points)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        IN_FLIGHT = "in_flight", "In flight (outcome not yet stored)"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    handoff = models.ForeignKey(Handoff, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=60)
    position = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    idempotency_key = models.CharField(max_length=200)
    target_connection = models.ForeignKey(
        "connectors.Connection", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    external_id = models.CharField(max_length=200, blank=True)
    # What the step produced for later steps (a read document, ids of records written).
    output = models.JSONField(default=dict, blank=True)
    mapping_version = models.ForeignKey(
        "MappingVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="steps"
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["handoff", "position"]
        constraints = [models.UniqueConstraint(fields=["handoff", "name"], name="step_unique_per_handoff")]

    def __str__(self) -> str:
        return f"{self.handoff_id}/{self.name}"


# On PostgreSQL attempts are partitioned by month of `started_at` (pscsync.partitions): a query
# that names a lower bound reads only the months since, instead of planning over every month. A
# handoff's attempts start after it was created, give or take the clocks of the hosts involved.
ATTEMPT_CLOCK_SLACK = dt.timedelta(days=1)


class Attempt(models.Model):
    """One try of a step: what was sent, what came back, how it ended."""

    class Outcome(models.TextChoices):
        IN_FLIGHT = "in_flight", "In flight"
        SUCCEEDED = "succeeded", "Succeeded"
        ADOPTED = "adopted", "Found already written, adopted"
        TRANSIENT = "transient", "Temporary failure"
        UNKNOWN = "unknown", "Outcome unknown"
        VALIDATION = "validation", "Validation failed"
        MAPPING = "mapping", "Mapping failed"
        REJECTED = "rejected", "Rejected by the target"
        WORKER_LOST = "worker_lost", "Worker died"
        # Nothing was sent: the shared limiter (connectors/limiter.py) held the call past what a
        # step may wait, and the handoff was rescheduled for its slot. Not a failure: no retry is
        # spent and dashboards do not count it.
        DEFERRED = "deferred", "Waited for the rate limit"

    step = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    outcome = models.CharField(max_length=12, choices=Outcome.choices, default=Outcome.IN_FLIGHT)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    request = models.JSONField(default=dict, blank=True)
    response = models.JSONField(default=dict, blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_class = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    external_id = models.CharField(max_length=200, blank=True)
    retry_after_seconds = models.PositiveIntegerField(null=True, blank=True)
    worker = models.CharField(max_length=120, blank=True)

    class Meta:
        ordering = ["step", "number"]
        constraints = [models.UniqueConstraint(fields=["step", "number"], name="attempt_unique_number")]
        # The health page counts the last day's attempts: without it, a scan of every attempt.
        indexes = [models.Index(fields=["started_at"], name="attempt_started")]

    def __str__(self) -> str:
        return f"{self.step} #{self.number} {self.outcome}"


class CrossReference(models.Model):
    """The canonical id of an entity and its id in one system."""

    entity_type = models.CharField(max_length=40)
    canonical_id = models.CharField(max_length=200)
    connection = models.ForeignKey("connectors.Connection", on_delete=models.PROTECT, related_name="+")
    external_id = models.CharField(max_length=200)
    legal_entity = models.ForeignKey(LegalEntity, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    handoff = models.ForeignKey(Handoff, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["entity_type", "canonical_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["entity_type", "canonical_id", "connection"], name="xref_one_id_per_system"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.entity_type}:{self.canonical_id} = {self.external_id}"


class AuditEntry(models.Model):
    """A human action or configuration change. Append-only (see audit.audit_record)."""

    created_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Copied at write time so history survives the user's deletion.
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=60)
    object_type = models.CharField(max_length=60)
    object_id = models.CharField(max_length=60)
    object_repr = models.CharField(max_length=200, blank=True)
    legal_entity = models.ForeignKey(LegalEntity, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    comment = models.TextField(blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    # Hash chain (pscsync.audit): each entry's hash covers its content and the previous hash, so
    # a changed, deleted or inserted row breaks the chain (`manage.py audit_verify`).
    prev_hash = models.CharField(max_length=64, blank=True, default="")
    hash = models.CharField(max_length=64, blank=True, default="")
    # Which PSCSYNC_AUDIT_KEYS key made `hash` (an HMAC); blank on rows from before the chain was keyed.
    key_id = models.CharField(max_length=20, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "audit entries"
        # A handoff's page reads its history: without it, a scan of the whole (append-only) trail.
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return f"{self.actor_label} {self.action} {self.object_type}:{self.object_id}"

    def save(self, *args, **kwargs) -> None:
        # Append-only: an existing entry is never rewritten (PostgreSQL also refuses it by trigger).
        if self.pk is not None:
            raise PermissionError("audit entries are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("audit entries are append-only")


class Mapping(models.Model):
    """How one entity crosses into (or out of) one connection: a versioned set of field rules."""

    class Direction(models.TextChoices):
        OUTBOUND = "outbound", "To this system"
        INBOUND = "inbound", "From this system"

    connection = models.ForeignKey("connectors.Connection", on_delete=models.CASCADE, related_name="mappings")
    entity = models.CharField(max_length=80, help_text="The object in that system, e.g. customer or pse__Proj__c.")
    direction = models.CharField(max_length=8, choices=Direction.choices, default=Direction.OUTBOUND)
    name = models.CharField(max_length=120)

    class Meta:
        ordering = ["connection", "entity", "direction"]
        constraints = [
            models.UniqueConstraint(fields=["connection", "entity", "direction"], name="mapping_one_per_entity"),
        ]

    def __str__(self) -> str:
        return self.name


class MappingVersion(models.Model):
    """An immutable, numbered set of rules and value maps. A handoff records the version it used."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        RETIRED = "retired", "Retired"

    mapping = models.ForeignKey(Mapping, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    rules = models.JSONField(default=list)
    value_maps = models.JSONField(default=dict)
    comment = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["mapping", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["mapping", "number"], name="mapping_version_number"),
            models.UniqueConstraint(
                fields=["mapping"], condition=Q(status="published"), name="mapping_one_published_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mapping} v{self.number}"

    @property
    def label(self) -> str:
        return f"{self.mapping.connection.slug}/{self.mapping.entity}@v{self.number}"


class BilledItem(models.Model):
    """A PSA item (time, expense, milestone) and the one ERP invoice that bills it. The unique
    constraint is the guarantee that no item is billed twice, whatever the PSA sends again."""

    psa_connection = models.ForeignKey("connectors.Connection", on_delete=models.PROTECT, related_name="+")
    item_id = models.CharField(max_length=200, help_text="The item's id in the PSA.")
    item_kind = models.CharField(max_length=20)
    source_id = models.CharField(max_length=200, blank=True, help_text="The time entry, expense or milestone.")
    invoice_key = models.CharField(max_length=200, help_text="The ERP invoice's key, e.g. I-<billing event>.")
    amount = models.DecimalField(max_digits=16, decimal_places=2)
    currency = models.CharField(max_length=3)
    work_date = models.DateField(null=True, blank=True)
    legal_entity = models.ForeignKey(LegalEntity, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    handoff = models.ForeignKey(Handoff, on_delete=models.PROTECT, related_name="billed_items")
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["psa_connection", "source_id"], name="psa_item_billed_once"),
        ]

    def __str__(self) -> str:
        return f"{self.item_kind} {self.source_id} on {self.invoice_key}"


class ReconciliationTolerance(models.Model):
    """How big a difference a legal entity accepts before it is a mismatch."""

    legal_entity = models.OneToOneField(LegalEntity, on_delete=models.CASCADE, related_name="tolerance")
    absolute = models.DecimalField(
        max_digits=12, decimal_places=2, default=Decimal("1.00"), help_text="In the entity's currency."
    )
    relative = models.DecimalField(
        max_digits=6, decimal_places=4, default=Decimal("0.0010"), help_text="Share of the larger amount."
    )

    def __str__(self) -> str:
        return f"tolerance {self.legal_entity.code}: {self.absolute} or {self.relative:%}"


class Mismatch(models.Model):
    """A reconciliation difference beyond tolerance, classified by the catalogue (DOMAIN.md §3.2).

    One row per (check, legal entity, subject, period); a later run updates it, and clears it when
    the difference is gone, so its history (first seen, cleared) stays."""

    class Comparison(models.TextChoices):
        DEAL_VALUE = "deal_value", "Deal value: CRM vs ERP contract vs PSA budget"
        BILLED_TIME = "billed_time", "Approved billable time vs invoiced"
        REVENUE = "revenue", "Recognised revenue: PSA vs ERP"

    class Cause(models.TextChoices):
        ROUNDING = "rounding", "Rounding"
        FX_DATE = "fx_date", "FX rate date"
        AMENDMENT_NOT_SYNCED = "amendment_not_synced", "Amendment not synced"
        LATE_TIME = "late_time", "Time approved after period close"
        DUPLICATE_INVOICE = "duplicate_invoice", "Duplicate invoice"
        MISSING_CUSTOMER = "missing_customer", "Missing customer in ERP"
        TAX_CODE = "tax_code", "Tax code"
        CURRENCY_MIX = "currency_mix", "Currency mix"
        ENTITY_MISMATCH = "entity_mismatch", "Entity / subsidiary mismatch"
        CREDIT_NOT_IN_PSA = "credit_not_in_psa", "Credit or write-off not in PSA"
        RETRO_CHANGE = "retro_change", "Retroactive rate or data change"
        MISSING_RECORD = "missing_record", "Missing on one side"
        UNEXPLAINED = "unexplained", "Unexplained"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLEARED = "cleared", "Cleared"

    comparison = models.CharField(max_length=16, choices=Comparison.choices)
    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.PROTECT, related_name="+")
    subject_key = models.CharField(max_length=200, help_text="The canonical key, e.g. the opportunity id.")
    subject_name = models.CharField(max_length=200, blank=True)
    customer_name = models.CharField(max_length=200, blank=True)
    period = models.CharField(max_length=7, blank=True, help_text="YYYY-MM, blank for the contract as a whole.")
    cause = models.CharField(max_length=24, choices=Cause.choices)
    explanation = models.TextField()
    currency = models.CharField(max_length=3)
    # The amounts compared, per system, e.g. {"crm": "1200.00", "erp": "1150.00", "psa": "1200.00"}.
    amounts = models.JSONField(default=dict)
    difference = models.DecimalField(max_digits=16, decimal_places=2)
    details = models.JSONField(default=dict, blank=True)
    handoff = models.ForeignKey(Handoff, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "legal_entity", "subject_key", "period"], name="one_mismatch_per_subject_period"
            ),
        ]
        indexes = [models.Index(fields=["status", "cause"], name="mismatch_open_by_cause")]

    def __str__(self) -> str:
        return f"{self.get_comparison_display()} {self.subject_key} {self.period}: {self.get_cause_display()}"


class ReconciliationRun(models.Model):
    """One reconciliation of one legal entity: what was checked and found, or why it stopped.

    An incomplete run (a vendor did not answer) changes no mismatch: it neither clears old ones
    nor records new ones, and says here which system failed and how."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        COMPLETE = "complete", "Complete"
        INCOMPLETE = "incomplete", "Incomplete"

    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.PROTECT, related_name="+")
    period = models.CharField(max_length=7, blank=True, help_text="YYYY-MM when the run was limited to one period.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Why the run is incomplete, in words a finance person reads.")
    # Per comparison: {"checked": n, "matched": n, "mismatches": {cause: n}, "cleared": n}.
    summary = models.JSONField(default=dict, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"reconciliation {self.legal_entity_id} {self.period or 'all periods'} {self.status}"


class UnbilledWork(models.Model):
    """Approved billable work the PSA holds that is not in a billing batch yet: time, expenses and
    completed milestones. Read from the PSA with every full reconciliation of the legal entity and
    replaced as a whole, so the rows are the PSA's unbilled WIP as of `read_at` (DOMAIN.md §2.3)."""

    class Kind(models.TextChoices):
        TIME = "time", "Time"
        EXPENSE = "expense", "Expense"
        MILESTONE = "milestone", "Milestone"

    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    source_id = models.CharField(max_length=200, help_text="The timecard, expense or milestone in the PSA.")
    description = models.CharField(max_length=200, blank=True)
    project_key = models.CharField(max_length=200, help_text="P-<opportunity>, the project pscsync created.")
    project_name = models.CharField(max_length=200, blank=True)
    customer_name = models.CharField(max_length=200, blank=True)
    service_line = models.CharField(max_length=100, blank=True)
    work_date = models.DateField(
        null=True, blank=True, help_text="Week end for time, the expense date, the milestone's actual date."
    )
    amount = models.DecimalField(max_digits=16, decimal_places=2, help_text="At bill rate, in `currency`.")
    currency = models.CharField(max_length=3)
    read_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["legal_entity", "kind", "source_id"], name="unbilled_work_once"),
        ]
        indexes = [models.Index(fields=["legal_entity", "work_date"], name="unbilled_by_entity_date")]

    def __str__(self) -> str:
        return f"{self.kind} {self.source_id} {self.amount} {self.currency} unbilled on {self.project_key}"


class PsaAssignment(models.Model):
    """A person staffed on a project in the PSA, with the hours a week their schedule holds: the
    supply the resource-demand page sets against pipeline demand. Read and replaced with each full
    reconciliation, like UnbilledWork."""

    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.CASCADE, related_name="+")
    source_id = models.CharField(max_length=200, help_text="The assignment in the PSA.")
    role = models.CharField(max_length=100, blank=True)
    project_key = models.CharField(max_length=200, blank=True, help_text="Blank for a project pscsync did not make.")
    starts_on = models.DateField()
    ends_on = models.DateField()
    weekly_hours = models.DecimalField(max_digits=6, decimal_places=2)
    read_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["legal_entity", "source_id"], name="psa_assignment_once"),
        ]

    def __str__(self) -> str:
        return f"{self.role or 'assignment'} {self.weekly_hours} h/week {self.starts_on}..{self.ends_on}"


class PsaWorkedHours(models.Model):
    """Approved hours worked in the PSA per role and month (every approved timecard, billable or
    not, billed or not): what resource forecast accuracy compares the forecast with (DOMAIN.md
    §2.8, delivery accuracy). Read and replaced with each full reconciliation, like PsaAssignment."""

    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.CASCADE, related_name="+")
    role = models.CharField(max_length=100, blank=True)
    month = models.CharField(max_length=7, help_text="YYYY-MM of the day worked.")
    hours = models.DecimalField(max_digits=12, decimal_places=2)
    read_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["legal_entity", "role", "month"], name="psa_worked_hours_once"),
        ]

    def __str__(self) -> str:
        return f"{self.role or 'no role'} {self.month}: {self.hours} h worked"


class ErpInvoice(models.Model):
    """An invoice as the ERP's ledger holds it, in canonical states (the connector maps the
    vendor's): written by pscsync.ledger on every bill-to-cash sync and every reconciliation read.
    The dashboards' receivables, billings, cash and DSO are computed from these rows and their
    payment applications, never from handoffs (DESIGN.md rule 8)."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PENDING_APPROVAL = "pending_approval", "Pending approval"
        POSTED = "posted", "Posted"
        PARTLY_PAID = "partly_paid", "Partly paid"
        PAID = "paid", "Paid"
        VOIDED = "voided", "Voided"
        CREDITED = "credited", "Credited"

    POSTED_STATES: ClassVar[tuple[str, ...]] = ("posted", "partly_paid", "paid")
    UNPOSTED_STATES: ClassVar[tuple[str, ...]] = ("draft", "pending_approval")

    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.CASCADE, related_name="+")
    connection = models.ForeignKey("connectors.Connection", on_delete=models.PROTECT, related_name="+")
    vendor_id = models.CharField(max_length=100, help_text="The invoice's id in the ERP.")
    number = models.CharField(max_length=100, blank=True)
    key = models.CharField(max_length=200, blank=True, help_text="Our business key on it (I-<batch>).")
    customer_id = models.CharField(max_length=100, blank=True, help_text="The customer's id or number in the ERP.")
    customer_name = models.CharField(max_length=200, blank=True)
    project_key = models.CharField(max_length=200, blank=True)
    batch_key = models.CharField(max_length=200, blank=True)
    currency = models.CharField(max_length=3)
    total = models.DecimalField(max_digits=16, decimal_places=2, help_text="Including tax, in `currency`.")
    tax = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0"))
    open_balance = models.DecimalField(max_digits=16, decimal_places=2, help_text="The ERP's amount remaining.")
    status = models.CharField(max_length=20, choices=Status.choices)
    source_status = models.CharField(max_length=100, blank=True, help_text="The ERP's own words for its state.")
    invoice_date = models.DateField(null=True, blank=True)
    due_date = models.DateField(null=True, blank=True)
    posting_date = models.DateField(null=True, blank=True, help_text="The date it posts to the ledger; None unposted.")
    paid_on = models.DateField(null=True, blank=True, help_text="The application that cleared it, when paid.")
    voided_on = models.DateField(null=True, blank=True, help_text="When pscsync first saw it voided or credited.")
    # The sum of its dated payment applications and the latest of their dates, kept by
    # PaymentApplication's writes (applications_summarise): receivables at a date on or after
    # `applied_through` read the sum here instead of summing the applications of every open
    # invoice (11k index probes per overview at the 1M-handoff bench).
    applied_total = models.DecimalField(
        max_digits=16, decimal_places=2, default=Decimal("0"), help_text="Payments applied, in `currency`."
    )
    applied_through = models.DateField(null=True, blank=True, help_text="The latest payment application's date.")
    first_seen_at = models.DateTimeField()
    read_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["connection", "vendor_id"], name="erp_invoice_once")]
        indexes = [
            models.Index(fields=["legal_entity", "posting_date"], name="erp_invoice_by_posting"),
            models.Index(fields=["legal_entity", "status"], name="erp_invoice_by_status"),
            # A billing batch's invoice is found by our key: where its project-to-bill cycle ends.
            models.Index(fields=["key"], name="erp_invoice_by_key"),
            # Receivables at a date read the invoices open then: unpaid ones, or paid after it.
            models.Index(fields=["paid_on"], name="erp_invoice_by_paid_on"),
            # "As of": the ledger's latest read in scope, without reading every invoice.
            models.Index(fields=["read_at"], name="erp_invoice_by_read_at"),
            # Invoiced in a window and the open invoices, firm-wide (no legal entity to lead with).
            models.Index(fields=["posting_date"], name="erp_invoice_by_posted_day"),
            models.Index(fields=["status", "posting_date"], name="erp_invoice_by_state_day"),
            # Receivables at a date: the invoices paid in part after it, whose applications are summed.
            models.Index(fields=["applied_through"], name="erp_invoice_by_applied_through"),
        ]

    def __str__(self) -> str:
        return f"invoice {self.number or self.vendor_id} {self.total} {self.currency} {self.status}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        from pscsync import ledger_days

        # The applied sum belongs to the applications' writes: saving an invoice read before its
        # applications changed must not put back the sum it was read with.
        if not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in ("applied_total", "applied_through")
            ]
        with transaction.atomic():
            # The ledger by day moves by what the row gave before and gives after: the stored row,
            # locked, not this object's copy (it may be stale, and applied_total is not written).
            before = (
                None
                if self._state.adding or self.pk is None
                else ErpInvoice.objects.select_for_update()
                .filter(pk=self.pk)
                .values(*ledger_days.INVOICE_FIELDS)
                .first()
            )
            super().save(*args, **kwargs)
            written = kwargs.get("update_fields")
            after = {
                name: getattr(self, name)
                if before is None or written is None or name.removesuffix("_id") in written or name in written
                else before[name]
                for name in ledger_days.INVOICE_FIELDS
            }
            deltas = ledger_days.new_deltas()
            ledger_days.invoice_parts(before, deltas, -1)
            ledger_days.invoice_parts(after, deltas, +1)
            if before is not None and (before["status"] in ledger_days.REVERSED_STATES) != (
                after["status"] in ledger_days.REVERSED_STATES
            ):
                # Reversed, or restored: its applications leave cash collected, or come back.
                sign = -1 if after["status"] in ledger_days.REVERSED_STATES else +1
                ledger_days.invoice_applications(self.pk, deltas, sign)
            ledger_days.apply(deltas)

    @classmethod
    def applications_summarise(cls, invoice_id: int) -> None:
        """Set the invoice's applied sum and date from its dated payment applications (and what it
        owes in the ledger by day)."""
        from pscsync import ledger_days

        dated = PaymentApplication.objects.filter(invoice_id=invoice_id, applied_on__isnull=False).order_by()
        with transaction.atomic():
            row = cls.objects.select_for_update().filter(pk=invoice_id)
            before = row.values(*ledger_days.INVOICE_FIELDS).first()
            row.update(
                applied_total=Coalesce(
                    Subquery(dated.values("invoice_id").annotate(s=Sum("amount")).values("s")), Value(Decimal("0"))
                ),
                applied_through=Subquery(dated.values("invoice_id").annotate(m=Max("applied_on")).values("m")),
            )
            deltas = ledger_days.new_deltas()
            ledger_days.invoice_parts(before, deltas, -1)
            ledger_days.invoice_parts(row.values(*ledger_days.INVOICE_FIELDS).first(), deltas, +1)
            ledger_days.apply(deltas)


class InvoiceStatusChange(models.Model):
    """One move of an ERP invoice between ledger states, append-only: when it happened in the
    ledger's terms (`on`: the posting date, the clearing payment's date) and when pscsync saw it."""

    invoice = models.ForeignKey(ErpInvoice, on_delete=models.CASCADE, related_name="status_changes")
    from_status = models.CharField(max_length=20, blank=True, choices=ErpInvoice.Status.choices)
    to_status = models.CharField(max_length=20, choices=ErpInvoice.Status.choices)
    on = models.DateField(null=True, blank=True)
    seen_at = models.DateTimeField()

    class Meta:
        ordering = ["seen_at", "id"]

    def __str__(self) -> str:
        return f"{self.from_status or 'new'} → {self.to_status} on {self.on}"


class PaymentApplication(models.Model):
    """A customer payment applied to an ERP invoice, as the ERP applied it: cash collected is
    dated by `applied_on`, and receivables at a date subtract what was applied up to it."""

    invoice = models.ForeignKey(ErpInvoice, on_delete=models.CASCADE, related_name="applications")
    # The invoice's legal entity and currency, carried here so that cash collected in a period is
    # a range of this table alone: joining every application of the period to its invoice read the
    # whole invoice table (309k rows at the 1M-handoff bench) on every overview. Kept equal to the
    # invoice's by save() and by pscsync.ledger when an invoice moves.
    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.CASCADE, related_name="+")
    currency = models.CharField(max_length=3, help_text="The invoice's currency: the amount is in it.")
    payment_id = models.CharField(max_length=100)
    reference = models.CharField(max_length=100, blank=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2)
    applied_on = models.DateField(null=True, blank=True)
    read_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["invoice", "payment_id"], name="payment_application_once")]
        indexes = [
            models.Index(fields=["applied_on"], name="payment_application_by_day"),
            models.Index(fields=["legal_entity", "applied_on"], name="payment_application_entity_day"),
        ]

    def __str__(self) -> str:
        return f"{self.amount} from payment {self.reference or self.payment_id} on {self.applied_on}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        from pscsync import ledger_days

        if self.legal_entity_id is None or not self.currency:
            self.legal_entity_id, self.currency = self.invoice.legal_entity_id, self.invoice.currency
        with transaction.atomic():
            # The invoice locked first (as its own writes lock it): its reversal and this payment
            # move cash collected one after the other.
            status = (
                ErpInvoice.objects.select_for_update()
                .filter(pk=self.invoice_id)
                .values_list("status", flat=True)
                .first()
            )
            before = (
                None
                if self._state.adding or self.pk is None
                else PaymentApplication.objects.filter(pk=self.pk).values(*ledger_days.APPLICATION_FIELDS).first()
            )
            super().save(*args, **kwargs)
            if status not in ledger_days.REVERSED_STATES:
                deltas = ledger_days.new_deltas()
                ledger_days.application_parts(before, deltas, -1)
                ledger_days.application_parts(
                    {name: getattr(self, name) for name in ledger_days.APPLICATION_FIELDS}, deltas, +1
                )
                ledger_days.apply(deltas)
            ErpInvoice.applications_summarise(self.invoice_id)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        deleted = super().delete(*args, **kwargs)
        ErpInvoice.applications_summarise(self.invoice_id)
        return deleted


class LedgerDay(models.Model):
    """The ERP ledger summed per legal entity, currency and day (pscsync.ledger_days, which keeps
    it): invoiced by posting day, cash collected by application day, and what the open invoices
    owe now by due day. The dashboards' overview adds a few hundred of these rows instead of
    reading the firm's invoices; the figures' definitions stay in dashboards.ledger."""

    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.CASCADE, related_name="+")
    currency = models.CharField(max_length=3)
    day = models.DateField(help_text="Posting day, application day or due day, per sum (9999-12-31: no due date).")
    invoiced = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))
    invoiced_count = models.IntegerField(default=0)
    collected = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))
    collected_count = models.IntegerField(default=0)
    owed = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))
    owed_count = models.IntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["legal_entity", "currency", "day"], name="ledger_day_once")]
        indexes = [models.Index(fields=["day"], name="ledger_day_by_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.currency}: invoiced {self.invoiced}, collected {self.collected}, owed {self.owed}"


class Archive(models.Model):
    """One calendar month (UTC) of one legal entity's finished handoffs whose bodies were moved
    to compressed files (pscsync.archive). The rows, their statuses, steps and timings stay, so
    every dashboard figure and the audit trail are untouched; the manifest lists each file with
    its row count and SHA-256, and a restore refuses files that no longer match."""

    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.PROTECT, related_name="+")
    month = models.DateField(help_text="First day of the month archived.")
    directory = models.CharField(max_length=500)
    manifest = models.JSONField(default=dict)
    manifest_sha256 = models.CharField(max_length=64)
    handoffs = models.PositiveIntegerField()
    created_at = models.DateTimeField()
    restored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-month"]
        constraints = [
            # A month is archived once at a time; after a restore it may be archived again.
            models.UniqueConstraint(
                fields=["legal_entity", "month"],
                condition=Q(restored_at__isnull=True),
                name="archive_one_per_entity_month",
            )
        ]

    def __str__(self) -> str:
        return f"{self.legal_entity} {self.month:%B %Y}"


class AuditArchive(models.Model):
    """One calendar month (UTC) of the audit trail moved to a file and its partition dropped
    (pscsync.partitions.audit_month_archive). The chain's two ends are kept: `prev_hash` is the
    link of the month's first entry, `last_hash` the hash of its last, so `audit_verify` accepts
    exactly this gap and no other."""

    month = models.DateField(unique=True, help_text="First day of the month archived.")
    directory = models.CharField(max_length=500)
    manifest = models.JSONField(default=dict)
    manifest_sha256 = models.CharField(max_length=64)
    entries = models.PositiveIntegerField()
    first_id = models.BigIntegerField()
    last_id = models.BigIntegerField()
    prev_hash = models.CharField(max_length=64, blank=True)
    last_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-month"]

    def __str__(self) -> str:
        return f"audit trail {self.month:%B %Y}"


class PartitionDrop(models.Model):
    """A month of a partitioned table dropped (pscsync.partitions). Kept after a restore writes
    some of its rows back: the month's attempt rollups counted every row it had, so a rebuild
    of the dashboards keeps them and does not recount the month from what is there now."""

    table = models.CharField(max_length=60)
    month = models.DateField(help_text="First day of the month dropped.")
    rows = models.PositiveBigIntegerField()
    dropped_at = models.DateTimeField()

    class Meta:
        ordering = ["table", "month"]
        constraints = [models.UniqueConstraint(fields=["table", "month"], name="partition_drop_once")]

    def __str__(self) -> str:
        return f"{self.table} {self.month:%B %Y}"
