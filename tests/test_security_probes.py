"""Issue 17: the holes found by probing the demo and a production-configured copy, one test per
finding (docs/security.md lists them). Each failed before its fix."""

from __future__ import annotations

import base64
import csv
import io
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


def _sign_in(client: Client, username: str, password: str = PASSWORD, **extra: str):
    return client.post("/login/", {"username": username, "password": password}, **extra)


# --- Lockout of everyone: the per-address counter spares known devices ---------------------


@pytest.mark.django_db
def test_a_known_device_signs_in_while_its_address_is_throttled(viewer, entities, settings) -> None:
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
def test_a_known_device_guessing_is_still_slowed_by_its_own_counter(viewer, settings) -> None:
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
    for package in ("pscsync", "accounts", "connectors", "api", "dashboards", "remediation", "studio", "demo"):
        for path in (ROOT / package).rglob("*.py"):
            for match in pattern.finditer(path.read_text()):
                read.setdefault(match.group(1) or match.group(2), str(path.relative_to(ROOT)))
    read.pop("DJANGO_SETTINGS_MODULE", None)  # Django's own, set by manage.py, wsgi and celery
    missing = {name: where for name, where in read.items() if name not in _env_example()}
    assert not missing, f"read by the code but not in .env.example: {missing}"


def test_sandboxes_are_off_unless_turned_on(tmp_path) -> None:
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


def test_deploy_check_passes_with_the_documented_production_values(tmp_path) -> None:
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


# --- Lower: scoped admins and users, cause-wide actions, caching, CSV, passwords -----------


@pytest.fixture
def ukadmin(entities):
    from pscsync.services import user_provision

    return user_provision(username="ulla.ukadmin", password=PASSWORD, role="admin", entities=[entities["uk"]])


@pytest.mark.django_db
def test_a_scoped_admin_sees_and_manages_only_users_of_their_entities(client, ukadmin, viewer, admin, outsider) -> None:
    """viewer: US only; admin: every entity; outsider: UK only. A UK admin manages the outsider
    (and themself), never the US viewer nor the admin of everything."""
    page_client = VerifiedClient()
    assert _sign_in(page_client, viewer.username).status_code == 302  # an open session to see
    client.force_login(ukadmin)
    page = client.get("/account/users/").content.decode()
    assert outsider.username in page and ukadmin.username in page
    assert viewer.username not in page and admin.username not in page
    for target in (viewer, admin):
        assert client.post(f"/account/users/{target.pk}/end-sessions/").status_code == 404
        assert client.post(f"/account/users/{target.pk}/reset-two-factor/").status_code == 404
    assert page_client.get("/").status_code in (200, 302) and "_auth_user_id" in page_client.session
    assert client.post(f"/account/users/{outsider.pk}/end-sessions/").status_code == 302


@pytest.mark.django_db
def test_a_scoped_operator_cannot_act_on_a_cause_that_spans_other_entities(
    client, outsider, operator, entities
) -> None:
    from remediation.models import ExceptionCause, ExceptionStatus
    from tests.api.conftest import make_connection, make_exception

    connection = make_connection("erp-both", entities["us"])
    make_exception(connection, entities["us"], "US-1", "Tax code missing")
    make_exception(connection, entities["uk"], "UK-1", "Tax code missing")
    cause = ExceptionCause.objects.get()
    client.force_login(outsider)  # UK only
    archive = {"action": "archive", "occurrences": "5", "reason": "noise"}
    assert client.post(f"/workbench/causes/{cause.pk}/act/", archive).status_code == 403
    response = client.post(f"/workbench/causes/{cause.pk}/act/", {"action": "assign", "assignee": outsider.username})
    assert response.status_code == 302
    cause.refresh_from_db()
    assert cause.status != ExceptionStatus.ARCHIVED and cause.assignee is None  # the cause is untouched
    items = cause.items.values_list("legal_entity__code", "assignee__username")
    assert sorted(items) == [("uk", outsider.username), ("us", None)]  # only the UK exception is theirs


@pytest.mark.django_db
def test_signed_in_pages_and_api_answers_are_not_cached(client, viewer) -> None:
    from api.tokens import api_token_issue

    client.force_login(viewer)
    for url in ("/", "/handoffs/", "/api/v1/handoffs/"):
        response = client.get(url, follow=True)
        assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"], url
    token = api_token_issue(user=viewer, name="t", days=1).plaintext
    response = Client().get("/api/v1/handoffs/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-12.50", "-12.50"),  # a plain number stays a number
        ("Acme Ltd", "Acme Ltd"),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(cell: str, written: str) -> None:
    from pscsync.csvsafe import csv_cell, csv_unneutralise

    assert csv_cell(cell) == written
    assert csv_unneutralise(written) == cell


