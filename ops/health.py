"""Liveness and readiness, and the heartbeats readiness reads.

Liveness (`/healthz`) says only that the web process answers. Readiness (`/readyz`) says whether
the whole engine can do its work: the database and the broker answer, at least one worker has
beaten recently, a beat leads and renews its lease, and the sweeper ran recently (the sweeper is
what turns a lost message into a delay, so a stale sweep means handoffs may silently wait).
Heartbeats are stamped with the database's clock, so skewed machine clocks still agree.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from django.conf import settings
from django.db import connection
from django.db.models.functions import Now
from django.utils import timezone

from ops.models import Heartbeat

SWEEPER = "sweeper"
BEAT_LEADER = "beat-leader"
WORKER_PREFIX = "worker:"


def worker_heartbeat_name(hostname: str) -> str:
    return f"{WORKER_PREFIX}{hostname}"


def heartbeat_record(*, name: str, holder: str = "") -> None:
    """Stamp `name` as alive now (an upsert: one row per name, never a growing table)."""
    updated = Heartbeat.objects.filter(name=name).update(seen_at=Now(), holder=holder)
    if not updated:
        Heartbeat.objects.get_or_create(name=name, defaults={"seen_at": Now(), "holder": holder})


def heartbeat_forget(*, name: str) -> None:
    """A process stopping cleanly says so at once, so readiness does not wait for its row to age."""
    Heartbeat.objects.filter(name=name).delete()


def database_now() -> dt.datetime:
    # Django's Now() is STATEMENT_TIMESTAMP() on PostgreSQL (not the transaction's start): the same.
    sql = "SELECT STATEMENT_TIMESTAMP()" if connection.vendor == "postgresql" else "SELECT CURRENT_TIMESTAMP"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        value = cursor.fetchone()[0]
    if isinstance(value, str):  # SQLite answers text in UTC
        value = dt.datetime.fromisoformat(value)
    return value if timezone.is_aware(value) else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means not ready; the class name says which
        return Check("database", False, f"the database does not answer ({exc.__class__.__name__})")
    return Check("database", True, "answers")


def _tcp(name: str, url: str, default_port: int) -> Check:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
    except Exception as exc:  # refused, timed out, auth: all mean not ready
        return Check(name, False, f"Redis at {host}:{port} does not answer ({exc.__class__.__name__})")
    return Check(name, True, "answers")


def _broker() -> Check:
    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        folder = Path(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]))
        ok = folder.is_dir()
        return Check("broker", ok, "the message folder exists" if ok else f"the message folder {folder} is missing")
    if url.startswith(("redis://", "rediss://")):
        return _tcp("broker", url, 6379)
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=1).close()
    except OSError as exc:
        return Check("broker", False, f"the broker does not answer ({exc.__class__.__name__})")
    return Check("broker", True, "answers")


def _age(seen: dt.datetime | None, now: dt.datetime) -> float | None:
    return None if seen is None else max(0.0, (now - seen).total_seconds())


def _fresh(name: str, age: float | None, limit: int, what: str) -> Check:
    if age is None:
        return Check(name, False, f"no {what} has been seen")
    if age > limit:
        return Check(name, False, f"the last {what} was {age:.0f} s ago (more than {limit} s)")
    return Check(name, True, f"the last {what} was {age:.0f} s ago")


def readiness() -> list[Check]:
    """Every readiness check, in the order an operator would look. Cheap: a few indexed reads."""
    database = _database()
    checks = [database, _broker()]
    if settings.REDIS_URL and settings.REDIS_URL != settings.CELERY_BROKER_URL:
        checks.append(_tcp("redis", settings.REDIS_URL, 6379))
    if not database.ok:
        unknown = "unknown: the database does not answer"
        return checks + [Check(name, False, unknown) for name in ("worker", "beat", "sweeper")]
    now = database_now()
    rows = {h.name: h for h in Heartbeat.objects.filter(name__in=[SWEEPER, BEAT_LEADER])}
    latest_worker = (
        Heartbeat.objects.filter(name__startswith=WORKER_PREFIX).order_by("-seen_at").values_list("seen_at", flat=True)
    ).first()
    leader = rows.get(BEAT_LEADER)
    checks.append(_fresh("worker", _age(latest_worker, now), settings.READY_WORKER_SECONDS, "worker heartbeat"))
    if leader is not None and leader.expires_at is not None and leader.expires_at <= now:
        checks.append(Check("beat", False, "no beat holds the leader lease (it expired)"))
    else:
        checks.append(
            _fresh("beat", _age(leader.seen_at if leader else None, now), settings.READY_BEAT_SECONDS, "beat renewal")
        )
    sweep = rows.get(SWEEPER)
    checks.append(_fresh("sweeper", _age(sweep.seen_at if sweep else None, now), settings.READY_SWEEP_SECONDS, "sweep"))
    return checks
