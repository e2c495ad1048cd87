"""The dashboards' aggregates kept incrementally (issue 18): each finished or moved handoff adds
its own delta to the daily, per-entity and hourly rollups, never re-reading the day. Checked two
ways: a small case worked out by hand (which checks the rebuild too), and a seeded mix of moves
(succeed, fail, retry, resolve, reopen, cancel, resubmit, amended values) driven through the
lifecycle and its listeners, after which the rollups must equal a full rebuild."""

from __future__ import annotations

import datetime as dt
import logging
import random
from decimal import Decimal
from typing import Any

import pytest

from dashboards.backlog import GROUP_FIELDS, backlog_repair
from dashboards.facts import handoff_finished, handoffs_finished, rollup_rebuild, rollups_rebuild_all
from dashboards.models import AttemptRollup, DailyRollup, DemandMonth, EntityDailyRollup, FlowFact, OpenBacklog
from pscsync import clock, lifecycle
from pscsync.lifecycle import handoff_move
from pscsync.models import Attempt, Handoff, Step
from tests.dashboards.builders import handoff

H = dt.timedelta(hours=1)
MON = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)  # a Monday; no US or UK holiday that week


@pytest.fixture(autouse=True)
def _now(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 12, 12, tzinfo=dt.UTC))


def _rows(model: Any, key: tuple[str, ...]) -> dict[tuple, dict[str, Any]]:
    """A rollup table as {group: every other value}, for comparing two states of it."""
    out = {}
    for row in model.objects.values():
        row.pop("id")
        group = tuple(row.pop(name) for name in key)
        assert group not in out, f"{model.__name__} holds group {group} twice"
        out[group] = row
    return out


DAILY = ("day", "flow", "legal_entity_id", "service_line", "connection_id", "currency")
BACKLOG = tuple(GROUP_FIELDS)


def snapshot() -> dict[str, dict]:
    facts = {}
    for fact in FlowFact.objects.values():
        for name in ("id", "handoff_id"):
            fact.pop(name)
        facts[(fact.pop("flow"), fact.pop("key"))] = fact
    return {
        "facts": facts,
        "daily": _rows(DailyRollup, DAILY),
        "entity": _rows(EntityDailyRollup, ("day", "flow", "legal_entity_id", "currency")),
        "attempts": _rows(AttemptRollup, ("hour", "flow", "step", "connection_id", "legal_entity_id")),
        "demand": _rows(DemandMonth, ("legal_entity_id", "service_line", "connection_id", "role", "month")),
    }


# A small case worked out by hand --------------------------------------------------------------
def _deal(
    crm: Any, entity: Any, key: str, closed: dt.datetime, activated: dt.datetime, amount: str, synced: int
) -> Handoff:
    """A won deal whose handoff started at the close and finished `synced` minutes later."""
    return handoff(
        flow="quote-to-project",
        conn=crm,
        entity=entity,
        key=key,
        started=closed,
        finished=closed + dt.timedelta(minutes=synced),
        times={"deal_closed": closed, "project_activated": activated},
        amount=amount,
    )


