"""Personal API tokens: stored hashed, shown once, expire, revoke, throttle per token."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from api.models import ApiToken
from api.tokens import TokenInvalid, api_token_check, api_token_issue


@pytest.mark.django_db
def test_a_token_is_stored_only_as_a_digest(viewer) -> None:
    issued = api_token_issue(user=viewer, name="BI export", days=30)
    row = ApiToken.objects.get(pk=issued.token.pk)
    assert issued.plaintext.startswith(f"psc_{row.prefix}_")
    assert row.digest == hashlib.sha256(issued.plaintext.encode()).hexdigest()
    # The secret is nowhere in the row.
    secret = issued.plaintext.rsplit("_", 1)[1]
    assert all(secret not in str(getattr(row, f.attname)) for f in ApiToken._meta.fields)


@pytest.mark.django_db
def test_a_token_authenticates_as_its_user_and_records_last_use(api, viewer) -> None:
    issued = api_token_issue(user=viewer, name="BI export", days=30)
    assert api("GET", "/api/v1/handoffs/", issued.plaintext).status_code == 200
    issued.token.refresh_from_db()
    assert issued.token.last_used_at is not None and issued.token.last_used_ip == "127.0.0.1"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    ["revoked", "expired", "user_disabled", "wrong_secret", "unknown_prefix", "not_ours"],
)
def test_a_dead_or_forged_token_is_refused_with_401(api, viewer, change) -> None:
    from pscsync import clock

    issued = api_token_issue(user=viewer, name="t", days=30)
    token = issued.plaintext
    if change == "revoked":
        ApiToken.objects.filter(pk=issued.token.pk).update(revoked_at=clock.now())
    elif change == "expired":
        ApiToken.objects.filter(pk=issued.token.pk).update(expires_at=clock.now() - dt.timedelta(seconds=1))
    elif change == "user_disabled":
        viewer.is_active = False
        viewer.save()
    elif change == "wrong_secret":
        token = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    elif change == "unknown_prefix":
        token = "psc_ffffffffffff_" + token.rsplit("_", 1)[1]
    else:
        token = "ghp_" + token[4:]
    response = api("GET", "/api/v1/handoffs/", token)
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


@pytest.mark.django_db
def test_the_token_acts_with_the_users_current_role_not_a_copy(api, viewer) -> None:
    issued = api_token_issue(user=viewer, name="t", days=30)
    viewer.groups.clear()
    assert api("GET", "/api/v1/handoffs/", issued.plaintext).status_code == 403


@pytest.mark.django_db
def test_a_token_lives_at_most_the_configured_days(viewer, settings) -> None:
    settings.API_TOKEN_MAX_DAYS = 90
    with pytest.raises(ValueError):
        api_token_issue(user=viewer, name="t", days=365)
    with pytest.raises(TokenInvalid):
        api_token_check("psc_nothing")


@pytest.mark.django_db
def test_throttling_is_per_token(api, viewer, settings, mid_minute) -> None:
    settings.API_RATE_PER_MINUTE = 3
    first = api_token_issue(user=viewer, name="a", days=30).plaintext
    second = api_token_issue(user=viewer, name="b", days=30).plaintext
    codes = [api("GET", "/api/v1/handoffs/", first).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    # Another token of the same user has its own allowance.
    assert api("GET", "/api/v1/handoffs/", second).status_code == 200
    refused = api("GET", "/api/v1/handoffs/", first)
    assert refused.json()["code"] == "throttled" and refused["Retry-After"] == "30"


@pytest.mark.django_db
def test_the_token_page_shows_a_new_token_once_and_revokes(client, operator) -> None:
    client.force_login(operator)
    page = client.post("/account/tokens/", {"name": "ServiceNow sync", "days": "90"})
    assert page.status_code == 201 and page["Cache-Control"] == "no-store"
    token = ApiToken.objects.get(user=operator)
    html = page.content.decode()
    assert f"psc_{token.prefix}_" in html and "shown only this once" in html
    # Reloading the list never shows the secret again.
    again = client.get("/account/tokens/").content.decode()
    secret = html.split(f"psc_{token.prefix}_", 1)[1].split("<", 1)[0]
    assert secret not in again and "ServiceNow sync" in again
    revoked = client.post(f"/account/tokens/{token.pk}/revoke/")
    assert revoked.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


@pytest.mark.django_db
def test_nobody_revokes_someone_elses_token(client, operator, viewer) -> None:
    others = api_token_issue(user=viewer, name="v", days=30).token
    client.force_login(operator)
    assert client.post(f"/account/tokens/{others.pk}/revoke/").status_code == 404
    others.refresh_from_db()
    assert others.revoked_at is None


@pytest.mark.django_db
def test_session_writes_need_the_csrf_token(operator, world) -> None:
    from tests.twofactor import VerifiedClient

    browser = VerifiedClient(enforce_csrf_checks=True)
    browser.force_login(operator)
    url = f"/api/v1/exceptions/{world['us']['handoff'].pk}/resolve/"
    response = browser.post(url, data={"reason": "x"}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


@pytest.mark.django_db
def test_two_web_processes_share_one_count_through_redis(api, viewer, settings, mid_minute, monkeypatch) -> None:
    """Two cache clients with their own connections stand for two gunicorn workers: a limit of 3
    holds across them, so a client cannot get 3 per worker by being spread over workers."""
    from django.core.cache.backends.redis import RedisCache

    from api import throttling
    from tests.conftest import REQUIRE_SERVICES

    config = settings.CACHES["throttle"]
    if not config["BACKEND"].endswith("RedisCache"):
        if REQUIRE_SERVICES:
            pytest.fail("the throttle cache is not Redis although services are required")
        pytest.skip("needs Redis (REDIS_URL or a Redis broker)")
    workers = [RedisCache(config["LOCATION"], {k: v for k, v in config.items() if k != "LOCATION"}) for _ in range(2)]
    assert workers[0]._cache.get_client() is not workers[1]._cache.get_client()
    turn = iter([0, 1, 0, 1])
    monkeypatch.setattr(throttling, "throttle_cache", lambda: workers[next(turn)])
    settings.API_RATE_PER_MINUTE = 3
    token = api_token_issue(user=viewer, name="spread", days=30).plaintext
    codes = [api("GET", "/api/v1/handoffs/", token).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


@pytest.mark.django_db
def test_a_throttle_cache_outage_lets_requests_through(api, viewer, monkeypatch, caplog) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from api import throttling

    class Down:
        def add(self, *args: object, **kwargs: object) -> None:
            raise RedisConnectionError("Redis is down")

    monkeypatch.setattr(throttling, "throttle_cache", lambda: Down())
    token = api_token_issue(user=viewer, name="x", days=30).plaintext
    assert api("GET", "/api/v1/handoffs/", token).status_code == 200
    assert "throttle cache unavailable" in caplog.text
