"""One lifecycle (DESIGN.md rule 9): every status change goes through pscsync.lifecycle.handoff_move,
which checks the transitions table, writes the history row in the mover's transaction and tells the
listeners (workbench, dashboards) after commit; anything else that writes a status is refused."""

from __future__ import annotations

import ast
import datetime as dt
import logging
from pathlib import Path

import pytest
from django.db import transaction
from django.urls import reverse

from dashboards import metrics
from dashboards.backlog import backlog_repair
from dashboards.facts import rollups_catch_up
from pscsync import lifecycle
from pscsync.intake import event_receive
from pscsync.lifecycle import TransitionNotAllowed, handoff_move
from pscsync.models import Handoff, HandoffTransition, StatusWriteRefused
from pscsync.runner import handoff_run
from remediation.models import ExceptionStatus, HandoffException
from remediation.services import exceptions_reconcile, handoff_reopen, handoff_resolve, handoff_resubmit
from tests.helpers import change_body, moves_told

ROOT = Path(__file__).resolve().parent.parent
# Where production code lives (tests, the bench's loaders and migrations are not moves).
SOURCE_PACKAGES = ("pscsync", "remediation", "dashboards", "api", "alerts", "connectors", "studio", "accounts", "demo")


@pytest.fixture(autouse=True)
def no_broker(monkeypatch) -> None:
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)


def receive(connection, key: str, version: int = 1) -> Handoff:
    from connectors.registry import connector_for

    body = change_body(key, version)
    [change] = connector_for(connection).parse_webhook(event_id=f"{key}-v{version}", body=body)
    return event_receive(connection=connection, change=change, headers={}, raw_body=body.decode()).handoff


def history(handoff: Handoff) -> list[tuple[str, str]]:
    return list(HandoffTransition.objects.filter(handoff=handoff).values_list("from_status", "to_status"))


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def test_the_transitions_table_names_every_status_and_only_known_ones() -> None:
    statuses = set(Handoff.Status.values)
    assert set(Handoff.TRANSITIONS) == statuses
    assert all(targets <= statuses for targets in Handoff.TRANSITIONS.values())
    # Reopen (a person resolved or cancelled by mistake) and resubmit are moves; a success is final.
    assert "needs_attention" in Handoff.TRANSITIONS["resolved"] & Handoff.TRANSITIONS["cancelled"]
    assert "pending" in Handoff.TRANSITIONS["needs_attention"]
    assert Handoff.TRANSITIONS["succeeded"] == frozenset()


@pytest.mark.django_db
def test_a_move_the_table_does_not_allow_raises_and_writes_nothing(echo_connection) -> None:
    handoff = receive(echo_connection, "L-1")
    with pytest.raises(TransitionNotAllowed):
        handoff_move(handoff, from_states=["pending"], to="resolved", actor="test")
    # One bad from-state in the list is enough: the caller's expectations are wrong.
    with pytest.raises(TransitionNotAllowed):
        handoff_move(handoff, from_states=["pending", "succeeded"], to="running", actor="test")
    handoff.refresh_from_db()
    assert handoff.status == "pending" and history(handoff) == [("", "pending")]


# ---------------------------------------------------------------------------------------------
# One move: conditional, recorded in its transaction, told after commit
# ---------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_move_is_recorded_in_its_transaction_and_told_after_commit(
    echo_connection,
    operator,
    django_capture_on_commit_callbacks,
) -> None:
    told: list[lifecycle.Move] = []
    lifecycle.listener_add("test.recorder", told.append)
    try:
        handoff = receive(echo_connection, "L-2")
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            move = handoff_move(
                handoff,
                from_states=["pending"],
                to="needs_attention",
                actor=operator,
                reason="the customer has no tax profile",
                step="upsert_customer",
                fields={"last_error_class": "validation"},
            )
        assert move is not None and move.from_status == "pending" and move.to_status == "needs_attention"
        row = HandoffTransition.objects.get(handoff=handoff, to_status="needs_attention")
        assert (row.from_status, row.user, row.actor, row.reason, row.step) == (
            "pending",
            operator,
            operator.get_username(),
            "the customer has no tax profile",
            "upsert_customer",
        )
        # The instance follows the move; the listeners have heard nothing before the commit.
        assert handoff.status == "needs_attention" and handoff.last_error_class == "validation"
        assert told == []
        for callback in callbacks:
            callback()
        assert [(m.handoff_id, m.from_status, m.to_status, m.fields) for m in told] == [
            (handoff.pk, "pending", "needs_attention", frozenset({"last_error_class"}))
        ]
    finally:
        lifecycle.listener_remove("test.recorder")


# ---------------------------------------------------------------------------------------------
# Batches: a worker's batch tells the listeners once, at its end
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def only_test_listeners(monkeypatch) -> None:
    """The registry emptied for the test (the dashboards' and workbench's listeners out of it)."""
    monkeypatch.setattr(lifecycle, "_listeners", {})


