"""Fault tests on the real stack: every one ends with the ledger checker, counted on the target's
side: 0 lost, 0 duplicated, 0 orphaned (RELIABILITY.md TS-1). Scale is the per-merge tenth of the
nightly figures where the issue does not fix it (T01 and T10 run at the issue's 300)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from django.db.models import Count

from pscsync.models import Attempt, Event, Handoff
from tests.helpers import change_body, ledger_check, sign
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


def _succeeded() -> int:
    return Handoff.objects.filter(status="succeeded").count()


def _deliver_all(live, keys: list[str], workers: int = 8) -> list[int]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(live.deliver, keys))


def _report(name: str, **figures: object) -> None:
    """Print what the test measured (shown with -s and in CI's log on failure)."""
    print(f"\n[fault-test] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def test_kill_9_of_the_worker_during_300_handoffs_loses_and_duplicates_nothing(live) -> None:
    keys = [f"K9-{i:03d}" for i in range(300)]
    rng = random.Random(20261126)
    sender = threading.Thread(target=_deliver_all, args=(live, keys, 4))
    sender.start()
    kills = 0
    for _ in range(5):
        time.sleep(rng.uniform(0.5, 2.0))
        live.restart_worker()  # SIGKILL to the worker's whole process group, then a fresh worker
        kills += 1
    sender.join()
    took = wait_until(lambda: _succeeded() == 300, timeout=240, stack=live, what="300 handoffs to succeed")
    report = ledger_check(keys, live.echo)
    assert report.clean, report
    assert Event.objects.count() == 300
    recovered = Handoff.objects.filter(worker_crashes__gt=0).count()
    adopted = Attempt.objects.filter(outcome="adopted").count()
    _report(
        "kill -9",
        kills=kills,
        handoffs=300,
        took_s=round(took, 1),
        taken_over=recovered,
        adopted=adopted,
        lost=len(report.lost),
        duplicated=len(report.duplicated),
    )


def test_crash_after_the_target_applied_a_write_adopts_it_on_recovery(live) -> None:
    keys = [f"T02-{i:02d}" for i in range(20)]
    # Every invoice write is applied by the target, then the worker dies before storing the result.
    live.restart_worker(faults={"after_target_call_before_commit": {"keys": ["INV-T02-*"], "once": True}})
    try:
        _deliver_all(live, keys)
        took = wait_until(lambda: _succeeded() == 20, timeout=180, stack=live, what="20 crashed handoffs to recover")
    finally:
        live.restart_worker(faults={})
    report = ledger_check(keys, live.echo)
    assert report.clean, report
    adopted = Attempt.objects.filter(step__name="upsert_invoice", outcome="adopted").count()
    assert adopted == 20, "each invoice was found by its key and adopted, not written again"
    assert live.echo.stats()["updates"] == 0
    _report("crash after target write", handoffs=20, adopted=adopted, took_s=round(took, 1), lost=0, duplicated=0)


def test_redis_flushed_while_handoffs_are_queued_and_running_loses_nothing(live) -> None:
    # T03/T04 at the per-merge tenth: 1,000 queued and 200 running nightly, 100 and 20 here.
    broker = redis.Redis.from_url(live.env["CELERY_BROKER_URL"])
    keys = [f"RF-{i:03d}" for i in range(120)]
    live.worker.kill()
    _deliver_all(live, keys[:100])
    broker.flushdb()  # 100 queued messages gone
    live.start_worker()
    _deliver_all(live, keys[100:])
    # Mid-run for certain: the second flush waits for the first handoff to finish, not a fixed time.
    wait_until(lambda: _succeeded() > 0, timeout=60, stack=live, what="the first handoff after the restart")
    pending = 120 - _succeeded()
    broker.flushdb()  # and again mid-run
    assert pending > 0, "the second flush came mid-run, with handoffs still to do"
    took = wait_until(lambda: _succeeded() == 120, timeout=120, stack=live, what="120 handoffs after FLUSHDB")
    report = ledger_check(keys, live.echo)
    assert report.clean, report
    _report("redis flushed", handoffs=120, pending_at_2nd_flush=pending, took_s=round(took, 1), lost=0, duplicated=0)


def test_the_same_300_webhooks_delivered_3_times_concurrently_start_300_handoffs(live) -> None:
    keys = [f"DUP-{i:03d}" for i in range(300)]
    deliveries = []
    for key in keys:
        body = change_body(key)
        deliveries.append((body, sign(body, msg_id=f"evt-{key}")))
    sends = deliveries * 3
    random.Random(3).shuffle(sends)
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda d: live.post(*d), sends))
    assert sorted(set(statuses)) == [200, 202]
    assert statuses.count(202) == 300 and statuses.count(200) == 600
    assert Event.objects.count() == 300
    # Routing is the worker's (the intake doorbell): the handoffs are opened as it drains.
    took = wait_until(lambda: _succeeded() == 300, timeout=120, stack=live, what="300 handoffs")
    assert Handoff.objects.count() == 300
    report = ledger_check(keys, live.echo)
    assert report.clean, report
    assert live.echo.stats()["updates"] == 0, "no handoff ran twice"
    _report("3x concurrent redelivery", deliveries=900, events=300, handoffs=300, took_s=round(took, 1))


