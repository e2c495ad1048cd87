"""The open backlog kept as data arrives: what is still open (won deals not yet a project, billing
released and not invoiced, and handoffs of any flow that need a person; other flows' handoffs in
progress are not counted, since no figure reads them), counted and summed per flow, dimension,
currency and calendar day, so the overview sums a few hundred rows instead of reading tens of
thousands of open handoffs on every request.

Each open handoff has one `OpenItem` (what it adds to the counts) and the counts live in
`OpenBacklog`. `backlog_sync` moves a handoff's contribution from the group it was in to the group
it is in now; it is called after every committed move of a handoff (the lifecycle listener in
apps.py), locks the handoff's row, reads its committed state and so converges whatever order the
calls come in. `backlog_repair` (beat) finds handoffs whose item is missing or stale and groups
whose counts drifted (a process killed between a move's commit and its listener, a bulk load) and
puts them right; `backlog_rebuild` recomputes everything (after a bulk load or an upgrade).

Ages are calendar days (UTC), from the day the business time happened to today, as finance ages a
receivable: a batch released yesterday is 1 day old whatever the hour.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import connection as db_connection
from django.db import transaction
from django.db.models import Count, F, Sum

from dashboards.facts import parse_time
from dashboards.models import BACKLOG_GROUP_FIELDS, OpenBacklog, OpenItem
from pscsync.lifecycle import repairs_note
from pscsync.models import Handoff

log = logging.getLogger("dashboards.backlog")

# The business time each flow's open items age from (else from when the handoff's business started).
AGED_FROM = {"project-to-bill": "billing_released", "quote-to-project": "deal_closed"}
GROUP_FIELDS = BACKLOG_GROUP_FIELDS
_HANDOFF_FIELDS = (
    "pk",
    "flow",
    "status",
    "legal_entity_id",
    "service_line",
    "source_connection_id",
    "customer_name",
    "currency",
    "amount",
    "business_started_at",
    "created_at",
    "business_times",
)


def move_may_move(flow: str, from_status: str, to_status: str) -> bool:
    """Whether a handoff's move can change the backlog (the listener skips the others without a
    query): a followed flow's handoff counts while open, any other flow's only while it needs a
    person."""
    return flow in AGED_FROM or Handoff.Status.NEEDS_ATTENTION in (from_status, to_status)


class Group(NamedTuple):
    flow: str
    needs_person: bool
    legal_entity_id: int
    service_line: str
    connection_id: int
    currency: str
    aged_day: dt.date
    started_day: dt.date


class Contribution(NamedTuple):
    group: Group
    customer_name: str
    amount: Decimal


def contribution(row: dict[str, Any]) -> Contribution | None:
    """What one handoff (as a dict of _HANDOFF_FIELDS) adds to the backlog; None when not open."""
    if row["status"] not in Handoff.OPEN:
        return None
    needs_person = row["status"] == Handoff.Status.NEEDS_ATTENTION
    if not needs_person and row["flow"] not in AGED_FROM:
        # Nothing reads other flows' handoffs while they run: leaving them out keeps a busy flow's
        # every handoff from taking a group row's lock twice (created, finished).
        return None
    started = row["business_started_at"] or row["created_at"]
    key = AGED_FROM.get(row["flow"])
    aged = (parse_time((row["business_times"] or {}).get(key)) if key else None) or started
    group = Group(
        flow=row["flow"],
        needs_person=needs_person,
        legal_entity_id=row["legal_entity_id"] or 0,
        service_line=row["service_line"] or "",
        connection_id=row["source_connection_id"] or 0,
        currency=row["currency"] or "",
        aged_day=aged.astimezone(dt.UTC).date(),
        started_day=started.astimezone(dt.UTC).date(),
    )
    return Contribution(group, row["customer_name"] or "", row["amount"] or Decimal("0"))


def _item_contribution(item: OpenItem) -> Contribution:
    return Contribution(
        Group(*(getattr(item, name) for name in GROUP_FIELDS)), item.customer_name, item.amount or Decimal("0")
    )


def add_to_groups(model: Any, key_fields: tuple[str, ...], sum_fields: tuple[str, ...], deltas: dict) -> None:
    """Add each delta (a tuple of `sum_fields` values) to its group of `model`, keyed by a tuple of
    `key_fields` values, creating the group if new: one upsert per group, in a fixed order so two
    transactions touching the same groups cannot deadlock. PostgreSQL and SQLite both have it."""
    table = model._meta.db_table
    columns = ", ".join(key_fields)
    marks = ", ".join(["%s"] * (len(key_fields) + len(sum_fields)))
    adds = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in sum_fields)
    # Table and column names are the model's own; every value is bound.
    sql = f"INSERT INTO {table} ({columns}, {', '.join(sum_fields)}) VALUES ({marks}) "  # noqa: S608  # nosec B608  # model's names
    sql += f"ON CONFLICT ({columns}) DO UPDATE SET {adds}"  # nosec B608  # model's names, values bound
    with db_connection.cursor() as cursor:
        for group in sorted(deltas, key=lambda g: tuple(str(v) for v in g)):
            values = list(deltas[group])
            if any(values):
                cursor.execute(sql, [*group, *values])


def _item(handoff_id: int, c: Contribution) -> OpenItem:
    return OpenItem(pk=handoff_id, **c.group._asdict(), customer_name=c.customer_name, amount=c.amount)


def _apply(deltas: dict[Group, list]) -> None:
    add_to_groups(OpenBacklog, GROUP_FIELDS, ("items", "amount"), deltas)


def _move(deltas: dict[Group, list], old: Contribution | None, new: Contribution | None) -> None:
    if old is not None:
        deltas[old.group][0] -= 1
        deltas[old.group][1] -= old.amount
    if new is not None:
        deltas[new.group][0] += 1
        deltas[new.group][1] += new.amount


def backlog_sync(handoff_ids: Iterable[int]) -> int:
    """Bring the backlog in line with these handoffs' committed state; returns how many moved.
    Safe to repeat and to run concurrently: each handoff's row is locked while its item moves."""
    ids = sorted(set(handoff_ids))
    if not ids:
        return 0
    moved = 0
    with transaction.atomic():
        rows = {
            r["pk"]: r
            for r in Handoff.objects.select_for_update(of=("self",))
            .filter(pk__in=ids)
            .order_by("pk")
            .values(*_HANDOFF_FIELDS)
        }
        items = {item.pk: item for item in OpenItem.objects.filter(pk__in=ids)}
        deltas: dict[Group, list] = defaultdict(lambda: [0, Decimal("0")])
        to_save: list[OpenItem] = []
        to_delete: list[int] = []
        for hid in ids:
            item = items.get(hid)
            old = _item_contribution(item) if item else None
            row = rows.get(hid)
            new = contribution(row) if row else None
            if old == new:
                continue
            moved += 1
            _move(deltas, old, new)
            if new is None:
                to_delete.append(hid)
            else:
                to_save.append(_item(hid, new))
        if to_delete:
            OpenItem.objects.filter(pk__in=to_delete).delete()
        if to_save:
            OpenItem.objects.bulk_create(
                to_save,
                update_conflicts=True,
                unique_fields=["handoff"],
                update_fields=[*GROUP_FIELDS, "customer_name", "amount"],
            )
        _apply(deltas)
    return moved


