"""Unbilled WIP (DOMAIN.md §2.3): approved billable work not on a posted invoice yet, in three
parts — work the PSA holds that no billing batch has taken (`UnbilledWork`, read from the PSA with
every reconciliation), batches released in the PSA that have no ERP invoice yet (open
project-to-bill handoffs), and invoices the ERP holds but has not posted (a draft, or pending
approval; the ledger, dashboards.ledger). Aged by work date (time: week end; expense: its date;
milestone: its actual date) for the first part, by release date for the second and by invoice
date for the third, as of the last PSA read.

A balance, so it is converted at the closing rate of the month of the figure's date (the policy
in metrics.POLICY), and it is a snapshot: the page period does not move it."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.db.models import Count, Max, Sum

from dashboards import ledger, metrics
from dashboards.metrics import AGE_BUCKETS_DAYS, Converter, Filters
from dashboards.money import Money
from pscsync import clock
from pscsync.models import LegalEntity, PsaAssignment, UnbilledWork

KIND_LABELS = {"time": "Approved time", "expense": "Approved expenses", "milestone": "Completed milestones"}
RELEASED = "Released, not invoiced"
UNPOSTED = "On an unposted ERP invoice"
PART_LABELS = {**KIND_LABELS, "released": RELEASED, "unposted": UNPOSTED}


def psa_work(f: Filters):  # a queryset of UnbilledWork
    qs = UnbilledWork.objects.all()
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    if f.service_line:
        qs = qs.filter(service_line=f.service_line)
    if f.customer:
        qs = qs.filter(customer_name=f.customer)
    return qs


def unbilled_wip(
    f: Filters, conv: Converter | None = None, *, detail: bool = True, released: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Both parts, bucketed by age. With `detail` also by legal entity, by project and the
    milestones list (the project-to-bill page); without it (the overview, the JSON) both parts are
    summed in the database by work or release date, so no row is read. `released`: the
    blocked_billing() result the caller already has, with rows when `detail`."""
    conv = conv or metrics.converter_for(f)
    read_at = psa_work(f).aggregate(at=Max("read_at"))["at"]
    as_of = (read_at or clock.now()).date()
    entities = dict(LegalEntity.objects.values_list("pk", "name")) if detail else {}
    kinds = [*KIND_LABELS, "released", "unposted"]
    empty = [conv.zero()] * len(AGE_BUCKETS_DAYS)
    by_kind: dict[str, list[Money]] = {k: list(empty) for k in kinds}
    by_entity: dict[str, list[Money]] = defaultdict(lambda: list(empty))
    by_project: dict[str, dict[str, Any]] = {}
    milestones: list[dict[str, Any]] = []
    count = 0

    def add(
        kind: str, entity: str, project: tuple[str, str, str] | None, amount: Decimal, currency: str, age: int
    ) -> None:
        """project: (key, name, customer) or None; one row per key."""
        nonlocal count
        value = conv.money(amount or Decimal("0"), currency, f.end, "closing")
        bucket = metrics.bucket_index(age, AGE_BUCKETS_DAYS)
        by_kind[kind][bucket] += value
        by_entity[entity][bucket] += value
        count += 1
        if project is None:
            return
        row = by_project.setdefault(
            project[0], {"buckets": list(empty), "items": 0, "oldest": 0, "name": "", "customer": ""}
        )
        row["name"] = row["name"] or project[1]
        row["customer"] = row["customer"] or project[2]
        row["buckets"][bucket] += value
        row["items"] += 1
        row["oldest"] = max(row["oldest"], age)

    if not detail:
        groups = psa_work(f).values("kind", "work_date", "currency").annotate(n=Count("id"), total=Sum("amount"))
        for g in groups.order_by():
            age = max(0, (as_of - g["work_date"]).days) if g["work_date"] else 0
            by_kind[g["kind"]][metrics.bucket_index(age, AGE_BUCKETS_DAYS)] += conv.money(
                g["total"] or Decimal("0"), g["currency"], f.end, "closing"
            )
            count += g["n"]
    else:
        fields = ("kind", "legal_entity_id", "project_key", "project_name", "customer_name", "amount", "currency")
        for w in psa_work(f).values(*fields, "work_date", "description", "source_id"):
            age = max(0, (as_of - w["work_date"]).days) if w["work_date"] else 0
            project = (w["project_key"], w["project_name"], w["customer_name"])
            add(w["kind"], entities.get(w["legal_entity_id"], "—"), project, w["amount"], w["currency"], age)
            if w["kind"] == "milestone":
                milestones.append({**w, "age": age})
    # Released batches have their own table on the page (oldest first); by project lists the PSA's
    # work only, since a batch's project is in its read step's output, not on the handoff.
    released = released or metrics.blocked_billing(f, conv, with_rows=False)
    for entity_id, values in released["by_entity"].items():
        for bucket, value in enumerate(values):
            by_kind["released"][bucket] += value
            if detail:
                by_entity[entities.get(entity_id, "—")][bucket] += value
    count += released["count"]
    unposted = ledger.unposted_invoices(f, conv, as_of=as_of)
    for entity_id, values in unposted["by_entity"].items():
        for bucket, value in enumerate(values):
            by_kind["unposted"][bucket] += value
            if detail:
                by_entity[entities.get(entity_id, "—")][bucket] += value
    count += unposted["count"]
    projects = sorted(
        ({"key": key, **v, "total": sum(v["buckets"], conv.zero())} for key, v in by_project.items()),
        key=lambda p: p["total"].amount,
        reverse=True,
    )
    return {
        "as_of": as_of if read_at else None,
        "count": count,
        "value": sum((sum(v, conv.zero()) for v in by_kind.values()), conv.zero()),
        "labels": [label for _low, _high, label in AGE_BUCKETS_DAYS],
        "by_kind": by_kind,
        "by_entity": dict(sorted(by_entity.items())),
        "projects": projects,
        "milestones": sorted(milestones, key=lambda m: m["age"], reverse=True),
        "over_60": sum((sum(v[2:], conv.zero()) for v in by_kind.values()), conv.zero()),
    }


def as_of_text(wip: dict[str, Any]) -> str:
    when: dt.date | None = wip["as_of"]
    if when is None:
        return "The PSA has not been read yet: reconciliation reads its unbilled work (every few minutes)."
    return f"As of the last PSA read, {when:%d %b %Y}."


def assigned_hours(f: Filters, months: list[str]) -> dict[tuple[str, str], float]:
    """Hours people are scheduled for in the PSA, by (role, YYYY-MM): each assignment's weekly
    hours ÷ 5 per weekday it covers in the month. Supply is the firm's, so the service-line and
    customer filters do not apply; the legal-entity scope does."""
    if not months:
        return {}
    first = dt.date.fromisoformat(months[0] + "-01")
    last_month = dt.date.fromisoformat(months[-1] + "-01")
    last = (last_month + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    qs = PsaAssignment.objects.filter(starts_on__lte=last, ends_on__gte=first)
    if f.entity_ids is not None:
        qs = qs.filter(legal_entity_id__in=f.entity_ids)
    wanted = set(months)
    out: dict[tuple[str, str], float] = defaultdict(float)
    for role, starts, ends, weekly in qs.values_list("role", "starts_on", "ends_on", "weekly_hours").iterator():
        daily = float(weekly) / 5
        day = max(starts, first)
        while day <= min(ends, last):
            if day.weekday() < 5 and day.strftime("%Y-%m") in wanted:
                out[(role or "—", day.strftime("%Y-%m"))] += daily
            day += dt.timedelta(days=1)
    return out
