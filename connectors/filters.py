"""The connection list's one filter set, used by the page (/connections/) and the API
(/api/v1/connections/) alike, over the connections the user may see: those serving a legal
entity of theirs (pscsync.access.scope_queryset; all of them for a user who sees every entity)."""

from __future__ import annotations

from typing import Any

import django_filters as filters
from django.db.models import QuerySet

from connectors.models import Connection
from pscsync.access import scope_queryset
from pscsync.filters import StrictFilterSet, strict_boolean


def connections_for(user: Any) -> QuerySet[Connection]:
    """The connections `user` may see, whatever the filters."""
    return scope_queryset(Connection.objects.prefetch_related("legal_entities"), user, "legal_entities")


class ConnectionFilter(StrictFilterSet):
    kind = filters.ChoiceFilter(choices=Connection.Kind.choices)
    vendor = filters.ChoiceFilter(choices=Connection.Vendor.choices, label="System")
    # A code, as the other lists take it: within the scoped queryset, a code of an entity the user
    # does not see matches nothing (never a hint that it exists).
    legal_entity = filters.CharFilter(field_name="legal_entities__code", label="Legal entity", distinct=True)
    is_active = strict_boolean(label="Active")

    class Meta:
        model = Connection
        fields: list[str] = []
