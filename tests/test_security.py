"""Security requirements of RELIABILITY.md §5, one block per test id (T12, T22–T24, T28).

docs/security.md maps each id to these tests. T20 is tests/test_access.py, T25 and T26 are
tests/test_egress_security.py and tests/test_secrets.py.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

from tests.helpers import ROOT, change_body, deploy_check, sign
from tests.twofactor import VerifiedClient, totp_code, totp_device_for

PASSWORD = "a-long-test-password"


def _sign_in(client: Client, username: str, password: str = PASSWORD, **extra: str):
    return client.post("/login/", {"username": username, "password": password}, **extra)


# --- T12: webhook signatures (the matrix itself is tests/test_webhooks.py) ----------------


@pytest.mark.django_db
def test_t12_a_refused_signature_is_logged_as_a_security_event(client, echo_connection, caplog) -> None:
    body = change_body("OPP-9")
    headers = sign(body, msg_id="evt-9", secret="whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==")
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "content-type"}
    with caplog.at_level(logging.WARNING, logger="pscsync.security"):
        response = client.post("/webhooks/echo-us/", data=body, content_type="application/json", **extra)
    assert response.status_code == 401
    assert any("webhook refused for echo-us" in r.getMessage() for r in caplog.records)


def test_t12_signatures_are_compared_in_constant_time() -> None:
    """The code-review check, automated: the verifier compares with hmac.compare_digest only."""
    source = (ROOT / "connectors" / "signatures.py").read_text()
    assert "hmac.compare_digest(" in source
    assert " == candidate" not in source and "candidate ==" not in source


# --- T22: CSRF ------------------------------------------------------------------------------


@pytest.fixture
def csrf_client() -> VerifiedClient:
    return VerifiedClient(enforce_csrf_checks=True)


@pytest.mark.django_db
def test_t22_state_changes_without_a_valid_csrf_token_are_refused(csrf_client, admin, echo_connection) -> None:
    csrf_client.force_login(admin)
    targets = [
        f"/connections/{echo_connection.pk}/test/",
        f"/account/users/{admin.pk}/end-sessions/",
        "/logout/",
    ]
    for url in targets:
        assert csrf_client.post(url).status_code == 403, f"{url} without token"
    # A token from another session does not work either.
    other = VerifiedClient(enforce_csrf_checks=True)
    other.get("/login/")
    foreign = other.cookies["csrftoken"].value
    for url in targets:
        response = csrf_client.post(url, {"csrfmiddlewaretoken": foreign}, HTTP_X_CSRFTOKEN=foreign)
        assert response.status_code == 403, f"{url} with another session's token"


@pytest.mark.django_db
def test_t22_a_cross_site_origin_is_refused_even_with_a_valid_token(csrf_client, admin, echo_connection) -> None:
    csrf_client.force_login(admin)
    csrf_client.get("/connections/")
    token = csrf_client.cookies["csrftoken"].value
    url = f"/connections/{echo_connection.pk}/test/"
    response = csrf_client.post(url, HTTP_X_CSRFTOKEN=token, HTTP_ORIGIN="https://evil.example", secure=True)
    assert response.status_code == 403


@pytest.mark.django_db
def test_t22_state_changing_routes_refuse_get(client, admin, echo_connection) -> None:
    client.force_login(admin)
    for url in (f"/connections/{echo_connection.pk}/test/", f"/account/users/{admin.pk}/end-sessions/", "/logout/"):
        assert client.get(url).status_code == 405, url


# --- T23: sign-in throttling ----------------------------------------------------------------


@pytest.mark.django_db
def test_t23_twenty_bad_passwords_on_one_account_are_slowed_down(client, viewer, settings) -> None:
    free = settings.LOGIN_THROTTLE["account_free"]
    statuses = [_sign_in(client, viewer.username, "wrong-password-123").status_code for _ in range(20)]
    assert statuses[:free] == [200] * free  # the form again, with the error
    assert statuses[free] == 200  # the first failure over the limit still gets an answer...
    assert set(statuses[free + 1 :]) == {429}  # ...then every try must wait
    # While waiting even the right password is not tried: the answer gives nothing away.
    response = _sign_in(client, viewer.username)
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert b"Too many sign-in attempts" in response.content


@pytest.mark.django_db
def test_t23_the_wait_doubles_and_is_capped(viewer, settings) -> None:
    from accounts import throttle
    from accounts.models import LoginThrottle

    settings.LOGIN_THROTTLE = {**settings.LOGIN_THROTTLE, "account_free": 2, "account_cap_seconds": 60}
    waits = []
    for _ in range(12):
        throttle.failed(["account:x"])
        row = LoginThrottle.objects.get(key="account:x")
        waits.append(round((row.wait_until - row.last_failure_at).total_seconds()) if row.wait_until else 0)
    assert waits[:2] == [0, 0]
    assert waits[2:7] == [2, 4, 8, 16, 32]
    assert set(waits[7:]) == {60}


@pytest.mark.django_db
def test_t23_the_owner_with_a_device_cookie_is_not_slowed_by_an_attacker(viewer) -> None:
    """Throttle, not lockout: the attacker's failures do not block the owner's known browser."""
    owner = VerifiedClient()
    assert _sign_in(owner, viewer.username).status_code == 302  # device cookie set
    owner.post("/logout/")
    attacker = Client()
    for _ in range(15):
        _sign_in(attacker, viewer.username, "guess-guess-guess")
    assert _sign_in(attacker, viewer.username).status_code == 429
    # Same address as the attacker here (the test client), still fine: the IP limit is higher.
    assert _sign_in(owner, viewer.username).status_code == 302


@pytest.mark.django_db
def test_t23_a_password_spray_from_one_address_is_slowed_down(client, entities, settings) -> None:
    from django.contrib.auth import get_user_model

    for i in range(50):
        get_user_model().objects.create_user(f"staff{i}", password=PASSWORD)
    statuses = [_sign_in(client, f"staff{i}", "Winter2026!").status_code for i in range(50)]
    free = settings.LOGIN_THROTTLE["ip_free"]
    assert set(statuses[: free + 1]) == {200}
    assert set(statuses[free + 1 :]) == {429}
    # Another address is not affected.
    assert _sign_in(client, "staff1", REMOTE_ADDR="198.51.100.7").status_code == 302


@pytest.mark.django_db
def test_t23_a_spoofed_forwarded_for_header_is_ignored(client, entities, settings) -> None:
    """Rotating X-Forwarded-For does not buy fresh attempts: the header counts only from a proxy."""
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    statuses = [
        _sign_in(client, f"nobody{i}", "x-password-x", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code
        for i in range(30)
    ]
    assert statuses[-1] == 429


def test_t23_client_address_comes_from_the_trusted_proxy_only(rf, settings) -> None:
    from accounts.clientip import client_ip

    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    direct = rf.get("/", REMOTE_ADDR="198.51.100.9", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert client_ip(direct) == "198.51.100.9"
    # Through our proxy: the client may prepend lies; the hop our proxy appended is the truth.
    proxied = rf.get("/", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.9")
    assert client_ip(proxied) == "198.51.100.9"
    chained = rf.get("/", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="198.51.100.9, 10.9.9.9")
    assert client_ip(chained) == "198.51.100.9"
    settings.TRUSTED_PROXIES = []
    assert client_ip(proxied) == "10.1.2.3"


@pytest.mark.django_db
def test_t23_unknown_and_known_accounts_get_identical_answers(viewer) -> None:
    def answer(username: str) -> tuple[int, str]:
        c = Client()
        response = _sign_in(c, username, "not-the-password-1")
        token = c.cookies["csrftoken"].value if "csrftoken" in c.cookies else ""
        body = response.content.decode()
        # The CSRF form token is random per response; everything else must match byte for byte.
        import re

        body = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", body).replace(token, "")
        body = re.sub(r'"X-CSRFToken": "[^"]+"', "", body)
        return response.status_code, body

    assert answer(viewer.username) == answer("no-such-user")
    viewer.is_active = False
    viewer.save()
    assert answer(viewer.username) == answer("no-such-user")


@pytest.mark.django_db
def test_t23_sign_in_attempts_are_logged_and_audited(client, viewer, caplog) -> None:
    from pscsync.models import AuditEntry

    with caplog.at_level(logging.INFO, logger="pscsync.security"):
        _sign_in(client, "evil\nuser=admin", "nope-nope-nope")
        _sign_in(client, viewer.username)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("sign-in failed user='evil\\nuser=admin'") for m in messages)  # encoded, one line
    assert any(m.startswith("sign-in user='vera.viewer'") for m in messages)
    actions = list(AuditEntry.objects.order_by("pk").values_list("action", "actor_label"))
    assert ("login.failed", "evil\nuser=admin") in actions and ("login.succeeded", "vera.viewer") in actions


# --- T24: sessions and the second factor ------------------------------------------------------


@pytest.fixture
def otp_no_wait(settings):
    """django-otp makes a device wait 1 s, 2 s, 4 s… after each wrong code; tests that try a
    wrong code and then the right one turn the wait off (test_t24_wrong_codes_make_the_next_wait)."""
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    settings.OTP_STATIC_THROTTLE_FACTOR = 0


@pytest.mark.django_db
def test_t24_sign_in_gives_a_new_session_key(viewer) -> None:
    c = Client()
    c.get("/login/")
    c.session.save()
    before = c.session.session_key
    _sign_in(c, viewer.username)
    assert c.session.session_key and c.session.session_key != before


@pytest.mark.django_db
def test_t24_after_sign_out_the_old_cookie_is_worthless(client, viewer) -> None:
    client.force_login(viewer)
    assert client.get("/handoffs/").status_code == 200
    stolen = client.cookies["sessionid"].value
    client.post("/logout/")
    thief = Client()
    thief.cookies["sessionid"] = stolen
    assert thief.get("/handoffs/").status_code == 302


@pytest.mark.django_db
def test_t24_disabling_a_user_ends_all_three_of_their_sessions(viewer) -> None:
    from django.contrib.sessions.models import Session

    from accounts.models import UserSession

    browsers = []
    for _ in range(3):
        c = VerifiedClient()
        c.force_login(viewer)
        browsers.append(c)
    assert UserSession.objects.filter(user=viewer, ended_at__isnull=True).count() == 3
    viewer.is_active = False
    viewer.save()
    assert not Session.objects.filter(session_key__in=[c.session.session_key for c in browsers]).exists()
    assert [c.get("/handoffs/").status_code for c in browsers] == [302, 302, 302]
    assert set(UserSession.objects.filter(user=viewer).values_list("ended_reason", flat=True)) == {"user disabled"}


@pytest.mark.django_db
def test_t24_an_admin_ends_another_users_sessions(client, admin, operator) -> None:
    from pscsync.models import AuditEntry

    victim = VerifiedClient()
    victim.force_login(operator)
    assert victim.get("/workbench/").status_code == 200
    client.force_login(admin)
    page = client.get("/account/users/").content.decode()
    assert operator.username in page and "End sessions" in page
    assert client.post(f"/account/users/{operator.pk}/end-sessions/").status_code == 302
    assert victim.get("/workbench/").status_code == 302
    entry = AuditEntry.objects.get(action="user.sessions_ended")
    assert entry.actor == admin and entry.object_id == str(operator.pk) and entry.after == {"sessions": 1}


@pytest.mark.django_db
def test_t24_idle_for_31_minutes_ends_the_session(client, viewer) -> None:
    from accounts.sessions import SEEN_AT

    client.force_login(viewer)
    assert client.get("/handoffs/").status_code == 200
    session = client.session
    session[SEEN_AT] = time.time() - 29 * 60
    session.save()
    assert client.get("/handoffs/").status_code == 200  # 29 minutes idle: still in
    session = client.session
    session[SEEN_AT] = time.time() - 31 * 60
    session.save()
    response = client.get("/handoffs/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert client.get("/handoffs/").status_code == 302  # and stays out


@pytest.mark.django_db
def test_t24_twelve_hours_after_sign_in_the_session_ends_even_if_busy(client, viewer) -> None:
    from accounts.sessions import AUTH_AT

    client.force_login(viewer)
    session = client.session
    session[AUTH_AT] = time.time() - 12 * 3600 - 1
    session.save()
    assert client.get("/handoffs/").status_code == 302


@pytest.mark.django_db
def test_t24_removing_a_role_mid_session_takes_effect_on_the_next_request(client, operator) -> None:
    from django.contrib.auth.models import Group

    client.force_login(operator)
    assert client.get("/workbench/").status_code == 200
    operator.groups.set([Group.objects.get(name="viewer")])
    assert client.get("/workbench/").status_code == 403
    operator.groups.clear()
    assert client.get("/handoffs/").status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["operator", "admin"])
def test_t24_no_sign_in_completes_without_the_second_factor(role, request, otp_no_wait) -> None:
    user = request.getfixturevalue(role)
    c = VerifiedClient()
    assert _sign_in(c, user.username).status_code == 302
    # Password accepted, second factor not yet: every page sends to the set-up page, htmx and
    # posts get 403, the API too.
    for url in ("/", "/handoffs/", "/dashboards/health/", "/workbench/", "/connections/"):
        response = c.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/account/two-factor/"), url
    assert c.get("/handoffs/", HTTP_HX_REQUEST="true").status_code == 403
    assert c.get("/api/v1/handoffs/").status_code in (403, 404)
    # Enrolled now: the password leads to the code prompt, and only the code lets them in.
    device = totp_device_for(user)
    c = VerifiedClient()
    _sign_in(c, user.username)
    assert c.get("/handoffs/")["Location"].startswith("/account/two-factor/verify/")
    assert c.post("/account/two-factor/verify/", {"token": "000000"}).status_code == 200
    assert c.get("/handoffs/").status_code == 302
    response = c.post("/account/two-factor/verify/", {"token": totp_code(device), "next": "/handoffs/"})
    assert response.status_code == 302 and response["Location"] == "/handoffs/"
    assert c.get("/handoffs/").status_code == 200


@pytest.mark.django_db
def test_t24_a_recovery_code_works_once(operator, otp_no_wait) -> None:
    from accounts.twofactor import recovery_codes_new

    totp_device_for(operator)
    codes = recovery_codes_new(operator)
    c = VerifiedClient()
    _sign_in(c, operator.username)
    assert c.post("/account/two-factor/verify/", {"token": codes[0]}).status_code == 302
    assert c.get("/workbench/").status_code == 200
    c.post("/logout/")
    _sign_in(c, operator.username)
    assert c.post("/account/two-factor/verify/", {"token": codes[0]}).status_code == 200  # used up
    assert c.post("/account/two-factor/verify/", {"token": codes[1]}).status_code == 302


@pytest.mark.django_db
def test_t24_wrong_codes_make_the_next_wait(operator) -> None:
    """Guessing six digits is slowed down: right after a wrong code even the right one is refused."""
    device = totp_device_for(operator)
    c = VerifiedClient()
    _sign_in(c, operator.username)
    assert c.post("/account/two-factor/verify/", {"token": "000000"}).status_code == 200
    assert c.post("/account/two-factor/verify/", {"token": totp_code(device)}).status_code == 200
    device.refresh_from_db()
    assert device.throttling_failure_count == 1


@pytest.mark.django_db
def test_t24_a_viewer_may_go_without_a_second_factor_but_not_once_enrolled(viewer) -> None:
    c = VerifiedClient()
    _sign_in(c, viewer.username)
    assert c.get("/handoffs/").status_code == 200
    totp_device_for(viewer)
    c = VerifiedClient()
    _sign_in(c, viewer.username)
    assert c.get("/handoffs/").status_code == 302


@pytest.mark.django_db
def test_t24_enrolment_checks_the_code_and_shows_ten_recovery_codes(operator, otp_no_wait) -> None:
    from django_otp.plugins.otp_totp.models import TOTPDevice

    c = VerifiedClient()
    _sign_in(c, operator.username)
    page = c.get("/account/two-factor/")
    assert page.status_code == 200 and b"<svg" in page.content
    device = TOTPDevice.objects.get(user=operator, confirmed=False)
    assert c.post("/account/two-factor/", {"token": "123456"}).status_code == 200
    assert not TOTPDevice.objects.filter(user=operator, confirmed=True).exists()
    done = c.post("/account/two-factor/", {"token": totp_code(device)})
    assert done.content.decode().count("<li>") == 10
    assert c.get("/workbench/").status_code == 200


@pytest.mark.django_db
def test_t24_with_enforcement_off_the_pages_say_so(client, operator, settings) -> None:
    settings.TWO_FACTOR_REQUIRED_ROLES = []
    c = Client()
    c.force_login(operator)
    page = c.get("/handoffs/")
    assert page.status_code == 200 and b"Two-factor sign-in is not enforced" in page.content


# --- T28: deployment configuration and headers --------------------------------------------


def _production_env(tmp_path, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "PSCSYNC_CREDENTIALS_KEYS": "k1:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",
        "PSCSYNC_ALLOWED_HOSTS": "pscsync.example.com",
        "PSCSYNC_ALLOW_SANDBOXES": "false",
        "PSCSYNC_AUDIT_KEYS": "a1:" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=",
        "PSCSYNC_VAR_DIR": str(tmp_path / "var"),
    }
    env.update(overrides)
    return env


def test_t28_deploy_check_passes_with_production_settings(tmp_path) -> None:
    """The CI step: `manage.py check --deploy --fail-level WARNING`, with only W021 silenced."""
    result = deploy_check(_production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (1 silenced)" in result.stdout


@pytest.mark.parametrize(
    ("override", "check_id"),
    [
        ({"PSCSYNC_2FA_REQUIRED_ROLES": "none"}, "accounts.W001"),
        ({"PSCSYNC_ALLOW_SANDBOXES": "true"}, "accounts.W002"),
        ({"PSCSYNC_SECURE_COOKIES": "false"}, "security.W012"),
        ({"PSCSYNC_HSTS_SECONDS": "0"}, "security.W004"),
        ({"PSCSYNC_AUDIT_KEYS": ""}, "accounts.W004"),
    ],
)
def test_t28_deploy_check_fails_on_an_unsafe_setting(tmp_path, override, check_id) -> None:
    result = deploy_check(_production_env(tmp_path, **override))
    assert result.returncode != 0 and check_id in result.stderr + result.stdout


@pytest.mark.django_db
def test_t28_headers_on_login_pages_and_dashboards(client, viewer, settings) -> None:
    settings.SECURE_SSL_REDIRECT = False
    client.force_login(viewer)
    for url in ("/login/", "/dashboards/health/", "/handoffs/"):
        response = Client().get(url, secure=True) if url == "/login/" else client.get(url, secure=True)
        assert response.status_code == 200, url
        csp = response["Content-Security-Policy"]
        for directive in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'", "default-src 'self'"):
            assert directive in csp, (url, directive)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        hsts = response["Strict-Transport-Security"]
        assert "includeSubDomains" in hsts and int(hsts.split("max-age=")[1].split(";")[0]) >= 31536000
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Frame-Options"] == "DENY"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"


def test_t28_cookies_are_host_prefixed_secure_httponly_and_samesite(tmp_path) -> None:
    """With production settings (secure cookies on), in a fresh process: sign in and read Set-Cookie."""
    script = """
