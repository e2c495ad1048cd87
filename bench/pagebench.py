"""Timing pages in process, shared by bench/inbox and bench/dashboards.

Server time is measured with Django's test `Client` in the benchmark's own process: the whole
request (middleware, view, SQL, template) without a socket or a WSGI server in front. That is the
part the issues' targets are about and the part our code controls; gunicorn adds a roughly
constant millisecond or two per request on top (bench/ingest measures that layer). DEBUG stays off,
so Django records no queries unless asked.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Flushed after a run: PSCSYNC_BENCH_REDIS_URL points a shared machine's runs at their own db.
REDIS_URL = os.environ.get("PSCSYNC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-int(p * len(ordered) * 1000) // 1000))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Timing:
    name: str
    url: str
    ms: list[float] = field(default_factory=list)
    queries: int = 0
    status: int = 0
    bytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        return nearest_rank(self.ms, 0.95)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "n": len(self.ms),
            "median_ms": round(self.median, 1),
            "p95_ms": round(self.p95, 1),
            "max_ms": round(max(self.ms), 1),
            "queries": self.queries,
            "status": self.status,
            "bytes": self.bytes,
        }


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def time_get(
    client: Any,
    name: str,
    url: str,
    *,
    requests: int,
    warmup: int = 2,
    budget_s: float = 40.0,
    headers: dict[str, str] | None = None,
) -> Timing:
    """GET `url` warmup + requests times; warm-up requests are not counted. A slow page stops after
    `budget_s` seconds with at least 5 timed requests, so one bad page cannot eat the run."""
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    t = Timing(name, url)
    extra = headers or {}
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, **extra)
    t.queries = len(ctx.captured_queries)
    t.status = response.status_code
    t.bytes = len(response.content)
    if response.status_code != 200:
        raise SystemExit(f"{name}: {url} answered {response.status_code}")
    for _ in range(max(0, warmup - 1)):
        client.get(url, **extra)
    started = time.monotonic()
    for i in range(requests):
        t0 = time.perf_counter()
        response = client.get(url, **extra)
        t.ms.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{name}: {url} answered {response.status_code}")
        if i >= 4 and time.monotonic() - started > budget_s:
            break
    reset_queries()
    return t


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    widths = [max(len(title), *(len(str(r.get(key, ""))) for r in rows)) for key, title in columns]
    print("  ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(key, "")).ljust(w) for (key, _), w in zip(columns, widths, strict=True)))


def child_env(database: str) -> dict[str, str]:
    from largefirm import BENCH_ENV, PG

    return {
        **os.environ,
        **BENCH_ENV,
        "DATABASE_URL": f"{PG}/{database}",
        "CELERY_BROKER_URL": REDIS_URL,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}",
    }


def run_child(script: Path, database: str, args: list[str]) -> dict[str, Any]:
    """Run the measuring half of a bench in a fresh process on `database`; it prints one JSON
    line prefixed RESULT, everything else passes through."""
    python = ROOT / ".venv" / "bin" / "python"
    proc = subprocess.run(
        [str(python), str(script), "--child", *args],
        env=child_env(database),
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        else:
            print(line, flush=True)
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"{script.name} child failed on {database} (exit {proc.returncode})")
    return result


def django_setup() -> None:
    sys.path.insert(0, str(ROOT))
    import logging

    import django

    django.setup()
    # The audit trail logs every entry at INFO; the bench's own set-up would drown its output.
    logging.getLogger("pscsync.audit").setLevel(logging.WARNING)
    from django.conf import settings

    if not (Path(settings.STATIC_ROOT) / "staticfiles.json").exists():
        # Pages name their static files through collectstatic's manifest (the production storage).
        from django.core.management import call_command

        call_command("collectstatic", "--noinput", verbosity=0)


def logged_in_client(username: str) -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    client.force_login(get_user_model().objects.get(username=username))
    return client


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - t0) * 1000
