"""Role permissions for the API: every view names the permission each of its actions needs,
the same ones the pages use (pscsync.access). Legal-entity scope is applied in the querysets."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class RolePermission(BasePermission):
    """`view.required_permissions` maps an action (or "read"/"write") to a Django permission.

    Read actions fall back to "read", everything else to "write"; a view that names neither for an
    action refuses it, so forgetting a permission closes the door rather than opening it."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated or not user.is_active:
            return False
        required: dict[str, str] = getattr(view, "required_permissions", {})
        action = getattr(view, "action", None) or request.method.lower()
        perm = required.get(action) or required.get("read" if request.method in ("GET", "HEAD", "OPTIONS") else "write")
        return bool(perm) and user.has_perm(perm)
