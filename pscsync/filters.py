"""The filter sets shared by pages and the API (django-filter, the NetBox way: one FilterSet per
list, used by the page's form and by the API's query string alike), and their base.

A filter set here only narrows a queryset it is given: the caller gives it the records the user
may see (pscsync.access.scope_queryset), so no filter can widen the scope."""

from __future__ import annotations

import datetime as dt
import re

import django_filters as filters
from django import forms
from django.db.models import Q
from drf_spectacular.utils import extend_schema_field

from connectors.canonical import keys_behind
from pscsync import clock
from pscsync.models import Handoff


def _boolean(qs, name: str, value: str):
    return qs.filter(**{name: value == "true"}) if value else qs


def strict_boolean(**kwargs):
    """true or false, and nothing else (a typo is an error, not 'no filter')."""
    return filters.ChoiceFilter(choices=[("true", "true"), ("false", "false")], method=_boolean, **kwargs)


class StrictFilterSet(filters.FilterSet):
    """A typed filter (a choice, a date-time, a number) given with an empty value is an error,
    not "no filter": an integration with a bug in its query string should hear about it.
    Free-text filters may be empty."""

    def is_valid(self) -> bool:
        valid = super().is_valid()
        for name, flt in self.filters.items():
            if isinstance(flt, filters.CharFilter) and not isinstance(flt, filters.ChoiceFilter):
                continue
            if name in self.data and "" in self.data.getlist(name):
                self.form.add_error(name if name in self.form.fields else None, "may not be empty")
                valid = False
        return valid


def page_params(query):  # a QueryDict
    """A page form's query without its empty fields: the form's "any" is an empty value, which
    the API refuses as a mistake (StrictFilterSet), so the page leaves it out. None when nothing
    is left (an unbound filter set: no filter)."""
    params = query.copy()
    for name in [n for n in params if not any(params.getlist(n))]:
        del params[name]
    return params or None


# RFC 3339, as OpenAPI's date-time format says: a date, a time and an offset (Z or ±hh:mm).
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class Rfc3339Field(forms.DateTimeField):
    def to_python(self, value):
        if value in self.empty_values:
            return None
        if not isinstance(value, str) or not _RFC3339.match(value.strip()):
            raise forms.ValidationError("Use an RFC 3339 date-time, e.g. 2026-11-01T09:00:00Z.", code="invalid")
        parsed = forms.DateTimeField.to_python(self, value.strip().replace("z", "Z").replace("t", "T"))
        if parsed is None:
            return None
        # In UTC: PostgreSQL refuses offsets beyond ±15:59, which RFC 3339 allows.
        try:
            return parsed.astimezone(dt.UTC)
        except OverflowError:  # beyond year 1 or 9999 in UTC: the edge of time is the same filter
            if parsed.year == 1:
                return dt.datetime.min.replace(tzinfo=dt.UTC)
            return dt.datetime.max.replace(tzinfo=dt.UTC)


class DateTimeFilter(filters.IsoDateTimeFilter):
    field_class = Rfc3339Field


class CodesFilter(filters.BaseInFilter, filters.CharFilter):
    """One code or several separated by commas (`legal_entity=uk,us`): a dashboard bar that
    spans entities opens exactly its records."""


# A hundred years: further back than any record, and within what a date can subtract.
MAX_AGE_DAYS = 36500


@extend_schema_field({"type": "integer", "minimum": 0, "maximum": MAX_AGE_DAYS})
class DaysFilter(filters.NumberFilter):
    """A whole number of days, 0 to MAX_AGE_DAYS (not a float, not a date beyond the calendar)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("min_value", 0)
        kwargs.setdefault("max_value", MAX_AGE_DAYS)
        super().__init__(*args, **kwargs)


def _business_age(qs, name: str, value: int):
    """Whole calendar days (UTC) since the business started, both ends included, the dashboards'
    rule (dashboards.metrics.age_days): a bar of "Handoffs needing a person, by age" opens
    exactly its handoffs."""
    if value is None:
        return qs
    day = clock.now().date() - dt.timedelta(days=value)
    lookup = "lte" if name == "age_min" else "gte"
    return qs.filter(**{f"business_started_at__date__{lookup}": day})


class HandoffFilter(StrictFilterSet):
    """The handoff list (/handoffs/) and GET /api/v1/handoffs/."""

    status = filters.MultipleChoiceFilter(choices=Handoff.Status.choices, label="Status")
    flow = filters.CharFilter(label="Flow")
    business_key = filters.CharFilter(label="Business key")
    q = filters.CharFilter(method="_search", label="Business key or error", help_text="Part of the key or the error.")
    legal_entity = CodesFilter(
        field_name="legal_entity__code",
        lookup_expr="in",
        label="Legal entity",
        help_text="A legal entity code, or several, comma-separated.",
    )
    record = filters.CharFilter(
        method="_about",
        label="About the record",
        help_text="Our key of a record (an opportunity id, P-…, C-…, I-…): the handoffs under that key, "
        "under the key it is built from, or that failed on it.",
    )
    error_class = filters.CharFilter(field_name="last_error_class", label="Kind of error")
    age_min = DaysFilter(
        method=_business_age, label="Started at least (days ago)", help_text="Whole days since the business started."
    )
    age_max = DaysFilter(
        method=_business_age, label="Started at most (days ago)", help_text="Whole days since the business started."
    )
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte", label="Created from")
    created_before = DateTimeFilter(field_name="created_at", lookup_expr="lt", label="Created before")
    business_started_after = DateTimeFilter(
        field_name="business_started_at", lookup_expr="gte", label="Business started from"
    )
    business_started_before = DateTimeFilter(
        field_name="business_started_at", lookup_expr="lt", label="Business started before"
    )

    class Meta:
        model = Handoff
        fields: list[str] = []

    def _about(self, qs, name: str, value: str):
        value = value.strip()
        if not value:
            return qs
        keys = keys_behind(value)
        return qs.filter(Q(business_key__in=keys) | Q(failed_key__in=keys))

    def _search(self, qs, name: str, value: str):
        value = value.strip()
        if not value:
            return qs
        return qs.filter(Q(business_key__icontains=value) | Q(last_error_message__icontains=value))
