"""The live stack: gunicorn, a Celery worker and beat as real processes, on the test database in
PostgreSQL and on Redis, writing over real HTTP to the echo target. Timings are shortened (lease
6 s, sweep every second) so recovery shows within a test's patience."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx
import pytest

from tests.helpers import PYTHON, ROOT, EchoTarget, Process, change_body, free_port, sign, wait_for_port

pytestmark = pytest.mark.integration

VENV_BIN = Path(PYTHON).parent


@dataclass
class Stack:
    env: dict[str, str]
    var_dir: Path
    web_port: int
    echo: EchoTarget
    web: Process | None = None
    worker: Process | None = None
    beat: Process | None = None
    worker_faults: dict = field(default_factory=dict)

    def _process(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Process:
        return Process(name, argv, {**self.env, **(extra_env or {})}, self.var_dir / "logs" / f"{name}.log")

    def start_web(self, faults: dict | None = None) -> None:
        self.web = self._process(
            "web",
            [
                str(VENV_BIN / "gunicorn"),
                "pscsync.wsgi",
                "-b",
                f"127.0.0.1:{self.web_port}",
                "-w",
                "2",
                "--graceful-timeout",
                "2",
            ],
            {"PSCSYNC_FAULTS": json.dumps(faults or {})},
        )
        self.web.start()
        wait_for_port(self.web_port)

    def start_worker(self, faults: dict | None = None) -> None:
        if faults is not None:
            self.worker_faults = faults
        self.worker = self._process(
            "worker",
            [
                str(VENV_BIN / "celery"),
                "-A",
                "pscsync",
                "worker",
                "-c",
                "2",
                "-l",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-{time.time_ns()}@%h",
            ],
            {"PSCSYNC_FAULTS": json.dumps(self.worker_faults)},
        )
        self.worker.start()

    def start_beat(self) -> None:
        self.beat = self._process(
            "beat",
            [
                str(VENV_BIN / "celery"),
                "-A",
                "pscsync",
                "beat",
                "-l",
                "INFO",
                "-s",
                str(self.var_dir / "beat-schedule"),
            ],
        )
        self.beat.start()

    def restart_worker(self, faults: dict | None = None) -> None:
        if self.worker:
            self.worker.kill()
        self.start_worker(faults)

    def stop(self) -> None:
        for process in (self.beat, self.worker, self.web):
            if process:
                process.stop()

    def deliver(self, key: str, version: int = 1, *, event_id: str | None = None, slug: str = "echo-us") -> int:
        body = change_body(key, version)
        headers = sign(body, msg_id=event_id or f"{key}-v{version}")
        return self.post(body, headers, slug=slug)

    def post(self, body: bytes, headers: dict[str, str], *, slug: str = "echo-us") -> int:
        response = httpx.post(  # a generous timeout: a killed web worker takes a moment to be replaced
            f"http://127.0.0.1:{self.web_port}/webhooks/{slug}/", content=body, headers=headers, timeout=60
        )
        return response.status_code

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in (self.web, self.worker, self.beat) if p)


def _test_database_url() -> str:
    from django.db import connection

    url = urlparse(os.environ["DATABASE_URL"])
    return urlunparse(url._replace(path="/" + connection.settings_dict["NAME"]))


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, echo_target, tmp_path_factory):
    var_dir = tmp_path_factory.mktemp("stack-var")
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "PSCSYNC_VAR_DIR": str(var_dir),
        "PSCSYNC_TASK_TIME_LIMIT": "4",
        "PSCSYNC_LEASE_SECONDS": "6",
        "PSCSYNC_SWEEP_SECONDS": "1",
        "PSCSYNC_REDISPATCH_SECONDS": "3",
        "PSCSYNC_RETRY_BASE_SECONDS": "1",
        "PSCSYNC_ALLOW_FAULTS": "true",
        "PSCSYNC_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }
    stack = Stack(env=env, var_dir=var_dir, web_port=free_port(), echo=echo_target)
    stack.start_web()
    yield stack
    stack.stop()


def _flush_broker(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def live(stack, echo_connection, transactional_db):
    """The stack with a fresh echo target, connection, queue, worker and beat for one test.

    Worker and beat stop before the test database is flushed, so the flush never races them.
    """
    _flush_broker(stack.env["CELERY_BROKER_URL"])
    stack.worker_faults = {}
    stack.start_worker()
    stack.start_beat()
    yield stack
    for process in (stack.beat, stack.worker):
        if process:
            process.kill()


def wait_until(condition: Callable[[], bool], *, timeout: float, stack: Stack, what: str) -> float:
    """Poll until `condition` holds; return seconds taken. Fails with the processes' logs."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{stack.logs()}")
