"""API serializers: explicit fields only. Output serializers are read-only; input serializers
name exactly what a client may send (no status, legal entity, amounts or ids by mass assignment)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers
from rest_framework.fields import empty

from connectors.models import Connection
from dashboards.facts import MEASURES as FLOW_MEASURES
from dashboards.models import FlowSla
from pscsync.models import (
    Attempt,
    AuditEntry,
    Event,
    Handoff,
    LegalEntity,
    Mapping,
    MappingVersion,
    Mismatch,
    ReconciliationRun,
    Step,
)
from pscsync.secrets import mask_secrets
from remediation.models import BulkJob, ExceptionStatus, SavedView
from remediation.selectors import SORTS as INBOX_SORTS
from remediation.selectors import TABS as INBOX_TABS
from remediation.services import ResubmitMode


class MaskedJSONField(serializers.JSONField):
    """JSON shown with secret-looking fields masked (as on the pages)."""

    def to_representation(self, value: Any) -> Any:
        return mask_secrets(value)


@extend_schema_field({"type": "object", "additionalProperties": True})
class ObjectField(MaskedJSONField):
    pass


class StrictTypesMixin:
    """Text is text: DRF would turn a number into a string; an API client that sends 0 for a
    comment has a bug it should hear about."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[misc]


class TextField(StrictTypesMixin, serializers.CharField):
    """Text kept as sent (no trimming): a comment of only spaces is refused by the services."""

    default_error_messages = {"invalid": "Not a valid string."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)


class SlugField(StrictTypesMixin, serializers.SlugField):
    default_error_messages = {"invalid": "Not a valid slug."}


class RegexField(StrictTypesMixin, serializers.RegexField):
    default_error_messages = {"invalid": "This value does not match the required pattern."}


