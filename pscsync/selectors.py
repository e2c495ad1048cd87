"""Reads that pages, the API and tasks share. Every one is scoped to the user's legal entities."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from pscsync.access import scope_queryset
from pscsync.models import Event, Handoff

Person = User | AnonymousUser


def handoffs_visible_to(user: Person) -> QuerySet[Handoff]:
    return scope_queryset(Handoff.objects.select_related("legal_entity", "source_connection"), user)


def handoff_get_for_user(*, user: Person, pk: int) -> Handoff:
    """The handoff, or 404, also when it belongs to an entity the user may not see."""
    return get_object_or_404(handoffs_visible_to(user), pk=pk)


def events_for_handoff(handoff: Handoff) -> QuerySet[Event]:
    """The trigger event and every later change for the same key (queued, superseded, stale)."""
    return (
        Event.objects.filter(flow=handoff.flow, business_key=handoff.business_key)
        .select_related("connection")
        .order_by("occurred_at", "source_sequence")
    )
