"""The database outage, run after every other test of the session: it cuts every connection to
the test database, including those of a live server other tests share, so it goes last."""

from __future__ import annotations

import pytest

from pscsync.models import Event, Handoff
from tests.helpers import change_body, ledger_check, sign
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


def _succeeded() -> int:
    return Handoff.objects.filter(status="succeeded").count()


def _report(name: str, **figures: object) -> None:
    print(f"\n[fault-test] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def test_database_outage_answers_503_and_a_retried_delivery_is_kept(live) -> None:
    import psycopg
    from django.db import connection

    name = connection.settings_dict["NAME"]
    body = change_body("DB-1")
    headers = sign(body, msg_id="evt-db-1")
    # From the maintenance database: refuse new connections to ours and cut the open ones.
    admin_url = live.env["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        try:
            assert live.post(body, headers) == 503
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    connection.close()  # ours was cut too; Django reconnects on the next query
    assert not Event.objects.exists()
    # The sender retries the same delivery once the database is back.
    assert live.post(body, headers) == 202
    wait_until(lambda: _succeeded() == 1, timeout=60, stack=live, what="the retried delivery to be processed")
    assert ledger_check(["DB-1"], live.echo).clean
    _report("database outage", during="503", after="202 and processed")