class BooleanField(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class IntegerField(serializers.IntegerField):
    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class InputSerializer(serializers.Serializer):
    """A request body: only the fields named here. An unknown field is an error (400), so a
    misspelt or unexpected field (status, legal_entity, id …) never passes silently."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


class LegalEntityCodeField(serializers.SlugRelatedField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(slug_field="code", read_only=True, **kwargs)


# --- Handoffs, steps, attempts, events ------------------------------------------------------


class AttemptSerializer(serializers.ModelSerializer):
    request = ObjectField(read_only=True)
    response = ObjectField(read_only=True)

    class Meta:
        model = Attempt
        fields = [
            "id",
            "number",
            "outcome",
            "started_at",
            "duration_ms",
            "http_status",
            "error_class",
            "error_message",
            "external_id",
            "retry_after_seconds",
            "request",
            "response",
        ]
        read_only_fields = fields


class StepSerializer(serializers.ModelSerializer):
    target_connection = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    attempts = AttemptSerializer(many=True, read_only=True)

    class Meta:
        model = Step
        fields = ["id", "name", "position", "status", "target_connection", "external_id", "finished_at", "attempts"]
        read_only_fields = fields


class HandoffSerializer(serializers.ModelSerializer):
    legal_entity = LegalEntityCodeField(allow_null=True)
    source_connection = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    amount = serializers.DecimalField(max_digits=16, decimal_places=2, read_only=True, allow_null=True)

    class Meta:
        model = Handoff
        fields = [
            "id",
            "flow",
            "business_key",
            "legal_entity",
            "source_connection",
            "trigger_event",
            "status",
            "business_started_at",
            "business_finished_at",
            "created_at",
            "started_at",
            "finished_at",
            "attempt_count",
            "next_attempt_at",
            "last_error_class",
            "last_error_message",
            # Our key of the record the failed step was about ("C-…"); the exceptions' failed_step
            # is the step itself.
            "failed_key",
            "mapping_version",
            "customer_name",
            "service_line",
            "amount",
            "currency",
        ]
        read_only_fields = fields


class HandoffDetailSerializer(HandoffSerializer):
    payload = ObjectField(read_only=True)
    steps = StepSerializer(many=True, read_only=True)

    class Meta(HandoffSerializer.Meta):
        fields = [*HandoffSerializer.Meta.fields, "payload", "steps"]
        read_only_fields = fields


class EventSerializer(serializers.ModelSerializer):
    connection = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    legal_entity = LegalEntityCodeField(allow_null=True)
    payload = ObjectField(read_only=True)

    class Meta:
        model = Event
        fields = [
            "id",
            "connection",
            "source_event_id",
            "event_type",
            "flow",
            "business_key",
            "legal_entity",
            "occurred_at",
            "source_sequence",
            "received_at",
            "status",
            "handoff",
            "payload",
        ]
        read_only_fields = fields


# --- Exceptions and jobs -----------------------------------------------------------------------


class ExceptionSerializer(HandoffSerializer):
    """A handoff that needs a person, with its failed step and its cause group."""

    group = serializers.SerializerMethodField()
    cause = serializers.SerializerMethodField()
    failed_step = serializers.SerializerMethodField()

    class Meta(HandoffSerializer.Meta):
        fields = [*HandoffSerializer.Meta.fields, "group", "cause", "failed_step"]
        read_only_fields = fields

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_cause(self, obj: Handoff) -> int | None:
        item = getattr(obj, "exception", None)
        return item.cause_id if item is not None else None

    @extend_schema_field(
        {"type": "string", "deprecated": True, "description": "Deprecated (sunset 2027-05-27): use `cause`."}
    )
    def get_group(self, obj: Handoff) -> str:
        from api.selectors import group_id
        from remediation.selectors import cause_signature

        return group_id(obj.flow, obj.last_error_class, cause_signature(obj.last_error_message))

    @extend_schema_field(StepSerializer(allow_null=True))
    def get_failed_step(self, obj: Handoff) -> dict[str, Any] | None:
        failed = [s for s in obj.steps.all() if s.status in (Step.Status.FAILED, Step.Status.IN_FLIGHT)]
        return StepSerializer(failed[0]).data if failed else None


class CommentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    author = serializers.CharField(source="author_label")
    body = serializers.CharField()
    created_at = serializers.DateTimeField()
    handoff = serializers.IntegerField(source="handoff_id", allow_null=True)


class ExceptionDetailSerializer(ExceptionSerializer):
    payload = ObjectField(read_only=True)
    assignee = serializers.SerializerMethodField()
    comments = serializers.SerializerMethodField()
    document = serializers.SerializerMethodField()

    class Meta(ExceptionSerializer.Meta):
        fields = [*ExceptionSerializer.Meta.fields, "payload", "assignee", "comments", "document"]
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "description": "What the first step read (e.g. the deal and its account): the document a resubmit "
            "in mode `edit` replaces. Null when the read step has not succeeded.",
        }
    )
    def get_document(self, obj: Handoff) -> dict[str, Any] | None:
        from remediation.services import read_step

        step = read_step(obj)
        if step is None or step.status != "succeeded" or not isinstance(step.output, dict):
            return None
        return step.output

    @extend_schema_field({"type": "string", "nullable": True})
    def get_assignee(self, obj: Handoff) -> str | None:
        item = getattr(obj, "exception", None)
        return item.assignee.get_username() if item is not None and item.assignee else None

    @extend_schema_field(CommentSerializer(many=True))
    def get_comments(self, obj: Handoff) -> list[dict[str, Any]]:
        from remediation.models import Comment

        return CommentSerializer(Comment.objects.filter(handoff=obj).order_by("created_at"), many=True).data


class ExceptionGroupSerializer(serializers.Serializer):
    id = TextField(read_only=True)
    flow = TextField(read_only=True)
    error_class = TextField(read_only=True)
    signature = TextField(read_only=True)
    count = serializers.IntegerField(read_only=True)
    first_seen = serializers.DateTimeField(read_only=True)
    last_seen = serializers.DateTimeField(read_only=True)
    legal_entities = serializers.ListField(child=TextField(), read_only=True)
    handoffs = serializers.ListField(child=serializers.IntegerField(), read_only=True)


class ExceptionGroupPageSerializer(serializers.Serializer):
    next = TextField(allow_null=True, read_only=True)
    previous = TextField(allow_null=True, read_only=True)
    results = ExceptionGroupSerializer(many=True, read_only=True)


class ResubmitSerializer(InputSerializer):
    mode = serializers.ChoiceField(
        choices=ResubmitMode.CHOICES,
        default=ResubmitMode.STORED,
        help_text="stored: resume as is; edit: resume with `document` as the read step's output; "
        "remap: read the source again and map with the mapping in force.",
    )
    document = serializers.DictField(required=False, help_text="The edited read document (mode edit).")
    reason = TextField(max_length=2000, help_text="Why; recorded in the audit trail.")


class ReasonSerializer(InputSerializer):
    reason = TextField(max_length=2000, help_text="Why; recorded in the audit trail.")


class AssignSerializer(InputSerializer):
    assignee = TextField(max_length=150, allow_null=True, help_text="A user name, or null to unassign.")


class CommentCreateSerializer(InputSerializer):
    body = TextField(max_length=5000)


class BulkJobCreateSerializer(InputSerializer):
    kind = serializers.ChoiceField(choices=BulkJob.Kind.choices, help_text="retry, resolve, assign or replay (re-map).")
    handoffs = serializers.ListField(
        child=IntegerField(min_value=1, max_value=2**63 - 1),
        max_length=1000,
        required=False,
        help_text="Handoff ids; or give `cause`.",
    )
    group = TextField(
        required=False, max_length=16, help_text="Deprecated (sunset 2027-05-27): an exception group id; use `cause`."
    )
    cause = IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, help_text="An exception cause id: its open handoffs."
    )
    reason = TextField(required=False, max_length=2000, default="", help_text="Required for retry, resolve, replay.")
    assignee = TextField(required=False, max_length=150, allow_null=True, help_text="For assign: a user name.")


class BulkJobItemSerializer(serializers.Serializer):
    handoff = serializers.IntegerField(source="handoff_id")
    outcome = serializers.CharField()
    detail = serializers.CharField()


class BulkJobSerializer(serializers.ModelSerializer):
    handoffs = serializers.ListField(source="handoff_ids", child=serializers.IntegerField(), read_only=True)
    items = BulkJobItemSerializer(many=True, read_only=True)

    class Meta:
        model = BulkJob
        fields = [
            "id",
            "kind",
            "status",
            "handoffs",
            "reason",
            "created_at",
            "started_at",
            "finished_at",
            "total",
            "done",
            "succeeded",
            "skipped",
            "failed",
            "items",
        ]
        read_only_fields = fields


# --- Mappings ---------------------------------------------------------------------------------


class RuleSerializer(InputSerializer):
    target = TextField(max_length=200)
    source = TextField(max_length=2000, required=False, allow_blank=True)
    value_map = TextField(max_length=120, required=False, allow_blank=True)
    transform = TextField(max_length=40, required=False, allow_blank=True)
    default = serializers.JSONField(required=False, allow_null=True)
    required = BooleanField(required=False)


class MappingVersionSerializer(serializers.ModelSerializer):
    rules = serializers.JSONField(read_only=True)
    value_maps = serializers.JSONField(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = MappingVersion
        fields = [
            "id",
            "number",
            "status",
            "rules",
            "value_maps",
            "comment",
            "created_by",
            "created_at",
            "published_at",
        ]
        read_only_fields = fields


class MappingSerializer(serializers.ModelSerializer):
    connection = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    in_force = serializers.SerializerMethodField()

    class Meta:
        model = Mapping
        fields = ["id", "connection", "entity", "direction", "name", "in_force"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.INT)
    def get_in_force(self, obj: Mapping) -> int | None:
        published = [v for v in obj.versions.all() if v.status == MappingVersion.Status.PUBLISHED]
        return published[0].number if published else None


class MappingDetailSerializer(MappingSerializer):
    versions = MappingVersionSerializer(many=True, read_only=True)

    class Meta(MappingSerializer.Meta):
        fields = [*MappingSerializer.Meta.fields, "versions"]
        read_only_fields = fields


class MappingPublishSerializer(InputSerializer):
    rules = RuleSerializer(many=True, max_length=500, help_text="At least one rule.")
    value_maps = serializers.DictField(child=serializers.DictField(), required=False, default=dict)
    comment = TextField(max_length=2000, help_text="What changed and why.")


class MappingCreateSerializer(MappingPublishSerializer):
    connection = SlugField(help_text="The connection's slug.")
    entity = TextField(max_length=80)
    direction = serializers.ChoiceField(choices=Mapping.Direction.choices, default=Mapping.Direction.OUTBOUND)
    name = TextField(max_length=120, required=False, allow_blank=True, default="")


# --- Connections ------------------------------------------------------------------------------


class ConnectionSerializer(serializers.ModelSerializer):
    """Never carries credentials: only whether they are set."""

    legal_entities = serializers.SlugRelatedField(slug_field="code", many=True, read_only=True)
    has_credentials = serializers.BooleanField(read_only=True)

    class Meta:
        model = Connection
        fields = [
            "id",
            "slug",
            "name",
            "kind",
            "vendor",
            "base_url",
            "api_version",
            "intake",
            "rate_limit_per_minute",
            "is_sandbox",
            "is_active",
            "legal_entities",
            "has_credentials",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ConnectionWriteSerializer(InputSerializer):
    """Create (all but credentials' keys required) or change a connection. Credentials are write-only."""

    slug = SlugField(max_length=50)
    name = TextField(max_length=120)
    kind = serializers.ChoiceField(choices=Connection.Kind.choices)
    vendor = serializers.ChoiceField(choices=Connection.Vendor.choices)
    base_url = RegexField(
        r"^https?://[!-~]+$", max_length=400, help_text="The system's API address (https; http only for sandboxes)."
    )
    api_version = TextField(max_length=20, required=False, allow_blank=True, default="")
    intake = serializers.ChoiceField(choices=Connection.Intake.choices, default=Connection.Intake.WEBHOOK)
    rate_limit_per_minute = IntegerField(min_value=1, max_value=100_000, default=600)
    is_sandbox = BooleanField(default=False)
    is_active = BooleanField(default=True)
    legal_entities = serializers.ListField(
        child=SlugField(), min_length=1, max_length=100, help_text="Codes of the legal entities it serves."
    )
    credentials = serializers.DictField(
        write_only=True, required=False, help_text="Write-only; never returned. Omit to keep what is stored."
    )


class ConnectionUpdateSerializer(ConnectionWriteSerializer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields.pop("slug")
        for f in self.fields.values():
            # A change names only what changes: no defaults filled in for what was left out.
            f.required, f.default = False, empty


# --- Mismatches, metrics, audit --------------------------------------------------------------


class MismatchSerializer(serializers.ModelSerializer):
    legal_entity = LegalEntityCodeField()
    amounts = serializers.JSONField(read_only=True)
    details = serializers.JSONField(read_only=True)

    class Meta:
        model = Mismatch
        fields = [
            "id",
            "comparison",
            "legal_entity",
            "subject_key",
            "subject_name",
            "customer_name",
            "period",
            "cause",
            "explanation",
            "currency",
            "amounts",
            "difference",
            "details",
            "handoff",
            "status",
            "first_seen_at",
            "last_seen_at",
            "cleared_at",
        ]
        read_only_fields = fields


class HealthMetricsSerializer(serializers.Serializer):
    by_status = serializers.DictField(child=serializers.IntegerField())
    oldest_open_handoff = serializers.IntegerField(allow_null=True)
    oldest_open_age_seconds = serializers.FloatField(allow_null=True)
    overdue = serializers.IntegerField()
    succeeded_last_hour = serializers.IntegerField()
    attempts_last_day = serializers.IntegerField()
    failed_attempts_last_day = serializers.IntegerField()
    failure_rate = serializers.FloatField(allow_null=True)


class ConnectionActivitySerializer(serializers.Serializer):
    connection = serializers.CharField(help_text="The connection's slug.")
    name = serializers.CharField()
    kind = serializers.CharField()
    vendor = serializers.CharField()
    last_event_at = serializers.DateTimeField(allow_null=True)
    events_last_day = serializers.IntegerField()


class AuditEntrySerializer(serializers.ModelSerializer):
    legal_entity = LegalEntityCodeField(allow_null=True)
    before = ObjectField(read_only=True)
    after = ObjectField(read_only=True)

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "created_at",
            "actor_label",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "legal_entity",
            "before",
            "after",
            "comment",
        ]
        read_only_fields = fields


# --- Exception causes (the workbench's groups), saved views, replay ---------------------------


class MoneySerializer(serializers.Serializer):
    currency = serializers.CharField()
    amount = serializers.DecimalField(max_digits=18, decimal_places=2)


class ExceptionCauseSerializer(serializers.Serializer):
    """One cause as the inbox shows it: totals over the caller's entities only."""

    id = serializers.IntegerField()
    flow = serializers.CharField()
    step = serializers.CharField(help_text="The step the handoffs stopped at.")
    error_class = serializers.CharField()
    message = serializers.CharField(help_text="The error message with its variable parts blanked.")
    status = serializers.ChoiceField(choices=ExceptionStatus.choices)
    assignee = serializers.CharField(allow_null=True, help_text="Who owns the whole cause (user name).")
    archived_until = serializers.DateTimeField(allow_null=True)
    archived_until_occurrences = serializers.IntegerField(
        allow_null=True, help_text="While archived: new occurrences left before it comes back."
    )
    count = serializers.IntegerField(help_text="Handoffs of this cause in the inbox tab it sits in (yours only).")
    first_seen = serializers.DateTimeField(allow_null=True)
    last_seen = serializers.DateTimeField(allow_null=True)
    money = MoneySerializer(many=True, help_text="Amounts at stake per currency.")
    customers = serializers.ListField(child=serializers.CharField())
    legal_entities = serializers.ListField(child=serializers.CharField(), help_text="Legal entity codes.")


class RunbookSerializer(serializers.Serializer):
    meaning = serializers.CharField(allow_blank=True)
    cause = serializers.CharField(allow_blank=True)
    action = serializers.CharField(allow_blank=True)
    link = serializers.CharField(allow_blank=True)


class ExceptionCauseDetailSerializer(ExceptionCauseSerializer):
    runbook = RunbookSerializer()
    handoffs = serializers.ListField(
        child=serializers.IntegerField(), help_text="The handoffs counted in `count` (at most 500)."
    )
    comments = CommentSerializer(many=True)


# One page, not a list of pages (a list action with no paginator would say so).
@extend_schema_serializer(many=False)
class ExceptionCausePageSerializer(serializers.Serializer):
    next = TextField(allow_null=True, read_only=True)
    previous = TextField(allow_null=True, read_only=True)
    results = ExceptionCauseSerializer(many=True, read_only=True)


class CauseListQuerySerializer(serializers.Serializer):
    """The inbox's filters, by the same names (legal_entity is the entity code)."""

    tab = serializers.ChoiceField(choices=list(INBOX_TABS), default="open", help_text="Which inbox tab.")
    sort = serializers.ChoiceField(choices=list(INBOX_SORTS), default="count")
    q = TextField(required=False, max_length=200, help_text="Search identifiers, customer, message.")
    flow = TextField(required=False, max_length=40)
    step = TextField(required=False, max_length=60)
    error_class = TextField(required=False, max_length=40)
    legal_entity = TextField(required=False, max_length=40)
    customer = TextField(required=False, max_length=200)
    connection = TextField(required=False, max_length=50)
    assignee = TextField(required=False, max_length=150, help_text="A user name, or `none`.")
    age = serializers.IntegerField(required=False, min_value=0, max_value=36500, help_text="Open for at least N days.")


class CauseArchiveSerializer(InputSerializer):
    until = serializers.DateField(required=False, allow_null=True, help_text="Comes back on this day (UTC).")
    occurrences = IntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000, help_text="…or after N new failures."
    )
    reason = TextField(required=False, default="", max_length=2000, help_text="Why; recorded in the audit trail.")


class EmptySerializer(InputSerializer):
    """No fields: send {} (or nothing)."""


class RunbookWriteSerializer(InputSerializer):
    """Only the parts given change; an empty string clears a part."""

    meaning = TextField(required=False, allow_blank=True, max_length=5000)
    cause = TextField(required=False, allow_blank=True, max_length=5000)
    action = TextField(required=False, allow_blank=True, max_length=5000)
    link = RegexField(r"^https?://[!-~]+$", required=False, allow_blank=True, max_length=200)


class SavedViewSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = SavedView
        fields = ["id", "name", "query", "created_by", "created_at"]
        read_only_fields = fields


class SavedViewCreateSerializer(InputSerializer):
    name = TextField(max_length=120)
    query = TextField(
        max_length=1000, allow_blank=True, help_text="The inbox's query string without '?', e.g. tab=open&flow=…"
    )


class ReplayWindowSerializer(serializers.Serializer):
    connection = SlugField(help_text="The connection's slug.")
    start = serializers.DateTimeField(help_text="RFC 3339; events received at or after this.")
    end = serializers.DateTimeField(help_text="RFC 3339; events received before this.")


class ReplayCreateSerializer(ReplayWindowSerializer, InputSerializer):
    reason = TextField(max_length=2000, help_text="Why; recorded in the audit trail.")


class ReplayPreviewSerializer(serializers.Serializer):
    connection = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    events = serializers.IntegerField(help_text="Events of the connection received in the window (yours only).")
    handoffs = serializers.IntegerField(help_text="Handoffs they led to that need a person: what a replay re-runs.")
    handoff_ids = serializers.ListField(child=serializers.IntegerField())


# --- Metrics, reconciliation runs, SLAs -------------------------------------------------------


class MetricsQuerySerializer(serializers.Serializer):
    """The dashboards' filters. Dates are YYYY-MM-DD, inclusive; default: the last 30 days."""

    to = serializers.DateField(required=False, help_text="Last day (YYYY-MM-DD); default today.")
    legal_entity = TextField(
        required=False, max_length=400, help_text="Entity codes, comma-separated; yours only (others count nothing)."
    )
    service_line = TextField(required=False, max_length=80)
    customer = TextField(required=False, max_length=200)
    connection = TextField(required=False, max_length=50, help_text="A connection slug.")
    currency = serializers.RegexField(
        r"^[A-Z]{3}$",
        required=False,
        help_text="Show money in this ISO currency (default: one entity's own currency, else the reporting one).",
    )

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        # "from" is a Python keyword: declared here so the parameter keeps the page's name.
        fields["from"] = serializers.DateField(
            required=False, help_text="First day (YYYY-MM-DD); default to − 29 days."
        )
        return fields


class LatencyQuerySerializer(MetricsQuerySerializer):
    flow = serializers.ChoiceField(choices=list(FLOW_MEASURES), required=False, help_text="One flow; default all.")


@extend_schema_field(
    {
        "nullable": True,
        "anyOf": [{"type": "number"}, {"type": "string", "format": "decimal"}],
        "description": "A number; money as a decimal string; null when nothing was measured.",
    }
)
class FigureField(serializers.Field):
    def to_representation(self, value: Any) -> Any:
        return value


class MetricSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField(help_text="The figure's name on the pages.")
    value = FigureField()
    unit = serializers.CharField(
        help_text="count, hours, minutes, percent, days, or the figures' currency (see currency)."
    )
    count = serializers.IntegerField(help_text="How many records the figure is computed from.")
    definition = serializers.CharField()
    state = serializers.ChoiceField(
        choices=["measured", "stale", "not_measured"],
        help_text="measured; stale (its source was last read longer ago than its schedule allows); "
        "not_measured (its source was never read: value is null, never a zero).",
    )
    as_of = serializers.DateTimeField(allow_null=True, help_text="When its source was last read.")
    state_note = serializers.CharField(allow_blank=True, help_text="Why it is stale or not measured.")
    drill_down = serializers.CharField(allow_blank=True, help_text="The page listing the records behind it.")
    sla = serializers.CharField(allow_blank=True, help_text="The SLA the figure is measured against, if any.")
    complete = serializers.BooleanField(
        required=False, help_text="Money figures only: every amount behind the figure was converted."
    )
    missing = serializers.DictField(
        child=serializers.CharField(),
        required=False,
        help_text="Money figures only: per currency, the amount this figure could not convert (no rate).",
    )


class MetricsSerializer(serializers.Serializer):
    from_ = serializers.DateField()
    to = serializers.DateField()
    reporting_currency = serializers.CharField()
    currency = serializers.CharField(
        help_text="The currency of the money figures: the one asked for, else the one legal entity's functional "
        "currency, else the reporting currency."
    )
    currency_policy = serializers.CharField()
    metrics = MetricSerializer(many=True)

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return fields


class LatencyWeekSerializer(serializers.Serializer):
    week = serializers.DateField(help_text="The Monday of the ISO week.")
    measured = serializers.IntegerField()
    median_hours = serializers.FloatField(allow_null=True)
    p90_hours = serializers.FloatField(allow_null=True)
    pct_within_sla = serializers.FloatField(allow_null=True)


class LatencyFlowSerializer(serializers.Serializer):
    flow = serializers.CharField()
    measure = serializers.CharField(help_text="What is measured, from which business event to which.")
    sla = serializers.CharField()
    weeks = LatencyWeekSerializer(many=True)


class LatencySeriesSerializer(MetricsSerializer):
    metrics = None
    flows = LatencyFlowSerializer(many=True)


class ReconciliationRunSerializer(serializers.ModelSerializer):
    legal_entity = LegalEntityCodeField()
    summary = serializers.JSONField(read_only=True)

    class Meta:
        model = ReconciliationRun
        fields = [
            "id",
            "legal_entity",
            "period",
            "status",
            "started_at",
            "finished_at",
            "duration_ms",
            "error",
            "summary",
        ]
        read_only_fields = fields


class FlowSlaSerializer(serializers.Serializer):
    flow = serializers.CharField()
    measure = serializers.CharField(help_text="What the SLA is measured on.")
    target = serializers.DecimalField(max_digits=8, decimal_places=2)
    unit = serializers.ChoiceField(choices=FlowSla.Unit.choices)
    target_label = serializers.CharField()
    sync_measure = serializers.CharField(help_text="The integration's own clock: what the sync SLA is measured on.")
    sync_target_minutes = serializers.IntegerField(help_text="The sync SLA, in minutes.")
    note = serializers.CharField(allow_blank=True)
    is_default = serializers.BooleanField(help_text="No admin has set one: the dashboards' default applies.")
    updated_at = serializers.DateTimeField(allow_null=True)


# One page, not a list of pages (a list action with no paginator would say so).
@extend_schema_serializer(many=False)
class FlowSlaPageSerializer(serializers.Serializer):
    next = TextField(allow_null=True, read_only=True)
    previous = TextField(allow_null=True, read_only=True)
    results = FlowSlaSerializer(many=True, read_only=True)


class FlowSlaWriteSerializer(InputSerializer):
    target = serializers.DecimalField(max_digits=8, decimal_places=2, help_text="Greater than zero.")
    unit = serializers.ChoiceField(choices=FlowSla.Unit.choices)
    sync_target_minutes = serializers.IntegerField(
        required=False, min_value=1, max_value=43200, help_text="The sync SLA in minutes; omitted: kept."
    )
    note = TextField(required=False, allow_blank=True, default="", max_length=200)


__all__ = ["LegalEntity"]
