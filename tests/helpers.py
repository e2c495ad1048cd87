"""Test helpers: processes we start (echo target, web, worker, beat), signed deliveries, the
ledger checker every fault test uses."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # test-only
OLD_SECRET = "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD"  # test-only
TOKEN = "echo-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def sign(body: bytes, *, msg_id: str, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    """Headers of a Standard Webhooks delivery, signed by the reference implementation."""
    ts = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(msg_id, dt.datetime.fromtimestamp(ts, tz=dt.UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def change_body(key: str, version: int = 1, *, data: dict[str, Any] | None = None, entity: str = "") -> bytes:
    occurred = dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=version)
    body: dict[str, Any] = {
        "type": "record.changed",
        "key": key,
        "version": version,
        "occurred_at": occurred.isoformat(),
        "data": data if data is not None else {"amount": f"{100 * version}.00", "name": f"Customer {key}"},
    }
    if entity:
        body["legal_entity"] = entity
    return json.dumps(body).encode()


def _group_alive(group: int) -> bool:
    """Whether a process of this group still runs (a zombie has closed its sockets already)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it exited while we read
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # Own process group, so kill() takes the worker's children with it, as `kill -9` on a host would.
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
            if sig == signal.SIGKILL:
                self._group_gone()

    def _group_gone(self, timeout: float = 10.0) -> None:
        """Wait until every process of the group has exited, not only its leader: a gunicorn
        worker still dying holds the listening socket, so a replacement's wait_for_port would
        connect to the dead server's backlog and the next requests be refused (seen in CI)."""
        assert self.proc is not None
        group = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(group):
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class EchoTarget:
    port: int
    token: str = TOKEN
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = Process(
            "echo",
            [PYTHON, "-m", "connectors.sandboxes.echo", "--port", str(self.port), "--token", self.token],
            dict(os.environ),
            ROOT / "var" / "test-logs" / f"echo-{self.port}.log",
        )
        self.process.start()
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset", timeout=5).raise_for_status()

    def fault(self, **spec: Any) -> None:
        httpx.post(f"{self.url}/_faults", json=spec, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_stats", timeout=5).json()

    def calls(self) -> list[dict[str, str]]:
        return httpx.get(f"{self.url}/_calls", timeout=5).json()["calls"]

    def records(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(f"{self.url}/_records", timeout=5).json()["records"]
        return {f"{r['entity']}/{r['key']}": r for r in rows}


ENTITIES = {"customer": "CUST", "project": "PRJ", "invoice": "INV"}


@dataclass
class LedgerReport:
    """The checker every fault test uses: acknowledged keys against what the target holds."""

    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    orphaned: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.orphaned)


def ledger_check(keys: list[str], target: EchoTarget) -> LedgerReport:
    creates = target.stats()["creates"]
    expected = {f"{entity}/{prefix}-{key}" for key in keys for entity, prefix in ENTITIES.items()}
    report = LedgerReport()
    report.lost = sorted(ref for ref in expected if creates.get(ref, 0) == 0)
    report.duplicated = {ref: n for ref, n in creates.items() if n > 1}
    report.orphaned = sorted(ref for ref in creates if ref not in expected)
    return report


@contextlib.contextmanager
def moves_told() -> Iterator[list]:
    """Tell the lifecycle's listeners (workbench, dashboards) of the handoff moves made inside, and
    the ledger's listeners (the dashboards' money cycles) of the ERP invoices moved inside, as the
    commit would: a test's transaction never commits, so its after-commit callbacks never run.
    Only the listeners run here; other after-commit work (publishing to the broker) does not."""
    import functools

    from django.test import TestCase

    from pscsync import ledger, lifecycle

    with TestCase.captureOnCommitCallbacks(execute=False) as callbacks:
        yield callbacks
    for callback in callbacks:
        if isinstance(callback, functools.partial) and callback.func in (
            lifecycle.listeners_tell,
            ledger.listeners_tell,
        ):
            callback()


def status_force(handoff_id: int, status: str, **fields: Any) -> int:
    """Write a handoff's status around the lifecycle (no check, no history row, no listeners):
    what a bulk load, a defect or a crash between commit and listeners would leave. For tests of
    the repair jobs and of states no move reaches; production code never does this."""
    from pscsync.models import Handoff, status_write_allowed

    token = status_write_allowed.set(True)
    try:
        return Handoff.objects.filter(pk=handoff_id).update(status=status, **fields)
    finally:
        status_write_allowed.reset(token)


def audit_raw_sql(sql: str, params: list) -> None:
    """What someone with write access to the audit table can do, with the append-only trigger lifted."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("ALTER TABLE pscsync_auditentry DISABLE TRIGGER pscsync_auditentry_append_only")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE pscsync_auditentry ENABLE TRIGGER pscsync_auditentry_append_only")


def deploy_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    """`manage.py check --deploy --fail-level WARNING` (the CI step) in a fresh process with `env`."""
    return subprocess.run(
        [PYTHON, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def handoffs_per_entity(connection: Any, entities: dict[str, Any]) -> dict[str, Any]:
    """One pending handoff (with its event) per legal entity, keyed OPP-<CODE>."""
    from pscsync.models import Event, Handoff

    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    made = {}
    for code, entity in entities.items():
        event = Event.objects.create(
            connection=connection,
            source_event_id=f"evt-{code}",
            flow="echo",
            business_key=f"OPP-{code.upper()}",
            legal_entity=entity,
            occurred_at=at,
            received_at=at,
            raw_body="{}",
            payload={},
        )
        made[code] = Handoff.objects.create(
            flow="echo",
            business_key=f"OPP-{code.upper()}",
            legal_entity=entity,
            source_connection=connection,
            trigger_event=event,
            business_started_at=at,
            created_at=at,
        )
    return made


# Set for a nested pytest whose STATIC_ROOT already holds this session's collected files.
STATIC_COLLECTED = "PSCSYNC_TEST_STATIC_COLLECTED"


def pytest_on_sqlite(
    targets: list[str], var_dir: Path | str, markers: list[str], timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run `targets` (file::test each) in one pytest of their own on the embedded default database
    (SQLite under `var_dir`, no DATABASE_URL), with each environment variable in `markers` set to
    "1" so the nested tests can tell they are the SQLite run. `-rA` lists every test's outcome
    (PASSED tests/...::name) so each caller can find its own (sqlite_outcomes).

    The nested run gets a copy of this session's collected static files (a tenth of a second)
    instead of collecting them again: collectstatic gzips every file, about 3 s of CPU."""
    import shutil

    from django.conf import settings

    shutil.copytree(settings.STATIC_ROOT, Path(var_dir) / "static", dirs_exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": "",
        "PSCSYNC_VAR_DIR": str(var_dir),
        **dict.fromkeys(markers, "1"),
        "PSCSYNC_REQUIRE_SERVICES": "",
        STATIC_COLLECTED: "1",
    }
    # --no-migrations: the tables are built from the models (a second) rather than by 55 migrations
    # (about 7 s of CPU): the same schema, as tests/test_models_match_migrations.py holds, and on
    # SQLite every data migration finds nothing to fill. Migrating SQLite itself is tested where
    # production does it (test_security's cookie check, the demo).
    return subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--no-migrations", *targets],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sqlite_outcomes(stdout: str, target: str) -> list[str]:
    """The outcome lines (-rA: "PASSED tests/x.py::test[param]") of the nested tests `target`
    (file::test) names, parametrized ones included."""
    relative = str(Path(target.split("::")[0]).resolve().relative_to(ROOT))
    node = f"{relative}::{target.split('::')[1]}"
    return [
        line
        for line in stdout.splitlines()
        if line.split(" ")[0] in {"PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"}
        and len(line.split(" ")) > 1
        and (line.split(" ")[1] == node or line.split(" ")[1].startswith(f"{node}["))
    ]
