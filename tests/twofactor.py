"""Second factor in tests: a client whose force_login also passes the second factor, and the
TOTP code a person's phone would show."""

from __future__ import annotations

from django.test import Client


def totp_device_for(user):
    """The user's confirmed authenticator, created if missing (as if they had enrolled)."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    return device or TOTPDevice.objects.create(user=user, name="test phone", confirmed=True)


def totp_code(device) -> str:
    """The code the phone shows now."""
    from django_otp.oath import totp

    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):0{device.digits}d}"


class VerifiedClient(Client):
    """force_login signs in *and* passes the second factor, like a person who typed their code.

    Tests that are about the second factor use `login_password_only`.
    """

    def force_login(self, user, backend=None) -> None:
        from django_otp import DEVICE_ID_SESSION_KEY

        super().force_login(user, backend)
        device = totp_device_for(user)
        session = self.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()

    def login_password_only(self, user, backend=None) -> None:
        super().force_login(user, backend)
