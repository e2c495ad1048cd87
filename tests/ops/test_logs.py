"""Structured logs: each line carries the request id, the handoff, the business key and the
connection it is about; the request id comes from the caller or is made here, and goes back."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.test import Client

from ops.logs import (
    CELERY_HEADER,
    ContextFilter,
    TextFormatter,
    bound,
    celery_publish_headers,
    celery_task_finished,
    celery_task_started,
    json_formatter,
    log_context,
)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the production handler writes (the same filter and formatter as settings.LOGGING)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    config = {key: value for key, value in settings.LOGGING["formatters"]["json"].items() if key != "()"}
    handler.setFormatter(json_formatter(**config))
    loggers = [logging.getLogger("pscsync"), logging.getLogger("django.request")]
    for logger in loggers:
        logger.addHandler(handler)
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.django_db
def test_a_webhook_line_carries_the_callers_request_id_and_the_connection(echo_connection, json_lines) -> None:
    response = Client().post(
        "/webhooks/echo-us/", b"{}", content_type="application/json", HTTP_X_REQUEST_ID="req-7f3a.1"
    )
    assert response.status_code == 401  # unsigned: refused, and logged
    assert response["X-Request-ID"] == "req-7f3a.1"
    (line,) = [line for line in _lines(json_lines) if line["logger"] == "pscsync.security"]
    assert line["request_id"] == "req-7f3a.1" and line["connection"] == "echo-us"
    assert line["level"] == "WARNING" and "webhook refused" in line["message"]
    assert line["time"].endswith("+00:00")
    # Django's own line about the response is written after the middleware returns: it has the id too.
    (django_line,) = [line for line in _lines(json_lines) if line["logger"] == "django.request"]
    assert django_line["request_id"] == "req-7f3a.1"
    assert log_context() == {}  # nothing leaks past the request


@pytest.mark.django_db
@pytest.mark.parametrize("given", ["", "a b", "x" * 129, "evil\ninjected line", '"quoted"'])
def test_an_unusable_request_id_is_replaced_by_a_fresh_one(given: str) -> None:
    response = Client().get("/healthz", HTTP_X_REQUEST_ID=given)
    assert response["X-Request-ID"] != given
    assert len(response["X-Request-ID"]) == 32  # a uuid4 in hex


def test_empty_fields_are_left_out_and_bound_fields_nest(json_lines) -> None:
    log = logging.getLogger("pscsync.test")
    with bound(request_id="r1"):
        with bound(handoff_id=42, business_key="OPP-9", flow="quote-to-project", connection=""):
            log.warning("inner")
        log.warning("outer")
    log.warning("none")
    inner, outer, none = _lines(json_lines)
    assert {k: inner[k] for k in ("request_id", "handoff_id", "business_key", "flow")} == {
        "request_id": "r1",
        "handoff_id": 42,
        "business_key": "OPP-9",
        "flow": "quote-to-project",
    }
    assert "connection" not in inner and "handoff_id" not in outer and outer["request_id"] == "r1"
    assert "request_id" not in none and "context" not in none


def test_the_demo_text_format_appends_the_fields_for_people() -> None:
    record = logging.LogRecord("pscsync.runner", logging.WARNING, __file__, 1, "step failed", None, None)
    with bound(handoff_id=42, business_key="OPP-9"):
        ContextFilter().filter(record)
    line = TextFormatter("%(levelname)s %(name)s %(message)s").format(record)
    assert line == "WARNING pscsync.runner step failed [handoff_id=42 business_key=OPP-9]"


def test_a_task_carries_the_request_id_of_the_request_that_published_it() -> None:
    headers: dict = {}
    with bound(request_id="req-42"):
        celery_publish_headers(headers=headers)
    assert headers == {CELERY_HEADER: "req-42"}
    # What the worker sees: the header on the task's request, the handoff id as the first argument.
    task = SimpleNamespace(
        name="pscsync.tasks.handoff_run_task", request=SimpleNamespace(args=[17], headers=None, **headers)
    )
    celery_task_started(task_id="t1", task=task)
    assert log_context() == {"request_id": "req-42", "handoff_id": 17}
    celery_task_finished(task_id="t1")
    assert log_context() == {}
