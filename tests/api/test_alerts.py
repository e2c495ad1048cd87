"""Outbound alerts: one message per new group then a digest, Standard Webhooks signatures,
retries with backoff, SSRF refusal, e-mail, and the admin pages."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook

from alerts.models import AlertDelivery, AlertSubscription
from alerts.services import alert_delivery_attempt, alerts_scan, retry_delay
from alerts.subscriptions import alert_subscription_save
from dashboards.models import FlowSla
from pscsync import clock
from pscsync.models import Handoff, Mismatch
from tests.api.conftest import make_exception
from tests.helpers import status_force

EventType = AlertSubscription.EventType


class Receiver:
    """A webhook receiver on loopback that answers with the statuses it is told to."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/pscsync"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver(settings):
    settings.ALERT_WEBHOOK_ALLOW_LOOPBACK = True
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def frozen():
    c = clock.FrozenClock(dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC))
    clock.use(c)
    yield c
    clock.use(None)


def subscribe(admin, target: str, channel: str, types: list[str], **extra):
    data = {"name": "Ops", "channel": channel, "target": target, "event_types": types, "all_entities": True, **extra}
    return alert_subscription_save(actor=admin, data=data, entities=[])


def deliver_all() -> list[str]:
    return [alert_delivery_attempt(delivery_id=d.pk) for d in AlertDelivery.objects.filter(status="pending")]


@pytest.mark.django_db
def test_a_new_group_sends_one_message_then_repeats_go_to_the_digest(world, admin, entities, frozen) -> None:
    sub, _ = subscribe(admin, "ops@example.com", "email", [EventType.EXCEPTION_GROUP_NEW], digest_minutes=60)
    alerts_scan()
    first = list(AlertDelivery.objects.filter(kind="alert"))
    assert len(first) == 2  # one per cause group: the US tax-code group and the UK budget group
    # Three more of the same cause: no new message.
    for n in range(3):
        make_exception(world["us"]["connection"], entities["us"], f"OPP-R{n}", f"the customer 'C{n}' has no tax code")
    frozen.advance(60)
    alerts_scan()
    assert AlertDelivery.objects.filter(kind="alert").count() == 2
    assert not AlertDelivery.objects.filter(kind="digest").exists()
    # After the digest interval: one digest with the growth of the group.
    frozen.advance(3600)
    alerts_scan()
    digest = AlertDelivery.objects.get(kind="digest")
    groups = digest.payload["data"]["groups"]
    assert [g["new_since_last_message"] for g in groups] == [3]
    assert "tax code" in groups[0]["summary"]
    # Nothing more to say: no second digest.
    frozen.advance(3600)
    alerts_scan()
    assert AlertDelivery.objects.filter(kind="digest").count() == 1


@pytest.mark.django_db
def test_a_group_that_cleared_and_came_back_is_news_again(world, admin, frozen) -> None:
    subscribe(admin, "ops@example.com", "email", [EventType.EXCEPTION_GROUP_NEW])
    alerts_scan()
    status_force(world["us"]["handoff"].pk, Handoff.Status.RESOLVED)
    frozen.advance(60)
    alerts_scan()
    status_force(world["us"]["handoff"].pk, Handoff.Status.NEEDS_ATTENTION)
    frozen.advance(60)
    alerts_scan()
    assert AlertDelivery.objects.filter(kind="alert").count() == 3


@pytest.mark.django_db
def test_a_subscription_hears_only_about_its_legal_entities(world, admin, entities, frozen) -> None:
    data = {
        "name": "UK",
        "channel": "email",
        "target": "uk@example.com",
        "event_types": [EventType.EXCEPTION_GROUP_NEW],
    }
    alert_subscription_save(actor=admin, data=data, entities=[entities["uk"]])
    alerts_scan()
    (only,) = AlertDelivery.objects.all()
    assert only.payload["data"]["handoffs"] == [world["uk"]["handoff"].pk]


