"""The runner against the echo target over real HTTP: resume, retry, adopt, give up, lease."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors import limiter
from pscsync import clock
from pscsync.intake import event_receive
from pscsync.models import Attempt, CrossReference, Handoff, Step
from pscsync.runner import handoff_run, retry_delay
from tests.helpers import change_body

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def frozen(monkeypatch):
    c = clock.FrozenClock()
    clock.use(c)
    yield c
    clock.use(None)


@pytest.fixture(autouse=True)
def no_broker(monkeypatch) -> None:
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)


def receive(connection, key: str, version: int = 1, event_id: str | None = None) -> Handoff | None:
    from connectors.registry import connector_for

    body = change_body(key, version)
    [change] = connector_for(connection).parse_webhook(event_id=event_id or f"{key}-v{version}", body=body)
    return event_receive(connection=connection, change=change, headers={}, raw_body=body.decode()).handoff


def test_a_handoff_runs_its_three_steps_and_records_each_attempt(echo_connection, echo) -> None:
    handoff = receive(echo_connection, "OPP-1")
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "succeeded"
    handoff.refresh_from_db()
    assert handoff.status == "succeeded" and handoff.lease_owner == ""
    steps = list(handoff.steps.order_by("position"))
    assert [s.name for s in steps] == ["upsert_customer", "upsert_project", "upsert_invoice"]
    assert all(s.status == "succeeded" and s.external_id.startswith("ECHO-") for s in steps)
    assert [s.idempotency_key for s in steps] == ["CUST-OPP-1", "PRJ-OPP-1", "INV-OPP-1"]
    attempt = steps[0].attempts.get()
    assert attempt.outcome == "succeeded" and attempt.http_status == 201
    assert attempt.request["json"]["data"]["name"] == "Customer OPP-1"
    # The project step refers to what the customer step wrote.
    assert steps[1].attempts.get().request["json"]["customer"] == steps[0].external_id
    assert CrossReference.objects.filter(handoff=handoff).count() == 3
    assert echo.stats()["creates"] == {"customer/CUST-OPP-1": 1, "project/PRJ-OPP-1": 1, "invoice/INV-OPP-1": 1}


def test_running_a_finished_handoff_again_sends_nothing(echo_connection, echo) -> None:
    handoff = receive(echo_connection, "OPP-2")
    handoff_run(handoff_id=handoff.pk, worker="w1")
    assert handoff_run(handoff_id=handoff.pk, worker="w2") == "skipped"
    assert echo.stats()["updates"] == 0
    assert Attempt.objects.count() == 3


def test_a_transient_failure_waits_in_the_database_and_resumes_at_the_failed_step(echo_connection, echo, frozen):
    handoff = receive(echo_connection, "OPP-3")
    echo.fault(mode="status", status=429, retry_after=30, match="/invoice/", count=1)
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "waiting_retry"
    handoff.refresh_from_db()
    assert handoff.last_error_class == "transient"
    assert "rate limiting" in handoff.last_error_message
    # Retry-After is honoured: never sooner than the target asked.
    assert handoff.next_attempt_at >= frozen.now() + dt.timedelta(seconds=30)
    failed = Attempt.objects.get(step__name="upsert_invoice")
    assert failed.outcome == "transient" and failed.retry_after_seconds == 30 and failed.http_status == 429
    # Not due yet: a duplicate delivery does nothing.
    assert handoff_run(handoff_id=handoff.pk, worker="w2") == "skipped"
    frozen.advance(3600)
    # The vendor's pause holds every worker on Redis's clock, which the frozen clock does not
    # move (tests/connectors/test_limiter.py): end it as 30 real seconds would.
    limiter.resume(echo_connection.pk)
    assert handoff_run(handoff_id=handoff.pk, worker="w2") == "succeeded"
    handoff.refresh_from_db()
    assert (handoff.failed_step, handoff.failed_key, handoff.failure_reason) == ("", "", "")  # cleared on success
    # The customer and project steps were not sent again.
    assert Step.objects.get(handoff=handoff, name="upsert_customer").attempts.count() == 1
    assert echo.stats()["updates"] == 0


def test_an_unknown_outcome_is_looked_up_and_adopted_not_written_twice(echo_connection, echo) -> None:
    handoff = receive(echo_connection, "OPP-4")
    # The target applies the project write, then drops the connection without answering.
    echo.fault(mode="drop_after_apply", match="/project/", count=1)
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "succeeded"
    attempt = Attempt.objects.get(step__name="upsert_project")
    assert attempt.outcome == "adopted"
    assert echo.stats()["creates"]["project/PRJ-OPP-4"] == 1
    assert echo.stats()["updates"] == 0


def test_a_rejection_goes_to_a_person_at_once_with_the_targets_message(echo_connection, echo) -> None:
    handoff = receive(echo_connection, "OPP-5")
    echo.fault(mode="status", status=422, match="/customer/", count=1)
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "needs_attention"
    handoff.refresh_from_db()
    assert handoff.last_error_class == "rejected"
    assert "upsert_customer: the target rejected the request (422)" in handoff.last_error_message
    # Where it stopped, as data for the workbench: the step, the key of the customer it was
    # writing (the step's own key), and the target's words without the step.
    customer = Step.objects.get(handoff=handoff, name="upsert_customer")
    assert (handoff.failed_step, handoff.failed_key) == ("upsert_customer", customer.idempotency_key)
    assert customer.idempotency_key and handoff.failure_reason.startswith("the target rejected the request (422)")
    assert handoff.attempt_count == 0  # no retry budget spent on what retries cannot fix
    assert handoff.next_attempt_at is None


def test_after_the_attempt_budget_a_transient_failure_needs_a_person(echo_connection, echo, frozen, settings):
    handoff = receive(echo_connection, "OPP-6")
    echo.fault(mode="status", status=503, match="/customer/", count=100)
    for _ in range(8):
        handoff_run(handoff_id=handoff.pk, worker="w")
        frozen.advance(7200)
    handoff.refresh_from_db()
    assert handoff.status == "needs_attention"
    assert handoff.attempt_count == 8
    assert "after 8 attempts" in handoff.last_error_message
    assert handoff.failed_step == "upsert_customer" and "attempts" not in handoff.failure_reason


def test_a_vendor_outage_then_recovery_loses_and_duplicates_nothing(echo_connection, echo, frozen) -> None:
    handoffs = [receive(echo_connection, f"OUT-{i}") for i in range(5)]
    echo.fault(mode="status", status=503, count=7)
    for _ in range(4):
        for h in handoffs:
            handoff_run(handoff_id=h.pk, worker="w")
        frozen.advance(7200)
    assert set(Handoff.objects.values_list("status", flat=True)) == {"succeeded"}
    creates = echo.stats()["creates"]
    assert len(creates) == 15 and set(creates.values()) == {1}


def test_a_live_lease_keeps_a_second_worker_out(echo_connection, frozen) -> None:
    from pscsync.runner import _lease

    handoff = receive(echo_connection, "OPP-7")
    assert _lease(handoff.pk, "w1") is not None
    assert _lease(handoff.pk, "w2") is None
    frozen.advance(10_000)  # w1 died: its lease ran out
    taken = _lease(handoff.pk, "w2")
    assert taken is not None and taken.worker_crashes == 1


def test_a_worker_that_lost_its_lease_writes_nothing(echo_connection, echo, frozen) -> None:
    from pscsync.runner import LeaseLost, _lease, _renew

    handoff = receive(echo_connection, "OPP-8")
    _lease(handoff.pk, "w1")
    frozen.advance(10_000)
    _lease(handoff.pk, "w2")
    with pytest.raises(LeaseLost):
        _renew(handoff, "w1")


def test_a_handoff_whose_worker_keeps_dying_stops_after_the_crash_limit(echo_connection, frozen, settings) -> None:
    from pscsync.runner import _lease

    handoff = receive(echo_connection, "OPP-9")
    for _ in range(settings.MAX_WORKER_CRASHES):
        _lease(handoff.pk, "w")
        frozen.advance(10_000)
    assert _lease(handoff.pk, "w") is None
    handoff.refresh_from_db()
    assert handoff.status == "needs_attention" and handoff.last_error_class == "worker_lost"
    assert "died 3 times" in handoff.last_error_message
    assert handoff.failed_step == "" and "died 3 times" in handoff.failure_reason  # it stopped outside a step


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap() -> None:
    import random

    rng = random.Random(1)
    firsts = [retry_delay(1, rng=rng) for _ in range(200)]
    tenths = [retry_delay(10, rng=rng) for _ in range(200)]
    assert max(firsts) <= 10 and min(firsts) >= 0
    assert max(tenths) > 100 and max(tenths) <= 3600
    assert retry_delay(1, retry_after=120, rng=rng) >= 120


# --- Batch claims (issue 18): one claim for several handoffs, each run as handoff_run runs it ---


def test_a_batch_claim_runs_every_runnable_handoff_once_and_records_each_attempt(echo_connection, echo) -> None:
    from pscsync.runner import handoffs_claim_run

    handoffs = [receive(echo_connection, f"OPP-B{i}") for i in range(5)]
    assert handoffs_claim_run(worker="w1", limit=2) == 5  # three claims: 2, 2, 1
    assert handoffs_claim_run(worker="w2", limit=2) == 0  # nothing left: a late message runs nothing
    for handoff in handoffs:
        handoff.refresh_from_db()
        assert handoff.status == "succeeded" and handoff.lease_owner == ""
        assert [t.to_status for t in handoff.transitions.order_by("at", "pk")] == ["pending", "running", "succeeded"]
    assert Attempt.objects.filter(outcome="succeeded").count() == 15
    assert sum(echo.stats()["creates"].values()) == 15 and echo.stats()["updates"] == 0


def test_a_batch_claim_tells_the_listeners_once_per_batch_with_its_moves(echo_connection, echo, monkeypatch) -> None:
    from pscsync import lifecycle
    from pscsync.runner import handoffs_claim_run

    ids = [receive(echo_connection, f"OPP-L{i}").pk for i in range(3)]
    other = receive(echo_connection, "OPP-L9").pk
    # Only the test's listeners: what is told, not what the dashboards do with it.
    monkeypatch.setattr(lifecycle, "_listeners", {})
    told: list[list[tuple[int, str]]] = []
    lifecycle.listener_add(
        "test.batch", lambda moves: told.append([(m.handoff_id, m.to_status) for m in moves]), batch=True
    )
    assert handoff_run(handoff_id=other, worker="w1") == "succeeded"
    # Outside a batch (handoff_run, a web request) a move is told at its own commit.
    assert told == [[(other, "running")], [(other, "succeeded")]]
    told.clear()
    assert handoffs_claim_run(worker="w1", limit=2) == 3  # two claims: 2, then 1
    assert told == [
        [(ids[0], "running"), (ids[0], "succeeded"), (ids[1], "running"), (ids[1], "succeeded")],
        [(ids[2], "running"), (ids[2], "succeeded")],
    ]


def test_two_workers_never_claim_the_same_handoff(echo_connection, frozen) -> None:
    from pscsync.runner import handoffs_claim

    ids = {receive(echo_connection, f"OPP-C{i}").pk for i in range(3)}
    first, _ = handoffs_claim(worker="w1", limit=2)
    second, _ = handoffs_claim(worker="w2", limit=2)
    assert len(first) == 2 and len(second) == 1
    assert {h.pk for h in first} | {h.pk for h in second} == ids
    # Reserved, not moved: the status changes at the run's first commit.
    assert set(Handoff.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"pending"}
    assert handoffs_claim(worker="w3", limit=2) == ([], False)


def test_a_reserved_handoff_whose_worker_died_is_claimed_again_without_counting_a_crash(
    echo_connection, echo, frozen
) -> None:
    from pscsync.runner import handoffs_claim, handoffs_claim_run

    handoff = receive(echo_connection, "OPP-D1")
    assert len(handoffs_claim(worker="w1", limit=5)[0]) == 1  # w1 dies before running it
    assert handoffs_claim_run(worker="w2") == 0  # its reservation is live: hands off
    frozen.advance(10_000)
    assert handoffs_claim_run(worker="w2") == 1
    handoff.refresh_from_db()
    assert handoff.status == "succeeded" and handoff.worker_crashes == 0
    assert echo.stats()["creates"] == {"customer/CUST-OPP-D1": 1, "project/PRJ-OPP-D1": 1, "invoice/INV-OPP-D1": 1}


def test_a_newer_change_queues_behind_a_reserved_handoff_instead_of_replacing_its_input(
    echo_connection, echo, frozen
) -> None:
    from pscsync.runner import handoffs_claim, handoffs_claim_run

    handoff = receive(echo_connection, "OPP-E1", version=1)
    handoffs_claim(worker="w1", limit=1)
    assert receive(echo_connection, "OPP-E1", version=2) is None  # queued, not superseding
    handoff.refresh_from_db()
    assert handoff.trigger_event.source_sequence == 1 and handoff.superseded_count == 0
    frozen.advance(10_000)
    handoffs_claim_run(worker="w2")  # runs version 1, then the queued version 2 it starts
    versions = list(
        Handoff.objects.filter(business_key="OPP-E1")
        .order_by("created_at")
        .values_list("status", "trigger_event__source_sequence")
    )
    assert versions == [("succeeded", 1), ("succeeded", 2)]


def test_a_worker_out_of_time_gives_back_what_it_did_not_start(echo_connection, echo, frozen) -> None:
    from pscsync.runner import _run_batch, handoffs_claim

    ids = {receive(echo_connection, f"OPP-F{i}").pk for i in range(3)}
    reserved, _ = handoffs_claim(worker="w1", limit=3)
    assert _run_batch(reserved, "w1", started=0.0, budget=0.0) == 0  # its time is up before the first
    rows = Handoff.objects.filter(pk__in=ids).values_list("status", "lease_owner", "lease_expires_at")
    assert set(rows) == {("pending", "", None)}  # free for any worker at once, no lease to wait out
    assert Attempt.objects.count() == 0


def test_a_batch_run_that_fails_before_its_first_commit_is_left_running_for_the_crash_count(
    echo_connection, echo, frozen, monkeypatch
) -> None:
    from pscsync import runner

    first, second = receive(echo_connection, "OPP-G1"), receive(echo_connection, "OPP-G2")
    reserved, _ = runner.handoffs_claim(worker="w1", limit=2)

    def broken(*args, **kwargs):
        raise RuntimeError("a defect in a step's key")

    monkeypatch.setattr(runner, "_run_leased", broken)
    with pytest.raises(RuntimeError):
        runner._run_batch(reserved, "w1", started=time_now(), budget=60.0)
    # The batch runs in claim order (by next attempt; under the frozen clock the two tie, so
    # either may come first): the one started failed, the other was never started.
    assert {h.pk for h in reserved} == {first.pk, second.pk}
    started_one, not_started = (Handoff.objects.get(pk=h.pk) for h in reserved)
    # The one that failed is running under w1's lease: when it expires the takeover counts a
    # crash, as for a handoff_run that raised. The one not started is given back.
    assert (started_one.status, started_one.lease_owner) == ("running", "w1")
    assert (not_started.status, not_started.lease_owner, not_started.lease_expires_at) == ("pending", "", None)


def test_a_claim_is_sized_to_about_a_second_of_work() -> None:
    from pscsync.runner import Pace

    pace = Pace()
    assert pace.claim_size(10) == 1  # a new process knows nothing yet: it claims one and times it
    pace.record(0.25)
    assert pace.seconds == 0.25 and pace.claim_size(10) == 4  # 1 s / 0.25 s
    pace.record(0.75)  # a fifth of the way to the newest: 0.25 + 0.2 * 0.5 = 0.35
    assert pace.seconds == pytest.approx(0.35) and pace.claim_size(10) == 2  # 1 / 0.35 = 2.9
    pace.seconds = 0.01
    assert pace.claim_size(10) == 10  # quick handoffs: the ceiling (PSCSYNC_RUN_BATCH)
    pace.seconds = 4.5  # ten nine-step handoffs' worth at 50 ms a vendor call
    assert pace.claim_size(10) == 1


def test_two_workers_woken_together_both_get_work_when_handoffs_are_slow(echo_connection, echo, monkeypatch) -> None:
    """Four runnable handoffs taking half a second each: a worker claims two, so the second
    worker, woken by the same burst while the first runs its batch, finds the other two (one
    claim of all four would leave it nothing and the first running 2 s of work alone)."""
    from pscsync import runner

    ids = {receive(echo_connection, f"OPP-H{i}").pk for i in range(4)}
    paces = {"w1": runner.Pace(), "w2": runner.Pace()}
    for pace in paces.values():
        pace.seconds = 0.5
    ran_by: dict[str, list[int]] = {"w1": [], "w2": []}
    run_traced = runner._run_traced
    woken: list[int] = []

    def run(handoff, worker, steps=None, shared=None):
        if worker == "w1" and not woken:  # while w1 runs its first, w2's message arrives
            woken.append(runner.handoffs_claim_run(worker="w2", pace=paces["w2"]))
        ran_by[worker].append(handoff.pk)
        return run_traced(handoff, worker, steps, shared)

    monkeypatch.setattr(runner, "_run_traced", run)
    assert runner.handoffs_claim_run(worker="w1", pace=paces["w1"]) == 2
    assert woken == [2]
    assert len(ran_by["w1"]) == len(ran_by["w2"]) == 2 and set(ran_by["w1"]) | set(ran_by["w2"]) == ids
    assert set(Handoff.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"succeeded"}
    assert Attempt.objects.filter(outcome="succeeded").count() == 12  # 4 handoffs x 3 steps, each once
    assert all(count == 1 for count in echo.stats()["creates"].values()) and echo.stats()["updates"] == 0


def time_now() -> float:
    import time

    return time.monotonic()
