"""Reads the API and the alerts share."""

from __future__ import annotations

import hashlib

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from remediation.selectors import CauseGroup, exception_groups


def group_id(flow: str, error_class: str, signature: str) -> str:
    """A stable id for an exception group (same cause, same id), usable in URLs."""
    return hashlib.sha256(f"{flow}\x1f{error_class}\x1f{signature}".encode()).hexdigest()[:16]


def exception_group_get(user: AbstractBaseUser | AnonymousUser, gid: str) -> CauseGroup | None:
    for group in exception_groups(user):
        if group_id(group.flow, group.error_class, group.signature) == gid:
            return group
    return None