def test_events_for_one_key_out_of_order_end_in_the_in_order_state(live) -> None:
    keys = [f"ORD-{i:02d}" for i in range(20)]
    sends = [(key, version) for key in keys for version in range(1, 6)]
    random.Random(11).shuffle(sends)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda kv: live.deliver(kv[0], kv[1]), sends))

    def settled() -> bool:
        return (
            not Handoff.objects.filter(status__in=Handoff.OPEN).exists()
            and not Event.objects.filter(status__in=["queued", "received"]).exists()  # routed, all of them
        )

    wait_until(settled, timeout=120, stack=live, what="all keys to settle")
    records = live.echo.records()
    for key in keys:
        for entity, prefix in (("customer", "CUST"), ("project", "PRJ"), ("invoice", "INV")):
            assert records[f"{entity}/{prefix}-{key}"]["fields"]["version"] == 5, (key, entity)
    report = ledger_check(keys, live.echo)
    assert report.clean, report
    assert Handoff.objects.filter(status__in=["needs_attention", "cancelled"]).count() == 0
    statuses = dict(Event.objects.values_list("status").annotate(n=Count("pk")).order_by())
    _report("out of order", keys=20, events=100, **statuses)


def test_a_poison_handoff_stops_after_the_crash_limit_and_spares_the_others(live, settings) -> None:
    healthy = [f"OK-{i:02d}" for i in range(50)]
    live.restart_worker(faults={"before_target_call": {"keys": ["poison-*"]}})
    try:
        live.deliver("poison-1")
        _deliver_all(live, healthy)
        wait_until(
            lambda: (
                Handoff.objects.filter(business_key="poison-1", status="needs_attention").exists()
                and _succeeded() == 50
            ),
            timeout=120,
            stack=live,
            what="the poison handoff to stop and the healthy ones to finish",
        )
    finally:
        live.restart_worker(faults={})
    poison = Handoff.objects.get(business_key="poison-1")
    assert poison.last_error_class == "worker_lost"
    assert poison.worker_crashes == 3
    assert Attempt.objects.filter(step__handoff=poison, outcome="worker_lost").count() == 3
    report = ledger_check(healthy, live.echo)
    assert report.clean, report
    _report("poison", crashes=poison.worker_crashes, healthy_succeeded=50)


def test_web_process_killed_between_commit_and_publish_loses_nothing(live) -> None:
    keys = [f"PUB-{i:02d}" for i in range(20)]
    live.web.kill()
    live.start_web(faults={"after_commit_before_publish": {"keys": ["evt-PUB-*"], "once": True}})
    try:
        for key in keys:
            body = change_body(key)
            headers = sign(body, msg_id=f"evt-{key}")
            # The sender retries until it hears 2xx, as every webhook sender does.
            for _ in range(5):
                try:
                    if live.post(body, headers) in (200, 202):
                        break
                except Exception:  # noqa: S110 - the web worker died before answering, as intended
                    pass
        fired = len(list((live.var_dir / "faults" / "after_commit_before_publish").iterdir()))
        assert fired == 20, "every delivery's web process died after its commit, before publishing"
        assert Event.objects.count() == 20
        # No handoff was ever published by the web: the retries were duplicates. The sweeper did it.
        took = wait_until(lambda: _succeeded() == 20, timeout=60, stack=live, what="the sweeper to publish 20 handoffs")
    finally:
        live.web.kill()
        live.start_web()
    report = ledger_check(keys, live.echo)
    assert report.clean, report
    _report("killed before publish", handoffs=20, killed_after_commit=fired, took_s=round(took, 1))


def test_webhook_accept_is_not_blocked_by_a_slow_target(live) -> None:
    """Intake answers from the database alone: a target taking 2 s to answer does not slow it."""
    live.echo.fault(mode="latency", latency_ms=2000, count=1)
    assert live.deliver("SLOW-1") == 202
    # Accepted while the target is still busy with the first write: intake never waits for it.
    assert live.echo.stats()["creates"] == {}
    wait_until(lambda: _succeeded() == 1, timeout=60, stack=live, what="the slow handoff")
    assert ledger_check(["SLOW-1"], live.echo).clean
