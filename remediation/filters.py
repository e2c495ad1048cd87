"""The exceptions' one filter set, used by the workbench (/workbench/: the inbox, its causes'
rows, its CSV export and bulk jobs) and by the API (/api/v1/exceptions/ and
/api/v1/exception-causes/) alike, over the exceptions the user may see
(pscsync.access.scope_queryset).

It narrows the exceptions only: the inbox's aggregate (remediation.selectors.inbox_page) runs on
the queryset it returns, so the covering index `exc_status_cause` and the trigram index on the
search text still serve the inbox."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import django_filters as filters
from django.db.models import Q, QuerySet

from pscsync import clock
from pscsync.access import scope_queryset
from pscsync.filters import CodesFilter, DateTimeFilter, DaysFilter, StrictFilterSet
from remediation.models import ExceptionStatus, HandoffException

# The inbox's tabs: which exceptions each shows (its status, and its cause's for the open ones).
TABS = {
    "open": "Open",
    "regressed": "Regressed",
    "in_progress": "Retrying",
    "archived": "Archived",
    "resolved": "Resolved",
}
_TAB_FILTER = {
    "open": Q(status=ExceptionStatus.OPEN, cause__status=ExceptionStatus.OPEN),
    "regressed": Q(status=ExceptionStatus.OPEN, cause__status=ExceptionStatus.REGRESSED),
    "archived": Q(status=ExceptionStatus.OPEN, cause__status=ExceptionStatus.ARCHIVED),
    "in_progress": Q(status=ExceptionStatus.IN_PROGRESS),
    "resolved": Q(status=ExceptionStatus.RESOLVED),
}


def exceptions_for(user: Any) -> QuerySet[HandoffException]:
    """The exceptions `user` may see, whatever the filters."""
    return scope_queryset(HandoffException.objects.all(), user)


class ExceptionFilter(StrictFilterSet):
    """Without a tab: every exception that needs a person now (open, whatever its cause's state),
    which is what GET /api/v1/exceptions/ has always listed. The inbox always names its tab."""

    tab = filters.ChoiceFilter(choices=list(TABS.items()), method="_tab", label="Tab")
    q = filters.CharFilter(
        method="_search", label="Search", help_text="Part of an identifier, the customer or the message."
    )
    flow = filters.CharFilter(label="Flow")
    step = filters.CharFilter(field_name="step_name", label="Step")
    error_class = filters.CharFilter(label="Kind")
    legal_entity = CodesFilter(
        field_name="legal_entity__code",
        lookup_expr="in",
        label="Legal entity",
        help_text="A legal entity code, or several, comma-separated.",
    )
    customer = filters.CharFilter(field_name="customer_name", lookup_expr="icontains", label="Customer")
    connection = filters.CharFilter(field_name="connection__slug", label="Connection", help_text="A connection slug.")
    assignee = filters.CharFilter(
        method="_assignee", label="Assignee", help_text="A user name, or `none` for nobody's."
    )
    age = DaysFilter(method="_age", label="Older than (days)", help_text="Needed a person at least this many days.")
    business_key = filters.CharFilter(field_name="handoff__business_key", label="Business key")
    created_after = DateTimeFilter(field_name="handoff__created_at", lookup_expr="gte", label="Created from")
    created_before = DateTimeFilter(field_name="handoff__created_at", lookup_expr="lt", label="Created before")
    business_started_after = DateTimeFilter(
        field_name="business_started_at", lookup_expr="gte", label="Business started from"
    )
    business_started_before = DateTimeFilter(
        field_name="business_started_at", lookup_expr="lt", label="Business started before"
    )

    class Meta:
        model = HandoffException
        fields: list[str] = []

    def filter_queryset(self, queryset: QuerySet[HandoffException]) -> QuerySet[HandoffException]:
        if not self.form.cleaned_data.get("tab"):
            queryset = queryset.filter(status=ExceptionStatus.OPEN)
        return super().filter_queryset(queryset)

    def _tab(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        return qs.filter(_TAB_FILTER[value]) if value else qs

    def _search(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        # search_text is stored lower-cased, with a trigram index (remediation 0007): a LIKE on it.
        value = value.strip().lower()
        return qs.filter(search_text__contains=value) if value else qs

    def _assignee(self, qs: QuerySet, name: str, value: str) -> QuerySet:
        # An exception's own assignee, else its cause's.
        value = value.strip()
        if value == "none":
            return qs.filter(assignee__isnull=True, cause__assignee__isnull=True)
        if value:
            return qs.filter(Q(assignee__username=value) | Q(assignee__isnull=True, cause__assignee__username=value))
        return qs

    def _age(self, qs: QuerySet, name: str, value: int | None) -> QuerySet:
        return qs if value is None else qs.filter(opened_at__lte=clock.now() - timedelta(days=value))
