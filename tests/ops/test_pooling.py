"""Database connections: Django's psycopg pool by default on PostgreSQL, none in Celery processes
or behind pgbouncer (docs/operations.md, "Database connections"), on the real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(not os.getenv("DATABASE_URL", "").startswith("postgres"), reason="needs PostgreSQL")

SETTINGS = """
import json, sys
sys.argv[0] = {argv0!r}
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({{"pool": db.get("OPTIONS", {{}}).get("pool"), "max_age": db["CONN_MAX_AGE"],
                  "no_cursors": db.get("DISABLE_SERVER_SIDE_CURSORS", False)}}))
"""


def _database_settings(argv0: str = "gunicorn", **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PSCSYNC_DB_POOL", "PSCSYNC_PGBOUNCER"))}
    environ.update(env, DJANGO_SETTINGS_MODULE="pscsync.settings")
    result = subprocess.run(
        [sys.executable, "-c", SETTINGS.format(argv0=argv0)],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_web_process_pools_by_default() -> None:
    got = _database_settings("/srv/.venv/bin/gunicorn")
    assert got == {"pool": {"min_size": 2, "max_size": 10, "timeout": 10}, "max_age": 0, "no_cursors": False}


@pytest.mark.parametrize("argv0", ["/srv/.venv/bin/celery", "/usr/lib/python3/site-packages/celery/__main__.py"])
def test_a_celery_process_keeps_one_persistent_connection(argv0: str) -> None:
    # The prefork parent uses the database, then forks: a pool would not survive the fork.
    assert _database_settings(argv0) == {"pool": None, "max_age": 60, "no_cursors": False}


def test_behind_pgbouncer_nothing_pools_persists_or_keeps_a_server_side_cursor() -> None:
    assert _database_settings(PSCSYNC_PGBOUNCER="true") == {"pool": None, "max_age": 0, "no_cursors": True}


def test_the_pool_can_be_turned_off() -> None:
    assert _database_settings(PSCSYNC_DB_POOL="false")["pool"] is None


def test_a_bad_switch_is_refused_at_start() -> None:
    with pytest.raises(AssertionError, match="PSCSYNC_DB_POOL must be 'true' or 'false'"):
        _database_settings(PSCSYNC_DB_POOL="maybe")


def test_this_test_session_follows_the_switch() -> None:
    # `make test` turns the pool off for the suite's own process (Makefile: its threads keep
    # connections); the pool is exercised below in processes of its own.
    from django.db import connection

    pooled = "pool" in connection.settings_dict["OPTIONS"]
    assert pooled == (os.environ.get("PSCSYNC_DB_POOL", "true") == "true")


THREADS = """
import django
django.setup()
from django.db import connection
from concurrent.futures import ThreadPoolExecutor
def query(_):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()  # with a pool, close() hands the connection back
    return 1
with ThreadPoolExecutor(4) as threads:
    assert sum(threads.map(query, range(20))) == 20
stats = connection.pool.get_stats()
print(connection.settings_dict["CONN_MAX_AGE"], stats["pool_max"], stats["connections_num"])
"""


def test_the_pool_serves_many_threads_from_a_few_connections() -> None:
    env = {**os.environ, "PSCSYNC_DB_POOL_MAX": "3"}
    env.pop("PSCSYNC_DB_POOL", None)
    result = subprocess.run(
        [sys.executable, "-c", THREADS], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    conn_max_age, pool_max, opened = (int(x) for x in result.stdout.split())
    assert conn_max_age == 0 and pool_max == 3
    assert 1 <= opened <= 3  # 20 queries from 4 threads never opened more than the pool's maximum
