"""DRF authentication: personal API tokens (Authorization: Bearer psc_…) and the browser session."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from api.tokens import TokenInvalid, api_token_check


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in {"bearer", "token"}:
            return None
        try:
            token = api_token_check(value.strip(), remote_addr=request.META.get("REMOTE_ADDR"))
        except TokenInvalid as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return 'Bearer realm="pscsync"'


class SessionAuthentication(authentication.SessionAuthentication):
    """The browser session, with CSRF enforced on unsafe methods (DRF's own rule)."""
