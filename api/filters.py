"""django-filter FilterSets for the API's lists."""

from __future__ import annotations

import django_filters as filters
from django import forms
from django_filters.rest_framework import DjangoFilterBackend
from django_filters.utils import translate_validation
from drf_spectacular.utils import extend_schema_field

# The lists a page shows too use the page's filter set (one definition of each filter).
from connectors.filters import ConnectionFilter  # noqa: F401
from pscsync.filters import DateTimeFilter, HandoffFilter, StrictFilterSet, strict_boolean  # noqa: F401
from pscsync.models import AuditEntry, Event, Mapping, Mismatch, ReconciliationRun
from remediation.filters import ExceptionFilter, exceptions_for
from remediation.models import BulkJob


class ExceptionFilterBackend(DjangoFilterBackend):
    """The exceptions list (/api/v1/exceptions/) answers with handoffs, but its filter set is the
    workbench's, over the exceptions (remediation.filters): the filter set runs on the exceptions
    the user may see, and the list keeps the handoffs of those it selects."""

    def get_filterset_class(self, view, queryset=None):
        return ExceptionFilter  # over HandoffException, not the view's Handoff queryset

    def filter_queryset(self, request, queryset, view):
        if view.action != "list":  # one exception's actions reach it whatever its state (a reopen)
            return queryset
        found = self.get_filterset(request, exceptions_for(request.user), view)
        if not found.is_valid():
            raise translate_validation(found.errors)
        return queryset.filter(pk__in=found.qs.values("handoff_id"))


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": 2**63 - 1})
class IdFilter(filters.NumberFilter):
    """A record id: a whole number in the database's range (not a float that overflows it)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


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
