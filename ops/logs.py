"""Structured logs: every line carries what it is about.

The fields are held in context variables, so they follow the work through a request, a Celery
task and every vendor call without being passed around: `request_id` (from the caller's
`X-Request-ID` or made here, returned on the response and carried into the tasks a request
publishes), `trace_id` (the OpenTelemetry trace when tracing is on), `handoff_id`, `business_key`,
`flow`, `step`, `legal_entity` and `connection`. The same fields become the attributes of the spans
started inside them (ops.tracing). A logging filter copies them onto each record; the JSON formatter
(python-json-logger) writes them as keys in production, the text formatter appends them in
`make demo`. Any logger works unchanged: Django's, Celery's, ours.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.http import HttpRequest, HttpResponse

FIELDS = ("request_id", "trace_id", "handoff_id", "business_key", "flow", "step", "legal_entity", "connection")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("pscsync_log_context", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's request id is kept only if it is short and plain, so it cannot forge log lines.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def log_context() -> dict[str, Any]:
    return dict(_context.get() or {})


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add `fields` to every log line written inside the block (empty values are left out)."""
    token = _context.set({**log_context(), **{k: v for k, v in fields.items() if v not in (None, "")}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add `fields` until the enclosing `bound` block (or task, or request) ends."""
    _context.set({**log_context(), **{k: v for k, v in fields.items() if v not in (None, "")}})


def _trace_id() -> str:
    try:
        from opentelemetry import trace
    except ImportError:  # tracing is optional
        return ""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


class ContextFilter(logging.Filter):
    """Copies the bound fields (and the current trace id) onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = log_context()
        # A handoff's trace, once bound (ops.tracing.handoff_span), wins over the current span's:
        # the task's own lines (Celery's "succeeded") come from a delivery serving many handoffs.
        trace_id = fields.get("trace_id") or _trace_id()
        if trace_id:
            fields["trace_id"] = trace_id
        for name in FIELDS:
            setattr(record, name, fields.get(name, ""))
        record.context = " ".join(f"{name}={fields[name]}" for name in FIELDS if fields.get(name))
        return True


class TextFormatter(logging.Formatter):
    """Human-readable lines for `make demo`: the usual line, then the bound fields in brackets."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = getattr(record, "context", "")
        return f"{line} [{context}]" if context else line


def request_id_for(request: HttpRequest) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Takes the caller's X-Request-ID (or makes one), binds it for the request's log lines and the
    tasks it publishes, and returns it on the response so a caller can quote it to support."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_for(request)
        setattr(request, "request_id", request_id)  # noqa: B010 (HttpRequest declares no such attribute)
        # Left bound after the middleware returns, so Django's own line about the response (written
        # by the handler outside the middleware) has the id too; request_finished clears it.
        _context.set({"request_id": request_id})
        from ops.tracing import annotate  # here: ops.tracing reads this module's fields

        annotate(request_id=request_id)  # the server span started before the id was known
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def request_finished_clear(**kwargs: Any) -> None:
    _context.set(None)


# Celery: the request id travels in the message headers, so a task's lines carry the id of the
# request that caused it (a webhook's delivery, a person's resubmit).
CELERY_HEADER = "pscsync_request_id"


def celery_publish_headers(headers: dict[str, Any] | None, **kwargs: Any) -> None:
    request_id = log_context().get("request_id")
    if request_id and headers is not None and CELERY_HEADER not in headers:
        headers[CELERY_HEADER] = request_id


_task_tokens: dict[str, contextvars.Token] = {}


def celery_task_started(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    request = getattr(task, "request", None)
    request_id = getattr(request, CELERY_HEADER, None) or (getattr(request, "headers", None) or {}).get(CELERY_HEADER)
    fields = {"request_id": request_id} if request_id else {}
    if task is not None and task.name == "pscsync.tasks.handoff_run_task" and request is not None and request.args:
        fields["handoff_id"] = request.args[0]
    _task_tokens[task_id or ""] = _context.set(fields)


def celery_task_finished(task_id: str | None = None, **kwargs: Any) -> None:
    token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        try:
            _context.reset(token)
        except ValueError:  # set in another context (a thread pool): just clear
            _context.set(None)


def _json_formatter_class() -> type[logging.Formatter]:
    from pythonjsonlogger.json import JsonFormatter

    class ContextJsonFormatter(JsonFormatter):
        """One JSON object a line; the context fields appear only when they have a value."""

        def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
            log_data.pop("context", None)
            for name in FIELDS:
                if log_data.get(name) in ("", None):
                    log_data.pop(name, None)
            return log_data

    return ContextJsonFormatter


def json_formatter(**kwargs: Any) -> logging.Formatter:
    """Factory for LOGGING's formatters ("()" entry)."""
    return _json_formatter_class()(**kwargs)
