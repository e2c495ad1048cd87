"""django-filter FilterSets for the API's lists."""

from __future__ import annotations

import django_filters as filters

from api.models import BulkJob
from connectors.models import Connection
from pscsync.models import AuditEntry, Event, Handoff, Mapping, Mismatch


class HandoffFilter(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=Handoff.Status.choices)
    flow = filters.CharFilter()
    business_key = filters.CharFilter()
    legal_entity = filters.CharFilter(field_name="legal_entity__code", help_text="A legal entity code.")
    error_class = filters.CharFilter(field_name="last_error_class")
    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    business_started_after = filters.IsoDateTimeFilter(field_name="business_started_at", lookup_expr="gte")
    business_started_before = filters.IsoDateTimeFilter(field_name="business_started_at", lookup_expr="lt")

    class Meta:
        model = Handoff
        fields: list[str] = []


class ExceptionFilter(HandoffFilter):
    status = None  # always needs_attention


class EventFilter(filters.FilterSet):
    status = filters.MultipleChoiceFilter(choices=Event.Status.choices)
    flow = filters.CharFilter()
    business_key = filters.CharFilter()
    connection = filters.CharFilter(field_name="connection__slug", help_text="A connection slug.")
    legal_entity = filters.CharFilter(field_name="legal_entity__code")
    handoff = filters.NumberFilter(field_name="handoff_id")
    received_after = filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="gte")
    received_before = filters.IsoDateTimeFilter(field_name="received_at", lookup_expr="lt")

    class Meta:
        model = Event
        fields: list[str] = []


class BulkJobFilter(filters.FilterSet):
    action = filters.ChoiceFilter(choices=BulkJob.Action.choices)
    status = filters.ChoiceFilter(choices=BulkJob.Status.choices)

    class Meta:
        model = BulkJob
        fields: list[str] = []


class MappingFilter(filters.FilterSet):
    connection = filters.CharFilter(field_name="connection__slug")
    entity = filters.CharFilter()
    direction = filters.ChoiceFilter(choices=Mapping.Direction.choices)

    class Meta:
        model = Mapping
        fields: list[str] = []


class ConnectionFilter(filters.FilterSet):
    kind = filters.ChoiceFilter(choices=Connection.Kind.choices)
    vendor = filters.ChoiceFilter(choices=Connection.Vendor.choices)
    is_active = filters.BooleanFilter()

    class Meta:
        model = Connection
        fields: list[str] = []


class MismatchFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=Mismatch.Status.choices)
    comparison = filters.ChoiceFilter(choices=Mismatch.Comparison.choices)
    cause = filters.ChoiceFilter(choices=Mismatch.Cause.choices)
    legal_entity = filters.CharFilter(field_name="legal_entity__code")
    period = filters.CharFilter()
    subject_key = filters.CharFilter()

    class Meta:
        model = Mismatch
        fields: list[str] = []


class AuditEntryFilter(filters.FilterSet):
    action = filters.CharFilter()
    object_type = filters.CharFilter()
    object_id = filters.CharFilter()
    actor = filters.CharFilter(field_name="actor_label")
    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEntry
        fields: list[str] = []