@pytest.mark.django_db
def test_two_deals_worked_by_hand_give_the_same_rows_incrementally_and_by_rebuild(crm, entities) -> None:
    us = entities["us"]
    # Deal A: closed Mon 09:00, project active Mon 15:00 -> 6 h, within 1 business day; its
    # handoff took 10 min (within the 15 min sync SLA). Deal B: closed Mon 10:00, active Wed 10:00
    # -> 48 h = 2 business days, late; its handoff took 20 min (late).
    a = _deal(crm, us, "OPP-A", MON + 9 * H, MON + 15 * H, "1000.00", synced=10)
    b = _deal(crm, us, "OPP-B", MON + 10 * H, MON + 2 * 24 * H + 10 * H, "2500.50", synced=20)
    handoff_finished(a.pk)
    handoff_finished(b.pk)
    monday, wednesday = MON.date(), (MON + 2 * 24 * H).date()
    group = ("quote-to-project", us.pk, "Advisory", crm.pk, "USD")
    expected = {
        (monday, *group): {
            "started": 2,  # A and B closed on Monday
            "started_amount": Decimal("3500.50"),  # 1000.00 + 2500.50
            "finished": 1,  # A activated Monday
            "finished_amount": Decimal("1000.00"),
            "measured": 1,
            "negative": 0,
            "within_sla": 1,  # 6 h of one business day
            "exceptions": 0,
            "exception_amount": Decimal("0.00"),
            "hist": {"6": 1},  # bucket (5, 6] h
            "extra_hist": {},
            "synced": 2,  # A's handoff finished Monday 09:10, B's 10:20
            "sync_within_sla": 1,  # A: 10 min <= 15 min; B: 20 min > 15
            "sync_hist": {"10": 1, "20": 1},  # buckets (5, 10] and (15, 20] min
        },
        (wednesday, *group): {
            "started": 0,
            "started_amount": Decimal("0.00"),
            "finished": 1,  # B activated Wednesday
            "finished_amount": Decimal("2500.50"),
            "measured": 1,
            "negative": 0,
            "within_sla": 0,  # 2 business days > 1
            "exceptions": 0,
            "exception_amount": Decimal("0.00"),
            "hist": {"48": 1},  # bucket (47, 48] h
            "extra_hist": {},
            "synced": 0,
            "sync_within_sla": 0,
            "sync_hist": {},
        },
    }
    assert _rows(DailyRollup, DAILY) == expected
    entity_rows = _rows(EntityDailyRollup, ("day", "flow", "legal_entity_id", "currency"))
    assert entity_rows[(monday, "quote-to-project", us.pk, "USD")]["started_amount"] == Decimal("3500.50")
    assert entity_rows[(wednesday, "quote-to-project", us.pk, "USD")]["hist"] == {"48": 1}

    # The reference path, on its own, from the facts: the same rows.
    DailyRollup.objects.all().delete()
    EntityDailyRollup.objects.all().delete()
    rollup_rebuild("quote-to-project", [monday, wednesday])
    assert _rows(DailyRollup, DAILY) == expected

    # Deal B amended: re-closed Tuesday 09:00 at 3000.00, project (still) active Wednesday 10:00
    # -> B leaves Monday's started (1 left: A, 1000.00) and is started on Tuesday; its latency is
    # now 25 h = 1.04 business days (Tue 09:00 -> Wed 10:00), still late, bucket (24, 25].
    tuesday = (MON + 24 * H).date()
    b2 = handoff(
        flow="quote-to-project",
        conn=crm,
        entity=us,
        key="OPP-B",
        started=MON + 24 * H + 9 * H,
        finished=MON + 24 * H + 9 * H + dt.timedelta(minutes=5),
        times={"deal_closed": MON + 24 * H + 9 * H, "project_activated": MON + 2 * 24 * H + 10 * H},
        amount="3000.00",
    )
    handoff_finished(b2.pk)
    rows = _rows(DailyRollup, DAILY)
    assert rows[(monday, *group)]["started"] == 1
    assert rows[(monday, *group)]["started_amount"] == Decimal("1000.00")
    assert rows[(tuesday, *group)]["started"] == 1
    assert rows[(tuesday, *group)]["started_amount"] == Decimal("3000.00")
    # B's last handoff (b2) synced on Tuesday in 5 min: Monday keeps only A's sync.
    assert rows[(tuesday, *group)]["sync_hist"] == {"5": 1}
    assert rows[(monday, *group)]["sync_hist"] == {"10": 1}
    assert rows[(wednesday, *group)]["hist"] == {"25": 1}
    assert rows[(wednesday, *group)]["finished_amount"] == Decimal("3000.00")
    assert rows[(wednesday, *group)]["within_sla"] == 0
    before = snapshot()
    rollups_rebuild_all()
    assert snapshot() == before