@pytest.mark.django_db
def test_the_workbench_export_neutralises_vendor_text(client, operator, entities) -> None:
    from tests.api.conftest import make_connection, make_exception

    connection = make_connection("erp-us", entities["us"])
    make_exception(connection, entities["us"], "=HYPERLINK(1)", "=cmd|' /C calc'!A0")
    client.force_login(operator)
    response = client.get("/workbench/export.csv")
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(body)))
    cells = [cell for row in rows[1:] for cell in row]
    assert "'=HYPERLINK(1)" in cells and not any(c.startswith(("=", "+", "@")) for c in cells)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("password", "why"),
    [("aaaaaaaaaaaa", "too few characters"), ("vera.viewer.2026", "too similar"), ("123456789012345", "numeric")],
)
def test_weak_passwords_are_refused_by_user_provision(entities, password: str, why: str) -> None:
    from django.core.exceptions import ValidationError

    from pscsync.services import user_provision

    with pytest.raises(ValidationError, match=why):
        user_provision(username="vera.viewer", password=password, role="viewer", entities=[entities["us"]])


@pytest.mark.django_db
def test_a_person_changes_their_own_password_through_the_validators(client, viewer) -> None:
    from pscsync.models import AuditEntry

    other = VerifiedClient()
    assert _sign_in(other, viewer.username).status_code == 302
    client.force_login(viewer)
    weak = {"old_password": PASSWORD, "new_password1": "aaaaaaaaaaaa", "new_password2": "aaaaaaaaaaaa"}
    response = client.post("/account/password/", weak)
    assert response.status_code == 200 and "too few characters" in response.content.decode()
    strong = "plum-orchard-sketch-41"
    good = {"old_password": PASSWORD, "new_password1": strong, "new_password2": strong}
    assert client.post("/account/password/", good).status_code == 302
    viewer.refresh_from_db()
    assert viewer.check_password(strong)
    assert AuditEntry.objects.filter(action="user.password_changed", actor=viewer).exists()
    assert other.get("/handoffs/").status_code == 302  # the other browser is signed out


# --- User administration in the browser -------------------------------------------------------


def _user_form(**overrides: object) -> dict:
    data = {"username": "sam.uk", "email": "sam@example.com", "role": "viewer", "is_active": "on", "password": ""}
    data.update(overrides)
    return data


@pytest.mark.django_db
def test_an_admin_adds_a_user_scoped_to_one_entity_who_then_sees_only_it(client, admin, entities, records_both) -> None:
    from pscsync.models import AuditEntry

    client.force_login(admin)
    assert client.get("/account/users/new/").status_code == 200
    password = "plum-orchard-sketch-41"
    response = client.post("/account/users/new/", _user_form(legal_entities=[entities["uk"].pk], password=password))
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.get(action="user.save")
    assert entry.actor == admin and entry.after["entities"] == ["uk"] and entry.after["role"] == "viewer"
    assert password not in str(entry.after)
    sam = Client()
    assert _sign_in(sam, "sam.uk", password).status_code == 302
    page = sam.get("/handoffs/").content.decode()
    assert "OPP-UK" in page and "OPP-US" not in page


@pytest.fixture
def records_both(echo_connection, entities):
    from tests.helpers import handoffs_per_entity

    return handoffs_per_entity(echo_connection, entities)


@pytest.mark.django_db
def test_a_scoped_admin_adds_and_changes_users_only_inside_their_scope(
    client, ukadmin, viewer, outsider, entities
) -> None:
    client.force_login(ukadmin)
    page = client.get("/account/users/new/").content.decode()
    assert "Every legal entity" not in page and entities["us"].name not in page
    # A US entity id slipped into the post, or "all entities", is refused and stores nothing.
    assert client.post("/account/users/new/", _user_form(legal_entities=[entities["us"].pk])).status_code == 200
    assert client.post("/account/users/new/", _user_form(all_entities="on")).status_code == 200
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username="sam.uk").exists()
    # A US user is not theirs to open or change.
    assert client.get(f"/account/users/{viewer.pk}/").status_code == 404
    # A UK user is: deactivating ends their sessions.
    data = _user_form(username=outsider.username, role="operator", legal_entities=[entities["uk"].pk])
    del data["is_active"]
    assert client.post(f"/account/users/{outsider.pk}/", data).status_code == 302
    outsider.refresh_from_db()
    assert not outsider.is_active


@pytest.mark.django_db
def test_an_admin_cannot_lock_themself_out_and_weak_passwords_are_refused(client, admin, entities) -> None:
    client.force_login(admin)
    data = _user_form(username=admin.username, role="viewer", all_entities="on")
    response = client.post(f"/account/users/{admin.pk}/", data)
    assert response.status_code == 200 and "your own role" in response.content.decode()
    response = client.post("/account/users/new/", _user_form(legal_entities=[entities["us"].pk], password="a" * 12))
    assert response.status_code == 200 and "too few characters" in response.content.decode()
