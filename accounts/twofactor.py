"""TOTP second factor (django-otp) with single-use recovery codes."""

from __future__ import annotations

import base64

import segno
from django.conf import settings
from django.contrib.auth.models import User
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from pscsync.access import role_of

RECOVERY_CODES = 10


def signed_in_with_second_factor(user: object) -> bool:
    """Has this session's sign-in passed a second factor? django-otp's middleware gives the
    request's user `is_verified()`; a user without it (another request path) has not."""
    verified = getattr(user, "is_verified", None)
    return bool(verified and verified())


def user_has_totp(user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def second_factor_required(user: User) -> bool:
    """Required for the configured roles and superusers; for anyone who enrolled, always."""
    if user.is_superuser or role_of(user) in settings.TWO_FACTOR_REQUIRED_ROLES:
        return True
    return user_has_totp(user)


def pending_device(user: User) -> TOTPDevice:
    """The not yet confirmed authenticator being set up (one per user)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    return device or TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)


def secret_text(device: TOTPDevice) -> str:
    """The key as people type it into an authenticator app: base32 in groups of four."""
    raw = base64.b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def qr_svg(device: TOTPDevice) -> str:
    return segno.make(device.config_url, error="m").svg_inline(scale=4, dark="#17202c", light="#ffffff")


def recovery_codes_new(user: User) -> list[str]:
    """Replace the user's recovery codes; the plain codes are shown once and stored only here."""
    device, _ = StaticDevice.objects.get_or_create(user=user, name="Recovery codes", defaults={"confirmed": True})
    device.token_set.all().delete()
    codes = [StaticToken.random_token() for _ in range(RECOVERY_CODES)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=code) for code in codes])
    return codes


def recovery_codes_left(user: User) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


def second_factor_reset(user: User) -> None:
    TOTPDevice.objects.filter(user=user).delete()
    StaticDevice.objects.filter(user=user).delete()
