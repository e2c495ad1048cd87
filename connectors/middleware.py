"""The webhook's short way through the middleware (issue 18: intake's CPU a request).

A delivery is authenticated by its signature, carries no cookie and is answered in JSON to a
machine: the session, CSRF, sign-in, second-factor, messages, session-policy, static-file and htmx
middleware do nothing for it but cost about a fifth of the request's CPU (bench/webhook). This
middleware sits right after RequestIdMiddleware (after OpenTelemetry's, which tracing puts first):
a request whose path resolves to the webhook view goes through the rest of settings.MIDDLEWARE
less SKIPPED, then the view; every other request goes on through the whole stack unchanged.

What is kept is kept by construction: the list is settings.MIDDLEWARE less the names below, so
middleware added later runs for webhooks too unless it is added here, with its reason (and in
docs/security.md, "The webhook's short way"). Django's handler around the middleware (request
signals, closing old database connections, the django.request log line of a 4xx/5xx) is not
touched. Tracing's server span is started before this point; its http.route and an exception
the view raises, which OpenTelemetry's process_view and process_exception would record, are
recorded here (ops.tracing.server_route, server_exception).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, ResolverMatch, resolve
from django.utils.module_loading import import_string

from ops.tracing import server_exception, server_route

NAME = "connectors.middleware.WebhookShortWayMiddleware"
PREFIX = "/webhooks/"  # of the "webhook" route (pscsync/urls.py); resolved before it is trusted
ROUTE_NAME = "webhook"

# Middleware a webhook does not go through, and why that is safe.
SKIPPED = {
    "whitenoise.middleware.WhiteNoiseMiddleware": "answers only paths under STATIC_URL; a webhook's never is",
    "django.contrib.sessions.middleware.SessionMiddleware": "a delivery carries no session cookie and the view "
    "never reads request.session",
    "django.middleware.csrf.CsrfViewMiddleware": "the view is csrf_exempt: a delivery is authenticated by its "
    "signature over the raw body, never by a cookie a browser could be made to send",
    "django.contrib.auth.middleware.AuthenticationMiddleware": "no person signs in; the view never reads request.user",
    "django_otp.middleware.OTPMiddleware": "the second factor of a signed-in person; there is none",
    "django.contrib.messages.middleware.MessageMiddleware": "no page is rendered, so no message is shown",
    "accounts.middleware.SessionPolicyMiddleware": "acts only for a signed-in person (idle timeout, lifetime, "
    "second factor)",
    "django_htmx.middleware.HtmxMiddleware": "request.htmx is read by pages only",
}


class WebhookShortWayMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        names = list(settings.MIDDLEWARE)
        self.kept = [name for name in names[names.index(NAME) + 1 :] if name not in SKIPPED]
        # Built as Django's handler builds its chain (BaseHandler.load_middleware): each layer's
        # exceptions become responses, and process_view hooks run after the URL is resolved.
        # (Synchronous only, as the whole stack is here: gunicorn's sync and gthread workers.)
        handler: Callable[[HttpRequest], Any] = convert_exception_to_response(self._view)
        self._view_hooks: list[Callable[..., HttpResponse | None]] = []
        for name in reversed(self.kept):
            middleware = import_string(name)(handler)
            if hasattr(middleware, "process_view"):
                self._view_hooks.insert(0, middleware.process_view)
            handler = convert_exception_to_response(middleware)
        self.webhook = handler

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(PREFIX):
            try:
                match = resolve(request.path_info)
            except Resolver404:
                match = None
            if match is not None and match.url_name == ROUTE_NAME:
                request.resolver_match = match
                server_route(match.route)
                return self.webhook(request)
        return self.get_response(request)

    def _view(self, request: HttpRequest) -> HttpResponse:
        match = cast(ResolverMatch, request.resolver_match)  # set by __call__
        for hook in self._view_hooks:
            response = hook(request, match.func, match.args, match.kwargs)
            if response is not None:
                return response
        try:
            return match.func(request, *match.args, **match.kwargs)
        except Exception as exc:
            server_exception(exc)  # then Django answers 500 and logs it, as on the whole stack
            raise
