"""PSCSYNC_DB_POOL=true gives a process Django's psycopg pool on the real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPT = """
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


@pytest.mark.skipif(not os.getenv("DATABASE_URL", "").startswith("postgres"), reason="needs PostgreSQL")
def test_the_pool_option_serves_many_threads_from_a_few_connections() -> None:
    env = {**os.environ, "PSCSYNC_DB_POOL": "true", "PSCSYNC_DB_POOL_MAX": "3"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    conn_max_age, pool_max, opened = (int(x) for x in result.stdout.split())
    assert conn_max_age == 0 and pool_max == 3
    assert 1 <= opened <= 3  # 20 queries from 4 threads never opened more than the pool's maximum
