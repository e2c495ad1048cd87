"""The workbench's records: exceptions grouped by cause, comments, saved views and bulk jobs.

An *exception* (the word users see) is a handoff that needs a person. `HandoffException` is one
per handoff that ever needed one; `ExceptionCause` groups them by signature (flow, step, error
class, normalised message). Both are kept in step with the handoff's status by
`remediation.services.exception_sync`, called after every move of a handoff (the lifecycle
listener, see apps.py).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ExceptionStatus(models.TextChoices):
    OPEN = "open", "Open"
    IN_PROGRESS = "in_progress", "In progress (retrying)"
    RESOLVED = "resolved", "Resolved"
    ARCHIVED = "archived", "Archived until"
    REGRESSED = "regressed", "Regressed"


class ExceptionCause(models.Model):
    """One cause: every handoff failing the same way. Holds the runbook and who owns it."""

    signature = models.CharField(max_length=64, unique=True, help_text="sha256 of flow|step|class|message.")
    flow = models.CharField(max_length=40)
    step_name = models.CharField(max_length=60, blank=True)
    error_class = models.CharField(max_length=40, blank=True)
    # The fingerprint (remediation.fingerprints): the message with its variable parts replaced.
    message = models.TextField(help_text="The message with its variable parts replaced by placeholders.")
    # What people read: the latest occurrence's real message, in full (never cut mid-sentence).
    title = models.TextField(blank=True, help_text="The latest occurrence's message, with its real values.")
    status = models.CharField(max_length=12, choices=ExceptionStatus.choices, default=ExceptionStatus.OPEN)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Archive until a date, or until N more occurrences (counted from archive time).
    archived_until = models.DateTimeField(null=True, blank=True)
    archived_until_occurrences = models.PositiveIntegerField(null=True, blank=True)
    occurrences = models.PositiveIntegerField(default=0, help_text="Times a handoff failed with this cause.")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Runbook: editable by admins, shown inline.
    runbook_meaning = models.TextField(blank=True)
    runbook_cause = models.TextField(blank=True)
    runbook_action = models.TextField(blank=True)
    runbook_link = models.URLField(blank=True)

    class Meta:
        ordering = ["-last_seen_at"]
        indexes = [models.Index(fields=["status", "-last_seen_at"], name="cause_status_seen")]

    def __str__(self) -> str:
        return f"{self.flow}/{self.step_name}: {self.message[:80]}"


class HandoffException(models.Model):
    """A handoff that needs (or needed) a person, with the business identifiers to find it by."""

    handoff = models.OneToOneField("pscsync.Handoff", on_delete=models.CASCADE, related_name="exception")
    cause = models.ForeignKey(ExceptionCause, on_delete=models.PROTECT, related_name="items")
    status = models.CharField(max_length=12, choices=ExceptionStatus.choices, default=ExceptionStatus.OPEN)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Copied from the handoff so the inbox filters and sums without joining payloads.
    flow = models.CharField(max_length=40)
    step_name = models.CharField(max_length=60, blank=True)
    error_class = models.CharField(max_length=40, blank=True)
    legal_entity = models.ForeignKey(
        "pscsync.LegalEntity", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    connection = models.ForeignKey(
        "connectors.Connection",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The system the failed step talks to (else the source).",
    )
    customer_name = models.CharField(max_length=200, blank=True)
    amount = models.DecimalField(max_digits=16, decimal_places=2, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    # Opportunity, project code, invoice number, ... : {"opportunity": "006...", "project": "P-006..."}
    identifiers = models.JSONField(default=dict, blank=True)
    search_text = models.TextField(blank=True, help_text="Lower-cased identifiers, customer and message.")
    opened_at = models.DateTimeField(help_text="When it first needed a person (this time).")
    # The handoff's business start (the SLA clock), copied here so the inbox's urgency order reads
    # the exceptions alone: joining 50k open exceptions to the handoffs doubled the inbox at 1M.
    business_started_at = models.DateTimeField(null=True, blank=True)
    last_failed_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=40, blank=True, help_text="succeeded, resolved, cancelled.")
    failures = models.PositiveIntegerField(default=1)
    # A handoff that cannot proceed because another one failed (a billing batch whose ERP
    # customer was never created): that handoff, its root cause. When the root succeeds the
    # blocked handoff resumes by itself (remediation.services.blocked_resume).
    blocked_by = models.ForeignKey(
        "pscsync.Handoff", null=True, blank=True, on_delete=models.SET_NULL, related_name="blocking"
    )

    class Meta:
        ordering = ["opened_at"]
        indexes = [
            # Covering: the inbox's aggregates (per cause and currency; the shown causes' customers
            # and entities) read only these columns, so they scan the index, not the wide rows.
            models.Index(
                fields=["status", "cause"],
                include=[
                    "currency",
                    "amount",
                    "opened_at",
                    "last_failed_at",
                    "business_started_at",
                    "flow",
                    "legal_entity",
                    "customer_name",
                ],
                name="exc_status_cause",
            ),
            models.Index(fields=["status", "legal_entity", "opened_at"], name="exc_status_entity"),
        ]

    def __str__(self) -> str:
        return f"exception on {self.handoff_id} ({self.status})"


class Comment(models.Model):
    """A note on a cause (or on one handoff of it)."""

    cause = models.ForeignKey(ExceptionCause, on_delete=models.CASCADE, related_name="comments")
    handoff = models.ForeignKey(
        "pscsync.Handoff", null=True, blank=True, on_delete=models.CASCADE, related_name="workbench_comments"
    )
    # The entity of the handoff, so a scoped user never reads notes about another entity's records.
    legal_entity = models.ForeignKey(
        "pscsync.LegalEntity", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    author_label = models.CharField(max_length=150)
    body = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.author_label}: {self.body[:40]}"


class SavedView(models.Model):
    """A named inbox filter (the query string), shared with the team."""

    name = models.CharField(max_length=120, unique=True)
    query = models.CharField(max_length=1000, help_text="The inbox's query string, without '?'.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class BulkJob(models.Model):
    """Many handoffs at once (retry, resolve, assign, replay), run by a worker, never in a request."""

    class Kind(models.TextChoices):
        RETRY = "retry", "Retry"
        RESOLVE = "resolve", "Resolve"
        ASSIGN = "assign", "Assign"
        REPLAY = "replay", "Replay"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True, help_text="assignee id, replay window, filter used.")
    # The handoffs chosen when the job was made (already scoped to the user who made it).
    handoff_ids = models.JSONField(default=list)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.total} ({self.status})"

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 100

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.CANCELLED)


class BulkJobItem(models.Model):
    """The outcome for one handoff of a bulk job."""

    class Outcome(models.TextChoices):
        # What the job did to the handoff. For a retry that is only "sent back to run": the
        # result people read is the handoff's real end state (remediation.selectors.job_results).
        DONE = "done", "Acted on"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"

    job = models.ForeignKey(BulkJob, on_delete=models.CASCADE, related_name="items")
    handoff = models.ForeignKey("pscsync.Handoff", on_delete=models.CASCADE, related_name="+")
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    detail = models.CharField(max_length=300, blank=True)
    # The cause the handoff was failing with when the job acted: failing again with the same
    # cause and failing with another are told apart by it.
    cause_before = models.ForeignKey(ExceptionCause, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["job", "handoff"], name="bulk_item_once")]

    def __str__(self) -> str:
        return f"{self.job_id}/{self.handoff_id} {self.outcome}"


class Compensation(models.Model):
    """A person's request to undo what a handoff's steps wrote (e.g. delete an unpaid invoice),
    run by a worker. While one is queued or running the handoff is leased to it
    (`Handoff.lease_owner = "compensation:<pk>"`), so no resubmit, resolve or second compensation
    can start; it ends done (the handoff cancelled) or failed (the handoff as it was)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    ACTIVE = ("queued", "running")

    handoff = models.ForeignKey("pscsync.Handoff", on_delete=models.CASCADE, related_name="compensations")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField()
    steps = models.JSONField(default=list, help_text="The steps whose records are removed.")
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The records as the vendor held them, what was removed and what was released.
    removed = models.JSONField(default=list, blank=True)
    released = models.JSONField(default=dict, blank=True)
    detail = models.TextField(blank=True, help_text="Why it failed, in the vendor's words.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["handoff"], condition=models.Q(status__in=["queued", "running"]), name="one_active_compensation"
            )
        ]

    def __str__(self) -> str:
        return f"compensation of {self.handoff_id} ({self.status})"

    @property
    def lease(self) -> str:
        return f"compensation:{self.pk}"
