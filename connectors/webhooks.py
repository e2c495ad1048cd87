"""Webhook intake: verify the raw bytes, store, answer. Nothing else happens in the request.

CSRF-exempt only because every delivery is authenticated by its signature, never by a cookie.
2xx is answered only after the event is committed; if the database is unavailable the answer is
503 so the sender retries (RELIABILITY.md WH-5). A delivery that can never be stored (not UTF-8,
an id or type too long, a number out of range, a NUL byte) is a 400 naming the problem: a 503
would have the sender retry the same bytes for ever.
"""

from __future__ import annotations

import functools
import logging

from django.conf import settings
from django.db import DatabaseError, DataError
from django.db import connection as db
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from connectors.base import InboundChange
from connectors.errors import ValidationError, WebhookRejected
from connectors.models import Connection
from connectors.registry import connector_for
from ops import tracing
from ops.logs import bind as log_bind
from ops.metrics import intake_observed
from pscsync.crypto import CredentialsUnreadable
from pscsync.intake import IntakeResult, change_legal_entity_code, change_problem, events_accept

log = logging.getLogger("pscsync.security")

# Stored with the event for the trail; never authorization headers or cookies.
KEPT_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "user-agent")


def _error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 503:
        response["Retry-After"] = "5"
    return response


def _read_body(request: HttpRequest) -> bytes | None:
    """The body, or None when it is over the limit. A chunked body (no Content-Length) is read
    from the server's de-chunked input under the same limit: Django reads such a body as empty."""
    limit = settings.WEBHOOK_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked and not request.META.get("CONTENT_LENGTH"):
        stream = request.META["wsgi.input"]
        parts, size = [], 0
        while size <= limit:
            part = stream.read(min(65536, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
        body = b"".join(parts)
    else:
        body = request.read(limit + 1)
    return None if len(body) > limit else body


@functools.cache
def _connection_query() -> tuple[str, tuple[str, ...]]:
    fields = Connection._meta.concrete_fields
    columns = ", ".join(db.ops.quote_name(str(f.column)) for f in fields)
    table = db.ops.quote_name(Connection._meta.db_table)
    # The names are the model's own and the slug is a parameter.
    sql = f"SELECT {columns} FROM {table} WHERE slug = %s AND is_active"  # noqa: S608  # nosec B608  # names from the model, the slug a parameter
    return sql, tuple(f.attname for f in fields)


def connection_active(slug: str) -> Connection | None:
    """The active connection named `slug`, read with one plain SELECT of the model's columns.

    Not a queryset: building and compiling `filter(slug=..., is_active=True).first()` was 0.62 ms
    of CPU a request against 0.16 ms for this (bench/webhook, issue 18); the row is the same
    (tests/test_webhooks.py compares every field). Read on every request, not cached in the
    process, so a deactivated connection or a rotated secret counts at once in every worker.
    None of Connection's fields converts its database value (from_db_value; a test says so)."""
    sql, names = _connection_query()
    with db.cursor() as cursor:
        cursor.execute(sql, [slug])
        row = cursor.fetchone()
    return None if row is None else Connection.from_db(db.alias, list(names), row)


def _text(body: bytes) -> str:
    """The body as stored (Event.raw_body): UTF-8 without NUL bytes, which PostgreSQL text refuses."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected(400, f"the body is not UTF-8 text (byte {exc.start}); send JSON in UTF-8") from None
    if "\x00" in text:
        raise WebhookRejected(400, "the body contains a NUL byte")
    return text


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


def _accept(
    connection: Connection, changes: list[InboundChange], headers: dict[str, str], raw: str
) -> list[IntakeResult]:
    """Store a delivery's changes. With tracing on, each change gets an `intake` span of its own
    (named by its key, flow and entity) whose context is stored on its event: the handoff a
    worker later opens for it continues that trace. One change, the usual case, is stored inside
    its span; several are stored together after their spans, so the delivery stays one statement."""
    if not tracing.enabled():
        return events_accept(connection=connection, changes=changes, headers=headers, raw_body=raw)
    traceparents = []
    for change in changes:
        with tracing.span(
            "intake",
            business_key=change.business_key,
            flow=change.flow,
            legal_entity=change_legal_entity_code(connection, change.legal_entity_code),
            connection=connection.slug,
        ):
            if len(changes) == 1:
                return events_accept(connection=connection, changes=changes, headers=headers, raw_body=raw)
            traceparents.append(tracing.current_traceparent())
    return events_accept(
        connection=connection, changes=changes, headers=headers, raw_body=raw, traceparents=traceparents
    )


def _receive(request: HttpRequest, slug: str) -> HttpResponse:
    body = _read_body(request)
    if body is None:
        return _error(413, f"the body is larger than {settings.WEBHOOK_MAX_BODY_BYTES} bytes")
    log_bind(connection=slug)  # for this request's log lines (RequestIdMiddleware resets it)
    try:
        connection = connection_active(slug)
        if connection is None:
            return _error(404, f"no active connection is named {slug!r}")
        request.pscsync_connection = connection.slug  # type: ignore[attr-defined]  # for the request log line
        connector = connector_for(connection)
        handshake = connector.handshake(method=request.method or "POST", query=request.GET.dict(), body=body)
        if handshake is not None:
            status, content_type, content = handshake
            return HttpResponse(content, status=status, content_type=content_type)
        headers = dict(request.headers.items())
        try:
            # Freshness of a signature is replay protection against the sender's real clock: wall
            # time, not the business clock (which a simulated firm runs in the past).
            event_id = connector.verify_webhook(headers=headers, body=body, now=timezone.now())
            raw = _text(body)
            try:
                changes = connector.parse_webhook(event_id=event_id, body=body)
            except RecursionError:
                raise WebhookRejected(400, "the body is nested too deeply") from None
            except ValidationError as malformed:
                # A body of another shape than the connector declared: the sender's to fix, so a
                # 400 it will not retry, in the connector's words.
                raise WebhookRejected(400, malformed.message) from None
            problem = next(filter(None, map(change_problem, changes)), "")
            if problem:
                raise WebhookRejected(400, problem)
        except WebhookRejected as rejected:
            log.warning("webhook refused for %s from %s: %s", slug, request.META.get("REMOTE_ADDR"), rejected.message)
            return _error(rejected.status, rejected.message)
        kept = {name: headers[name] for name in headers if name.lower() in KEPT_HEADERS}
        # One INSERT for all the changes (atomic by itself); a worker routes them (the doorbell).
        results = _accept(connection, changes, kept, raw)
    except CredentialsUnreadable:
        log.error("webhook for %s: the connection's credentials cannot be decrypted", slug)
        return _error(503, "this connection's credentials cannot be read; an administrator must re-enter them")
    except DataError as exc:
        # The database refused the values themselves (a case change_problem does not know yet):
        # permanent, so a 400 the sender will not retry; the transaction stored nothing.
        log.error("webhook for %s: the database refused the event's values: %s", slug, exc)
        return _error(400, "the event's values cannot be stored (a field too long or a number out of range)")
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
