"""Alert subscriptions: create and change them (admins), with the audit trail."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction

from alerts.models import AlertSubscription
from pscsync import clock
from pscsync.audit import audit_record
from pscsync.models import LegalEntity

FIELDS = (
    "name",
    "channel",
    "target",
    "event_types",
    "all_entities",
    "spike_count",
    "spike_window_minutes",
    "stuck_minutes",
    "mismatch_min_amount",
    "digest_minutes",
    "is_active",
)


def _snapshot(sub: AlertSubscription) -> dict[str, Any]:
    data = {f: getattr(sub, f) for f in FIELDS}
    data["mismatch_min_amount"] = str(data["mismatch_min_amount"])
    data["entities"] = sorted(sub.legal_entities.values_list("code", flat=True)) if sub.pk else []
    return data


@transaction.atomic
def alert_subscription_save(
    *,
    actor: User,
    data: dict[str, Any],
    entities: Iterable[LegalEntity],
    subscription: AlertSubscription | None = None,
) -> tuple[AlertSubscription, str]:
    """Create or change a subscription. Returns it and, for a new webhook, its signing secret
    (shown once; only the sealed form is stored)."""
    before = _snapshot(subscription) if subscription else {}
    sub = subscription or AlertSubscription(created_by=actor, created_at=clock.now())
    for f in FIELDS:
        if f in data:
            setattr(sub, f, data[f])
    new_secret = ""
    if sub.channel == AlertSubscription.Channel.WEBHOOK and not sub.secret_sealed:
        new_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        sub.set_secret(new_secret)
    sub.save()
    sub.legal_entities.set(list(entities))
    audit_record(actor=actor, action="alert_subscription.save", obj=sub, before=before, after=_snapshot(sub))
    return sub, new_secret


@transaction.atomic
def alert_subscription_delete(*, actor: User, subscription: AlertSubscription) -> None:
    audit_record(actor=actor, action="alert_subscription.delete", obj=subscription, before=_snapshot(subscription))
    subscription.delete()
