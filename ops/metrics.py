"""Prometheus metrics: counters the processes move, and gauges read from the database at scrape.

Counters and histograms (vendor calls, 429s, Retry-After, intake) are written where the work
happens. Under gunicorn and Celery prefork each process has its own, so with
PROMETHEUS_MULTIPROC_DIR set prometheus-client writes them to files there and the scrape adds
them up (its multiprocess mode); without it (one process, tests) they live in memory.

Gauges about the engine (handoffs by flow and status, backlog, oldest due, needing a person,
sweeper lag) and the business (money at risk, won-not-activated, unbilled WIP per legal entity)
are read at scrape time from the database, so every process agrees and a restart loses nothing.
Business figures come from the dashboards' own definitions (one definition per figure) and are
cached for PSCSYNC_METRICS_BUSINESS_SECONDS, since they are the dashboards' heavier queries.

Labels are bounded: flow and status are fixed lists, connection and entity are configured rows,
HTTP status is the code a vendor answered (or one of three transport failures).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger("pscsync.metrics")

VENDOR_CALLS = Counter(
    "pscsync_vendor_calls", "Calls to vendor APIs, by connection and HTTP status", ["connection", "status"]
)
VENDOR_CALL_SECONDS = Histogram(
    "pscsync_vendor_call_seconds",
    "Duration of calls to vendor APIs",
    ["connection"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
VENDOR_RATE_LIMITED = Counter("pscsync_vendor_rate_limited", "429 answers from vendor APIs", ["connection"])
VENDOR_RETRY_AFTER_SECONDS = Histogram(
    "pscsync_vendor_retry_after_seconds",
    "Retry-After asked by vendors with a 429",
    ["connection"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 900),
)
INTAKE_EVENTS = Counter(
    "pscsync_intake_events", "Webhook deliveries, by connection and outcome", ["connection", "outcome"]
)


def vendor_call_observed(*, connection: str, status: str, seconds: float, retry_after: float | None = None) -> None:
    VENDOR_CALLS.labels(connection, status).inc()
    VENDOR_CALL_SECONDS.labels(connection).observe(seconds)
    if status == "429":
        VENDOR_RATE_LIMITED.labels(connection).inc()
        if retry_after is not None:
            VENDOR_RETRY_AFTER_SECONDS.labels(connection).observe(retry_after)


def intake_observed(*, connection: str, outcome: str) -> None:
    """outcome: accepted, duplicate, or refused (bad signature, unknown connection, too large ...)."""
    INTAKE_EVENTS.labels(connection, outcome).inc()


# Gauges read at scrape ----------------------------------------------------------------------------
def _engine_families() -> Iterator[GaugeMetricFamily]:
    from django.db.models import Count, Min

    from ops.health import SWEEPER, database_now
    from ops.models import Heartbeat
    from pscsync.models import Handoff

    now = database_now()
    handoffs = GaugeMetricFamily("pscsync_handoffs", "Handoffs by flow and status", labels=["flow", "status"])
    needing = 0
    for row in Handoff.objects.values("flow", "status").annotate(n=Count("id")).order_by():
        handoffs.add_metric([row["flow"], row["status"]], row["n"])
        if row["status"] == Handoff.Status.NEEDS_ATTENTION:
            needing += row["n"]
    yield handoffs
    yield GaugeMetricFamily("pscsync_handoffs_needing_person", "Handoffs waiting for a person", value=needing)

    unfinished = [Handoff.Status.PENDING, Handoff.Status.WAITING_RETRY]
    due = Handoff.objects.filter(status__in=unfinished, next_attempt_at__lte=now)
    backlog = due.aggregate(n=Count("id"), oldest=Min("next_attempt_at"))
    yield GaugeMetricFamily("pscsync_backlog_due", "Handoffs due to run and not yet run", value=backlog["n"])
    oldest = (now - backlog["oldest"]).total_seconds() if backlog["oldest"] else 0.0
    yield GaugeMetricFamily(
        "pscsync_backlog_oldest_due_seconds", "How long the oldest due handoff has waited", value=max(0.0, oldest)
    )
    retrying = Handoff.objects.filter(status=Handoff.Status.WAITING_RETRY).count()
    yield GaugeMetricFamily("pscsync_handoffs_retrying", "Handoffs waiting for a retry", value=retrying)
    sweep = Heartbeat.objects.filter(name=SWEEPER).values_list("seen_at", flat=True).first()
    lag = GaugeMetricFamily("pscsync_sweeper_lag_seconds", "Seconds since the sweeper last ran (-1: never)")
    lag.add_metric([], (now - sweep).total_seconds() if sweep else -1.0)
    yield lag


_business_cache: dict[str, Any] = {"at": 0.0, "families": []}
_business_lock = threading.Lock()


def _business_families_fresh() -> list[GaugeMetricFamily]:
    import datetime as dt

    from dashboards.metrics import Converter, Filters, money_at_risk, won_not_activated
    from dashboards.wip import unbilled_wip
    from pscsync import clock
    from pscsync.models import LegalEntity

    today = clock.now().date()
    conv = Converter()
    money = GaugeMetricFamily(
        "pscsync_money_at_risk", "Money at risk, in the reporting currency", labels=["entity", "currency"]
    )
    won_n = GaugeMetricFamily(
        "pscsync_won_not_activated", "Won deals whose project is not active yet", labels=["entity"]
    )
    won_v = GaugeMetricFamily(
        "pscsync_won_not_activated_value", "Value of won deals not activated", labels=["entity", "currency"]
    )
    wip = GaugeMetricFamily(
        "pscsync_unbilled_wip", "Unbilled work in progress, in the reporting currency", labels=["entity", "currency"]
    )
    for pk, code in LegalEntity.objects.values_list("pk", "code"):
        f = Filters(start=today - dt.timedelta(days=29), end=today, entity_ids=(pk,))
        won = won_not_activated(f, conv, with_rows=False)
        won_n.add_metric([code], won["count"])
        won_v.add_metric([code, conv.target], float(won["value"]))
        money.add_metric([code, conv.target], float(money_at_risk(f, conv, won=won)["value"]))
        wip.add_metric([code, conv.target], float(unbilled_wip(f, conv, detail=False)["value"]))
    return [money, won_n, won_v, wip]


def _business_families() -> list[GaugeMetricFamily]:
    from django.conf import settings

    with _business_lock:
        if time.monotonic() - _business_cache["at"] > settings.METRICS_BUSINESS_SECONDS:
            _business_cache["families"] = _business_families_fresh()
            _business_cache["at"] = time.monotonic()
        return _business_cache["families"]


class DatabaseCollector(Collector):
    """Reads the engine's and the business gauges at scrape; a failing part is reported, not fatal."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        errors = GaugeMetricFamily(
            "pscsync_metrics_collect_errors", "Parts of this scrape that could not be read", labels=["part"]
        )
        for part, families in (("engine", _engine_families), ("business", _business_families)):
            try:
                yield from list(families())
                errors.add_metric([part], 0)
            except Exception:  # one broken figure must not hide the others
                log.exception("metrics: the %s gauges could not be read", part)
                errors.add_metric([part], 1)
        yield errors


def render() -> bytes:
    """The exposition text: this process's (or all processes') counters plus the database gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        for collector in (
            VENDOR_CALLS,
            VENDOR_CALL_SECONDS,
            VENDOR_RATE_LIMITED,
            VENDOR_RETRY_AFTER_SECONDS,
            INTAKE_EVENTS,
        ):
            registry.register(collector)
    registry.register(DatabaseCollector())
    return generate_latest(registry)
