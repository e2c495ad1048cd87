"""Shared fixtures: the cast (viewer, operator, admin, outsider), legal entities, the echo target,
and the live stack (web, worker, beat as real processes) for integration tests.

Tests that need PostgreSQL or Redis are skipped, with the reason, when those are not reachable;
in CI (PSCSYNC_REQUIRE_SERVICES=true) they fail instead, so CI never passes by skipping.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from tests.helpers import EchoTarget, free_port

# Tests talk to sandboxes and the echo target on loopback, which production refuses by default
# (PSCSYNC_ALLOW_SANDBOXES is off unless set): on for this process's settings (the autouse
# fixture below) and for every process a test starts (they inherit the environment).
os.environ.setdefault("PSCSYNC_ALLOW_SANDBOXES", "true")

REQUIRE_SERVICES = os.getenv("PSCSYNC_REQUIRE_SERVICES", "").lower() in {"1", "true"}


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def services_missing() -> str:
    """Why integration tests cannot run here, or '' when they can."""
    db = os.getenv("DATABASE_URL", "")
    broker = os.getenv("CELERY_BROKER_URL", "")
    if not db.startswith("postgres"):
        return "DATABASE_URL does not point at PostgreSQL"
    if not broker.startswith("redis"):
        return "CELERY_BROKER_URL does not point at Redis"
    if not _reachable(db, 5432):
        return f"PostgreSQL at {urlparse(db).hostname} is not reachable"
    if not _reachable(broker, 6379):
        return f"Redis at {urlparse(broker).hostname} is not reachable"
    return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = services_missing()
    if not reason:
        return
    if REQUIRE_SERVICES:
        raise pytest.UsageError(f"integration tests cannot run: {reason} (PSCSYNC_REQUIRE_SERVICES is on)")
    skip = pytest.mark.skip(reason=f"needs PostgreSQL and Redis: {reason}")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def client():
    """pytest-django's client, except that force_login also passes the second factor (2FA is
    required for admins and operators; tests about 2FA use client.login_password_only)."""
    from tests.twofactor import VerifiedClient

    return VerifiedClient()


@pytest.fixture(scope="session", autouse=True)
def _collected_static(django_test_environment) -> Iterator[None]:
    """Pages name static files through collectstatic's manifest (the production storage): collect
    once per session, as the Dockerfile and `make demo` do, so every page renders its hashed URLs.
    The live server then serves /static/ through whitenoise, as production does: Django's test
    handler would look the hashed names up in the source folders and answer 404."""
    from django.contrib.staticfiles import handlers
    from django.core.management import call_command

    from tests.helpers import STATIC_COLLECTED

    if os.getenv(STATIC_COLLECTED) != "1":  # a nested run (pytest_on_sqlite) has a copy already
        call_command("collectstatic", "--noinput", verbosity=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handlers, "StaticFilesHandler", lambda application: application)
        yield


@pytest.fixture(scope="session")
def sqlite_run(request, tmp_path_factory):
    """One nested pytest on SQLite (tests.helpers.pytest_on_sqlite) for every test of this session
    marked on_sqlite(target=..., env=...): each used to start a pytest of its own, about 8 s of
    start-up apiece (Python, Django, the tables); they share one and each reads its own outcome in
    it (tests.helpers.sqlite_outcomes). A run of one such file runs only that file's target."""
    from tests.helpers import pytest_on_sqlite

    marks = [mark for item in request.session.items for mark in item.iter_markers("on_sqlite")]
    targets = list(dict.fromkeys(mark.kwargs["target"] for mark in marks))
    markers = list(dict.fromkeys(mark.kwargs["env"] for mark in marks))
    timeout = sum(mark.kwargs.get("timeout", 600) for mark in marks)
    return pytest_on_sqlite(targets, tmp_path_factory.mktemp("sqlite-run"), markers, timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def _quick_flush() -> Iterator[None]:
    """Transactional tests end with Django's flush; on PostgreSQL it empties only the tables that
    hold rows, with DELETE rather than a TRUNCATE of every table (tests/flush.py says why)."""
    from django.core.management.commands import flush as flush_command

    from tests.flush import sql_flush

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flush_command, "sql_flush", sql_flush)
        yield