import django, os
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
from django.contrib.auth import get_user_model
get_user_model().objects.create_user("v", password="a-long-test-password")
c = Client()
r = c.get("/login/", secure=True, HTTP_HOST="pscsync.example.com")
r = c.post("/login/", {"username": "v", "password": "a-long-test-password",
    "csrfmiddlewaretoken": c.cookies["__Host-csrftoken"].value}, secure=True, HTTP_HOST="pscsync.example.com",
    HTTP_REFERER="https://pscsync.example.com/login/")
print(r.status_code)
for name, morsel in c.cookies.items():
    print(name, morsel["secure"], morsel["httponly"], morsel["samesite"], morsel["path"], morsel["domain"] or "-")
"""
    env = _production_env(tmp_path, DJANGO_SETTINGS_MODULE="pscsync.settings", PSCSYNC_2FA_REQUIRED_ROLES="none")
    # Pages name static files by the manifest: a copy of this session's collected files (the
    # same files; collecting them again gzips every one, about 3 s of CPU).
    shutil.copytree(django_settings.STATIC_ROOT, Path(env["PSCSYNC_VAR_DIR"]) / "static", dirs_exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "302"
    cookies = {line.split()[0]: line.split()[1:] for line in lines[1:] if line}
    assert set(cookies) >= {"__Host-sessionid", "__Host-csrftoken", "__Host-pscsync-device"}
    for name, (secure, httponly, samesite, path, domain) in cookies.items():
        assert (secure, httponly, path, domain) == ("True", "True", "/", "-"), name
        assert samesite in ("Lax", "Strict"), name


@pytest.mark.django_db
def test_t28_plain_http_is_redirected_to_https_except_the_health_check(settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    c = Client()
    response = c.get("/login/")
    assert response.status_code == 301 and response["Location"].startswith("https://")
    assert c.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_t28_a_server_error_shows_a_generic_page_without_details(client, viewer, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("internal detail: /srv/pscsync/settings.py line 42")

    monkeypatch.setattr("pscsync.views.render", boom)
    client.force_login(viewer)
    client.raise_request_exception = False
    response = client.get("/handoffs/")
    assert response.status_code == 500
    body = response.content.decode()
    assert "internal detail" not in body and "Traceback" not in body and "settings.py" not in body
