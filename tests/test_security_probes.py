"""Issue 17: the holes found by probing the demo and a production-configured copy, one test per
finding (docs/security.md lists them). Each failed before its fix."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys

import pytest
from django.test import Client

from tests.helpers import ROOT, deploy_check
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


# --- Configuration: loopback off by default, .env.example complete, deploy check passes ----


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[name.strip()] = value.strip()
    return values


def test_env_example_lists_every_variable_the_code_reads() -> None:
    """Every getenv/env_bool/env_int/env_list/os.environ read in the app's packages is listed."""
    pattern = re.compile(
        r"""(?:getenv|env_bool|env_int|env_list|environ\.get|environ\.setdefault)\(\s*["']([A-Z][A-Z0-9_]+)["']"""
        r"""|environ\[\s*["']([A-Z][A-Z0-9_]+)["']\]"""
    )
    read: dict[str, str] = {}
    for package in ("pscsync", "accounts", "connectors", "api", "dashboards", "remediation", "studio"):
        for path in (ROOT / package).rglob("*.py"):
            for match in pattern.finditer(path.read_text()):
                read.setdefault(match.group(1) or match.group(2), str(path.relative_to(ROOT)))
    read.pop("DJANGO_SETTINGS_MODULE", None)  # Django's own, set by manage.py, wsgi and celery
    missing = {name: where for name, where in read.items() if name not in _env_example()}
    assert not missing, f"read by the code but not in .env.example: {missing}"


def test_sandboxes_are_off_unless_turned_on(tmp_path) -> None:  # noqa: ANN001
    """Production settings without PSCSYNC_ALLOW_SANDBOXES: loopback is refused (the probe
    pointed a "sandbox" connection at 127.0.0.1:5432 and read the answer)."""
    env = {k: v for k, v in os.environ.items() if k != "PSCSYNC_ALLOW_SANDBOXES"}
    env["PSCSYNC_VAR_DIR"] = str(tmp_path)
    code = "import django; django.setup(); from django.conf import settings; print(settings.ALLOW_SANDBOXES)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "pscsync.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "False", out.stderr
    assert _env_example()["PSCSYNC_ALLOW_SANDBOXES"] == "false"


def test_deploy_check_passes_with_the_documented_production_values(tmp_path) -> None:  # noqa: ANN001
    """`check --deploy --fail-level WARNING` with .env.example as written, plus the three secrets
    it says to generate (and a var directory of the test's own)."""
    env = {name: value for name, value in _env_example().items() if value}
    env.update(
        PATH=os.environ.get("PATH", "/usr/bin:/bin"),
        HOME=str(tmp_path),
        SECRET_KEY=secrets.token_urlsafe(50),
        PSCSYNC_CREDENTIALS_KEYS="k1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        PSCSYNC_AUDIT_KEYS="a1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        PSCSYNC_VAR_DIR=str(tmp_path / "var"),
    )
    result = deploy_check(env)
    assert result.returncode == 0, result.stdout + result.stderr