@pytest.mark.django_db
def test_an_item_moved_off_a_day_leaves_no_empty_row_behind(crm, entities) -> None:
    us = entities["us"]
    a = _deal(crm, us, "OPP-MOVE", MON + 9 * H, MON + 15 * H, "100.00", synced=3)
    handoff_finished(a.pk)
    assert DailyRollup.objects.filter(day=MON.date()).count() == 1
    # Re-closed on Thursday and activated then: Monday no longer counts it at all.
    thursday = MON + 3 * 24 * H
    b = _deal(crm, us, "OPP-MOVE", thursday + 9 * H, thursday + 11 * H, "100.00", synced=3)
    handoff_finished(b.pk)
    assert not DailyRollup.objects.filter(day=MON.date()).exists()
    assert not EntityDailyRollup.objects.filter(day=MON.date()).exists()
    (row,) = DailyRollup.objects.all()
    assert (row.day, row.started, row.finished, row.hist) == (thursday.date(), 1, 1, {"2": 1})


@pytest.mark.django_db
def test_refreshing_the_same_handoff_again_changes_nothing(crm, entities) -> None:
    a = _deal(crm, entities["uk"], "OPP-TWICE", MON + 9 * H, MON + 12 * H, "10.00", synced=1)
    handoff_finished(a.pk)
    once = snapshot()
    handoff_finished(a.pk)
    handoff_finished(a.pk)
    assert snapshot() == once


@pytest.mark.django_db
def test_rollups_that_drifted_from_the_facts_are_rebuilt_not_driven_below_zero(crm, entities, caplog) -> None:
    a = _deal(crm, entities["us"], "OPP-DRIFT", MON + 9 * H, MON + 12 * H, "10.00", synced=1)
    handoff_finished(a.pk)
    # A bulk load (or a hand edit) empties the rollups behind the facts' back.
    DailyRollup.objects.all().delete()
    EntityDailyRollup.objects.all().delete()
    b = _deal(crm, entities["us"], "OPP-DRIFT", MON + 24 * H + 9 * H, MON + 24 * H + 12 * H, "20.00", synced=1)
    with caplog.at_level(logging.WARNING, logger="dashboards.facts"):
        handoff_finished(b.pk)
    assert "disagreed with the facts" in caplog.text
    (row,) = DailyRollup.objects.all()
    assert (row.day, row.started, row.started_amount) == ((MON + 24 * H).date(), 1, Decimal("20.00"))


# A realistic mix of moves, through the lifecycle ------------------------------------------------
FLOWS = ["quote-to-project", "project-to-bill", "bill-to-cash", "contract-change", "pipeline-to-demand"]
PATHS = ["succeed", "fail", "retry", "resolve", "reopen", "cancel", "amend", "resubmit"]


