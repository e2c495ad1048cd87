"""Session policy on every request: idle timeout, absolute lifetime, and the second factor."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_cache_control

from accounts.sessions import AUTH_AT, SEEN_AT, session_ended
from accounts.twofactor import second_factor_required, signed_in_with_second_factor, user_has_totp

# Session writes are throttled: "last seen" moves at most this often (idle timeout precision).
SEEN_GRANULARITY_SECONDS = 30


def _wants_page(request: HttpRequest) -> bool:
    """A plain browser navigation (redirect it) rather than htmx, a form post or the API."""
    return (
        request.method in ("GET", "HEAD")
        and not request.headers.get("HX-Request")
        and not request.path.startswith("/api/")
    )


def _send_to(request: HttpRequest, url: str, status_text: str) -> HttpResponse:
    if _wants_page(request):
        return HttpResponseRedirect(f"{url}?{urlencode({'next': request.get_full_path()})}")
    response = HttpResponseForbidden(status_text)
    if request.headers.get("HX-Request"):
        response["HX-Redirect"] = url
    return response


class SessionPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated and not request.path.startswith(f"/{settings.STATIC_URL.strip('/')}/"):
            response = self._expired(request) or self._second_factor(request)
            if response is not None:
                return response
        return self.get_response(request)

    def _expired(self, request: HttpRequest) -> HttpResponse | None:
        # Wall-clock time, not pscsync.clock: the demo's scaled business clock must not end sessions.
        now = timezone.now().timestamp()
        session = request.session
        auth_at, seen_at = session.get(AUTH_AT), session.get(SEEN_AT)
        reason = ""
        if auth_at is None or now - auth_at > settings.SESSION_COOKIE_AGE:
            reason = "absolute lifetime reached"
            text = f"Your session ended after {settings.SESSION_COOKIE_AGE // 3600} hours. Please sign in again."
        elif seen_at is None or now - seen_at > settings.SESSION_IDLE_SECONDS:
            reason = "idle timeout"
            text = f"You were signed out after {settings.SESSION_IDLE_SECONDS // 60} minutes without activity."
        if reason:
            session_ended(session.session_key, reason)
            logout(request)
            messages.info(request, text)
            return _send_to(request, reverse("login"), "Session ended")
        if seen_at is None or now - seen_at > SEEN_GRANULARITY_SECONDS:  # None: returned above
            session[SEEN_AT] = now
            from accounts.models import UserSession

            UserSession.objects.filter(session_key=session.session_key).update(last_seen_at=timezone.now())
        return None

    def _second_factor(self, request: HttpRequest) -> HttpResponse | None:
        user = cast(User, request.user)  # __call__ runs this for signed-in users only
        if signed_in_with_second_factor(user) or not second_factor_required(user):
            return None
        from accounts.oidc import IDP_MFA_SESSION_KEY

        if request.session.get(IDP_MFA_SESSION_KEY) == user.pk:
            return None  # the identity provider's own multi-factor sign-in (accounts/oidc.py)
        open_paths = {reverse("accounts:two_factor_setup"), reverse("accounts:two_factor_verify"), reverse("logout")}
        if request.path in open_paths:
            return None
        target = "accounts:two_factor_verify" if user_has_totp(user) else "accounts:two_factor_setup"
        return _send_to(request, reverse(target), "Second factor required")


class NoStoreMiddleware:
    """`Cache-Control: no-store, private` on every answer to a signed-in person or an API
    caller: a page or JSON with a firm's records must not stay in a shared proxy or in the
    browser's cache after sign-out (the back button on a shared machine)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        user = getattr(request, "user", None)  # a token caller's user is set by DRF by now
        signed_in = user is not None and user.is_authenticated
        private = signed_in or "HTTP_AUTHORIZATION" in request.META or request.path.startswith("/api/")
        if private and "no-store" not in response.get("Cache-Control", ""):
            patch_cache_control(response, no_store=True, private=True)
        return response
