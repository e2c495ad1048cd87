"""Reads that pages, the API and tasks share. Every one is scoped to the user's legal entities."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from pscsync.access import scope_queryset
from pscsync.models import Event, Handoff

Person = User | AnonymousUser


def handoffs_visible_to(user: Person) -> QuerySet[Handoff]:
    return scope_queryset(Handoff.objects.select_related("legal_entity", "source_connection"), user)


def handoff_get_for_user(*, user: Person, pk: int) -> Handoff:
    """The handoff, or 404, also when it belongs to an entity the user may not see."""
    return get_object_or_404(handoffs_visible_to(user), pk=pk)


def handoffs_filtered(
    user: Person,
    *,
    status: str = "",
    flow: str = "",
    q: str = "",
    age_min: int | None = None,
    age_max: int | None = None,
    entity_codes: tuple[str, ...] = (),
    today: dt.date | None = None,
) -> QuerySet[Handoff]:
    """`age_min`/`age_max`: whole calendar days (UTC) since the business started, both ends
    included, the dashboards' rule (dashboards.metrics.age_days): a bar of "Handoffs needing a
    person, by age" opens exactly its handoffs."""
    qs = handoffs_visible_to(user)
    if age_min is not None or age_max is not None:
        today = today or dt.datetime.now(dt.UTC).date()
        if age_min is not None:
            qs = qs.filter(business_started_at__date__lte=today - dt.timedelta(days=age_min))
        if age_max is not None:
            qs = qs.filter(business_started_at__date__gte=today - dt.timedelta(days=age_max))
    if entity_codes:
        qs = qs.filter(legal_entity__code__in=entity_codes)
    if status:
        qs = qs.filter(status=status)
    if flow:
        qs = qs.filter(flow=flow)
    if q:
        qs = qs.filter(Q(business_key__icontains=q) | Q(last_error_message__icontains=q))
    return qs.order_by("-created_at")


def events_for_handoff(handoff: Handoff) -> QuerySet[Event]:
    """The trigger event and every later change for the same key (queued, superseded, stale)."""
    return (
        Event.objects.filter(flow=handoff.flow, business_key=handoff.business_key)
        .select_related("connection")
        .order_by("occurred_at", "source_sequence")
    )