_ITEM_VALUES = [f"open_item__{name}" for name in (*GROUP_FIELDS, "customer_name", "amount")]


def backlog_unchanged(handoff_id: int) -> bool:
    """True when the handoff's committed state and its item agree (one read, no lock): most saves
    of a running handoff (taken by a worker, a step's outputs stored) move it nowhere. A state read
    here that a later commit changes is that commit's own listener's to sync."""
    row = Handoff.objects.filter(pk=handoff_id).values(*_HANDOFF_FIELDS, *_ITEM_VALUES).first()
    if row is None:
        return False
    item = [row.pop(name) for name in _ITEM_VALUES]
    have = None
    if item[0] is not None:
        have = Contribution(Group(*item[: len(GROUP_FIELDS)]), item[-2], item[-1] or Decimal("0"))
    return have == contribution(row)


def backlog_changed(handoff_ids: Iterable[int]) -> list[int]:
    """Of these handoffs, those whose committed state and item disagree (backlog_unchanged for a
    batch: one read, no lock), in id order."""
    ids = sorted(set(handoff_ids))
    if not ids:
        return []
    rows = {r["pk"]: r for r in Handoff.objects.filter(pk__in=ids).values(*_HANDOFF_FIELDS, *_ITEM_VALUES).order_by()}
    changed = []
    for hid in ids:
        row = rows.get(hid)
        if row is None:
            changed.append(hid)  # gone: its item, if any, goes (backlog_sync)
            continue
        item = [row.pop(name) for name in _ITEM_VALUES]
        have = None
        if item[0] is not None:
            have = Contribution(Group(*item[: len(GROUP_FIELDS)]), item[-2], item[-1] or Decimal("0"))
        if have != contribution(row):
            changed.append(hid)
    return changed


def backlog_follow_safely(handoff_ids: Iterable[int]) -> None:
    """The lifecycle listener's call for a batch of moved handoffs (after commit): the ones whose
    item is out of line are synced together, their rows locked in id order. A failure here must
    never fail the handoffs (the repair job fixes it)."""
    ids = sorted(set(handoff_ids))
    try:
        changed = backlog_changed(ids)
        if changed:
            backlog_sync(changed)
    except Exception:  # logged and repaired by the beat job
        log.exception("open backlog not updated for handoffs %s; the repair job will", ", ".join(map(str, ids)))


