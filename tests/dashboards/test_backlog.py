"""The open backlog the overview reads (won deals not activated, billing released not invoiced,
handoffs needing a person) is kept as handoffs change, agrees with the open handoffs themselves,
and is put right by the repair job when an update was missed."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import connection as db_connection

from dashboards import metrics
from dashboards.backlog import backlog_rebuild, backlog_repair, backlog_sync, backlog_unchanged
from dashboards.models import FxRate, OpenBacklog, OpenItem
from pscsync import clock
from pscsync.lifecycle import handoff_move
from pscsync.models import Handoff
from tests.dashboards.builders import handoff
from tests.helpers import status_force

NOW = dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC)
OCT = metrics.Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31))


@pytest.fixture(autouse=True)
def _now(monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: NOW)


def released_batch(crm, entity, released: dt.datetime, **kw):
    return handoff(
        flow="project-to-bill",
        conn=crm,
        entity=entity,
        started=released,
        times={"time_approved": released - dt.timedelta(days=1), "billing_released": released},
        **kw,
    )


def won_deal(crm, entity, closed: dt.datetime, **kw):
    return handoff(
        flow="quote-to-project", conn=crm, entity=entity, started=closed, times={"deal_closed": closed}, **kw
    )


def move(h: Handoff, from_status: str, to: str, **fields) -> None:
    handoff_move(h, from_states=[from_status], to=to, actor="test", fields=fields)


def figures(f: metrics.Filters) -> tuple:
    blocked = metrics.blocked_billing(f, with_rows=False)
    won = metrics.won_not_activated(f, with_rows=False)
    opened = metrics.open_exceptions(f)
    return (
        [(b["count"], b["value"]) for b in blocked["buckets"]],
        (won["count"], won["value"], won["over_sla_count"], won["over_sla_value"]),
        [(b["count"], b["value"]) for b in opened["buckets"]],
        opened["by_flow"],
        metrics.health_line(f)["dead_lettered"],
    )


@pytest.mark.django_db
def test_backlog_follows_a_handoff_through_its_life(crm, entities, django_capture_on_commit_callbacks) -> None:
    us = entities["us"]
    with django_capture_on_commit_callbacks(execute=True):
        batch = released_batch(crm, us, NOW - dt.timedelta(days=40), status="running", amount="700.00")
    blocked = metrics.blocked_billing(OCT, with_rows=False)
    assert [b["count"] for b in blocked["buckets"]] == [0, 1, 0, 0] and blocked["value"] == Decimal("700.00")
    assert metrics.open_exceptions(OCT)["count"] == 0

    # It fails and needs a person: still blocked billing, now also an open exception (40 days old).
    with django_capture_on_commit_callbacks(execute=True):
        move(batch, Handoff.Status.RUNNING, Handoff.Status.NEEDS_ATTENTION)
    opened = metrics.open_exceptions(OCT)
    assert [b["count"] for b in opened["buckets"]] == [0, 0, 0, 1] and opened["by_flow"] == {"project-to-bill": 1}
    assert metrics.blocked_billing(OCT, with_rows=False)["count"] == 1

    # A save that is not a move (a lease renewal) tells no listener: no backlog work at all.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        batch.save(update_fields=["lease_owner", "lease_expires_at"])
    assert callbacks == []

    # Resubmitted, then invoiced: it leaves the backlog and its group is gone.
    with django_capture_on_commit_callbacks(execute=True):
        move(batch, Handoff.Status.NEEDS_ATTENTION, Handoff.Status.PENDING)
        move(batch, Handoff.Status.PENDING, Handoff.Status.RUNNING)
        move(batch, Handoff.Status.RUNNING, Handoff.Status.SUCCEEDED, finished_at=NOW)
    assert metrics.blocked_billing(OCT, with_rows=False)["count"] == 0
    assert metrics.open_exceptions(OCT)["count"] == 0
    assert not OpenItem.objects.exists() and OpenBacklog.objects.filter(items__gt=0).count() == 0


@pytest.mark.django_db
def test_backlog_figures_equal_the_open_handoffs_read_live(crm, entities, django_capture_on_commit_callbacks) -> None:
    """Every figure from the maintained groups equals the same figure read from the handoffs
    (the live path a customer filter takes), at the age boundaries, in two currencies."""
    FxRate.objects.create(currency="GBP", month="2026-10", kind="closing", rate=Decimal("1.25"))
    us, uk = entities["us"], entities["uk"]
    with django_capture_on_commit_callbacks(execute=True):
        for days, hour in [(0, 1), (30, 23), (31, 0), (60, 13), (61, 11), (90, 12), (91, 0), (400, 5)]:
            at = (NOW - dt.timedelta(days=days)).replace(hour=hour)
            released_batch(crm, us, at, status="running", amount="100.00")
            released_batch(crm, uk, at, status="needs_attention", amount="80.00", currency="GBP")
        for days in (0, 1, 2, 6, 7, 29, 30):
            won_deal(crm, us, NOW - dt.timedelta(days=days, hours=3), status="needs_attention", amount="1000.00")
        won_deal(crm, uk, NOW - dt.timedelta(days=3), status="pending", amount="500.00", currency="GBP")
        won_deal(crm, us, NOW - dt.timedelta(days=2), status="succeeded", amount="9.00")  # activated: not open
    maintained = figures(OCT)
    # One customer's filter reads the handoffs themselves; every handoff here is Contoso's.
    live = figures(metrics.Filters(start=OCT.start, end=OCT.end, customer="Contoso"))
    assert maintained == live
    blocked_counts = [c for c, _v in maintained[0]]
    assert blocked_counts == [4, 4, 4, 4]  # 0 and 30 | 31 and 60 | 61 and 90 | 91 and 400 days, US and UK each
    assert maintained[1][:2] == (8, Decimal("7625.00"))  # 7 US deals + GBP 500 at 1.25
    assert [c for c, _v in maintained[2]] == [2, 3, 2, 8]  # today | 1–6 | 7–29 | 30 days or more
    # A viewer scoped to the UK sees only the UK's part.
    uk_only = figures(metrics.Filters(start=OCT.start, end=OCT.end, entity_ids=(uk.pk,)))
    assert [c for c, _v in uk_only[0]] == [2, 2, 2, 2] and uk_only[1][0] == 1
    assert uk_only[4] == 8  # the UK batches that need a person


@pytest.mark.django_db
def test_repair_puts_right_what_an_update_without_signal_or_a_crash_left(crm, entities) -> None:
    us = entities["us"]
    # Loaded without the hook (as a bulk load or a killed process would leave them).
    a = released_batch(crm, us, NOW - dt.timedelta(days=5), status="needs_attention", amount="250.00")
    released_batch(crm, us, NOW - dt.timedelta(days=50), status="running", amount="100.00")
    assert metrics.blocked_billing(OCT, with_rows=False)["count"] == 0
    assert backlog_repair()["resynced"] == 2
    assert metrics.blocked_billing(OCT, with_rows=False)["count"] == 2

    # The hook's one-read check: in step now; not once the handoff moved without a signal.
    assert backlog_unchanged(a.pk)
    # Moved by a queryset update (no signal): resolved, and a group count corrupted by hand.
    status_force(a.pk, Handoff.Status.RESOLVED)
    assert not backlog_unchanged(a.pk)
    OpenBacklog.objects.update(items=99)
    result = backlog_repair()
    assert result["resynced"] == 1 and result["groups_fixed"] >= 1
    blocked = metrics.blocked_billing(OCT, with_rows=False)
    assert (blocked["count"], blocked["value"]) == (1, Decimal("100.00"))
    assert metrics.open_exceptions(OCT)["count"] == 0
    # Repeating changes nothing; a rebuild gives the same groups.
    assert backlog_repair() == {"open": 1, "resynced": 0, "groups_fixed": 0}
    before = sorted(OpenBacklog.objects.values_list("flow", "aged_day", "items", "amount"))
    assert backlog_rebuild() == {"items": 1, "groups": 1}
    assert sorted(OpenBacklog.objects.values_list("flow", "aged_day", "items", "amount")) == before


@pytest.mark.django_db(transaction=True)
def test_concurrent_syncs_of_the_same_handoffs_count_each_once(crm, entities) -> None:
    """Two workers' hooks for the same handoffs racing (PostgreSQL row locks): nothing counted twice."""
    if db_connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises writers")
    us = entities["us"]
    ids = [released_batch(crm, us, NOW - dt.timedelta(days=i), status="running").pk for i in range(40)]
    OpenItem.objects.all().delete()
    OpenBacklog.objects.all().delete()
    errors: list[BaseException] = []

    def worker(order: list[int]) -> None:
        try:
            for hid in order:
                backlog_sync([hid])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            db_connection.close()

    threads = [threading.Thread(target=worker, args=(o,)) for o in (ids, ids[::-1], ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert OpenItem.objects.count() == 40
    assert sum(OpenBacklog.objects.values_list("items", flat=True)) == 40
    assert backlog_repair()["groups_fixed"] == 0


@pytest.mark.django_db
def test_a_flow_the_backlog_does_not_follow_counts_only_while_it_needs_a_person(
    crm, entities, django_capture_on_commit_callbacks, django_assert_num_queries
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        invoice = handoff(flow="bill-to-cash", conn=crm, entity=entities["us"], status="running")
    assert not OpenItem.objects.exists()  # running: no figure reads it
    with django_capture_on_commit_callbacks(execute=True):
        move(invoice, Handoff.Status.RUNNING, Handoff.Status.NEEDS_ATTENTION)
    assert metrics.open_exceptions(OCT)["by_flow"] == {"bill-to-cash": 1}
    with django_capture_on_commit_callbacks(execute=True):  # resubmitted from the workbench
        move(invoice, Handoff.Status.NEEDS_ATTENTION, Handoff.Status.PENDING)
    assert metrics.open_exceptions(OCT)["count"] == 0 and not OpenItem.objects.exists()
    # Taken by a worker: the listeners are told, and neither the backlog nor the workbench reads
    # anything for it (no query at all).
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        move(invoice, Handoff.Status.PENDING, Handoff.Status.RUNNING)
    assert len(callbacks) == 1
    with django_assert_num_queries(0):
        callbacks[0]()
