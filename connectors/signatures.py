"""Webhook signature schemes, checked on the raw body in constant time.

Standard Webhooks (our own sandboxes and the echo target): headers webhook-id, webhook-timestamp,
webhook-signature; the signed content is "<id>.<timestamp>.<raw body>"; each signature is
"v1,<base64 HMAC-SHA256>", several separated by spaces so two secrets can sign during rotation.
We write our own verifier rather than use the `standardwebhooks` package because we need our
injectable clock, several secrets, and clean refusals of malformed headers (the package raises
ValueError on a signature without a comma and reads the wall clock). Tests sign with that
package to prove we interoperate with the reference implementation.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
from typing import Any

from connectors.errors import WebhookRejected


def _secret_bytes(secret: str) -> bytes:
    encoded = secret.removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def standard_webhook_sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_webhook_verify(
    *, headers: dict[str, str], body: bytes, secrets: list[str], now: dt.datetime, tolerance_seconds: int
) -> str:
    """Return the webhook-id of an authentic, fresh delivery; raise WebhookRejected otherwise."""
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not lowered.get(h)]
    if missing:
        raise WebhookRejected(401, f"missing header(s): {', '.join(missing)}")
    msg_id = lowered["webhook-id"]
    try:
        timestamp = int(lowered["webhook-timestamp"])
    except ValueError:
        raise WebhookRejected(401, "webhook-timestamp must be whole seconds since 1970") from None
    skew = timestamp - int(now.timestamp())
    if abs(skew) > tolerance_seconds:
        direction = "old" if skew < 0 else "far in the future"
        raise WebhookRejected(
            401, f"webhook-timestamp is {abs(skew)} s {direction}; at most {tolerance_seconds} s is accepted"
        )
    if not secrets:
        raise WebhookRejected(401, "this connection has no webhook secret configured")
    offered: list[bytes] = []
    for item in lowered["webhook-signature"].split():
        version, _, value = item.partition(",")
        if version != "v1" or not value:
            continue
        try:
            offered.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not offered:
        raise WebhookRejected(401, "webhook-signature holds no v1 signature")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    matched = False
    for secret in secrets:
        expected = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
        for candidate in offered:
            # Compare every pair, so the time taken does not tell which secret matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookRejected(401, "no signature matches this connection's webhook secrets")
    return msg_id


def active_webhook_secrets(credentials: dict[str, Any], now: dt.datetime) -> list[str]:
    """Current and not-yet-expired previous secrets (rotation keeps two valid for a while)."""
    secrets = []
    for entry in credentials.get("webhook_secrets", []):
        expires = entry.get("expires_at")
        if expires and dt.datetime.fromisoformat(expires) <= now:
            continue
        secrets.append(entry["secret"])
    return secrets
