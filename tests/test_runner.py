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
