"""Traces on the live stack: gunicorn and a Celery prefork worker as real processes export by OTLP
over real HTTP to a receiver in this test, which decodes the protobuf with opentelemetry-proto.

One webhook must arrive as one trace: the web process's request and intake spans, the worker's
task, run, step and vendor-call spans, and the worker's database spans, parent to child, with the
business attributes; the echo target must have received each call's own traceparent."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pscsync.models import Handoff
from tests.helpers import ROOT, free_port
from tests.integration.conftest import Stack, _flush_broker, _test_database_url, wait_until

pytestmark = pytest.mark.integration

STEPS = ("upsert_customer", "upsert_project", "upsert_invoice")


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    service: str


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, application/x-protobuf), as a collector is."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                received = []
                for resource_spans in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        received += [
                            ReceivedSpan(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=Span.SpanKind.Name(span.kind),
                                attributes={a.key: _value(a.value) for a in span.attributes},
                                service=resource.get("service.name", ""),
                            )
                            for span in scope_spans.spans
                        ]
                with receiver.lock:
                    receiver.spans += received
                    receiver.requests += 1
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced_stack(django_db_setup, django_db_blocker, echo_target, tmp_path_factory, receiver):
    var_dir = tmp_path_factory.mktemp("traced-stack")
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "PSCSYNC_VAR_DIR": str(var_dir),
        "PSCSYNC_TASK_TIME_LIMIT": "20",
        "PSCSYNC_LEASE_SECONDS": "25",
        "PSCSYNC_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
        # The operator's settings: the SDK's own variables. Batches leave every 200 ms here.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_SERVICE_NAME": "pscsync",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    stack = Stack(env=env, var_dir=var_dir, web_port=free_port(), echo=echo_target)
    stack.start_web()
    yield stack
    stack.stop()


@pytest.fixture
def traced(traced_stack, echo_connection, transactional_db) -> Iterator[Stack]:
    _flush_broker(traced_stack.env["CELERY_BROKER_URL"])
    traced_stack.start_worker()
    yield traced_stack
    if traced_stack.worker:
        traced_stack.worker.kill()


def test_one_webhook_is_one_trace_across_the_web_and_worker_processes(traced, receiver, echo) -> None:
    # when one webhook arrives at the web process
    assert traced.deliver("OPP-L1") == 202
    wait_until(
        lambda: Handoff.objects.filter(business_key="OPP-L1", status=Handoff.Status.SUCCEEDED).exists(),
        timeout=60,
        stack=traced,
        what="the handoff to succeed",
    )
    handoff = Handoff.objects.get(business_key="OPP-L1")
    trace_id = handoff.trace_id
    assert len(trace_id) == 32

    def names() -> set[str]:
        return {s.name for s in receiver.of_trace(trace_id)}

    # then the receiver is sent, over HTTP, every span of the one trace (the worker's last batch
    # leaves up to 200 ms after the task ends)
    # Since the doorbell (docs/operations.md, Traces): the request stores the change under its
    # `intake` span; a worker routes it in a `route` span under that intake span; the handoff's run
    # continues the intake span's context (linked to the task that delivered it, which serves many
    # webhooks at once and so cannot be the parent).
    expected_names = {"intake", "route", "handoff run", *(f"step {s}" for s in STEPS)}
    wait_until(lambda: expected_names <= names(), timeout=30, stack=traced, what=f"spans {expected_names}")
    spans = receiver.of_trace(trace_id)
    by_id = {s.span_id: s for s in spans}

    def one(name: str) -> ReceivedSpan:
        found = [s for s in spans if s.name == name]
        assert len(found) == 1, (name, sorted(s.name for s in spans))
        return found[0]

    server = next(s for s in spans if s.kind == "SPAN_KIND_SERVER")
    assert server.parent_span_id == "" and "webhooks" in server.name  # the trace starts at the webhook
    intake, route, run = one("intake"), one("route"), one("handoff run")
    assert by_id[intake.parent_span_id] is server
    # The worker process continued the web process's trace: its spans hang under the request's.
    assert by_id[route.parent_span_id] is intake
    assert by_id[run.parent_span_id] is intake
    assert {s.service for s in spans} == {"pscsync"}

    calls = echo.calls()
    assert [c["method"] for c in calls] == ["PUT", "PUT", "PUT"]
    for step_name, call in zip(STEPS, calls, strict=True):
        step = one(f"step {step_name}")
        assert by_id[step.parent_span_id] is run
        (vendor,) = [
            s for s in spans if s.kind == "SPAN_KIND_CLIENT" and s.name == "PUT" and s.parent_span_id == step.span_id
        ]
        # The vendor was sent this call's own span as its parent (W3C traceparent).
        assert call["traceparent"].split("-")[1:3] == [trace_id, vendor.span_id]
        for key, value in {
            "pscsync.business_key": "OPP-L1",
            "pscsync.flow": "echo",
            "pscsync.step": step_name,
            "pscsync.connection": "echo-us",
            "pscsync.legal_entity": "us",
            "pscsync.handoff_id": str(handoff.pk),
        }.items():
            assert vendor.attributes.get(key) == value, (step_name, key)

    # psycopg: the worker's queries are spans of the same trace, under the run.
    queries = [
        s
        for s in spans
        if s.attributes.get("db.system") == "postgresql" or s.attributes.get("db.system.name") == "postgresql"
    ]
    assert any(by_id.get(q.parent_span_id) is run for q in queries)
    assert all(q.kind == "SPAN_KIND_CLIENT" for q in queries)


def test_the_workers_json_log_lines_carry_the_handoffs_trace_id(traced, receiver, echo) -> None:
    assert traced.deliver("OPP-L2") == 202
    wait_until(
        lambda: Handoff.objects.filter(business_key="OPP-L2", status=Handoff.Status.SUCCEEDED).exists(),
        timeout=60,
        stack=traced,
        what="the handoff to succeed",
    )
    handoff = Handoff.objects.get(business_key="OPP-L2")

    def about() -> list[dict]:
        lines = traced.worker.log_path.read_text().splitlines()
        return [
            line
            for line in map(json.loads, filter(lambda x: x.startswith("{"), lines))
            if line.get("handoff_id") == handoff.pk
        ]

    # Celery's "succeeded" line, written as the task returns, inside its span.
    wait_until(lambda: bool(about()), timeout=20, stack=traced, what="a worker line about the handoff")
    assert {line.get("trace_id") for line in about()} == {handoff.trace_id}
    assert {line.get("business_key") for line in about()} == {"OPP-L2"}


def test_probes_are_not_traced(traced, receiver) -> None:
    import httpx

    for path in ("/healthz", "/readyz"):
        httpx.get(f"http://127.0.0.1:{traced.web_port}{path}", timeout=10)
    time.sleep(1.0)  # two batch intervals: anything the probes made would have arrived
    with receiver.lock:
        server_spans = [s for s in receiver.spans if s.kind == "SPAN_KIND_SERVER"]
    assert not [s for s in server_spans if "healthz" in s.name or "readyz" in s.name]
    # nor do their database queries become one-span traces of their own
    with receiver.lock:
        orphans = [s for s in receiver.spans if s.parent_span_id == "" and s.kind == "SPAN_KIND_CLIENT"]
    assert orphans == []