def _moved(handoff: Handoff, to: str, callbacks_capture) -> None:
    """A move committed as the runner commits it: its after-commit callbacks run at the block's end."""
    with callbacks_capture(execute=True):
        assert handoff_move(handoff, from_states=[handoff.status], to=to, actor="w1") is not None


@pytest.mark.django_db
def test_inside_a_batch_the_moves_are_told_once_at_its_end_in_commit_order(
    echo_connection, only_test_listeners, django_capture_on_commit_callbacks
) -> None:
    first, second = receive(echo_connection, "L-B1"), receive(echo_connection, "L-B2")
    lists: list[list[tuple[int, str]]] = []
    singles: list[tuple[int, str]] = []
    lifecycle.listener_add(
        "test.batch", lambda moves: lists.append([(m.handoff_id, m.to_status) for m in moves]), batch=True
    )
    lifecycle.listener_add("test.single", lambda move: singles.append((move.handoff_id, move.to_status)))
    with lifecycle.moves_batched() as collected:
        _moved(first, "running", django_capture_on_commit_callbacks)
        _moved(second, "running", django_capture_on_commit_callbacks)
        _moved(first, "succeeded", django_capture_on_commit_callbacks)
        # Committed, but nobody told yet: they wait for the batch's end.
        assert lists == [] and singles == [] and len(collected) == 3
    expected = [(first.pk, "running"), (second.pk, "running"), (first.pk, "succeeded")]
    assert lists == [expected]  # one call with the list
    assert singles == expected  # a plain listener still hears one move a call


@pytest.mark.django_db
def test_outside_a_batch_each_move_is_told_at_its_commit_batch_listeners_with_a_list_of_one(
    echo_connection, only_test_listeners, django_capture_on_commit_callbacks
) -> None:
    handoff = receive(echo_connection, "L-B3")
    lists: list[list[int]] = []
    lifecycle.listener_add("test.batch", lambda moves: lists.append([m.handoff_id for m in moves]), batch=True)
    _moved(handoff, "running", django_capture_on_commit_callbacks)
    assert lists == [[handoff.pk]]
    _moved(handoff, "succeeded", django_capture_on_commit_callbacks)
    assert lists == [[handoff.pk], [handoff.pk]]


@pytest.mark.django_db
def test_a_nested_batch_leaves_the_telling_to_the_outer_one(
    echo_connection, only_test_listeners, django_capture_on_commit_callbacks
) -> None:
    handoff = receive(echo_connection, "L-B4")
    lists: list[int] = []
    lifecycle.listener_add("test.batch", lambda moves: lists.append(len(moves)), batch=True)
    with lifecycle.moves_batched():
        with lifecycle.moves_batched():
            _moved(handoff, "running", django_capture_on_commit_callbacks)
        assert lists == []
        _moved(handoff, "succeeded", django_capture_on_commit_callbacks)
    assert lists == [2]


@pytest.mark.django_db
def test_a_batch_block_that_raises_still_tells_what_it_committed(
    echo_connection, only_test_listeners, django_capture_on_commit_callbacks
) -> None:
    handoff = receive(echo_connection, "L-B5")
    lists: list[list[str]] = []
    lifecycle.listener_add("test.batch", lambda moves: lists.append([m.to_status for m in moves]), batch=True)
    with pytest.raises(RuntimeError), lifecycle.moves_batched():
        _moved(handoff, "running", django_capture_on_commit_callbacks)
        raise RuntimeError("the next handoff's run failed")
    assert lists == [["running"]]


@pytest.mark.django_db
def test_a_failing_listener_is_logged_and_the_others_still_hear_every_move(
    echo_connection, only_test_listeners, django_capture_on_commit_callbacks, caplog
) -> None:
    first, second = receive(echo_connection, "L-B6"), receive(echo_connection, "L-B7")
    heard: list[tuple[str, int]] = []

    def batch_broken(moves: list[lifecycle.Move]) -> None:
        raise RuntimeError("the rollups' database is away")

    def single_broken_once(move: lifecycle.Move) -> None:
        if move.handoff_id == first.pk:
            raise RuntimeError("this one move")
        heard.append(("single_broken_once", move.handoff_id))

    lifecycle.listener_add("test.batch_broken", batch_broken, batch=True)
    lifecycle.listener_add("test.single_broken_once", single_broken_once)
    lifecycle.listener_add(
        "test.batch_ok", lambda moves: heard.extend(("batch_ok", m.handoff_id) for m in moves), batch=True
    )
    with caplog.at_level(logging.ERROR, logger="pscsync.lifecycle"), lifecycle.moves_batched():
        _moved(first, "running", django_capture_on_commit_callbacks)
        _moved(second, "running", django_capture_on_commit_callbacks)
    # The failing plain listener still heard the next move, and the listener registered after
    # both failing ones heard the whole batch.
    assert heard == [("single_broken_once", second.pk), ("batch_ok", first.pk), ("batch_ok", second.pk)]
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert failures == [
        f"lifecycle listener test.batch_broken failed on handoffs {first.pk}, {second.pk}; its repair job will",
        f"lifecycle listener test.single_broken_once failed on handoff {first.pk}; its repair job will",
    ]