@pytest.fixture(autouse=True)
def _fast_hasher(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ALLOW_SANDBOXES = os.environ["PSCSYNC_ALLOW_SANDBOXES"].lower() in {"true", "1"}


@pytest.fixture(autouse=True)
def _no_log_fields_left_bound() -> None:
    """Each test starts with no log fields bound (ops.logs): a handoff run called directly in a
    test binds its fields until its task ends, which in a test's thread is never."""
    from ops.logs import _context

    _context.set(None)


@pytest.fixture(autouse=True)
def _limiter_fresh() -> Iterator[None]:
    """Each test starts with no calls counted against any connection and no vendor pause: row ids
    restart with each test database, and the limiter's Redis keys are by connection id."""
    from connectors import limiter

    limiter.reset_outage()
    try:
        limiter.forget_all()
    except Exception:  # noqa: S110 - no Redis in this run: the limiter is off anyway
        pass
    yield


@pytest.fixture
def entities(db):
    from pscsync.models import LegalEntity

    us = LegalEntity.objects.create(code="us", name="Acme Consulting Inc.", currency="USD", country="US")
    uk = LegalEntity.objects.create(code="uk", name="Acme Consulting Ltd.", currency="GBP", country="GB")
    return {"us": us, "uk": uk}


def _person(username: str, role: str, entities: list, all_entities: bool = False):
    from pscsync.services import user_provision

    return user_provision(
        username=username, password="a-long-test-password", role=role, entities=entities, all_entities=all_entities
    )


@pytest.fixture
def viewer(entities):
    return _person("vera.viewer", "viewer", [entities["us"]])


@pytest.fixture
def operator(entities):
    return _person("otto.operator", "operator", [entities["us"]])


@pytest.fixture
def admin(entities):
    return _person("ada.admin", "admin", [], all_entities=True)


@pytest.fixture
def outsider(entities):
    """An operator who works for the UK entity only: must never see US records."""
    return _person("uma.outsider", "operator", [entities["uk"]])


class _AuditLines(logging.Handler):
    """The external audit log (logger `pscsync.audit`), one parsed JSON line per entry."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@pytest.fixture
def external():
    handler = _AuditLines()
    logger = logging.getLogger("pscsync.audit")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def echo_target():
    target = EchoTarget(port=free_port())
    target.start()
    yield target
    target.stop()


@pytest.fixture
def echo(echo_target):
    echo_target.reset()
    return echo_target


@pytest.fixture
def echo_connection(entities, echo):
    """An echo connection serving the US entity, with a current and a previous webhook secret."""
    import datetime as dt

    from connectors.models import Connection
    from pscsync.services import connection_save
    from tests.helpers import OLD_SECRET, SECRET

    rotation_ends = (dt.datetime.now(tz=dt.UTC) + dt.timedelta(days=1)).isoformat()
    return connection_save(
        slug="echo-us",
        name="Echo US",
        kind=Connection.Kind.TEST,
        vendor=Connection.Vendor.ECHO,
        base_url=echo.url,
        entities=[entities["us"]],
        credentials={
            "token": echo.token,
            "webhook_secrets": [{"secret": SECRET}, {"secret": OLD_SECRET, "expires_at": rotation_ends}],
        },
        is_sandbox=True,
    )


@pytest.fixture(autouse=True)
def _fresh_connection_for_live_server_tests(request):
    """A live-server test starts on fresh database connections: an earlier integration test (the
    database outage) cuts every connection to the test database, and psycopg only notices a cut
    connection when it is next used. Closing is always safe here (no transaction is open yet)."""
    if "live_server" in request.fixturenames:
        from django.db import connections

        connections.close_all()