class Day:
    """Drives handoffs through the lifecycle; every move's listeners run as after a commit."""

    def __init__(self, crm: Any, entities: dict, capture: Any, rng: random.Random) -> None:
        self.crm, self.capture, self.rng = crm, capture, rng
        self.entities = [entities["us"], entities["uk"], None]
        self.currencies = ["USD", "GBP", "EUR"]

    def move(self, h: Handoff, frm: str, to: str, **fields: Any) -> None:
        with self.capture(execute=True):
            assert handoff_move(h, from_states=[frm], to=to, actor="test", fields=fields) is not None

    def attempt(self, h: Handoff, at: dt.datetime, outcome: str, **kw: Any) -> None:
        target = self.crm if kw.pop("target", True) else None
        step, _ = Step.objects.get_or_create(
            handoff=h,
            name="write",
            defaults={
                "position": 99,
                "status": "succeeded",
                "idempotency_key": f"{h.pk}-w",
                "target_connection": target,
            },
        )
        number = Attempt.objects.filter(step=step).count() + 1
        Attempt.objects.create(
            step=step, number=number, started_at=at, outcome=outcome, duration_ms=self.rng.randint(20, 4000), **kw
        )

    def open(self, flow: str, key: str, i: int, start: dt.datetime, amount: Decimal, paid: bool = False) -> Handoff:
        """A running handoff of `flow` for item `key`, with its source's business times so far."""
        times: dict[str, Any] = {}
        outputs: dict[str, dict] = {}
        if flow == "quote-to-project":
            times = {"deal_closed": start}
        elif flow == "project-to-bill":
            times = {"time_approved": start - 5 * H, "billing_released": start}
        elif flow == "bill-to-cash":
            remaining = "0" if paid else str(amount)
            times = {"payment_applied": start} if paid else {"invoice_posted": start}
            invoice = {"id": key, "total": str(amount), "remaining": remaining, "currency": self.currencies[i % 3]}
            outputs = {"read_invoice": {"invoice": invoice}}
        elif flow == "pipeline-to-demand":
            deal = {"probability": 40 + i % 50, "contract_start": "2026-11-01", "contract_end": "2027-01-31"}
            outputs = {"read_deal": {"deal": {**deal, "stage": "Proposal", "is_closed": False}}}
        with self.capture(execute=True):
            h = handoff(
                flow=flow,
                conn=self.crm,
                entity=self.entities[i % 3],
                key=key,
                status="running",
                started=start,
                finished=None,
                times=times,
                amount=amount,
                currency=self.currencies[i % 3],
                service_line=["Advisory", "Delivery"][i % 2],
                customer=f"Customer {i % 4}",
                outputs=outputs,
            )
        self.attempt(h, start + dt.timedelta(minutes=1), "succeeded", target=i % 4 != 0)
        return h

    def succeed(self, h: Handoff, at: dt.datetime) -> None:
        times = dict(h.business_times)
        if h.flow == "quote-to-project":
            times["project_activated"] = at.isoformat()
        elif h.flow == "project-to-bill":
            times["invoice_created"] = at.isoformat()
        self.attempt(h, at, "succeeded")
        self.move(h, "running", "succeeded", business_times=times, business_finished_at=at, finished_at=at)

    def fail(self, h: Handoff, at: dt.datetime) -> None:
        self.attempt(h, at, "rejected", http_status=400)
        self.move(h, "running", "needs_attention", finished_at=at)


def _play(day: Day, i: int, path: str) -> None:
    rng = day.rng
    flow = FLOWS[i % len(FLOWS)]
    key = f"{flow[:3].upper()}-{i}"
    start = MON + rng.randint(0, 4 * 24) * H + rng.randint(0, 59) * dt.timedelta(minutes=1)
    amount = Decimal(rng.randint(10_000, 900_000)) / 100
    h = day.open(flow, key, i, start, amount)
    later = start + rng.randint(1, 60) * H
    if path == "succeed":
        day.succeed(h, later)
    elif path == "retry":
        day.attempt(h, start + H, "transient", http_status=429, retry_after_seconds=30)
        day.move(h, "running", "waiting_retry", attempt_count=1)
        day.move(h, "waiting_retry", "running")
        day.succeed(h, later)
    elif path in ("fail", "resolve", "reopen", "cancel", "resubmit"):
        day.fail(h, later)
        if path == "resolve":
            day.move(h, "needs_attention", "resolved", finished_at=later + H)
        elif path == "reopen":
            day.move(h, "needs_attention", "resolved", finished_at=later + H)
            day.move(h, "resolved", "needs_attention")
        elif path == "cancel":
            day.move(h, "needs_attention", "cancelled", finished_at=later + H)
        elif path == "resubmit":
            day.move(h, "needs_attention", "pending")
            if i % 2:  # half run to success; the other half wait in the queue at the end
                day.move(h, "pending", "running")
                day.succeed(h, later + 2 * H)
    elif path == "amend":
        # The first change finishes, then an amended one for the same item: a new value (a
        # bill-to-cash payment clearing the invoice), later times, so the item moves between days.
        day.succeed(h, later)
        again = start + rng.randint(1, 48) * H
        amended = amount + Decimal(rng.randint(-5000, 5000)) / 100
        h2 = day.open(flow, key, i, again, amended, paid=True)
        day.succeed(h2, again + rng.randint(1, 30) * H)