@pytest.mark.django_db
def test_a_rolled_back_move_leaves_no_history_and_tells_nobody(
    echo_connection,
    django_capture_on_commit_callbacks,
) -> None:
    handoff = receive(echo_connection, "L-3")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            handoff_move(handoff, from_states=["pending"], to="running", actor="w1")
            raise RuntimeError("the worker died before its commit")
    assert Handoff.objects.get(pk=handoff.pk).status == "pending"
    assert history(handoff) == [("", "pending")]
    # The callback registered inside the rolled-back block is dropped by Django with it.
    assert len(callbacks) == 0


@pytest.mark.django_db
def test_a_move_that_finds_the_handoff_elsewhere_changes_nothing_and_says_so(echo_connection) -> None:
    handoff = receive(echo_connection, "L-4")
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "succeeded"
    stale = Handoff.objects.get(pk=handoff.pk)
    # A second worker that thinks it still holds the lease, and an operator acting on an old page.
    assert handoff_move(stale, from_states=["running"], to="waiting_retry", actor="w2") is None
    assert handoff_move(stale.pk, from_states=["needs_attention"], to="resolved", actor="otto") is None
    assert Handoff.objects.get(pk=handoff.pk).status == "succeeded"
    assert history(handoff) == [("", "pending"), ("pending", "running"), ("running", "succeeded")]


@pytest.mark.django_db
def test_a_status_written_around_the_lifecycle_is_refused(echo_connection) -> None:
    handoff = receive(echo_connection, "L-5")
    with pytest.raises(StatusWriteRefused):
        Handoff.objects.filter(pk=handoff.pk).update(status="running")
    handoff.status = "running"
    with pytest.raises(StatusWriteRefused):
        handoff.save()
    with pytest.raises(StatusWriteRefused):
        Handoff.objects.bulk_update([handoff], ["status"])
    # Other fields are written as ever; the status as loaded may be saved again.
    handoff.refresh_from_db()
    handoff.customer_name = "Contoso"
    handoff.save()
    Handoff.objects.filter(pk=handoff.pk).update(superseded_count=1)
    assert Handoff.objects.get(pk=handoff.pk).status == "pending"


