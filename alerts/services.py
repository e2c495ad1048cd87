"""Outbound alerts: find what is worth saying, say it once per new group, digest the repeats,
and deliver with retries (the delivery rows are the queue; beat publishes what is due).

Event types and their groups (one message when a group appears, repeats go to the digest):
- exception_group.new — handoffs needing attention, grouped by flow, error class and cause signature
- exception.spike — at least `spike_count` handoffs needing attention failed within the window
- handoff.sla_breach — open handoffs older in business time than their flow's SLA (FlowSla, on the
  legal entity's business calendar: dashboards.sla), by flow
- handoff.stuck — unfinished handoffs (not waiting for a person) older than `stuck_minutes`, by flow
- mismatch.over_value — open mismatches whose difference is at least `mismatch_min_amount`,
  grouped by comparison and cause
- schema.drift — open governance findings (pscsync.governance: a vendor schema change that breaks a
  published mapping), one group per connection, record, field and kind; the message names the
  mappings and flows affected, before any of their handoffs fails
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet

from alerts.models import AlertDelivery, AlertSubscription, AlertTopic
from api.selectors import group_id
from connectors.egress import DestinationRefused, check_public_url
from connectors.http import pinned_client
from connectors.models import GovernanceFinding
from connectors.signatures import standard_webhook_sign
from dashboards.facts import sla_for
from dashboards.sla import sla_deadline
from pscsync import clock
from pscsync.models import Handoff, Mismatch
from remediation.selectors import cause_signature

log = logging.getLogger(__name__)
EventType = AlertSubscription.EventType
WEBHOOK_TIMEOUT_SECONDS = 10.0
# A claimed delivery is not picked again for this long (the sender's lease).
SEND_LEASE = dt.timedelta(minutes=2)
MAX_BACKOFF_SECONDS = 6 * 3600


@dataclass
class Signal:
    event_type: str
    group_key: str
    summary: str
    count: int
    data: dict[str, Any] = field(default_factory=dict)


# --- What is worth saying ------------------------------------------------------------------


def _scoped(qs: QuerySet, sub: AlertSubscription, path: str = "legal_entity") -> QuerySet:
    if sub.all_entities:
        return qs
    return qs.filter(**{f"{path}__in": sub.legal_entities.all()})


def _exception_groups(sub: AlertSubscription, now: dt.datetime) -> list[Signal]:
    groups: dict[str, Signal] = {}
    rows = _scoped(Handoff.objects.filter(status=Handoff.Status.NEEDS_ATTENTION), sub).order_by("created_at")
    for h in rows.values("pk", "flow", "last_error_class", "last_error_message", "business_key"):
        signature = cause_signature(h["last_error_message"])
        gid = group_id(h["flow"], h["last_error_class"], signature)
        signal = groups.get(gid)
        if signal is None:
            signal = groups[gid] = Signal(
                EventType.EXCEPTION_GROUP_NEW,
                gid,
                f"{h['flow']}: {h['last_error_class'] or 'error'} — {signature}"[:300],
                0,
                {
                    "group": gid,
                    "flow": h["flow"],
                    "error_class": h["last_error_class"],
                    "signature": signature,
                    "handoffs": [],
                    "example_business_key": h["business_key"],
                },
            )
        signal.count += 1
        if len(signal.data["handoffs"]) < 20:
            signal.data["handoffs"].append(h["pk"])
    return list(groups.values())


def _spike(sub: AlertSubscription, now: dt.datetime) -> list[Signal]:
    since = now - dt.timedelta(minutes=sub.spike_window_minutes)
    failing = _scoped(Handoff.objects.filter(status=Handoff.Status.NEEDS_ATTENTION), sub)
    count = failing.filter(steps__attempts__started_at__gte=since).distinct().count()
    if count < sub.spike_count:
        return []
    summary = f"{count} handoffs needed attention within {sub.spike_window_minutes} minutes"
    return [Signal(EventType.EXCEPTION_SPIKE, "spike", summary, count, {"window_minutes": sub.spike_window_minutes})]


def _by_flow(event_type: str, qs: QuerySet, what: str, extra: dict[str, Any] | None = None) -> list[Signal]:
    signals = []
    for row in qs.values("flow").annotate(n=Count("pk")).order_by("flow"):
        ids = list(qs.filter(flow=row["flow"]).order_by("created_at").values_list("pk", flat=True)[:20])
        summary = f"{row['n']} {row['flow']} handoffs {what}"
        data = {"flow": row["flow"], "handoffs": ids, **(extra or {})}
        signals.append(Signal(event_type, row["flow"], summary, row["n"], data))
    return signals


def _sla_breaches(sub: AlertSubscription, now: dt.datetime) -> list[Signal]:
    """Each flow's own SLA (the one the dashboards' "% within SLA" uses: an admin's FlowSla, else
    the dashboards' default), measured from the source's business time."""
    open_handoffs = _scoped(Handoff.objects.filter(status__in=Handoff.OPEN), sub)
    signals: list[Signal] = []
    # One deadline per country: business days are each legal entity's working days (dashboards.sla).
    countries = sorted(set(open_handoffs.values_list("legal_entity__country", flat=True).distinct()), key=str)
    for flow in open_handoffs.values_list("flow", flat=True).distinct().order_by("flow"):
        sla = sla_for(flow)
        is_late = Q(pk__in=[])
        for country in countries:
            deadline = sla_deadline(sla, now, country or "")
            place = Q(legal_entity__country=country) if country is not None else Q(legal_entity__isnull=True)
            is_late |= place & Q(business_started_at__lt=deadline)
        late = open_handoffs.filter(is_late, flow=flow)
        what = f"open for longer than their SLA of {sla.target_label}"
        signals += _by_flow(EventType.SLA_BREACH, late, what, {"sla": sla.target_label})
    return signals


def _stuck(sub: AlertSubscription, now: dt.datetime) -> list[Signal]:
    stuck = _scoped(
        Handoff.objects.filter(
            status__in=[Handoff.Status.PENDING, Handoff.Status.RUNNING, Handoff.Status.WAITING_RETRY]
        ),
        sub,
    ).filter(created_at__lt=now - dt.timedelta(minutes=sub.stuck_minutes))
    return _by_flow(EventType.HANDOFF_STUCK, stuck, f"unfinished for more than {sub.stuck_minutes} minutes")


def _mismatches(sub: AlertSubscription, now: dt.datetime) -> list[Signal]:
    floor = sub.mismatch_min_amount
    big = _scoped(Mismatch.objects.filter(status=Mismatch.Status.OPEN), sub).filter(
        Q(difference__gte=floor) | Q(difference__lte=-floor)
    )
    signals = []
    for row in big.values("comparison", "cause").annotate(n=Count("pk")).order_by("comparison", "cause"):
        ids = list(big.filter(comparison=row["comparison"], cause=row["cause"]).values_list("pk", flat=True)[:20])
        summary = f"{row['n']} {row['comparison']} mismatches ({row['cause']}) of at least {floor}"
        signals.append(
            Signal(
                EventType.MISMATCH_OVER_VALUE,
                f"{row['comparison']}|{row['cause']}",
                summary,
                row["n"],
                {"comparison": row["comparison"], "cause": row["cause"], "mismatches": ids},
            )
        )
    return signals


def _schema_drift(sub: AlertSubscription, now: dt.datetime) -> list[Signal]:
    findings = GovernanceFinding.objects.filter(resolved_at__isnull=True).select_related("connection")
    if not sub.all_entities:
        findings = findings.filter(connection__legal_entities__in=sub.legal_entities.all()).distinct()
    signals = []
    for f in findings.order_by("first_seen_at", "pk"):
        signals.append(
            Signal(
                EventType.SCHEMA_DRIFT,
                f"{f.connection.slug}|{f.record}|{f.field}|{f.kind}",
                f.detail[:300],
                1,
                {
                    "connection": f.connection.name,
                    "record": f.record,
                    "field": f.field,
                    "change": f.get_kind_display(),
                    "detail": f.detail,
                    "mappings": f.mappings,
                    "flows": f.flows,
                    "first_seen": f.first_seen_at.isoformat(),
                },
            )
        )
    return signals


DETECTORS = {
    EventType.EXCEPTION_GROUP_NEW: _exception_groups,
    EventType.EXCEPTION_SPIKE: _spike,
    EventType.SLA_BREACH: _sla_breaches,
    EventType.HANDOFF_STUCK: _stuck,
    EventType.MISMATCH_OVER_VALUE: _mismatches,
    EventType.SCHEMA_DRIFT: _schema_drift,
}


# --- Saying it once, then digesting ---------------------------------------------------------


def _delivery_create(
    sub: AlertSubscription, *, kind: str, event_type: str, subject: str, data: dict[str, Any], now: dt.datetime
) -> AlertDelivery:
    delivery = AlertDelivery.objects.create(
        subscription=sub,
        kind=kind,
        event_type=event_type,
        msg_id=f"msg_{uuid.uuid4().hex}",
        subject=subject[:300],
        # The Standard Webhooks payload shape: type, timestamp, data.
        payload={"type": event_type, "timestamp": now.isoformat(), "data": data},
        created_at=now,
        next_attempt_at=now,
    )
    delivery_id = delivery.pk
    transaction.on_commit(lambda: _enqueue(delivery_id))
    return delivery


def _enqueue(delivery_id: int) -> None:
    from alerts.tasks import alert_deliver_task

    try:
        alert_deliver_task.delay(delivery_id)
    except Exception:  # the broker is down: beat's due-delivery sweep sends it
        log.warning("could not publish alert delivery %s; the sweep will send it", delivery_id, exc_info=True)


def subscription_scan(sub: AlertSubscription, now: dt.datetime) -> list[AlertDelivery]:
    """Compare what is true now with what the subscription was told. Call inside a transaction."""
    sent: list[AlertDelivery] = []
    topics = {(t.event_type, t.group_key): t for t in sub.topics.all()}
    seen: set[tuple[str, str]] = set()
    for event_type in sub.event_types:
        detector = DETECTORS.get(event_type)
        if detector is None:
            continue
        for signal in detector(sub, now):
            key = (signal.event_type, signal.group_key)
            seen.add(key)
            topic = topics.get(key)
            if topic is None or topic.closed_at is not None:
                pending = topic.pending_repeats if topic is not None else 0
                topic = topic or AlertTopic(subscription=sub, event_type=signal.event_type, group_key=signal.group_key)
                topic.summary, topic.first_notified_at, topic.last_seen_at = signal.summary, now, now
                topic.last_count, topic.pending_repeats, topic.closed_at = signal.count, pending, None
                topic.save()
                data = {**signal.data, "count": signal.count, "summary": signal.summary}
                sent.append(
                    _delivery_create(
                        sub,
                        kind=AlertDelivery.Kind.ALERT,
                        event_type=signal.event_type,
                        subject=signal.summary,
                        data=data,
                        now=now,
                    )
                )
                continue
            if signal.count > topic.last_count:
                topic.pending_repeats += signal.count - topic.last_count
            topic.last_count, topic.last_seen_at, topic.summary = signal.count, now, signal.summary
            topic.save(update_fields=["last_count", "last_seen_at", "summary", "pending_repeats"])
    # Conditions that cleared: a recurrence is news again.
    for key, topic in topics.items():
        if key not in seen and topic.closed_at is None:
            topic.closed_at = now
            topic.save(update_fields=["closed_at"])
    digest = subscription_digest(sub, now)
    if digest is not None:
        sent.append(digest)
    return sent


def subscription_digest(sub: AlertSubscription, now: dt.datetime) -> AlertDelivery | None:
    """At most one digest per `digest_minutes`: what grew since each group's first message."""
    pending = list(sub.topics.filter(pending_repeats__gt=0).order_by("event_type", "group_key"))
    if not pending:
        sub.topics.filter(closed_at__isnull=False).delete()
        return None
    since = sub.last_digest_at or min(t.first_notified_at for t in pending)
    if now - since < dt.timedelta(minutes=sub.digest_minutes):
        return None
    total = sum(t.pending_repeats for t in pending)
    groups = [
        {
            "event_type": t.event_type,
            "group": t.group_key,
            "summary": t.summary,
            "new_since_last_message": t.pending_repeats,
        }
        for t in pending
    ]
    delivery = _delivery_create(
        sub,
        kind=AlertDelivery.Kind.DIGEST,
        event_type="digest",
        subject=f"{total} more occurrences in {len(groups)} alert groups",
        data={"since": since.isoformat(), "groups": groups},
        now=now,
    )
    sub.topics.filter(pk__in=[t.pk for t in pending]).update(pending_repeats=0)
    sub.topics.filter(closed_at__isnull=False).delete()
    sub.last_digest_at = now
    sub.save(update_fields=["last_digest_at"])
    return delivery


