"""Traces (OpenTelemetry): one trace per handoff, from the webhook that brought the change through
the Celery task to every vendor call of every step.

Off unless an OTLP endpoint is configured (settings.TRACING): then nothing is instrumented, no SDK
object exists and every helper here returns at once. When on, `tracing_setup` (called once per
process from OpsConfig.ready) builds the SDK's TracerProvider, exporting by OTLP/HTTP in batches,
and instruments:
- Django: a server span per request (the probes, /metrics and static files left out);
- Celery: a producer span per publish and a consumer span per task, the W3C `traceparent`
  travelling in the message headers;
- httpx: a client span per vendor call, with `traceparent` sent to the vendor;
- psycopg: a span per query.

Business context: every span started while work is bound in `ops.logs` (handoff, business key,
flow, step, connection, legal entity, request id) carries those fields as `pscsync.*` attributes
(`BusinessAttributes`), so even the libraries' spans say which deal and which step they belong to.

One trace per handoff, whatever the transport: intake stores the trace context on the Event and
the Handoff (`traceparent`), and a run that arrives in another trace (the sweeper republished it,
a retry hours later, a person's resubmit, a doorbell without headers) starts its span under the
stored context, linked to the span that delivered it (`handoff_span`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ops.logs import FIELDS, bind, bound, log_context

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from pscsync.models import Handoff

# Server spans we never want: probes every few seconds, scrapes, static files. Regular expressions
# searched in the address without its query; anchored, so the REST API's /api/v1/metrics/ stays.
EXCLUDED_URLS = "/healthz$,/readyz$,/metrics$,/static/"
ATTRIBUTE_PREFIX = "pscsync."
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")

_provider: TracerProvider | None = None
_instrumentors: list[Any] = []


def enabled() -> bool:
    return _provider is not None


def _business_attributes() -> dict[str, str]:
    return {ATTRIBUTE_PREFIX + name: str(value) for name, value in log_context().items() if name in FIELDS}


def _processor_class() -> type:
    from opentelemetry.sdk.trace import SpanProcessor

    class BusinessAttributes(SpanProcessor):
        """Copies the fields bound in ops.logs onto every span as it starts."""

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            attributes = _business_attributes()
            if attributes:
                span.set_attributes(attributes)

    return BusinessAttributes


def _sampler() -> Any:
    """The configured sampler (OTEL_TRACES_SAMPLER, parent-based always-on by default), except
    that a client span with no parent is dropped: the worker's heartbeat and beat's lease queries
    run outside any work every few seconds and would each make a one-span trace."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default

    class NoOrphanClientSpans(Sampler):
        def __init__(self, delegate: Sampler) -> None:
            self.delegate = delegate

        def should_sample(
            self, parent_context: Any, trace_id: int, name: str, kind: Any = None, *args: Any, **kwargs: Any
        ) -> Any:
            parent = trace.get_current_span(parent_context).get_span_context()
            if kind == trace.SpanKind.CLIENT and not parent.is_valid:
                return SamplingResult(Decision.DROP)
            return self.delegate.should_sample(parent_context, trace_id, name, kind, *args, **kwargs)

        def get_description(self) -> str:
            return f"NoOrphanClientSpans{{{self.delegate.get_description()}}}"

    # The SDK's own reading of OTEL_TRACES_SAMPLER(_ARG), what TracerProvider does when given none.
    return NoOrphanClientSpans(_get_from_env_or_default())


def tracing_setup(*, exporter: SpanExporter | None = None, make_global: bool = True) -> TracerProvider:
    """Build the provider and instrument Django, Celery, httpx and psycopg (once per process).

    `exporter` is for tests (the SDK's in-memory exporter, exported span by span); without it,
    spans go by OTLP/HTTP to OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT in batches. Tests pass
    make_global=False so the process-wide provider stays untouched when they tear down."""
    global _provider
    if _provider is not None:
        return _provider
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    # service.name from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES when set, else "pscsync".
    resource = Resource.create({"service.name": "pscsync"}).merge(Resource.create())
    provider = TracerProvider(resource=resource, sampler=_sampler())
    provider.add_span_processor(_processor_class()())
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if make_global:
        trace.set_tracer_provider(provider)
    options = {"tracer_provider": provider}
    for instrumentor, extra in (
        (DjangoInstrumentor(), {"excluded_urls": EXCLUDED_URLS}),
        (CeleryInstrumentor(), {}),
        (HTTPXClientInstrumentor(), {}),
        (PsycopgInstrumentor(), {}),
    ):
        instrumentor.instrument(**options, **extra)
        _instrumentors.append(instrumentor)
    _provider = provider
    return provider


