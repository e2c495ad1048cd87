"""Integration health figures, computed from stored records only (pages never call a vendor)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, Max, Q

from connectors.models import Connection
from pscsync import clock
from pscsync.access import scope_queryset
from pscsync.models import Attempt, Event, Handoff
from pscsync.selectors import handoffs_visible_to

OVERDUE_AFTER = dt.timedelta(minutes=15)


@dataclass(frozen=True)
class HealthSummary:
    by_status: dict[str, int]
    oldest_open: Handoff | None
    oldest_open_age: dt.timedelta | None
    overdue: int
    succeeded_last_hour: int
    attempts_last_day: int
    failed_attempts_last_day: int

    @property
    def failure_rate(self) -> float | None:
        if not self.attempts_last_day:
            return None
        return self.failed_attempts_last_day / self.attempts_last_day


FAILED_OUTCOMES = [
    Attempt.Outcome.TRANSIENT,
    Attempt.Outcome.UNKNOWN,
    Attempt.Outcome.VALIDATION,
    Attempt.Outcome.MAPPING,
    Attempt.Outcome.REJECTED,
    Attempt.Outcome.WORKER_LOST,
]


def health_summary(user: User | AnonymousUser) -> HealthSummary:
    now = clock.now()
    handoffs = handoffs_visible_to(user)
    counts = dict(handoffs.values_list("status").annotate(n=Count("pk")).order_by())
    by_status = {value: counts.get(value, 0) for value, _ in Handoff.Status.choices}
    unfinished = handoffs.filter(status__in=["pending", "running", "waiting_retry"])
    oldest = unfinished.order_by("created_at").first()
    attempts = scope_queryset(
        Attempt.objects.filter(started_at__gte=now - dt.timedelta(days=1)), user, "step__handoff__legal_entity"
    )
    # A deferred attempt sent nothing (it waited for the rate limit): neither a call nor a failure.
    attempts = attempts.exclude(outcome=Attempt.Outcome.DEFERRED)
    totals = attempts.aggregate(all=Count("pk"), failed=Count("pk", filter=Q(outcome__in=FAILED_OUTCOMES)))
    return HealthSummary(
        by_status=by_status,
        oldest_open=oldest,
        oldest_open_age=(now - oldest.created_at) if oldest else None,
        overdue=unfinished.filter(created_at__lt=now - OVERDUE_AFTER).count(),
        succeeded_last_hour=handoffs.filter(status="succeeded", finished_at__gte=now - dt.timedelta(hours=1)).count(),
        attempts_last_day=totals["all"],
        failed_attempts_last_day=totals["failed"],
    )


WRITTEN_OUTCOMES = [Attempt.Outcome.SUCCEEDED, Attempt.Outcome.ADOPTED]


def connection_activity(user: User | AnonymousUser) -> list[dict]:
    """Per connection the user may see: events in the last day and the last one's time, and its
    use of the vendor over the last hour: calls and 429s (counted by the limiter in Redis, every
    worker's), records written, its limits and any pause a vendor asked for."""
    from connectors import limiter
    from connectors.registry import connector_class

    now = clock.now()
    connections = list(scope_queryset(Connection.objects.all(), user, "legal_entities").order_by("name"))
    events = scope_queryset(Event.objects.all(), user)
    usage = limiter.usage([c.pk for c in connections])
    # Writes that landed: the last hour's attempts (attempt_started bounds the scan to them) whose
    # step wrote to the connection and succeeded or found its record already written.
    written = dict(
        Attempt.objects.filter(
            started_at__gte=now - dt.timedelta(hours=1),
            outcome__in=WRITTEN_OUTCOMES,
            step__target_connection__in=connections,
        )
        .values_list("step__target_connection_id")
        .annotate(n=Count("pk"))
        .order_by()
    )
    out = []
    # Two index probes per connection (event_connection_received): a GROUP BY over every event
    # ever received read the whole table.
    for c in connections:
        mine = events.filter(connection=c)
        used = usage.get(c.pk) if usage is not None else None
        records = written.get(c.pk, 0)
        out.append(
            {
                "connection": c,
                "last_event_at": mine.aggregate(last=Max("received_at"))["last"],
                "events_last_day": mine.filter(received_at__gte=now - dt.timedelta(days=1)).count(),
                "usage": used,
                "records_written": records,
                # Only where calls were counted: writes the limiter did not see (before it, or data loaded
                # another way) would read as "0 calls a record".
                "calls_per_record": used.calls / records if used is not None and used.calls and records else None,
                "at_once": connector_class(c.vendor).limits.max_concurrency,
            }
        )
    return out
