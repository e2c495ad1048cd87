"""Traces: one webhook makes one trace, from the request through the Celery message and task to
every vendor call of every step, read back from the SDK's in-memory exporter.

Real parts: the webhook view through Django's test client on PostgreSQL, the Celery message on
Redis, a Celery worker (in this process, so its spans reach the in-memory exporter; the live
worker process is tests/integration/test_tracing_live.py), real HTTP to the echo target, which
records the `traceparent` header each call brought."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from django.conf import settings as django_settings
from django.test import Client

from ops import tracing
from pscsync.models import Event, Handoff
from tests.helpers import ROOT, change_body, sign
from tests.test_browser import CHROMIUM, _sign_in, page  # noqa: F401 (the browser fixture, shared)

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = ("upsert_customer", "upsert_project", "upsert_invoice")


@pytest.fixture
def exporter():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    # Not the process-wide provider: the other tests in this process stay untraced.
    tracing.tracing_setup(exporter=exporter, make_global=False)
    yield exporter
    tracing.tracing_teardown()


@pytest.fixture
def worker():
    """A Celery worker in a thread of this process, on the test broker (emptied first)."""
    if not django_settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("needs the Redis broker (CELERY_BROKER_URL)")
    import redis
    from celery.contrib.testing.worker import start_worker

    from pscsync.celery import app

    redis.Redis.from_url(django_settings.CELERY_BROKER_URL).flushdb()
    before = _backends()
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield
    # The worker's threads keep their database connections open after it stops: end those (and
    # only those) so the test database can be flushed and dropped.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [sorted(_backends() - before)])


def _backends() -> set[int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {pid for (pid,) in cursor.fetchall()}


def route(key: str) -> Handoff:
    """Route the events the webhook stored for this key (what the doorbell's worker does), and
    return the handoff they opened."""
    from pscsync.intake import events_route

    events_route(
        list(Event.objects.filter(business_key=key, status=Event.Status.RECEIVED).values_list("pk", flat=True))
    )
    return Handoff.objects.get(business_key=key)


def deliver(key: str, *, request_id: str = "") -> int:
    body = change_body(key)
    headers = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in sign(body, msg_id=f"{key}-v1").items()}
    if request_id:
        headers["HTTP_X_REQUEST_ID"] = request_id
    return Client().post("/webhooks/echo-us/", body, content_type="application/json", **headers).status_code


def points_at(traceparent: str) -> tuple[str, int]:
    """(trace id, span id) of a W3C traceparent, which must say "sampled"."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1, traceparent
    return trace_id, int(span_id, 16)


def wait_for_task_span(exporter, timeout: float = 30.0) -> None:
    """Until the worker has ended the task's span (after the task returned)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s.name == "run/pscsync.tasks.handoff_run_task" for s in exporter.get_finished_spans()):
            return
        time.sleep(0.1)
    pytest.fail(f"the worker ended no task span in {timeout} s")


def test_one_webhook_makes_one_trace_through_the_task_to_every_vendor_call(
    exporter,
    worker,
    echo_connection,
    echo,
) -> None:
    # given a traced process and a worker; when one webhook arrives
    assert deliver("OPP-T1", request_id="req-trace-1") == 202
    wait_for_task_span(exporter)
    handoff = Handoff.objects.get(business_key="OPP-T1")
    assert handoff.status == Handoff.Status.SUCCEEDED

    # then: every span of the webhook's request and the handoff's run is in one trace
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    server = next(s for s in spans if s.kind.name == "SERVER" and "webhooks" in s.name)
    trace_id = server.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]

    def parent_of(span):
        return by_id[span.parent.span_id] if span.parent else None

    def one(name: str):
        found = [s for s in in_trace if s.name == name]
        assert len(found) == 1, f"{name}: {[s.name for s in in_trace]}"
        return found[0]

    # the chain: request -> intake (one per change); the doorbell's task routes the event in a
    # `route` span under that intake span; the handoff's run continues the intake span's context
    # (however the run was delivered), linked to the task span that delivered it.
    intake = one("intake")
    route = one("route")
    run = one("handoff run")
    assert parent_of(intake) is server
    assert parent_of(route) is intake
    assert parent_of(run) is intake
    by_any = {s.context.span_id: s for s in spans}
    (route_task,) = [by_any[link.context.span_id] for link in route.links]
    assert route_task.name == "run/pscsync.tasks.events_route_task" and route_task.kind.name == "CONSUMER"
    (run_task,) = [by_any[link.context.span_id] for link in run.links]
    assert run_task.name == "run/pscsync.tasks.handoff_run_task" and run_task.kind.name == "CONSUMER"
    # The request rang the doorbell and woke the routing task: that wake is in the webhook's trace,
    # under the intake when the ring is immediate (no transaction open, as here) or under the
    # request when it waits for the request's commit (the live test).
    wake = one("apply_async/pscsync.tasks.events_route_task")
    assert parent_of(wake) in (intake, server)
    assert route_task.context.trace_id == trace_id and parent_of(route_task) is wake

    # The handoff stores the trace (the intake span's context) and the page can show it.
    handoff_trace = format(trace_id, "032x")
    assert handoff.trace_id == handoff_trace
    assert points_at(handoff.traceparent) == (handoff_trace, intake.context.span_id)
    assert Event.objects.get(handoff=handoff).traceparent == handoff.traceparent

    calls = echo.calls()
    assert [c["method"] for c in calls] == ["PUT", "PUT", "PUT"]  # one write per step, nothing else
    for step_name, call in zip(STEPS, calls, strict=True):
        step = one(f"step {step_name}")
        assert parent_of(step) is run
        vendor = [
            s for s in in_trace if s.kind.name == "CLIENT" and s.parent and s.parent.span_id == step.context.span_id
        ]
        assert [s.attributes.get("http.request.method") or s.attributes.get("http.method") for s in vendor] == ["PUT"]
        # The vendor received this very span's context (W3C traceparent, sampled).
        assert points_at(call["traceparent"]) == (handoff_trace, vendor[0].context.span_id)
        expected = {
            "pscsync.business_key": "OPP-T1",
            "pscsync.flow": "echo",
            "pscsync.step": step_name,
            "pscsync.connection": "echo-us",
            "pscsync.legal_entity": "us",
            "pscsync.handoff_id": str(handoff.pk),
        }
        # The vendor call carries all of it; its step span all but the connection (a step's
        # target is known only once the step has begun).
        assert {k: vendor[0].attributes.get(k) for k in expected} == expected
        del expected["pscsync.connection"]
        assert {k: step.attributes.get(k) for k in expected} == expected

    assert run.attributes["pscsync.outcome"] == "succeeded"
    # The run and intake carry the business key, flow and legal entity too (no step: not in one).
    for span in (run, intake):
        assert span.attributes["pscsync.business_key"] == "OPP-T1"
        assert span.attributes["pscsync.flow"] == "echo"
        assert span.attributes["pscsync.legal_entity"] == "us"
        assert "pscsync.step" not in span.attributes
    assert intake.attributes["pscsync.connection"] == "echo-us"
    assert server.attributes["pscsync.request_id"] == "req-trace-1"


def test_a_run_delivered_outside_its_message_rejoins_the_handoffs_trace(
    exporter,
    echo_connection,
    echo,
    monkeypatch,
) -> None:
    """The sweeper republishing it, a retry, a resubmit or a doorbell without headers: the run
    starts under the handoff's stored context, linked to the span that delivered it."""
    from opentelemetry import trace

    from pscsync.runner import handoff_run

    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)  # no message at all
    assert deliver("OPP-T2") == 202
    handoff = route("OPP-T2")
    stored_trace = handoff.trace_id
    assert len(stored_trace) == 32

    with tracing._tracer().start_as_current_span("sweep") as sweep:  # another trace delivers it
        assert handoff_run(handoff_id=handoff.pk, worker="w1") == Handoff.Status.SUCCEEDED
    run = next(s for s in exporter.get_finished_spans() if s.name == "handoff run")
    assert format(run.context.trace_id, "032x") == stored_trace
    assert format(run.parent.span_id, "016x") == handoff.traceparent.split("-")[2]
    assert [link.context.span_id for link in run.links] == [sweep.get_span_context().span_id]
    assert trace.get_current_span().get_span_context().is_valid is False  # nothing left attached


