"""Readiness and the beat leader with real processes: a Celery worker and two Celery beats on the
test database in PostgreSQL and on Redis. Timings are shortened (worker heartbeat 1 s, lease 3 s,
sweep every second) so each change shows within a few seconds."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
from django.test import Client

from tests.helpers import PYTHON, ROOT, Process

pytestmark = pytest.mark.integration

CELERY = str(Path(PYTHON).parent / "celery")
SENT = re.compile(r"Sending due task sweep-handoffs")


def _test_database_url() -> str:
    from django.db import connection

    url = urlparse(os.environ["DATABASE_URL"])
    return urlunparse(url._replace(path="/" + connection.settings_dict["NAME"]))


@pytest.fixture
def env(transactional_db, tmp_path, settings):
    import redis

    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()
    settings.READY_WORKER_SECONDS = 3
    settings.READY_BEAT_SECONDS = 3
    settings.READY_SWEEP_SECONDS = 4
    return {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "PSCSYNC_VAR_DIR": str(tmp_path),
        "PSCSYNC_SWEEP_SECONDS": "1",
        "PSCSYNC_WORKER_HEARTBEAT_SECONDS": "1",
        "PSCSYNC_BEAT_LEASE_SECONDS": "3",
        "PSCSYNC_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }


def _worker(env: dict[str, str], tmp: Path, name: str) -> Process:
    argv = [CELERY, "-A", "pscsync", "worker", "-c", "1", "-l", "INFO", "--without-gossip", "--without-mingle"]
    return Process(name, [*argv, "-n", f"{name}@%h"], env, tmp / "logs" / f"{name}.log")


def _beat(env: dict[str, str], tmp: Path, name: str) -> Process:
    argv = [CELERY, "-A", "pscsync", "beat", "-l", "INFO", "-s", str(tmp / f"{name}-schedule")]
    return Process(name, argv, env, tmp / "logs" / f"{name}.log")


def _readyz() -> dict:
    return Client().get("/readyz").json()


def _wait(condition: Callable[[], bool], timeout: float, what: str, *processes: Process) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in processes)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; readyz: {_readyz()}\n{logs}")


def _sends(process: Process) -> int:
    return len(SENT.findall(process.log_path.read_text(errors="replace"))) if process.log_path.exists() else 0


def test_readyz_follows_the_worker_and_a_standby_beat_takes_over_without_double_publishing(env, tmp_path) -> None:
    worker, beat_a, beat_b = (
        _worker(env, tmp_path, "w1"),
        _beat(env, tmp_path, "beat-a"),
        _beat(env, tmp_path, "beat-b"),
    )
    processes = (worker, beat_a, beat_b)
    try:
        worker.start()
        beat_a.start()
        _wait(lambda: _readyz()["ok"], 60, "the engine to be ready", *processes)

        # A second beat stands by: while the first leads, only the first publishes.
        _wait(lambda: _sends(beat_a) > 0, 10, "the leader to publish", *processes)
        beat_b.start()
        _wait(lambda: "stands by" in beat_b.tail(200) or _sends(beat_a) > 8, 30, "beat b to run", *processes)
        time.sleep(4)  # longer than the lease: b would have taken over by now if it could
        assert _sends(beat_b) == 0, beat_b.tail()
        assert "leads" not in beat_b.tail(200)

        # The leader dies without a word (SIGKILL): the standby takes over once the lease expires.
        beat_a.kill()
        sent_by_a = _sends(beat_a)
        took = _wait(lambda: _sends(beat_b) > 0, 15, "the standby to publish", *processes)
        assert took <= 3 + 2, f"the standby took {took:.1f} s to take over a 3 s lease"
        assert _sends(beat_a) == sent_by_a  # nothing more from the dead one
        _wait(lambda: _readyz()["ok"], 10, "ready again under the new leader", *processes)

        # The worker dies: readiness names it, and recovers when a worker is back.
        worker.kill()
        _wait(lambda: "worker" in _readyz()["failing"], 10, "readyz to name the dead worker", *processes)
        assert Client().get("/readyz").status_code == 503
        worker = _worker(env, tmp_path, "w2")
        processes = (worker, beat_a, beat_b)
        worker.start()
        _wait(lambda: _readyz()["ok"], 60, "ready again with a new worker", *processes)

        # The last beat stops cleanly (SIGTERM): it hands the lease over, so readiness says so at once.
        beat_b.proc.send_signal(signal.SIGTERM)
        beat_b.proc.wait(timeout=15)
        body = _readyz()
        assert "beat" in body["failing"], body
        assert body["checks"]["beat"]["detail"] == "no beat holds the leader lease (it expired)"
    finally:
        for process in processes:
            process.kill()