@pytest.mark.django_db
def test_a_day_of_mixed_moves_leaves_the_rollups_equal_to_a_full_rebuild(
    crm,
    entities,
    django_capture_on_commit_callbacks,
    caplog,
) -> None:
    rng = random.Random(18)
    day = Day(crm, entities, django_capture_on_commit_callbacks, rng)
    with caplog.at_level(logging.WARNING, logger="dashboards.facts"):
        for i in range(80):
            _play(day, i, PATHS[i % len(PATHS)] if i < 40 else rng.choice(PATHS))
    # The listener never failed (it would log and go on) and no delta had to fall back on a rebuild.
    assert not [r.getMessage() for r in caplog.records if r.name == "dashboards.facts"]
    kept = snapshot()
    # The mix really moved items between days and emptied some groups: a rebuild has to agree
    # with deltas that went both ways, across every flow, entity (and none), and currency.
    assert {flow for flow, _key in kept["facts"]} == set(FLOWS)
    assert {g[2] for g in kept["daily"]} == {entities["us"].pk, entities["uk"].pk, None}
    assert sum(r["exceptions"] for r in kept["daily"].values()) > 0
    assert sum(r["attempts"] for r in kept["attempts"].values()) > 80
    assert any(g[3] is None for g in kept["attempts"])  # attempts with no target connection
    assert kept["demand"]

    rollups_rebuild_all()
    rebuilt = snapshot()
    assert rebuilt["facts"] == kept["facts"]
    assert rebuilt["daily"] == kept["daily"]
    assert rebuilt["entity"] == kept["entity"]
    assert rebuilt["attempts"] == kept["attempts"]
    assert rebuilt["demand"] == kept["demand"]


# Told as a worker's batch (issue 18): the listeners' set-based path --------------------------------
@pytest.mark.django_db
def test_mixed_moves_told_in_worker_batches_leave_facts_rollups_and_backlog_equal_to_a_full_rebuild(
    crm,
    entities,
    django_capture_on_commit_callbacks,
    caplog,
) -> None:
    """The same mix, told as a worker's batch is (lifecycle.moves_batched: each listener once with
    the batch's moves): facts refreshed for the batch at once, the items' rollup deltas merged per
    group, the attempts' hourly counts added together, the backlog synced together. Within a
    batch an item moves several times (opened, failed, resolved; an amended second handoff of
    the same item) and different items share rollup groups."""
    rng = random.Random(1818)
    day = Day(crm, entities, django_capture_on_commit_callbacks, rng)
    sizes = []
    with caplog.at_level(logging.WARNING, logger="dashboards"):
        for start in range(0, 48, 6):
            with lifecycle.moves_batched() as moves:
                for i in range(start, start + 6):
                    _play(day, i, PATHS[i % len(PATHS)] if i < 40 else rng.choice(PATHS))
            sizes.append(len(moves))
        # A batch opens handoffs of the followed flows and leaves them running: open, not
        # needing a person.
        with lifecycle.moves_batched():
            running = [
                day.open(flow, f"OPEN-{i}", i, MON + (5 + 30 * i) * H, Decimal("250.00"))
                for i, flow in enumerate(("quote-to-project", "project-to-bill", "quote-to-project"))
            ]
    # Nothing failed (it would log and go on) and no merged delta had to fall back on a rebuild.
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("dashboards")]
    assert min(sizes) >= 12  # every batch told many moves at once
    kept = snapshot()
    assert {flow for flow, _key in kept["facts"]} == set(FLOWS)
    assert len({g[0] for g in kept["daily"]}) >= 2  # across days
    assert sum(r["exceptions"] for r in kept["daily"].values()) > 0
    statuses = set(Handoff.objects.values_list("status", flat=True))
    assert {"succeeded", "needs_attention", "resolved", "cancelled"} <= statuses
    backlog = _backlog()
    assert any(g[1] for g in backlog) and any(not g[1] for g in backlog)  # needs a person, and not
    # The backlog's repair finds nothing to put right.
    repaired = backlog_repair()
    assert (repaired["resynced"], repaired["groups_fixed"]) == (0, 0)

    # A last batch finishes the running ones (out of the backlog), so no handoff is mid-run and
    # the facts and rollups must equal a full rebuild, and the backlog what the rebuild makes of it.
    with caplog.at_level(logging.WARNING, logger="dashboards"), lifecycle.moves_batched():
        for h in running:
            day.succeed(h, MON + 80 * H)
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("dashboards")]
    kept = snapshot()
    backlog = _backlog()
    assert backlog and all(g[1] for g in backlog)  # only those needing a person are left
    rollups_rebuild_all()
    rebuilt = snapshot()
    assert rebuilt["facts"] == kept["facts"]
    assert rebuilt["daily"] == kept["daily"]
    assert rebuilt["entity"] == kept["entity"]
    assert rebuilt["attempts"] == kept["attempts"]
    assert rebuilt["demand"] == kept["demand"]
    assert _backlog() == backlog


