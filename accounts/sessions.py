"""Open sessions per user: recorded at sign-in, ended by sign-out, disabling, or an admin."""

from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest
from django.utils import timezone

from accounts.clientip import client_ip
from accounts.models import UserSession

AUTH_AT = "pscsync_auth_at"
SEEN_AT = "pscsync_seen_at"


def session_started(request: HttpRequest, user: User) -> None:
    now = timezone.now()
    request.session[AUTH_AT] = now.timestamp()
    request.session[SEEN_AT] = now.timestamp()
    if request.session.session_key is None:
        request.session.save()
    UserSession.objects.update_or_create(
        session_key=request.session.session_key,
        defaults={
            "user": user,
            "created_at": now,
            "last_seen_at": now,
            "ip": client_ip(request) if request.META.get("REMOTE_ADDR") else None,
            "user_agent": request.META.get("HTTP_USER_AGENT", "")[:300],
            "ended_at": None,
            "ended_reason": "",
        },
    )


def session_ended(session_key: str | None, reason: str) -> None:
    if session_key:
        UserSession.objects.filter(session_key=session_key, ended_at__isnull=True).update(
            ended_at=timezone.now(), ended_reason=reason
        )


def open_sessions(user: User) -> list[UserSession]:
    return list(UserSession.objects.filter(user=user, ended_at__isnull=True))


def sessions_end(user: User, reason: str) -> int:
    """Delete every session the user has open, server side. Returns how many were open."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    rows = open_sessions(user)
    for row in rows:
        store(session_key=row.session_key).delete()
    UserSession.objects.filter(pk__in=[r.pk for r in rows]).update(ended_at=timezone.now(), ended_reason=reason)
    return len(rows)