def test_a_step_the_vendor_refused_is_an_error_span_and_the_run_says_what_became_of_it(
    exporter,
    echo_connection,
    echo,
    monkeypatch,
) -> None:
    from pscsync.runner import handoff_run

    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)
    echo.fault(mode="status", status=422, match="/invoice/", count=1)
    assert deliver("OPP-T6") == 202
    handoff = route("OPP-T6")
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == Handoff.Status.NEEDS_ATTENTION
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith(("step ", "handoff run"))}
    assert spans["step upsert_customer"].status.status_code.name == "UNSET"
    assert spans["step upsert_invoice"].status.status_code.name == "ERROR"
    assert spans["handoff run"].attributes["pscsync.outcome"] == "needs_attention"
    vendor = next(
        s
        for s in exporter.get_finished_spans()
        if s.parent and s.parent.span_id == spans["step upsert_invoice"].context.span_id
    )
    # (the httpx instrumentation names it by the older HTTP conventions unless told otherwise)
    assert vendor.attributes.get("http.response.status_code", vendor.attributes.get("http.status_code")) == 422


def _instrumented() -> dict[str, bool]:
    import httpx
    import psycopg
    from celery.signals import before_task_publish

    return {
        "django": any("opentelemetry" in m for m in django_settings.MIDDLEWARE),
        "httpx": hasattr(httpx.HTTPTransport.handle_request, "__wrapped__"),
        "psycopg": hasattr(psycopg.connect, "__wrapped__"),
        "celery": any("opentelemetry" in repr(r) for _, r in before_task_publish.receivers),
    }


