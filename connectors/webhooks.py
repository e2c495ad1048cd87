"""Webhook intake: verify the raw bytes, store, answer. Nothing else happens in the request.

CSRF-exempt only because every delivery is authenticated by its signature, never by a cookie.
2xx is answered only after the event is committed; if the database is unavailable the answer is
503 so the sender retries (RELIABILITY.md WH-5).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from connectors.errors import WebhookRejected
from connectors.models import Connection
from connectors.registry import connector_for
from ops.logs import bind as log_bind
from ops.metrics import intake_observed
from pscsync.crypto import CredentialsUnreadable
from pscsync.intake import event_receive

log = logging.getLogger("pscsync.security")

# Stored with the event for the trail; never authorization headers or cookies.
KEPT_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "user-agent")


def _error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 503:
        response["Retry-After"] = "5"
    return response


def _read_body(request: HttpRequest) -> bytes | None:
    limit = settings.WEBHOOK_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    body = request.read(limit + 1)
    return None if len(body) > limit else body


@csrf_exempt
@require_POST
def webhook_receive(request: HttpRequest, slug: str) -> HttpResponse:
    response = _receive(request, slug)
    status = response.status_code
    outcome = (
        "accepted" if status == 202 else "duplicate" if status == 200 else "failed" if status >= 500 else "refused"
    )
    # The label is the slug only when it names a connection: callers choose URLs, not label values.
    known = getattr(request, "pscsync_connection", None)
    intake_observed(connection=known or "unknown", outcome=outcome)
    return response


def _receive(request: HttpRequest, slug: str) -> HttpResponse:
    body = _read_body(request)
    if body is None:
        return _error(413, f"the body is larger than {settings.WEBHOOK_MAX_BODY_BYTES} bytes")
    log_bind(connection=slug)  # for this request's log lines (RequestIdMiddleware resets it)
    try:
        connection = Connection.objects.filter(slug=slug, is_active=True).first()
        if connection is None:
            return _error(404, f"no active connection is named {slug!r}")
        request.pscsync_connection = connection.slug
        connector = connector_for(connection)
        handshake = connector.handshake(method=request.method, query=request.GET.dict(), body=body)
        if handshake is not None:
            status, content_type, content = handshake
            return HttpResponse(content, status=status, content_type=content_type)
        headers = dict(request.headers.items())
        try:
            # Freshness of a signature is replay protection against the sender's real clock: wall
            # time, not the business clock (which a simulated firm runs in the past).
            event_id = connector.verify_webhook(headers=headers, body=body, now=timezone.now())
            changes = connector.parse_webhook(event_id=event_id, body=body)
        except WebhookRejected as rejected:
            log.warning("webhook refused for %s from %s: %s", slug, request.META.get("REMOTE_ADDR"), rejected.message)
            return _error(rejected.status, rejected.message)
        kept = {name: headers[name] for name in headers if name.lower() in KEPT_HEADERS}
        raw = body.decode("utf-8")
        with transaction.atomic():
            results = [
                event_receive(connection=connection, change=change, headers=kept, raw_body=raw) for change in changes
            ]
    except CredentialsUnreadable:
        log.error("webhook for %s: the connection's credentials cannot be decrypted", slug)
        return _error(503, "this connection's credentials cannot be read; an administrator must re-enter them")
    except DatabaseError:
        log.exception("webhook for %s: database unavailable", slug)
        return _error(503, "the event could not be stored; please retry")
    created = [r for r in results if r.created]
    return JsonResponse(
        {
            "status": "accepted" if created else "duplicate",
            "events": [r.event.pk for r in results],
            "duplicates": len(results) - len(created),
        },
        status=202 if created else 200,
    )