@pytest.mark.django_db
def test_spike_sla_stuck_and_mismatch_alerts(world, admin, entities, frozen) -> None:
    from pscsync.models import Attempt

    types = [EventType.EXCEPTION_SPIKE, EventType.SLA_BREACH, EventType.HANDOFF_STUCK, EventType.MISMATCH_OVER_VALUE]
    subscribe(
        admin,
        "ops@example.com",
        "email",
        types,
        spike_count=2,
        stuck_minutes=30,
        mismatch_min_amount=Decimal("150.00"),
    )
    FlowSla.objects.create(flow="echo", target=Decimal("1"), unit=FlowSla.Unit.HOURS)
    Attempt.objects.update(started_at=frozen.now() - dt.timedelta(minutes=5))  # both exceptions failed just now
    stuck = make_exception(world["us"]["connection"], entities["us"], "OPP-STUCK", "x")
    status_force(stuck.pk, Handoff.Status.PENDING, created_at=frozen.now() - dt.timedelta(hours=1))
    Mismatch.objects.filter(pk=world["uk"]["mismatch"].pk).update(difference=Decimal("-100.00"))  # under the floor
    alerts_scan()
    by_type = {d.event_type: d for d in AlertDelivery.objects.all()}
    assert set(by_type) == set(types)
    assert by_type[EventType.EXCEPTION_SPIKE].payload["data"]["count"] == 2
    assert by_type[EventType.HANDOFF_STUCK].payload["data"]["handoffs"] == [stuck.pk]
    # All three opened a day ago in business time: past the flow's SLA of an hour.
    assert by_type[EventType.SLA_BREACH].payload["data"]["count"] == 3
    assert by_type[EventType.SLA_BREACH].payload["data"]["sla"] == "1 h"
    assert by_type[EventType.MISMATCH_OVER_VALUE].payload["data"]["mismatches"] == [world["us"]["mismatch"].pk]


@pytest.mark.django_db
def test_webhooks_are_signed_the_standard_webhooks_way(world, admin, receiver, frozen) -> None:
    sub, secret = subscribe(admin, receiver.url, "webhook", [EventType.EXCEPTION_GROUP_NEW])
    assert secret.startswith("whsec_") and sub.secret() == secret
    alerts_scan()
    assert deliver_all() == ["delivered", "delivered"]
    headers, body = receiver.received[0]
    # The reference implementation accepts our signature.
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "exception_group.new" and payload["data"]["count"] == 1
    assert headers["webhook-id"] == AlertDelivery.objects.get(msg_id=headers["webhook-id"]).msg_id


