"""Roles and legal-entity scope: who may do what, and on which records.

Roles are Django groups holding model permissions (the design's role table). Scope is per user:
a set of legal entities or an explicit "all entities" flag; a user with neither sees nothing.
Every list, detail, export and aggregate goes through `scope_queryset`, so pages, the API and
tasks agree on what a user may see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AnonymousUser, Group, Permission, User
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

M = TypeVar("M", bound=Model)

VIEW_DASHBOARDS = "pscsync.view_dashboards"
VIEW_HANDOFFS = "pscsync.view_handoff"
WORK_EXCEPTIONS = "pscsync.work_exceptions"
CONFIGURE = "pscsync.configure_integrations"
MANAGE_USERS = "pscsync.manage_users"

_VIEWER = [
    "pscsync.view_dashboards",
    "pscsync.view_handoff",
    "pscsync.view_event",
    "pscsync.view_step",
    "pscsync.view_attempt",
    "pscsync.view_crossreference",
]
_OPERATOR = [*_VIEWER, "pscsync.work_exceptions"]
_ADMIN = [
    *_OPERATOR,
    "pscsync.configure_integrations",
    "pscsync.manage_users",
    "pscsync.view_auditentry",
    "pscsync.view_legalentity",
    "connectors.view_connection",
    "connectors.add_connection",
    "connectors.change_connection",
]
ROLES: dict[str, list[str]] = {"viewer": _VIEWER, "operator": _OPERATOR, "admin": _ADMIN}


def ensure_roles() -> None:
    """Create or correct the three role groups. Safe to run on every migrate."""
    for role, perm_names in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = []
        for name in perm_names:
            app_label, codename = name.split(".")
            perm = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if perm is not None:
                perms.append(perm)
        group.permissions.set(perms)


def role_of(user: User | AnonymousUser) -> str | None:
    if not user.is_authenticated:
        return None
    names = {g.name for g in user.groups.all()}
    for role in ("admin", "operator", "viewer"):
        if role in names:
            return role
    return None


def entity_ids_for(user: User | AnonymousUser) -> list[int] | None:
    """The legal entity ids a user may see; None means all of them."""
    from pscsync.models import AccessProfile

    if not user.is_authenticated or not user.is_active:
        return []
    cached = getattr(user, "_pscsync_entity_ids", False)
    if cached is not False:
        return cast("list[int] | None", cached)
    profile = AccessProfile.objects.filter(user=user).first()
    if profile is None:
        ids: list[int] | None = []
    elif profile.all_entities:
        ids = None
    else:
        ids = list(profile.legal_entities.values_list("pk", flat=True))
    user._pscsync_entity_ids = ids  # type: ignore[attr-defined]  # a per-request cache on the user
    return ids


def scope_queryset(qs: QuerySet[M], user: User | AnonymousUser, path: str = "legal_entity") -> QuerySet[M]:
    """Limit a queryset to the user's legal entities. `path` leads from the model to LegalEntity.

    Records with no legal entity are visible only to users who see all entities.
    """
    ids = entity_ids_for(user)
    if ids is None:
        return qs
    if not ids:
        return qs.none()
    return qs.filter(**{f"{path}__in": ids}).distinct()


def users_in_scope(actor: User | AnonymousUser) -> QuerySet:
    """The users an admin may see and manage: all of them for an admin of every entity; for an
    admin limited to some entities, only users limited to (some of) those same entities. A user
    who sees all entities, or any entity outside the admin's scope, is not theirs to manage:
    ending their sessions or resetting their second factor would reach beyond the scope."""
    from django.contrib.auth import get_user_model
    from django.db.models import Exists, OuterRef

    from pscsync.models import AccessProfile

    users = get_user_model().objects.all()
    ids = entity_ids_for(actor)
    if ids is None:
        return users
    if not ids:
        return users.none()
    through = AccessProfile.legal_entities.through
    outside = through.objects.filter(accessprofile__user=OuterRef("pk")).exclude(legalentity_id__in=ids)
    return users.filter(access__all_entities=False, access__legal_entities__in=ids).exclude(Exists(outside)).distinct()


def permission_required(perm: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Login required, then the permission, else 403 (not a redirect loop to the login page)."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.has_perm(perm):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


@dataclass(frozen=True)
class NavItem:
    label: str
    url_name: str
    permission: str
    section: str


# The navigation, in order. A page joins it when it exists; each shows only to roles that may use it.
NAVIGATION = [
    NavItem("Dashboards", "dashboards:overview", VIEW_DASHBOARDS, "dashboards"),
    NavItem("Workbench", "remediation:inbox", WORK_EXCEPTIONS, "workbench"),
    NavItem("Handoffs", "handoffs:list", VIEW_HANDOFFS, "handoffs"),
    NavItem("Mappings", "studio:list", CONFIGURE, "mappings"),
    NavItem("Connections", "connections:list", CONFIGURE, "connections"),
    NavItem("Users", "accounts:users", MANAGE_USERS, "account/users"),
    NavItem("Alerts", "alerts:list", CONFIGURE, "alerts"),
]


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Template context: the nav items this user may use, and the user's role and scope."""
    user = request.user
    if not user.is_authenticated:
        return {"nav_items": [], "user_role": None}
    path = request.path
    items = []
    for item in NAVIGATION:
        if user.has_perm(item.permission):
            active = path.startswith(f"/{item.section}/")
            items.append({"label": item.label, "url": reverse(item.url_name), "active": active})
    return {"nav_items": items, "user_role": role_of(user)}
