"""Reads the API and the alerts share."""

from __future__ import annotations

import hashlib

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from pscsync.access import scope_queryset
from remediation.models import Comment, ExceptionCause, ExceptionStatus, HandoffException
from remediation.selectors import CauseGroup, InboxFilter, InboxGroup, exception_groups, exception_items, inbox_groups


def group_id(flow: str, error_class: str, signature: str) -> str:
    """A stable id for an exception group (same cause, same id), usable in URLs."""
    return hashlib.sha256(f"{flow}\x1f{error_class}\x1f{signature}".encode()).hexdigest()[:16]


def exception_group_get(user: User | AnonymousUser, gid: str) -> CauseGroup | None:
    for group in exception_groups(user):
        if group_id(group.flow, group.error_class, group.signature) == gid:
            return group
    return None


# --- The workbench's causes, as the inbox shows them ------------------------------------------

# The inbox tab a cause sits in, by its status (remediation.selectors.exception_items).
TAB_OF_STATUS = {
    ExceptionStatus.OPEN: "open",
    ExceptionStatus.REGRESSED: "regressed",
    ExceptionStatus.ARCHIVED: "archived",
    ExceptionStatus.IN_PROGRESS: "in_progress",
    ExceptionStatus.RESOLVED: "resolved",
}


def causes_visible_to(user: User | AnonymousUser) -> QuerySet[ExceptionCause]:
    """Causes with at least one exception in the user's entities (as the workbench's cause page)."""
    items = scope_queryset(HandoffException.objects.all(), user)
    return ExceptionCause.objects.filter(pk__in=items.values("cause_id")).select_related("assignee")


def cause_row(user: User | AnonymousUser, cause: ExceptionCause) -> InboxGroup:
    """The cause's inbox row: the inbox's own totals, for the tab the cause sits in, narrowed to
    its flow, step and error class so only a handful of causes are summed."""
    f = InboxFilter(
        tab=TAB_OF_STATUS.get(cause.status, "open"),
        flow=cause.flow,
        step=cause.step_name,
        error_class=cause.error_class,
    )
    for group in inbox_groups(user, f, limit=1000):
        if group.cause.pk == cause.pk:
            return group
    return InboxGroup(cause=cause, count=0, first_seen=None, last_seen=None, money=[], customers=[], entities=[])


def cause_handoff_ids(user: User | AnonymousUser, cause: ExceptionCause, *, limit: int = 500) -> list[int]:
    f = InboxFilter(tab=TAB_OF_STATUS.get(cause.status, "open"))
    items = exception_items(user, f).filter(cause=cause).order_by("opened_at", "pk")
    return list(items.values_list("handoff_id", flat=True)[:limit])


def cause_comments(user: User | AnonymousUser, cause: ExceptionCause) -> list[Comment]:
    """Notes on the cause itself, and notes on its handoffs in the user's entities."""
    on_handoffs = scope_queryset(Comment.objects.filter(cause=cause, handoff__isnull=False), user)
    general = Comment.objects.filter(cause=cause, handoff__isnull=True)
    return sorted([*on_handoffs, *general], key=lambda c: (c.created_at, c.pk))