def _backlog() -> dict[tuple, dict[str, Any]]:
    """The open backlog's groups that hold something (a group emptied by a move keeps its row at
    0 until the repair drops it; a rebuild does not write it)."""
    return {group: row for group, row in _rows(OpenBacklog, BACKLOG).items() if row["items"]}


@pytest.mark.django_db
def test_a_batch_of_finished_handoffs_is_refreshed_in_a_few_statements(
    crm, entities, django_assert_max_num_queries
) -> None:
    """Ten items of two flows on two days, finished together: their facts and rollups, then their
    attempts, in a number of statements that does not grow with the batch (one by one: about 15
    each). The figures are the ones worked by hand above: each item started and finished once."""
    deals = [
        _deal(crm, entities["us"], f"OPP-BATCH-{i}", MON + (9 + i) * H, MON + (30 + i) * H, "100.00", synced=2)
        for i in range(5)
    ]
    changes = [
        handoff(
            flow="contract-change",
            conn=crm,
            entity=entities["uk"],
            key=f"AMD-BATCH-{i}",
            started=MON + 24 * H + i * H,
            finished=MON + 26 * H + i * H,
            currency="GBP",
            attempts=[{"at": MON + 25 * H, "outcome": "succeeded", "ms": 120}],
        )
        for i in range(5)
    ]
    with django_assert_max_num_queries(20):
        handoffs_finished([h.pk for h in deals + changes])
    monday, tuesday = MON.date(), (MON + 24 * H).date()
    started = dict(DailyRollup.objects.filter(started__gt=0).values_list("flow", "started"))
    assert started == {"quote-to-project": 5, "contract-change": 5}
    assert set(DailyRollup.objects.values_list("day", flat=True)) == {monday, tuesday}
    assert sum(AttemptRollup.objects.values_list("attempts", flat=True)) == 5
    before = snapshot()
    rollups_rebuild_all()
    assert snapshot() == before


@pytest.mark.django_db
def test_a_batch_whose_rollups_drifted_is_refreshed_one_by_one_and_its_days_rebuilt(crm, entities, caplog) -> None:
    a = _deal(crm, entities["us"], "OPP-BDRIFT", MON + 9 * H, MON + 12 * H, "10.00", synced=1)
    handoffs_finished([a.pk])
    DailyRollup.objects.all().delete()  # a bulk load empties the rollups behind the facts' back
    EntityDailyRollup.objects.all().delete()
    b = _deal(crm, entities["us"], "OPP-BDRIFT", MON + 33 * H, MON + 36 * H, "20.00", synced=1)
    c = _deal(crm, entities["uk"], "OPP-BOTHER", MON + 9 * H, MON + 12 * H, "5.00", synced=1)
    with caplog.at_level(logging.WARNING, logger="dashboards.facts"):
        handoffs_finished([b.pk, c.pk])
    assert "refreshing it one by one" in caplog.text and "disagreed with the facts" in caplog.text
    before = snapshot()
    rollups_rebuild_all()
    assert snapshot() == before
    assert DailyRollup.objects.get(day=(MON + 24 * H).date()).started_amount == Decimal("20.00")