def tracing_teardown() -> None:
    """Undo tracing_setup (tests): uninstrument, flush and forget the provider."""
    global _provider
    while _instrumentors:
        _instrumentors.pop().uninstrument()
    if _provider is not None:
        _provider.shutdown()
    _provider = None


def _tracer() -> Any:
    assert _provider is not None
    return _provider.get_tracer("pscsync")


@contextmanager
def span(name: str, **fields: Any) -> Iterator[None]:
    """Bind `fields` for the block's log lines and, when tracing is on, run it in a span that
    carries them (and everything bound around it) as attributes."""
    with bound(**fields):
        if _provider is None:
            yield
            return
        with _tracer().start_as_current_span(name):
            yield


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" when tracing is off or nothing is traced)."""
    if _provider is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def trace_id_of(traceparent: str) -> str:
    """The 32-hex trace id inside a traceparent ("" for none or a malformed one)."""
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else ""


def handoff_trace_fields(traceparent: str) -> dict[str, str]:
    """What a handoff stores to rejoin its trace: the traceparent, and the trace id on its own
    so a trace id quoted from the tracing UI finds the handoff (an indexed column)."""
    return {"traceparent": traceparent, "trace_id": trace_id_of(traceparent)}


@contextmanager
def handoff_span(handoff: Handoff) -> Iterator[None]:
    """The run of a handoff, in the handoff's own trace.

    Delivered by the message its intake published, the run is already in that trace and nests
    under the task's span. Delivered any other way (sweeper, retry, resubmit, a transport without
    headers) it starts under the stored context instead, linked to whatever delivered it. A
    handoff stored without a trace (tracing was off at intake) takes the run's trace."""
    if _provider is None:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    current = trace.get_current_span().get_span_context()
    stored = (
        TraceContextTextMapPropagator().extract({"traceparent": handoff.traceparent}) if handoff.traceparent else None
    )
    stored_span = trace.get_current_span(stored).get_span_context() if stored is not None else None
    links: Sequence[Any] = ()
    parent = None
    if stored_span is not None and stored_span.is_valid:
        # Always under the stored (intake) context: since the doorbell (issue 18) no message of
        # the webhook's own carries the run, so whatever delivered it is another trace, or the
        # routing task's batch of many webhooks. That delivery is a link, never the parent.
        parent = stored
        links = [trace.Link(current)] if current.is_valid else ()
    with _tracer().start_as_current_span("handoff run", context=parent, links=links) as run:
        if not handoff.trace_id:
            _store_trace(handoff)
        # The rest of the task's log lines are about this handoff: they carry its trace.
        bind(trace_id=format(run.get_span_context().trace_id, "032x"))
        yield


@contextmanager
def event_route_span(traceparent: str) -> Iterator[None]:
    """Routing one stored event (the doorbell's worker), in the trace of the webhook that stored
    it: a child of its `intake` span, linked to the routing task's span. One task routes a batch
    of many webhooks' events, so the task itself cannot be in each trace; this span is."""
    if _provider is None or not traceparent:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    current = trace.get_current_span().get_span_context()
    stored = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    stored_span = trace.get_current_span(stored).get_span_context()
    if not stored_span.is_valid:
        yield
        return
    links = [trace.Link(current)] if current.is_valid else ()
    with _tracer().start_as_current_span("route", context=stored, links=links):
        yield


def _store_trace(handoff: Handoff) -> None:
    from pscsync.models import Handoff

    fields = handoff_trace_fields(current_traceparent())
    Handoff.objects.filter(pk=handoff.pk, trace_id="").update(**fields)
    for name, value in fields.items():
        setattr(handoff, name, value)


def server_route(route: str) -> None:
    """Name the request's route (http.route) on the server span, as OpenTelemetry's Django
    middleware does in its process_view, for a request answered without Django's view hooks
    (connectors.middleware: the webhook's short way). A no-op when tracing is off."""
    if _provider is None:
        return
    from opentelemetry import trace
    from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE

    trace.get_current_span().set_attribute(HTTP_ROUTE, route)


def server_exception(exc: BaseException) -> None:
    """Record an exception a view raised on the server span, as OpenTelemetry's Django middleware
    does through its process_exception, for a request answered without Django's view hooks
    (connectors.middleware). A no-op when tracing is off."""
    if _provider is None:
        return
    from opentelemetry import trace

    trace.get_current_span().record_exception(exc)


def annotate(**fields: Any) -> None:
    """Add `pscsync.*` attributes to the current span (a no-op when tracing is off)."""
    if _provider is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes({ATTRIBUTE_PREFIX + k: str(v) for k, v in fields.items() if v})
