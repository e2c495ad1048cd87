"""Issue 17: the holes found by probing the demo and a production-configured copy, one test per
finding (docs/security.md lists them). Each failed before its fix."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.twofactor import VerifiedClient

PASSWORD = "a-long-test-password"


def _sign_in(client: Client, username: str, password: str = PASSWORD, **extra: str):  # noqa: ANN201
    return client.post("/login/", {"username": username, "password": password}, **extra)


# --- Lockout of everyone: the per-address counter spares known devices ---------------------


@pytest.mark.django_db
def test_a_known_device_signs_in_while_its_address_is_throttled(viewer, entities, settings) -> None:  # noqa: ANN001
    """One office NAT (or a proxy without PSCSYNC_TRUSTED_PROXIES): every browser has one address.
    Someone there sprays bad passwords; the owner's known browser must still get in."""
    owner = VerifiedClient()
    assert _sign_in(owner, viewer.username).status_code == 302  # sets the device cookie
    owner.post("/logout/")
    sprayer = Client()
    free = settings.LOGIN_THROTTLE["ip_free"]
    statuses = [_sign_in(sprayer, f"someone{i}", "Winter2026!").status_code for i in range(free + 5)]
    assert statuses[-1] == 429  # the address is slowed down...
    assert _sign_in(Client(), viewer.username).status_code == 429  # ...for browsers it does not know
    assert _sign_in(owner, viewer.username).status_code == 302  # but not for the owner's known browser


@pytest.mark.django_db
def test_a_known_device_guessing_is_still_slowed_by_its_own_counter(viewer, settings) -> None:  # noqa: ANN001
    owner = VerifiedClient()
    assert _sign_in(owner, viewer.username).status_code == 302
    owner.post("/logout/")
    free = settings.LOGIN_THROTTLE["account_free"]
    statuses = [_sign_in(owner, viewer.username, "not-the-password").status_code for _ in range(free + 3)]
    assert statuses[-1] == 429
