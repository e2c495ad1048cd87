"""The webhook's short way through the middleware (connectors/middleware.py): a delivery skips the
middleware that serve people, keeps every one that guards it, and answers exactly as through the
whole stack; every other request still goes through the whole stack."""

from __future__ import annotations

import json

import pytest
from django.conf import settings as django_settings
from django.test import Client, override_settings

from connectors.middleware import NAME, SKIPPED, WebhookShortWayMiddleware
from pscsync.models import Event, Handoff
from tests.helpers import change_body, sign

URL = "/webhooks/echo-us/"
WHOLE_STACK = [name for name in django_settings.MIDDLEWARE if name != NAME]


def post(client: Client, body: bytes, headers: dict[str, str], url: str = URL, **extra):
    meta = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "content-type"}
    return client.post(url, data=body, content_type="application/json", **meta, **extra)


def went_the_short_way(response) -> bool:
    """SessionMiddleware and AuthenticationMiddleware give every request they see these."""
    request = response.wsgi_request
    return not hasattr(request, "session") and not hasattr(request, "user")


@pytest.fixture
def publishes(monkeypatch):
    published: list[int] = []
    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: published.extend(ids))
    return published


def test_a_webhook_skips_exactly_the_listed_middleware() -> None:
    assert django_settings.MIDDLEWARE[:2] == ["ops.logs.RequestIdMiddleware", NAME]
    assert set(SKIPPED) <= set(django_settings.MIDDLEWARE)  # a renamed one would be run again, silently
    kept = WebhookShortWayMiddleware(lambda request: None).kept  # type: ignore[arg-type, return-value]
    assert kept == [
        "django.middleware.security.SecurityMiddleware",
        "csp.middleware.CSPMiddleware",
        "accounts.middleware.NoStoreMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ]


@pytest.mark.django_db(transaction=True)  # the doorbell rings after the commit
def test_a_webhook_is_answered_with_the_headers_of_the_whole_stack(echo_connection, publishes) -> None:
    answers = []
    for n, middleware in enumerate((django_settings.MIDDLEWARE, WHOLE_STACK)):
        with override_settings(MIDDLEWARE=middleware):
            body = change_body(f"OPP-H{n}")
            answers.append(post(Client(), body, sign(body, msg_id=f"evt-h{n}"), secure=True))
    short, whole = answers
    assert went_the_short_way(short) and not went_the_short_way(whole)
    assert short.status_code == whole.status_code == 202
    assert short["X-Content-Type-Options"] == "nosniff"
    assert short["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert short["X-Frame-Options"] == "DENY"
    assert short["Referrer-Policy"] == "same-origin"
    assert "default-src 'self'" in short["Content-Security-Policy"]
    assert len(short["X-Request-ID"]) == 32

    def headers(response) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k not in ("X-Request-ID", "Content-Length")}

    # The one difference: the whole stack reads the (absent) session to learn there is no
    # signed-in person, which marks its answer "Vary: Cookie"; the answer never depended on one.
    assert whole["Vary"] == "Cookie" and "Vary" not in short
    assert headers(short) == {k: v for k, v in headers(whole).items() if k != "Vary"}
    assert publishes == list(Event.objects.order_by("pk").values_list("pk", flat=True))


@pytest.mark.django_db
def test_a_webhook_over_plain_http_is_still_redirected_when_https_is_required(echo_connection, settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    body = change_body("OPP-R")
    response = post(Client(), body, sign(body, msg_id="evt-r"))
    assert response.status_code == 301 and response["Location"] == "https://testserver/webhooks/echo-us/"
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_a_webhook_for_a_host_not_allowed_is_400(echo_connection) -> None:
    body = change_body("OPP-A")
    response = post(Client(), body, sign(body, msg_id="evt-a"), HTTP_HOST="evil.example.com")
    assert response.status_code == 400
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_the_short_way_refuses_a_bad_signature_or_an_oversized_body_as_the_whole_stack_does(
    echo_connection, publishes, settings, caplog
) -> None:
    settings.WEBHOOK_MAX_BODY_BYTES = 2048
    body = change_body("OPP-B")
    headers = sign(body, msg_id="evt-b")
    headers["webhook-signature"] = "v1,AAAA" + headers["webhook-signature"][7:]
    big = json.dumps({"pad": "x" * 4096}).encode()
    for middleware in (django_settings.MIDDLEWARE, WHOLE_STACK):
        with override_settings(MIDDLEWARE=middleware):
            refused = post(Client(), body, headers)
            oversized = post(Client(), big, sign(big, msg_id="evt-big"))
        assert went_the_short_way(refused) == (middleware is django_settings.MIDDLEWARE)
        assert (refused.status_code, refused.json()) == (
            401,
            {"error": "no signature matches this connection's webhook secrets"},
        )
        assert (oversized.status_code, oversized.json()) == (413, {"error": "the body is larger than 2048 bytes"})
        assert refused["X-Content-Type-Options"] == oversized["X-Content-Type-Options"] == "nosniff"
    assert not Event.objects.exists() and not Handoff.objects.exists()
    assert publishes == []
    # The same log lines both ways: the security event and Django's line about the 4xx, each
    # with the request's id.
    lines = [(r.name, r.getMessage().split(":")[0], bool(r.request_id)) for r in caplog.records]
    assert lines == 2 * [
        ("pscsync.security", "webhook refused for echo-us from 127.0.0.1", True),
        ("django.request", "Unauthorized", True),
        ("django.request", "Request Entity Too Large", True),
    ]


@pytest.mark.django_db
def test_pages_and_other_paths_still_go_through_the_whole_stack(echo_connection) -> None:
    client = Client(enforce_csrf_checks=True)
    page = client.get("/login/")
    assert page.status_code == 200 and not went_the_short_way(page)
    assert "csrftoken" in page.cookies or any("csrftoken" in name for name in page.cookies)
    # A form post without its CSRF token is refused by CsrfViewMiddleware, as before.
    assert client.post("/login/", {"username": "a", "password": "b"}).status_code == 403
    # Under /webhooks/ but not the webhook route: the whole stack (and its 404).
    for path in ("/webhooks/", "/webhooks/echo-us/extra/"):
        response = Client().post(path, b"{}", content_type="application/json")
        assert response.status_code == 404 and not went_the_short_way(response), path


@pytest.mark.django_db
def test_the_server_span_of_a_webhook_names_its_route(echo_connection, publishes) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ops import tracing

    exporter = InMemorySpanExporter()
    tracing.tracing_setup(exporter=exporter, make_global=False)
    try:
        body = change_body("OPP-T")
        response = post(Client(), body, sign(body, msg_id="evt-t"))
    finally:
        tracing.tracing_teardown()
    assert response.status_code == 202 and went_the_short_way(response)
    spans = exporter.get_finished_spans()
    server = next(s for s in spans if s.kind.name == "SERVER")
    assert server.name == "POST webhooks/<slug:slug>/"
    assert server.attributes["http.route"] == "webhooks/<slug:slug>/"
    assert server.attributes["http.status_code"] == 202
    intake = next(s for s in spans if s.name == "intake")
    assert intake.parent.span_id == server.context.span_id
    event = Event.objects.get()
    assert event.traceparent.split("-")[1] == format(server.context.trace_id, "032x")


@pytest.mark.django_db
def test_an_exception_in_the_view_is_a_500_recorded_on_the_server_span(echo_connection, monkeypatch, caplog) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ops import tracing

    def broken(request, slug):
        raise RuntimeError("a bug in the view")

    monkeypatch.setattr("connectors.webhooks._receive", broken)
    exporter = InMemorySpanExporter()
    tracing.tracing_setup(exporter=exporter, make_global=False)
    try:
        client = Client(raise_request_exception=False)
        body = change_body("OPP-X")
        response = post(client, body, sign(body, msg_id="evt-x"))
    finally:
        tracing.tracing_teardown()
    assert response.status_code == 500 and went_the_short_way(response)
    server = next(s for s in exporter.get_finished_spans() if s.kind.name == "SERVER")
    assert server.status.status_code.name == "ERROR"
    assert [(e.name, e.attributes["exception.message"]) for e in server.events] == [("exception", "a bug in the view")]
    assert [r.getMessage() for r in caplog.records if r.name == "django.request"] == [
        "Internal Server Error: /webhooks/echo-us/"
    ]
    assert not Event.objects.exists()
