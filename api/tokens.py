"""Personal API tokens: issue, check, revoke. Tokens look like psc_<prefix>_<secret>; only a
SHA-256 digest is stored (the secret has 256 bits of entropy, so a slow hash adds nothing)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from api.models import ApiToken
from pscsync import clock
from pscsync.audit import audit_record

TOKEN_PREFIX = "psc_"  # noqa: S105 (a label, not a secret)
# last_used_at is written at most this often per token, so reads do not all become writes.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class TokenInvalid(Exception):
    """Missing, malformed, unknown, expired or revoked; the message never says which secret part was wrong."""


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    plaintext: str  # shown once, never stored


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@transaction.atomic
def api_token_issue(*, user: User, name: str, days: int) -> IssuedToken:
    if not 1 <= days <= settings.API_TOKEN_MAX_DAYS:
        raise ValueError(f"a token lives between 1 and {settings.API_TOKEN_MAX_DAYS} days")
    now = clock.now()
    prefix = secrets.token_hex(6)
    plaintext = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(
        user=user,
        name=name.strip()[:80],
        prefix=prefix,
        digest=_digest(plaintext),
        created_at=now,
        expires_at=now + dt.timedelta(days=days),
    )
    audit_record(
        actor=user,
        action="api_token.create",
        obj=token,
        after={"name": token.name, "expires_at": str(token.expires_at)},
    )
    return IssuedToken(token=token, plaintext=plaintext)


@transaction.atomic
def api_token_revoke(*, user: User, token_id: int) -> ApiToken:
    """Revoke one of the user's own tokens. Another user's token id is 'not found'."""
    token = ApiToken.objects.select_for_update().get(pk=token_id, user=user)
    if token.revoked_at is None:
        token.revoked_at = clock.now()
        token.save(update_fields=["revoked_at"])
        audit_record(actor=user, action="api_token.revoke", obj=token, after={"name": token.name})
    return token


def api_token_check(plaintext: str, *, remote_addr: str | None = None) -> ApiToken:
    """The live token for this secret, or TokenInvalid. Touches last_used_at (coarsely)."""
    if not plaintext.startswith(TOKEN_PREFIX):
        raise TokenInvalid("not a pscsync API token")
    prefix, _, secret = plaintext[len(TOKEN_PREFIX) :].partition("_")
    if not prefix or not secret:
        raise TokenInvalid("not a pscsync API token")
    token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
    # Compare against a digest even when the prefix is unknown, so timing does not reveal prefixes.
    expected = token.digest if token is not None else _digest("")
    if not hmac.compare_digest(expected, _digest(plaintext)) or token is None:
        raise TokenInvalid("invalid token")
    now = clock.now()
    if token.revoked_at is not None:
        raise TokenInvalid("this token was revoked")
    if token.expires_at <= now:
        raise TokenInvalid("this token has expired")
    if not token.user.is_active:
        raise TokenInvalid("the token's user is disabled")
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now, last_used_ip=remote_addr)
        token.last_used_at = now
    return token