def test_off_means_nothing_is_instrumented_and_teardown_undoes_it(db) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    # Off (no OTLP endpoint in the test settings): no SDK object, nothing wrapped.
    assert not django_settings.TRACING and not tracing.enabled()
    assert _instrumented() == {"django": False, "httpx": False, "psycopg": False, "celery": False}
    assert tracing.current_traceparent() == ""
    tracing.tracing_setup(exporter=InMemorySpanExporter(), make_global=False)
    try:
        assert _instrumented() == {"django": True, "httpx": True, "psycopg": True, "celery": True}
    finally:
        tracing.tracing_teardown()
    assert _instrumented() == {"django": False, "httpx": False, "psycopg": False, "celery": False}


def test_only_the_probes_the_scrape_and_static_files_go_untraced() -> None:
    from opentelemetry.util.http import parse_excluded_urls

    excluded = parse_excluded_urls(tracing.EXCLUDED_URLS)
    for path in ("/healthz", "/readyz", "/metrics", "/static/app.css"):
        assert excluded.url_disabled(f"http://pscsync.example.com{path}"), path
    for path in ("/api/v1/metrics/", "/api/v1/metrics/health/", "/webhooks/echo-us/", "/handoffs/1/"):
        assert not excluded.url_disabled(f"http://pscsync.example.com{path}"), path


