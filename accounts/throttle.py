"""Sign-in throttling with backoff, per client address and per account, never a hard lockout.

Each key gets some free failures; after that it must wait before the next try, the wait doubling
with every further failure up to a cap, so guessing slows to a crawl while a person who knows
their password waits minutes at worst. An account's counter is shared by every browser without a
device cookie; a browser where the account signed in before carries a signed device cookie and
has a counter of its own, so an attacker hammering an account does not slow its owner down
(OWASP "device cookies"). Keys never depend on whether the account exists.

The per-address counter slows password spraying from one address, but one office NAT (or a
proxy whose address we do not know, without PSCSYNC_TRUSTED_PROXIES) is one address for
everyone: so it applies to unknown browsers only. A browser with a valid device cookie for the
account it signs in to is counted by its own device counter alone (`sign_in_keys`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from accounts.models import LoginThrottle

DEVICE_COOKIE_SALT = "pscsync.accounts.device"
DEVICE_COOKIE_DAYS = 180


def device_cookie_name() -> str:
    return "__Host-pscsync-device" if settings.SECURE_COOKIES else "pscsync-device"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def account_key(request: HttpRequest, username: str) -> str:
    name = username.strip().lower()
    raw = request.COOKIES.get(device_cookie_name(), "")
    if raw:
        try:
            data = signing.loads(raw, salt=DEVICE_COOKIE_SALT, max_age=DEVICE_COOKIE_DAYS * 86400)
        except signing.BadSignature:
            data = {}
        if data.get("u") == _digest(name):
            return f"account:{_digest(name)}:device:{_digest(raw)}"
    return f"account:{_digest(name)}"


def sign_in_keys(request: HttpRequest, username: str, address: str) -> list[str]:
    """The counters a sign-in attempt is checked against and charged to."""
    account = account_key(request, username)
    if ":device:" in account:
        return [account]
    return [f"ip:{address}", account]


def set_device_cookie(response: HttpResponse, username: str) -> None:
    value = signing.dumps({"u": _digest(username.strip().lower())}, salt=DEVICE_COOKIE_SALT)
    response.set_cookie(
        device_cookie_name(),
        value,
        max_age=DEVICE_COOKIE_DAYS * 86400,
        secure=settings.SECURE_COOKIES,
        httponly=True,
        samesite="Strict",
        path="/",
    )


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


def _limits(key: str) -> tuple[int, int]:
    conf = settings.LOGIN_THROTTLE
    if key.startswith("ip:"):
        return conf["ip_free"], conf["ip_cap_seconds"]
    return conf["account_free"], conf["account_cap_seconds"]


def check(keys: list[str]) -> Verdict:
    """May a sign-in be tried now? If not, how many seconds until it may."""
    now = timezone.now()
    wait = 0.0
    for row in LoginThrottle.objects.filter(key__in=keys, wait_until__gt=now):
        if row.wait_until is not None:  # always, by the filter; the column is nullable
            wait = max(wait, (row.wait_until - now).total_seconds())
    return Verdict(allowed=wait <= 0, retry_after=math.ceil(wait))


@transaction.atomic
def failed(keys: list[str]) -> None:
    now = timezone.now()
    window = dt.timedelta(seconds=settings.LOGIN_THROTTLE["window_seconds"])
    for key in keys:
        row, _ = LoginThrottle.objects.select_for_update().get_or_create(
            key=key, defaults={"last_failure_at": now, "failures": 0}
        )
        if now - row.last_failure_at > window and not (row.wait_until and row.wait_until > now):
            row.failures = 0  # a quiet hour forgives earlier mistakes
        row.failures += 1
        row.last_failure_at = now
        free, cap = _limits(key)
        if row.failures > free:
            row.wait_until = now + dt.timedelta(seconds=min(cap, 2 ** (row.failures - free)))
        row.save()


def succeeded(keys: list[str]) -> None:
    LoginThrottle.objects.filter(key__in=keys).delete()