def backlog_repair(batch: int = 2000) -> dict[str, int]:
    """The beat job: re-sync every handoff whose item is missing, stale or left behind, then fix
    any group whose counts differ from its items. Reads only open handoffs and the items."""
    open_rows = Handoff.objects.filter(status__in=list(Handoff.OPEN)).values(*_HANDOFF_FIELDS).order_by()
    wanted = {r["pk"]: contribution(r) for r in open_rows.iterator(chunk_size=5000)}
    have = {item.pk: _item_contribution(item) for item in OpenItem.objects.all().iterator(chunk_size=5000)}
    stale = [hid for hid, c in wanted.items() if have.get(hid) != c]
    stale += [hid for hid in have if hid not in wanted]
    for start in range(0, len(stale), batch):
        backlog_sync(stale[start : start + batch])
    fixed = _groups_repair()
    repairs_note("open backlog", len(stale) + fixed)
    return {"open": len(wanted), "resynced": len(stale), "groups_fixed": fixed}


def _groups_repair() -> int:
    """Make every group's counts equal the sum of its items (and drop empty groups)."""
    with transaction.atomic():
        # The groups are locked for the few milliseconds of the comparison; a sync waiting on
        # them applies its delta afterwards, to counts that are right.
        groups = {
            Group(*(row[name] for name in GROUP_FIELDS)): (row["items"], row["amount"])
            for row in OpenBacklog.objects.select_for_update().values(*GROUP_FIELDS, "items", "amount")
        }
        truth = {
            Group(*(row[name] for name in GROUP_FIELDS)): (row["n"], row["total"] or Decimal("0"))
            for row in OpenItem.objects.values(*GROUP_FIELDS).annotate(n=Count("pk"), total=Sum("amount")).order_by()
        }
        fixed = 0
        for group in set(groups) | set(truth):
            want = truth.get(group, (0, Decimal("0")))
            if groups.get(group) == want:
                continue
            fixed += 1
            qs = OpenBacklog.objects.filter(**group._asdict())
            if want[0] == 0:
                qs.delete()
            elif not qs.update(items=want[0], amount=want[1]):
                OpenBacklog.objects.create(**group._asdict(), items=want[0], amount=want[1])
        OpenBacklog.objects.filter(items=0, amount=0).delete()
    return fixed


def backlog_rebuild() -> dict[str, int]:
    """Recompute items and groups from the open handoffs (after a bulk load or an upgrade)."""
    with transaction.atomic():
        OpenItem.objects.all().delete()
        OpenBacklog.objects.all().delete()
        rows = Handoff.objects.filter(status__in=list(Handoff.OPEN)).values(*_HANDOFF_FIELDS).order_by()
        deltas: dict[Group, list] = defaultdict(lambda: [0, Decimal("0")])
        items = []
        for row in rows.iterator(chunk_size=5000):
            new = contribution(row)
            if new is None:
                continue
            _move(deltas, None, new)
            items.append(_item(row["pk"], new))
        OpenItem.objects.bulk_create(items, batch_size=5000)
        OpenBacklog.objects.bulk_create(
            [OpenBacklog(**g._asdict(), items=n, amount=a) for g, (n, a) in deltas.items()], batch_size=5000
        )
    return {"items": len(items), "groups": len(deltas)}


def backlog_groups(
    f: Any, *, flow: str | None = None, needs_person: bool | None = None, by: tuple[str, ...] = ("currency",)
) -> list[dict[str, Any]]:
    """Open items counted (`n`) and summed (`total`) per `by` under filters `f` (metrics.Filters):
    from the groups, or, for one customer (groups have none), from that customer's items."""
    if f.customer:
        qs, count = OpenItem.objects.all(), Count("pk")
    else:
        qs, count = OpenBacklog.objects.all(), Sum("items")
    if flow:
        qs = qs.filter(flow=flow)
    if needs_person is not None:
        qs = qs.filter(needs_person=needs_person)
    qs = f.apply(qs)
    return list(qs.values(*by).annotate(n=count, total=Sum("amount")).filter(n__gt=0).order_by())


ITEM_FIELDS = {
    "id": "handoff_id",
    "flow": "flow",
    "business_key": "handoff__business_key",
    "status": "handoff__status",
    "customer_name": "customer_name",
    "service_line": "service_line",
    "amount": "amount",
    "currency": "currency",
    "legal_entity_id": "legal_entity_id",
    "aged_day": "aged_day",
}


def open_items(f: Any, flow: str, *, limit: int | None) -> list[dict[str, Any]]:
    """A flow's open items under filters `f`, oldest first (`limit` of them; None: all, for a CSV),
    as dicts with the handoff's id, key and status: a page lists 200 of a backlog of thousands
    by reading 200 rows (index on flow and day)."""
    qs = f.apply(OpenItem.objects.filter(flow=flow)).order_by("aged_day", "handoff_id")
    plain = [name for name, path in ITEM_FIELDS.items() if name == path]
    rows = qs.values(*plain, **{name: F(path) for name, path in ITEM_FIELDS.items() if name != path})
    return list(rows if limit is None else rows[:limit])


__all__ = ["backlog_groups", "open_items", "backlog_rebuild", "backlog_repair", "backlog_sync", "contribution"]