def test_a_handoff_taken_in_untraced_keeps_the_trace_of_its_first_traced_run(echo_connection, monkeypatch) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pscsync.runner import handoff_run

    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)
    assert deliver("OPP-T7") == 202  # tracing off
    handoff = route("OPP-T7")
    assert handoff.trace_id == ""
    exporter = InMemorySpanExporter()
    tracing.tracing_setup(exporter=exporter, make_global=False)
    try:
        assert handoff_run(handoff_id=handoff.pk, worker="w1") == Handoff.Status.SUCCEEDED
    finally:
        tracing.tracing_teardown()
    run = next(s for s in exporter.get_finished_spans() if s.name == "handoff run")
    handoff.refresh_from_db()
    assert handoff.trace_id == format(run.context.trace_id, "032x")
    assert points_at(handoff.traceparent) == (handoff.trace_id, run.context.span_id)


def test_tracing_off_stores_no_trace_and_the_page_says_so(operator, echo_connection, client) -> None:
    # given tracing off (no OTLP endpoint: the test settings set none)
    assert not django_settings.TRACING and not tracing.enabled()
    assert deliver("OPP-T3") == 202
    handoff = route("OPP-T3")
    assert (handoff.traceparent, handoff.trace_id) == ("", "")
    client.force_login(operator)
    html = client.get(f"/handoffs/{handoff.pk}/").content.decode()
    assert "Not traced" in html


def test_the_page_shows_the_trace_for_a_person_and_links_it_when_configured(
    operator,
    echo_connection,
    client,
    settings,
    exporter,
) -> None:
    assert deliver("OPP-T4") == 202
    handoff = route("OPP-T4")
    client.force_login(operator)
    html = client.get(f"/handoffs/{handoff.pk}/").content.decode()
    short = handoff.trace_id[:8]
    assert f'<span title="{handoff.trace_id}">Trace {short}…</span>' in html
    settings.TRACE_URL = "https://tempo.example.com/trace/{trace_id}"
    html = client.get(f"/handoffs/{handoff.pk}/").content.decode()
    assert (
        f'<a href="https://tempo.example.com/trace/{handoff.trace_id}" title="{handoff.trace_id}" '
        f'rel="noopener">Trace {short}…</a>'
    ) in html


@pytest.mark.parametrize(
    "value", ["https://tempo.example.com/trace/", "javascript:alert(1)//{trace_id}", "ftp://x/{trace_id}"]
)
def test_a_trace_address_without_the_id_or_not_http_is_refused_at_start(value: str) -> None:
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {**os.environ, "PSCSYNC_TRACE_URL": value}
    result = subprocess.run(
        [sys.executable, "-c", "import pscsync.settings"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "PSCSYNC_TRACE_URL must be an http(s) address containing {trace_id}" in result.stderr


@pytest.mark.browser
@pytest.mark.skipif(
    not shutil.which(CHROMIUM) and not os.getenv("PSCSYNC_REQUIRE_SERVICES"),
    reason="Debian's chromium is not installed (make test installs it)",
)
def test_an_operator_opens_a_handoffs_trace_from_its_page(
    page,  # noqa: F811
    live_server,
    operator,
    echo_connection,
    exporter,
    settings,
    monkeypatch,
) -> None:
    """In headless Chromium; the screenshot is docs/screenshots/handoff-trace.png."""
    from pscsync.runner import handoff_run

    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)
    settings.TRACE_URL = "https://grafana.example.com/explore?traceId={trace_id}"
    assert deliver("OPP-T5") == 202
    handoff = route("OPP-T5")
    handoff_run(handoff_id=handoff.pk, worker="w1")
    _sign_in(page, live_server, operator)
    page.wait_for_url("**/workbench/")
    page.goto(f"{live_server.url}/handoffs/{handoff.pk}/")
    link = page.locator(".facts dd.trace a")
    assert link.inner_text() == f"Trace {handoff.trace_id[:8]}…"
    assert link.get_attribute("href") == f"https://grafana.example.com/explore?traceId={handoff.trace_id}"
    assert link.get_attribute("title") == handoff.trace_id  # the whole id, to copy
    page.screenshot(path=str(ROOT / "docs" / "screenshots" / "handoff-trace.png"), full_page=True)
