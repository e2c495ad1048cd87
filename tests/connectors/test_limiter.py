"""The shared vendor-call limiter (connectors/limiter.py) with real Redis (this run's broker
database), real worker processes and the echo target over HTTP.

Windows are shortened (PSCSYNC_LIMITER_WINDOW_SECONDS) so a "minute" passes within the test;
the script and its arithmetic are the same for 60 s.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time

import pytest

from connectors import limiter
from connectors.echo import EchoConnector
from connectors.errors import TransientError
from connectors.models import Connection
from tests.helpers import PYTHON, ROOT, free_port

# Row ids no test database reaches, so these connections exist only in Redis and in memory.
SHARED_ID, PAUSED_ID, DOWN_ID, COUNTED_ID, OPEN_ID = 990_001, 990_002, 990_003, 990_004, 990_005


def _connection(echo, connection_id: int, *, per_minute: int = 600) -> Connection:
    connection = Connection(
        pk=connection_id,
        slug=f"limiter-{connection_id}",
        name="Echo under a limit",
        kind=Connection.Kind.TEST,
        vendor=Connection.Vendor.ECHO,
        base_url=echo.url,
        rate_limit_per_minute=per_minute,
        is_sandbox=True,
    )
    connection.set_credentials({"token": echo.token})
    return connection


def _start_worker(
    echo, *, connection_id: int, per_minute: int, name: str, calls: int, start_at: float, window: int, parties: int = 1
):
    env = dict(
        os.environ,
        PSCSYNC_LIMITER_WINDOW_SECONDS=str(window),
        PSCSYNC_LIMITER_MAX_WAIT_SECONDS="60",
        DJANGO_SETTINGS_MODULE="pscsync.settings",
    )
    argv = [PYTHON, "-m", "tests.limiter_worker", echo.url, echo.token, str(connection_id), str(per_minute)]
    return subprocess.Popen(
        [*argv, name, str(calls), str(start_at), str(parties)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _arrivals(echo, prefix: str) -> list[float]:
    """When each call reached the echo target, by its own clock (the record's creation time)."""
    return sorted(r["created_at"] for ref, r in echo.records().items() if ref.startswith(f"limit/{prefix}"))


def test_two_worker_processes_together_never_exceed_the_connections_limit(echo) -> None:
    # 4 calls per 3-second "minute"; two processes ask for 8 calls each, all at once.
    limit, window, calls = 4, 3, 8
    run = time.time()  # names this run's barrier; already past, so they start once both are ready
    workers = [
        _start_worker(
            echo,
            connection_id=SHARED_ID,
            per_minute=limit,
            name=name,
            calls=calls,
            start_at=run,
            window=window,
            parties=2,
        )
        for name in ("a", "b")
    ]
    results = [_finish(w) for w in workers]

    assert [r["errors"] for r in results] == [[], []]  # every call waited its turn; none failed
    grants = sorted(g for r in results for g in r["grants"])
    assert len(grants) == 2 * calls
    # Both processes were granted calls in the first window: they really ran side by side.
    assert all(min(r["grants"]) < grants[0] + window * 1000 for r in results)
    # Exact, on Redis's clock: any limit + 1 consecutive grants span at least a whole window, so
    # no window ever held more than `limit` of them, whichever process asked.
    assert all(grants[i + limit] - grants[i] >= window * 1000 for i in range(len(grants) - limit))

    # At the target: every call arrived once. Arrival times carry each call's own network and
    # scheduling delay, so the same count is checked over a window half a second shorter.
    arrived = _arrivals(echo, "")
    assert len(arrived) == 2 * calls
    assert all(arrived[i + limit] - arrived[i] >= window - 0.5 for i in range(len(arrived) - limit))
    # 16 calls at 4 a window need at least three more windows after the first.
    assert arrived[-1] - arrived[0] >= 3 * window - 0.5


def test_a_retry_after_pauses_the_other_workers_calls_until_then(echo, settings) -> None:
    connector = EchoConnector(_connection(echo, PAUSED_ID))
    # The other worker starts now and asks for its call 5 s from now, within the pause below.
    other = _start_worker(
        echo, connection_id=PAUSED_ID, per_minute=600, name="other", calls=1, start_at=time.time() + 5, window=60
    )
    echo.fault(mode="status", status=429, retry_after=9, count=1)
    with pytest.raises(TransientError) as refused:
        connector.send("PUT", "/records/limit/first", json={})
    refused_at = time.time()
    assert refused.value.http_status == 429 and refused.value.retry_after == 9

    # This process too: a call that would wait longer than it may is deferred, and nothing is sent.
    settings.LIMITER_MAX_WAIT_SECONDS = 1
    sent_before = len(echo.calls())
    with pytest.raises(limiter.SlotDeferred) as deferred:
        connector.send("PUT", "/records/limit/deferred", json={})
    assert 1 <= deferred.value.retry_after <= 9 and "asked us to pause" in deferred.value.message
    assert len(echo.calls()) == sent_before

    result = _finish(other)
    assert result["errors"] == []
    assert result["asked_at"] < refused_at + 9, "the other worker asked during the pause"
    [arrived] = _arrivals(echo, "other")
    # It was held until the vendor's Retry-After had passed (0.1 s: the two clocks' reading order).
    assert arrived >= refused_at + 9 - 0.1


def test_no_more_calls_at_once_than_the_vendor_allows() -> None:
    held, peak, lock = [0], [0], threading.Lock()

    def call() -> None:
        slot = limiter.acquire(connection_id=SHARED_ID, per_minute=0, max_concurrency=2, max_wait=30)
        with lock:
            held[0] += 1
            peak[0] = max(peak[0], held[0])
        time.sleep(0.3)
        with lock:
            held[0] -= 1
        slot.release()

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2
    # Six calls of 0.3 s, two at a time: three rounds.
    assert time.monotonic() - started >= 0.9


def test_a_call_whose_slot_is_far_off_is_deferred_at_once_not_slept_on(settings) -> None:
    settings.LIMITER_MAX_WAIT_SECONDS = 10
    limiter.acquire(connection_id=SHARED_ID, per_minute=1)
    started = time.monotonic()
    with pytest.raises(limiter.SlotDeferred) as deferred:
        limiter.acquire(connection_id=SHARED_ID, per_minute=1, name="Echo US")
    assert time.monotonic() - started < 1
    # The one call of this minute was just made: the next slot is a minute away.
    assert 55 <= deferred.value.retry_after <= 60
    assert deferred.value.message.startswith("Echo US: the connection's calls-per-minute limit is spent")


def test_every_call_is_counted_once_for_the_health_page_and_each_429_once(echo) -> None:
    # A limited connection: its grant counts the call (in the acquire script); an unlimited one
    # (no per-minute, no at-once limit) never asks the limiter, and the call is counted after it.
    limited = EchoConnector(_connection(echo, COUNTED_ID, per_minute=600))
    unlimited = EchoConnector(_connection(echo, OPEN_ID, per_minute=0))
    for connector in (limited, unlimited):
        for n in range(3):
            connector.send("PUT", f"/records/limit/counted-{connector.connection.pk}-{n}", json={})
        echo.fault(mode="status", status=429, retry_after=0, count=1)
        with pytest.raises(TransientError):
            connector.send("PUT", f"/records/limit/counted-{connector.connection.pk}-refused", json={})
    # Four calls each (three answered, one refused with a 429), whichever way they were counted.
    usage = limiter.usage([COUNTED_ID, OPEN_ID])
    assert usage is not None
    assert (usage[COUNTED_ID].calls, usage[COUNTED_ID].rate_limited) == (4, 1)
    assert (usage[OPEN_ID].calls, usage[OPEN_ID].rate_limited) == (4, 1)
    # A call deferred by its limit was never made: not counted.
    with pytest.raises(limiter.SlotDeferred):
        limiter.acquire(connection_id=COUNTED_ID, per_minute=4, max_wait=0)
    assert limiter.usage([COUNTED_ID])[COUNTED_ID].calls == 4


def test_with_redis_down_calls_go_out_unlimited_and_a_warning_is_logged(echo, settings, caplog) -> None:
    settings.LIMITER_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    connector = EchoConnector(_connection(echo, DOWN_ID, per_minute=1))
    with caplog.at_level(logging.WARNING, logger="connectors.limiter"):
        for n in range(3):  # three calls where the limit allows one: failing open lets them all out
            connector.send("PUT", f"/records/limit/down-{n}", json={})
    assert len(_arrivals(echo, "down-")) == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "connectors.limiter"]
    # One warning, not one per call (the limiter backs off Redis for a few seconds, warns once a minute).
    assert len(warnings) == 1 and "Redis unavailable" in warnings[0]
    assert limiter.usage([DOWN_ID]) is None  # the health page says the counts cannot be read


