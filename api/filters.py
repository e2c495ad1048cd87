"""django-filter FilterSets for the API's lists."""

from __future__ import annotations

import datetime as dt
import re

import django_filters as filters
from django import forms
from drf_spectacular.utils import extend_schema_field

from connectors.filters import ConnectionFilter  # noqa: F401  (the pages' filter set, the API's too)
from pscsync.filters import StrictFilterSet, strict_boolean  # noqa: F401
from pscsync.models import AuditEntry, Event, Handoff, Mapping, Mismatch, ReconciliationRun
from remediation.models import BulkJob

# RFC 3339, as OpenAPI's date-time format says: a date, a time and an offset (Z or ±hh:mm).
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class Rfc3339Field(forms.DateTimeField):
    def to_python(self, value):
        if value in self.empty_values:
            return None
        if not isinstance(value, str) or not _RFC3339.match(value.strip()):
            raise forms.ValidationError("Use an RFC 3339 date-time, e.g. 2026-11-01T09:00:00Z.", code="invalid")
        parsed = forms.DateTimeField.to_python(self, value.strip().replace("z", "Z").replace("t", "T"))
        # In UTC: PostgreSQL refuses offsets beyond ±15:59, which RFC 3339 allows.
        try:
            return parsed.astimezone(dt.UTC) if parsed is not None else None
        except OverflowError:  # beyond year 1 or 9999 in UTC: the edge of time is the same filter
            if parsed.year == 1:
                return dt.datetime.min.replace(tzinfo=dt.UTC)
            return dt.datetime.max.replace(tzinfo=dt.UTC)


class DateTimeFilter(filters.IsoDateTimeFilter):
    field_class = Rfc3339Field


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": 2**63 - 1})
class IdFilter(filters.NumberFilter):
    """A record id: a whole number in the database's range (not a float that overflows it)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class HandoffFilter(StrictFilterSet):
    status = filters.MultipleChoiceFilter(choices=Handoff.Status.choices)
    flow = filters.CharFilter()
    business_key = filters.CharFilter()
    legal_entity = filters.CharFilter(field_name="legal_entity__code", help_text="A legal entity code.")
    error_class = filters.CharFilter(field_name="last_error_class")
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = DateTimeFilter(field_name="created_at", lookup_expr="lt")
    business_started_after = DateTimeFilter(field_name="business_started_at", lookup_expr="gte")
    business_started_before = DateTimeFilter(field_name="business_started_at", lookup_expr="lt")

    class Meta:
        model = Handoff
        fields: list[str] = []


class ExceptionFilter(HandoffFilter):
    status = None  # always needs_attention


class EventFilter(StrictFilterSet):
    status = filters.MultipleChoiceFilter(choices=Event.Status.choices)
    flow = filters.CharFilter()
    business_key = filters.CharFilter()
    connection = filters.CharFilter(field_name="connection__slug", help_text="A connection slug.")
    legal_entity = filters.CharFilter(field_name="legal_entity__code")
    handoff = IdFilter(field_name="handoff_id")
    received_after = DateTimeFilter(field_name="received_at", lookup_expr="gte")
    received_before = DateTimeFilter(field_name="received_at", lookup_expr="lt")

    class Meta:
        model = Event
        fields: list[str] = []


class BulkJobFilter(StrictFilterSet):
    kind = filters.ChoiceFilter(choices=BulkJob.Kind.choices)
    status = filters.ChoiceFilter(choices=BulkJob.Status.choices)

    class Meta:
        model = BulkJob
        fields: list[str] = []


class MappingFilter(StrictFilterSet):
    connection = filters.CharFilter(field_name="connection__slug")
    entity = filters.CharFilter()
    direction = filters.ChoiceFilter(choices=Mapping.Direction.choices)

    class Meta:
        model = Mapping
        fields: list[str] = []


class MismatchFilter(StrictFilterSet):
    status = filters.ChoiceFilter(choices=Mismatch.Status.choices)
    comparison = filters.ChoiceFilter(choices=Mismatch.Comparison.choices)
    cause = filters.ChoiceFilter(choices=Mismatch.Cause.choices)
    legal_entity = filters.CharFilter(field_name="legal_entity__code")
    period = filters.CharFilter()
    subject_key = filters.CharFilter()

    class Meta:
        model = Mismatch
        fields: list[str] = []


class AuditEntryFilter(StrictFilterSet):
    action = filters.CharFilter()
    object_type = filters.CharFilter()
    object_id = filters.CharFilter()
    actor = filters.CharFilter(field_name="actor_label")
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = DateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEntry
        fields: list[str] = []


class ReconciliationRunFilter(StrictFilterSet):
    status = filters.ChoiceFilter(choices=ReconciliationRun.Status.choices)
    legal_entity = filters.CharFilter(field_name="legal_entity__code")
    period = filters.CharFilter()
    started_after = DateTimeFilter(field_name="started_at", lookup_expr="gte")
    started_before = DateTimeFilter(field_name="started_at", lookup_expr="lt")

    class Meta:
        model = ReconciliationRun
        fields: list[str] = []