def alerts_scan() -> int:
    """Scan every active subscription; return how many messages were queued."""
    now = clock.now()
    queued = 0
    for sub_id in AlertSubscription.objects.filter(is_active=True).values_list("pk", flat=True):
        with transaction.atomic():
            # The lock makes two beat processes (or a slow scan) take turns, never double-send.
            sub = AlertSubscription.objects.select_for_update().filter(pk=sub_id, is_active=True).first()
            if sub is not None:
                queued += len(subscription_scan(sub, now))
    return queued


@transaction.atomic
def alert_test_send(*, sub: AlertSubscription) -> AlertDelivery:
    now = clock.now()
    return _delivery_create(
        sub,
        kind=AlertDelivery.Kind.TEST,
        event_type="test",
        subject=f"Test message for {sub.name}",
        data={"summary": "This is a test message from pscsync."},
        now=now,
    )


# --- Delivering, with retries --------------------------------------------------------------


class DeliveryFailed(Exception):
    def __init__(self, message: str, *, permanent: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent, self.status = permanent, status


def retry_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: up to base × 2^(attempt-1), capped at six hours."""
    ceiling = min(MAX_BACKOFF_SECONDS, settings.ALERT_RETRY_BASE_SECONDS * 2 ** (attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


def _send_webhook(delivery: AlertDelivery) -> int:
    sub = delivery.subscription
    # Resolved once per delivery and checked; the connection goes to that very address, so a name
    # that re-resolves to a private one after the check (DNS rebinding) is never reached.
    try:
        addresses = check_public_url(sub.target, allow_loopback=settings.ALERT_WEBHOOK_ALLOW_LOOPBACK)
    except DestinationRefused as exc:
        raise DeliveryFailed(str(exc), permanent=True) from None
    body = json.dumps(delivery.payload, separators=(",", ":"), default=str).encode()
    # The receiver compares this with its own clock, so it is wall time, not the demo's business clock.
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "pscsync-alerts/1",
        "webhook-id": delivery.msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_webhook_sign(
            secret=sub.secret(), msg_id=delivery.msg_id, timestamp=timestamp, body=body
        ),
    }
    # Not connectors.http.request: the signature covers these exact bytes, sent as they are.
    try:
        with pinned_client(sub.target, addresses[0], timeout=WEBHOOK_TIMEOUT_SECONDS) as client:
            response = client.post(sub.target, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"could not deliver: {exc.__class__.__name__}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"the receiver answered {response.status_code}", status=response.status_code)
    return response.status_code


def _send_email(delivery: AlertDelivery) -> None:
    data = delivery.payload.get("data", {})
    lines = [delivery.subject, ""]
    if delivery.kind == AlertDelivery.Kind.DIGEST:
        lines += [f"- {g['summary']}: {g['new_since_last_message']} more" for g in data.get("groups", [])]
    else:
        lines += [f"{k}: {v}" for k, v in data.items() if k != "summary"]
    lines += ["", "Sent by pscsync. Admins manage alert subscriptions under Alerts."]
    try:
        send_mail(f"[pscsync] {delivery.subject}", "\n".join(lines), None, [delivery.subscription.target])
    except Exception as exc:  # SMTP errors come in many classes; all are worth a retry
        raise DeliveryFailed(f"the mail server refused: {exc.__class__.__name__}: {exc}"[:500]) from None


def alert_delivery_attempt(*, delivery_id: int) -> str:
    """Try one due delivery once. Safe to call twice: the conditional update decides who sends."""
    now = clock.now()
    claimed = AlertDelivery.objects.filter(
        pk=delivery_id, status=AlertDelivery.Status.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + SEND_LEASE, last_attempt_at=now, attempts=F("attempts") + 1)
    if claimed != 1:
        return "skipped"
    delivery = AlertDelivery.objects.select_related("subscription").get(pk=delivery_id)
    try:
        if delivery.subscription.channel == AlertSubscription.Channel.WEBHOOK:
            delivery.response_status = _send_webhook(delivery)
        else:
            _send_email(delivery)
    except DeliveryFailed as exc:
        delivery.last_error = str(exc)
        delivery.response_status = exc.status
        if exc.permanent or delivery.attempts >= settings.ALERT_DELIVERY_MAX_ATTEMPTS:
            delivery.status = AlertDelivery.Status.FAILED
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = clock.now() + dt.timedelta(seconds=retry_delay(delivery.attempts))
        delivery.save(update_fields=["status", "next_attempt_at", "last_error", "response_status"])
        return delivery.status
    delivery.status = AlertDelivery.Status.DELIVERED
    delivery.delivered_at = clock.now()
    delivery.next_attempt_at = None
    delivery.last_error = ""
    delivery.save(update_fields=["status", "delivered_at", "next_attempt_at", "last_error", "response_status"])
    return delivery.status


def alerts_due() -> list[int]:
    """Deliveries whose time has come (first tries whose message was lost, and retries)."""
    now = clock.now()
    return list(
        AlertDelivery.objects.filter(status=AlertDelivery.Status.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:200]
    )