@pytest.mark.django_db(transaction=True)
def test_a_step_deferred_by_the_limit_waits_for_its_slot_without_spending_a_retry(
    echo_connection, echo, monkeypatch
) -> None:
    from pscsync.intake import event_receive
    from pscsync.runner import handoff_run
    from tests.helpers import change_body

    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    echo_connection.rate_limit_per_minute = 1
    echo_connection.save(update_fields=["rate_limit_per_minute"])
    limiter.acquire(connection_id=echo_connection.pk, per_minute=1)  # another worker's call this minute
    body = change_body("OPP-LIMIT")
    [change] = EchoConnector(echo_connection).parse_webhook(event_id="limit-1", body=body)
    handoff = event_receive(connection=echo_connection, change=change, headers={}, raw_body=body.decode()).handoff
    before = time.time()

    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "waiting_retry"
    handoff.refresh_from_db()
    assert handoff.attempt_count == 0  # a deferral, not a failure: the retry budget is whole
    wait = handoff.next_attempt_at.timestamp() - before
    assert 55 <= wait <= 62  # when the minute's slot frees (plus up to a second's jitter)
    assert "calls-per-minute limit is spent" in handoff.last_error_message
    assert echo.stats()["creates"] == {}  # nothing was sent


@pytest.mark.django_db(transaction=True)
def test_a_deferred_step_is_recorded_as_a_wait_not_a_failure_and_resumes_without_spending_a_retry(
    echo_connection, echo, monkeypatch, operator
) -> None:
    import datetime as dt

    from dashboards.facts import attempt_rollup_rows
    from dashboards.queries import health_summary
    from pscsync.intake import event_receive
    from pscsync.models import Attempt, Handoff, Step
    from pscsync.runner import handoff_run
    from remediation.timeline import handoff_timeline
    from tests.helpers import change_body

    # given: a tiny per-minute limit (one call a minute), already spent by another worker
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    echo_connection.rate_limit_per_minute = 1
    echo_connection.save(update_fields=["rate_limit_per_minute"])
    limiter.acquire(connection_id=echo_connection.pk, per_minute=1)
    body = change_body("OPP-DEFER")
    [change] = EchoConnector(echo_connection).parse_webhook(event_id="defer-1", body=body)
    handoff = event_receive(connection=echo_connection, change=change, headers={}, raw_body=body.decode()).handoff

    # when: the worker takes the handoff and its first call must wait a minute
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "waiting_retry"

    # then: one attempt, recorded as deferred (not a temporary failure), its step not failed
    handoff.refresh_from_db()
    attempt = Attempt.objects.get(step__handoff=handoff)
    assert attempt.outcome == Attempt.Outcome.DEFERRED
    assert 55 <= attempt.retry_after_seconds <= 60
    assert attempt.step.status == Step.Status.PENDING
    assert handoff.attempt_count == 0 and handoff.failed_step == "" and handoff.failure_reason == ""
    # The timeline says it in business words, with the time the slot frees: when the attempt
    # ended plus the limiter's wait (worked out here from the stored attempt, in UTC).
    resumes = attempt.started_at + dt.timedelta(milliseconds=attempt.duration_ms, seconds=attempt.retry_after_seconds)
    [entry] = [e for e in handoff_timeline(handoff)["timeline"] if e.kind == "attempt"]
    assert entry.detail == f"Waited for the vendor's rate limit; resumes at {resumes:%H:%M} UTC" or (
        resumes.date() != attempt.started_at.date() and entry.detail.endswith(f"{resumes:%H:%M} UTC")
    )
    assert entry.outcome_label == "Waited for the rate limit"
    # Neither the health page nor the attempt rollups count it as a call or a failure.
    summary = health_summary(operator)
    assert summary.by_status["waiting_retry"] == 1  # the operator sees this handoff and its attempts
    assert (summary.attempts_last_day, summary.failed_attempts_last_day) == (0, 0)
    row = {
        "started_at": attempt.started_at,
        "flow": handoff.flow,
        "step": attempt.step.name,
        "connection_id": None,
        "legal_entity_id": None,
        "outcome": attempt.outcome,
        "http_status": None,
        "retry_after_seconds": attempt.retry_after_seconds,
        "duration_ms": attempt.duration_ms,
    }
    assert attempt_rollup_rows([row]) == {}
    assert echo.stats()["creates"] == {}  # nothing was sent

    # when: the minute has passed (the window forgotten, the handoff due)
    limiter.forget_all()
    echo_connection.rate_limit_per_minute = 600
    echo_connection.save(update_fields=["rate_limit_per_minute"])
    Handoff.objects.filter(pk=handoff.pk).update(next_attempt_at=handoff.next_attempt_at - dt.timedelta(minutes=5))

    # then: it resumes and succeeds with its retry budget whole
    assert handoff_run(handoff_id=handoff.pk, worker="w2") == "succeeded"
    handoff.refresh_from_db()
    assert handoff.attempt_count == 0
    outcomes = list(Attempt.objects.filter(step__handoff=handoff).order_by("pk").values_list("outcome", flat=True))
    assert outcomes[0] == "deferred" and set(outcomes[1:]) == {"succeeded"}
