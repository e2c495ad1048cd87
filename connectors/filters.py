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
from pscsync.models import LegalEntity


def connections_for(user: Any) -> QuerySet[Connection]:
    """The connections `user` may see, whatever the filters."""
    return scope_queryset(Connection.objects.prefetch_related("legal_entities"), user, "legal_entities")


class ConnectionFilter(StrictFilterSet):
    kind = filters.ChoiceFilter(choices=Connection.Kind.choices)
    vendor = filters.ChoiceFilter(choices=Connection.Vendor.choices, label="System")
    legal_entity = filters.ModelChoiceFilter(
        field_name="legal_entities",
        to_field_name="code",
        queryset=lambda request: (
            scope_queryset(LegalEntity.objects.all(), request.user, "pk")
            if request is not None
            else LegalEntity.objects.all()
        ),
        label="Legal entity",
    )
    is_active = strict_boolean(label="Active")

    class Meta:
        model = Connection
        fields: list[str] = []