@pytest.mark.django_db
def test_failed_deliveries_are_retried_with_backoff_then_given_up(world, admin, receiver, frozen, settings) -> None:
    settings.ALERT_DELIVERY_MAX_ATTEMPTS = 3
    subscribe(admin, receiver.url, "webhook", [EventType.EXCEPTION_GROUP_NEW], all_entities=False)
    sub = AlertSubscription.objects.get()
    sub.all_entities = True
    sub.save()
    alerts_scan()
    delivery = AlertDelivery.objects.order_by("pk").first()
    AlertDelivery.objects.exclude(pk=delivery.pk).delete()
    receiver.statuses = [503, 500, 500]
    assert alert_delivery_attempt(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    wait = (delivery.next_attempt_at - frozen.now()).total_seconds()
    assert 15 <= wait <= 30 and delivery.response_status == 503 and delivery.attempts == 1
    assert alert_delivery_attempt(delivery_id=delivery.pk) == "skipped"  # not due yet
    frozen.advance(wait)
    assert alert_delivery_attempt(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    frozen.advance((delivery.next_attempt_at - frozen.now()).total_seconds())
    assert alert_delivery_attempt(delivery_id=delivery.pk) == "failed"
    delivery.refresh_from_db()
    assert delivery.attempts == 3 and "500" in delivery.last_error and delivery.next_attempt_at is None
    # The same message id on every attempt, so the receiver can de-duplicate.
    assert len({h["webhook-id"] for h, _ in receiver.received}) == 1


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    import random

    rng = random.Random(1)
    assert 15 <= retry_delay(1, rng) <= 30
    assert 60 <= retry_delay(3, rng) <= 120
    assert retry_delay(30, rng) <= 6 * 3600


@pytest.mark.django_db
def test_a_webhook_to_a_private_address_is_refused_at_send_time(world, admin, frozen, monkeypatch) -> None:
    from connectors import egress

    subscribe(admin, "https://hooks.example.com/x", "webhook", [EventType.EXCEPTION_GROUP_NEW])
    alerts_scan()
    # The name now points at the cloud metadata address (DNS rebinding): refused, never sent.
    monkeypatch.setattr(egress, "_resolve", lambda host, port: ["169.254.169.254"])
    results = deliver_all()
    assert results == ["failed", "failed"]
    assert "link-local" in AlertDelivery.objects.first().last_error


@pytest.mark.django_db
def test_email_alerts_are_sent(world, admin, mailoutbox, frozen) -> None:
    subscribe(admin, "ops@example.com", "email", [EventType.EXCEPTION_GROUP_NEW])
    alerts_scan()
    assert deliver_all() == ["delivered", "delivered"]
    assert len(mailoutbox) == 2 and mailoutbox[0].to == ["ops@example.com"]
    assert mailoutbox[0].subject.startswith("[pscsync] echo:")


@pytest.mark.django_db
def test_the_alert_pages(client, admin, operator, world, receiver, frozen) -> None:
    client.force_login(operator)
    assert client.get("/alerts/").status_code == 403
    client.force_login(admin)
    form = {
        "name": "Integration team",
        "channel": "webhook",
        "target": receiver.url,
        "event_types": [EventType.EXCEPTION_GROUP_NEW, EventType.HANDOFF_STUCK],
        "all_entities": "on",
        "spike_count": 10,
        "spike_window_minutes": 15,
        "stuck_minutes": 30,
        "mismatch_min_amount": "1000",
        "digest_minutes": 60,
        "is_active": "on",
    }
    created = client.post("/alerts/new/", form)
    assert created.status_code == 201 and created["Cache-Control"] == "no-store"
    sub = AlertSubscription.objects.get()
    assert sub.secret() in created.content.decode()
    assert sub.secret() not in client.get(f"/alerts/{sub.pk}/").content.decode()
    assert client.post(f"/alerts/{sub.pk}/test/").status_code == 302
    log = client.get("/alerts/deliveries/").content.decode()
    assert "Test message for Integration team" in log


@pytest.mark.django_db
def test_the_form_refuses_a_private_webhook_url(client, admin, entities) -> None:
    client.force_login(admin)
    page = client.post(
        "/alerts/new/",
        {
            "name": "x",
            "channel": "webhook",
            "target": "http://10.0.0.5/hook",
            "event_types": ["handoff.stuck"],
            "all_entities": "on",
            "spike_count": 1,
            "spike_window_minutes": 1,
            "stuck_minutes": 1,
            "mismatch_min_amount": "1",
            "digest_minutes": 1,
        },
    )
    assert page.status_code == 400 and "https" in page.content.decode()
    assert not AlertSubscription.objects.exists()


def test_beat_runs_the_alert_and_job_tasks(settings) -> None:
    from pscsync.celery import app

    app.loader.import_default_modules()
    for entry in ("alerts-scan", "alerts-deliver"):
        assert settings.CELERY_BEAT_SCHEDULE[entry]["task"] in app.tasks


@pytest.mark.django_db
def test_a_delivery_whose_message_was_lost_is_sent_by_the_sweep(world, admin, frozen, monkeypatch) -> None:
    from alerts import tasks

    sent: list[int] = []
    monkeypatch.setattr(tasks.alert_deliver_task, "delay", lambda pk: sent.append(pk))
    subscribe(admin, "ops@example.com", "email", [EventType.EXCEPTION_GROUP_NEW])
    alerts_scan()  # on_commit never ran inside the test transaction: as if the broker lost it
    assert tasks.alerts_deliver_due_task() == 2 and len(sent) == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("target", "unit", "breached"),
    [
        # Started Friday 17:00, now Monday 09:00: 64 calendar hours, but 16 hours of weekdays.
        ("48", FlowSla.Unit.HOURS, True),
        ("1", FlowSla.Unit.BUSINESS_DAYS, False),
        ("0.5", FlowSla.Unit.BUSINESS_DAYS, True),
    ],
)
def test_the_sla_breach_uses_the_flows_sla_as_the_dashboards_do(world, admin, target, unit, breached) -> None:
    monday = dt.datetime(2026, 11, 9, 9, 0, tzinfo=dt.UTC)
    clock.use(clock.FrozenClock(monday))
    try:
        Handoff.objects.update(business_started_at=dt.datetime(2026, 11, 6, 17, 0, tzinfo=dt.UTC))
        FlowSla.objects.create(flow="echo", target=Decimal(target), unit=unit)
        subscribe(admin, "ops@example.com", "email", [EventType.SLA_BREACH])
        alerts_scan()
    finally:
        clock.use(None)
    sent = AlertDelivery.objects.filter(event_type=EventType.SLA_BREACH)
    assert sent.exists() is breached
    if breached:
        assert sent.get().payload["data"]["count"] == 2  # the US and the UK exception


@pytest.mark.django_db
def test_a_flow_without_an_admins_sla_uses_the_dashboards_default(world, admin, frozen) -> None:
    # The echo flow's default is 24 hours; the exceptions opened exactly 24 hours ago: not yet late.
    subscribe(admin, "ops@example.com", "email", [EventType.SLA_BREACH])
    alerts_scan()
    assert not AlertDelivery.objects.exists()
    frozen.advance(60)
    alerts_scan()
    assert AlertDelivery.objects.get().payload["data"]["sla"] == "24 h"


@pytest.mark.parametrize("days", [0.25, 1, 1.5, 3, 7.75])
@pytest.mark.parametrize("hour", [0, 9, 23])
@pytest.mark.parametrize("day", range(9, 16))  # Monday 9 November to Sunday 15 November 2026
def test_business_days_before_is_the_inverse_of_the_dashboards_measure(days, hour, day) -> None:
    from dashboards.sla import business_days_between, business_instant_before

    now = dt.datetime(2026, 11, day, hour, 30, tzinfo=dt.UTC)
    for country in ("", "US", "GB"):  # the week of US Thanksgiving (Thursday 26 November 2026)
        start = business_instant_before(now.replace(day=day + 14), days, country)
        assert business_days_between(start, now.replace(day=day + 14), country) == pytest.approx(days)


@pytest.fixture
def rebinding_dns(monkeypatch):
    """hooks.example.test answers loopback (the test receiver) once, then a private address, as a
    DNS-rebinding attacker's name would. Address literals resolve as usual. Counts the lookups."""
    import socket

    from connectors import egress

    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "hooks.example.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "10.1.2.3"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    egress._cache.clear()
    yield lookups
    egress._cache.clear()


@pytest.mark.django_db
def test_a_webhook_connects_to_the_address_that_was_checked(world, admin, receiver, frozen, rebinding_dns) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    subscribe(admin, f"http://hooks.example.test:{port}/hooks/pscsync", "webhook", [EventType.EXCEPTION_GROUP_NEW])
    alerts_scan()
    rebinding_dns.clear()
    results = deliver_all()
    # One lookup per delivery, checked, and the connection went to that answer (the receiver on
    # loopback), not to the private address a second lookup would have given.
    assert results == ["delivered", "delivered"]
    assert len(rebinding_dns) == 1  # the second delivery used the checked answer still cached
    assert [headers["host"] for headers, _ in receiver.received] == [f"hooks.example.test:{port}"] * 2


@pytest.mark.django_db
def test_a_name_that_turns_private_before_a_retry_is_refused(world, admin, receiver, frozen, rebinding_dns) -> None:
    from connectors import egress

    port = receiver.url.split(":")[2].split("/")[0]
    subscribe(admin, f"http://hooks.example.test:{port}/hooks/pscsync", "webhook", [EventType.EXCEPTION_GROUP_NEW])
    alerts_scan()
    receiver.statuses = [503]
    first = AlertDelivery.objects.order_by("pk").first()
    assert alert_delivery_attempt(delivery_id=first.pk) == "pending"  # the receiver failed; retried later
    egress._cache.clear()  # the cached answer expired; the retry resolves again and gets 10.1.2.3
    AlertDelivery.objects.filter(pk=first.pk).update(next_attempt_at=frozen.now())
    assert alert_delivery_attempt(delivery_id=first.pk) == "failed"
    first.refresh_from_db()
    assert "private address" in first.last_error and len(receiver.received) == 1


def test_the_pinned_client_refuses_any_other_host() -> None:
    import httpcore

    from connectors.http import FixedAddressBackend

    backend = FixedAddressBackend("hooks.example.test", 443, "127.0.0.1")
    with pytest.raises(httpcore.ConnectError, match="only hooks.example.test:443 was checked"):
        backend.connect_tcp("elsewhere.example.test", 443)


def _tls_receiver(name: str):
    """An https receiver on 127.0.0.1 whose self-signed certificate names `name`; records the SNI."""
    import os
    import ssl
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(tz=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as f:
        f.write(
            pem
            + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    server_names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(f.name)
    os.unlink(f.name)
    context.sni_callback = lambda sock, server_name, ctx: server_names.append(server_name)
    receiver = Receiver()
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    client_trust = ssl.create_default_context(cadata=pem.decode())
    return receiver, client_trust, server_names


@pytest.mark.parametrize(("certificate_name", "accepted"), [("hooks.example.test", True), ("evil.example.test", False)])
def test_the_pinned_connection_keeps_tls_on_the_host_name(certificate_name, accepted) -> None:
    """Connecting to the vetted address does not weaken TLS: SNI is the URL's host name and the
    certificate must be valid for that name (not for the address connected to)."""
    import httpx

    from connectors.http import pinned_client

    receiver, trust, server_names = _tls_receiver(certificate_name)
    port = receiver.server.server_address[1]
    url = f"https://hooks.example.test:{port}/hooks/pscsync"  # a name no DNS knows: only the pin reaches it
    try:
        with pinned_client(url, "127.0.0.1", timeout=5, verify=trust) as client:
            if accepted:
                assert client.post(url, content=b"{}").status_code == 204
                assert receiver.received[0][0]["host"] == f"hooks.example.test:{port}"
            else:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
                    client.post(url, content=b"{}")
    finally:
        receiver.stop()
    assert server_names[0] == "hooks.example.test"