def _direct_status_writes(path: Path) -> list[str]:
    """Status writes of a handoff that do not go through the lifecycle, as read from the source:
    a queryset update/bulk_update on Handoff naming `status` (or passing **fields, which may hold
    it), and an assignment to `<something handoff>.status`."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value)
            if node.func.attr in ("update", "bulk_update") and "Handoff." in receiver:
                names = {k.arg for k in node.keywords}
                if "status" in names or None in names or node.func.attr == "bulk_update":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:100]}")
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "status"
                    and "handoff" in ast.unparse(target.value).lower()
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


# The two known writes of other Handoff fields with **fields (no status among them, checked by the
# run-time guard whenever they run): the runner's business facts.
ALLOWED_OUTSIDE = {"pscsync/runner.py: Handoff.objects.filter(pk=handoff.pk).update(**fields)"}


def test_no_code_writes_a_status_outside_the_lifecycle() -> None:
    found = []
    for package in SOURCE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts or "sandboxes" in path.parts or path == ROOT / "pscsync/lifecycle.py":
                continue
            found += _direct_status_writes(path)
    unexpected = [f for f in found if f"{f.split(':')[0]}: {f.split(': ', 1)[1]}" not in ALLOWED_OUTSIDE]
    assert unexpected == [], "change a handoff's status with pscsync.lifecycle.handoff_move"
    # The scan does see such writes: the tests' own helper that forces a status is one.
    assert _direct_status_writes(ROOT / "tests/helpers.py")


# ---------------------------------------------------------------------------------------------
# The whole path: every move recorded; the listeners keep the workbench and dashboards current
# ---------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_every_move_of_a_failure_resubmit_resolve_and_reopen_is_in_the_history(
    echo_connection,
    echo,
    operator,
) -> None:
    handoff = receive(echo_connection, "L-6")
    echo.fault(mode="status", status=422, match="/customer/", count=1)
    with moves_told():
        assert handoff_run(handoff_id=handoff.pk, worker="w1") == "needs_attention"
    handoff.refresh_from_db()
    assert HandoffException.objects.get(handoff=handoff).status == ExceptionStatus.OPEN
    with moves_told():
        handoff_resubmit(actor=operator, handoff=handoff, mode="stored", reason="fixed the customer")
        assert handoff_run(handoff_id=handoff.pk, worker="w2") == "succeeded"
    assert HandoffException.objects.get(handoff=handoff).status == ExceptionStatus.RESOLVED
    assert history(handoff) == [
        ("", "pending"),
        ("pending", "running"),
        ("running", "needs_attention"),
        ("needs_attention", "pending"),
        ("pending", "running"),
        ("running", "succeeded"),
    ]
    failed = HandoffTransition.objects.get(handoff=handoff, to_status="needs_attention")
    assert failed.actor == "w1" and failed.step == "upsert_customer" and "upsert_customer" in failed.reason
    resubmitted = HandoffTransition.objects.get(handoff=handoff, from_status="needs_attention")
    assert resubmitted.user == operator and resubmitted.reason == "fixed the customer"

    other = receive(echo_connection, "L-7")
    echo.fault(mode="status", status=422, match="/customer/", count=1)
    with moves_told():
        handoff_run(handoff_id=other.pk, worker="w1")
        other.refresh_from_db()
        handoff_resolve(actor=operator, handoff=other, reason="fixed by hand in the ERP")
        handoff_reopen(actor=operator, handoff=other, reason="resolved by mistake")
    assert history(other)[-2:] == [("needs_attention", "resolved"), ("resolved", "needs_attention")]
    assert HandoffException.objects.get(handoff=other).status == ExceptionStatus.OPEN


@pytest.mark.django_db(transaction=True)
def test_an_operators_resolve_reaches_the_dashboards_backlog_at_once(
    client,
    echo_connection,
    echo,
    operator,
) -> None:
    """Real commits (no test transaction): the listeners run after the view's commit, inside the
    same request, so the backlog the overview reads is right before any repair job runs."""
    today = dt.date.today()
    window = metrics.Filters(start=today - dt.timedelta(days=30), end=today + dt.timedelta(days=1))
    handoff = receive(echo_connection, "L-8")
    echo.fault(mode="status", status=422, match="/customer/", count=1)
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "needs_attention"
    assert metrics.open_exceptions(window)["by_flow"] == {"echo": 1}

    client.force_login(operator)
    answer = client.post(
        reverse("remediation:handoff_act", args=[handoff.pk]), {"action": "resolve", "reason": "paid by cheque"}
    )
    assert answer.status_code == 302
    assert Handoff.objects.get(pk=handoff.pk).status == "resolved"
    # No repair job has run: the resolve's listener took it out of the backlog and the workbench.
    assert metrics.open_exceptions(window)["count"] == 0
    assert HandoffException.objects.get(handoff=handoff).status == ExceptionStatus.RESOLVED


@pytest.mark.django_db(transaction=True)
def test_after_a_run_of_moves_the_repair_beats_find_nothing_to_repair(
    echo_connection,
    echo,
    operator,
    caplog,
) -> None:
    """The repair beats are a safety net: when every move went through the lifecycle and its
    listeners ran, they count 0 (the metric to watch), and they still catch a write around it."""
    handoffs = [receive(echo_connection, f"L-9-{n}") for n in range(6)]
    echo.fault(mode="status", status=422, match="/customer/", count=3)
    outcomes = [handoff_run(handoff_id=h.pk, worker="w1") for h in handoffs]
    assert sorted(outcomes) == ["needs_attention"] * 3 + ["succeeded"] * 3
    stuck = [h for h, o in zip(handoffs, outcomes, strict=True) if o == "needs_attention"]
    handoff_resolve(actor=operator, handoff=Handoff.objects.get(pk=stuck[0].pk), reason="settled by hand")
    handoff_resubmit(actor=operator, handoff=Handoff.objects.get(pk=stuck[1].pk), mode="stored", reason="try again")
    assert handoff_run(handoff_id=stuck[1].pk, worker="w2") == "succeeded"

    with caplog.at_level(logging.INFO, logger="pscsync.lifecycle.repairs"):
        result = backlog_repair()
        exceptions_reconcile()
        rollups_catch_up()
    assert (result["resynced"], result["groups_fixed"]) == (0, 0)
    notes = [r.getMessage() for r in caplog.records if r.name == "pscsync.lifecycle.repairs"]
    assert len(notes) == 3 and all("found nothing to put right" in n for n in notes), notes

    # A status written around the lifecycle (a defect, a bulk load): the beats put it right and say so.
    from tests.helpers import status_force

    status_force(stuck[2].pk, Handoff.Status.CANCELLED)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pscsync.lifecycle.repairs"):
        assert backlog_repair()["resynced"] == 1
        exceptions_reconcile()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "lifecycle repair: open backlog put right 1 handoff(s) its listener had missed",
        "lifecycle repair: workbench exceptions put right 1 handoff(s) its listener had missed",
    ]
