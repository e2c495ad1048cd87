"""The workbench's reads: handoffs that need a person, grouped by cause."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import QueryDict

from pscsync.filters import page_params
from pscsync.models import Handoff
from pscsync.selectors import handoffs_visible_to
from remediation.filters import TABS, ExceptionFilter, exceptions_for
from remediation.fingerprints import fingerprint
from remediation.models import HandoffException


def cause_signature(message: str) -> str:
    """The message with its variable parts replaced (remediation.fingerprints): same cause, same text."""
    return fingerprint(message)


@dataclass
class CauseGroup:
    flow: str
    error_class: str
    signature: str
    handoffs: list[Handoff] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.handoffs)

    @property
    def first_seen(self):
        return min(h.created_at for h in self.handoffs)

    @property
    def last_seen(self):
        return max(h.created_at for h in self.handoffs)

    @property
    def legal_entities(self) -> list[str]:
        return sorted({h.legal_entity.name for h in self.handoffs if h.legal_entity})


def exception_groups(user: User | AnonymousUser) -> list[CauseGroup]:
    groups: dict[tuple[str, str, str], CauseGroup] = {}
    for handoff in handoffs_visible_to(user).filter(status=Handoff.Status.NEEDS_ATTENTION).order_by("created_at"):
        key = (handoff.flow, handoff.last_error_class, cause_signature(handoff.last_error_message))
        groups.setdefault(key, CauseGroup(*key)).handoffs.append(handoff)
    return sorted(groups.values(), key=lambda g: (-g.count, g.first_seen))


# ---------------------------------------------------------------------------------------------
# The inbox over the stored exceptions (remediation.models): scoped, filtered, grouped by cause.
# ---------------------------------------------------------------------------------------------
FILTERS = (
    "tab",
    "q",
    "flow",
    "step",
    "error_class",
    "legal_entity",
    "customer",
    "connection",
    "assignee",
    "age",
    "sort",
)
SORTS = {"urgency": "urgency", "count": "-count", "money": "-money", "oldest": "oldest", "recent": "-last_failed"}


@dataclass
class InboxFilter:
    """The inbox's query as the page shows it back (its form, tabs and links). What each filter
    selects is defined once, in the filter set the API shares (remediation.filters)."""

    tab: str = "open"
    q: str = ""
    flow: str = ""
    step: str = ""
    error_class: str = ""
    legal_entity: str = ""
    customer: str = ""
    connection: str = ""
    assignee: str = ""
    age: str = ""
    sort: str = "urgency"

    def active(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v and k not in ("tab", "sort")}

    def params(self) -> QueryDict:
        """The filter set's query: the filters given, and the tab."""
        query = QueryDict(mutable=True)
        query.update({"tab": self.tab, **self.active()})
        return query


def inbox_read(user: User | AnonymousUser, query: QueryDict) -> tuple[InboxFilter, ExceptionFilter]:
    """The inbox's query (a page's GET or POST) read through the shared filter set, over what the
    user may see: the filter, and the filter set whose errors say what is wrong with it. The
    form's "any" is an empty value, left out; no tab is the Open tab; a sort is one of SORTS."""
    params = page_params(query) or QueryDict(mutable=True)
    params.setdefault("tab", "open")
    found = ExceptionFilter(params, queryset=exceptions_for(user))
    found.is_valid()
    sort = params.get("sort", "urgency")
    if sort not in SORTS:
        found.form.add_error(None, f"Sort by one of: {', '.join(SORTS)}.")
    f = InboxFilter(**{name: params.get(name, "").strip() for name in FILTERS if name in params})
    return f, found


def exception_items(user: User | AnonymousUser, f: InboxFilter) -> QuerySet[HandoffException]:
    """The handoff exceptions the user may see, narrowed by the filter (the shared filter set)."""
    found = ExceptionFilter(f.params(), queryset=exceptions_for(user))
    if not found.is_valid():
        raise ValueError(f"not an inbox filter: {found.errors.as_text()}")
    return found.qs


@dataclass
class InboxGroup:
    cause: object
    count: int
    first_seen: object
    last_seen: object
    money: list[tuple[str, object]]
    customers: list[str]
    entities: list[str]
    # Root causes: what this cause's handoffs block (count and money per currency), and the
    # causes of the handoffs they wait on (their own fix is "wait", not the runbook).
    blocks: int = 0
    blocks_money: list[tuple[str, object]] = field(default_factory=list)
    waiting_on: list[object] = field(default_factory=list)
    # Seconds until the oldest handoff's flow SLA is breached (negative: breached that long ago).
    sla_remaining: float | None = None

    @property
    def money_total(self):  # for sorting: a plain sum across currencies
        return sum((m for _, m in self.money if m is not None), 0)


def inbox_groups(user: User | AnonymousUser, f: InboxFilter, *, limit: int = 50) -> list[InboxGroup]:
    """One row per cause with the totals of the handoffs this user may see (never more)."""
    return inbox_page(user, f, limit=limit)[0]


def inbox_page(
    user: User | AnonymousUser, f: InboxFilter, *, limit: int = 50
) -> tuple[list[InboxGroup], dict[str, object]]:
    """The groups shown and the totals of everything the filter matches (inbox_totals), from one
    aggregate per cause and currency (counts, dates and money together: a few hundred rows, folded
    per cause and cut to `limit` here) and one DISTINCT of the shown causes' customers and
    entities. Both read only columns of the covering index `exc_status_cause`, so at 1M
    handoffs they visit the index, not the exceptions' wide rows (identifiers, search text)."""
    from django.db.models import Count, Max, Min, Sum

    from pscsync.models import LegalEntity
    from remediation.models import ExceptionCause

    items = exception_items(user, f)
    # COUNT(*), not COUNT(id): the id is not in the index, counting it would read every row.
    per_currency = (
        items.values("cause_id", "flow", "currency")
        .annotate(
            count=Count("*"),
            first=Min("opened_at"),
            last=Max("last_failed_at"),
            money=Sum("amount"),
            started=Min("business_started_at"),
        )
        .order_by()
    )
    by_cause: dict[int, dict] = {}
    by_cause_money: dict[int, list] = {}
    all_money: dict[str, object] = {}
    for r in per_currency:
        cause_id = r["cause_id"]
        row = by_cause.get(cause_id)
        if row is None:
            by_cause[cause_id] = {k: r[k] for k in ("cause_id", "flow", "count", "first", "last", "money", "started")}
        else:
            row["count"] += r["count"]
            row["first"] = min(row["first"], r["first"])
            row["last"] = max(row["last"], r["last"])
            if r["money"] is not None:
                row["money"] = r["money"] if row["money"] is None else row["money"] + r["money"]
            if r["started"] is not None:
                row["started"] = r["started"] if row["started"] is None else min(row["started"], r["started"])
        if r["money"] is not None:  # money at risk per currency: exceptions that carry an amount
            all_money[r["currency"]] = all_money.get(r["currency"], 0) + r["money"]
            by_cause_money.setdefault(cause_id, []).append((r["currency"], r["money"]))
    for rows_money in by_cause_money.values():
        rows_money.sort(key=lambda m: m[0])
    every = _ordered(list(by_cause.values()), f.sort)
    remaining = _sla_remaining(every)
    if f.sort == "urgency":
        # SLA breached first, then money at risk in the reporting currency, then the oldest.
        at_risk = _converted(by_cause_money)
        every.sort(
            key=lambda r: (
                not (remaining.get(r["cause_id"]) is not None and remaining[r["cause_id"]] < 0),
                -at_risk.get(r["cause_id"], 0),
                r["first"],
            )
        )
    rows = every[:limit]
    ids = [r["cause_id"] for r in rows]
    causes = ExceptionCause.objects.select_related("assignee").in_bulk(ids)
    shown = set(ids)
    money = {k: v for k, v in by_cause_money.items() if k in shown}
    totals = {
        "handoffs": sum(r["count"] for r in every),
        "groups": len(every),
        "money": sorted(all_money.items()),
    }
    customers: dict[int, set] = {}
    entity_ids: dict[int, set] = {}
    if ids:
        for cause_id, customer, entity in (
            # order_by(): the model's default ordering (opened_at) would join the DISTINCT and make
            # it one row per exception, so the 2,000 cap cut customers off at 1M handoffs. Entity
            # ids, not names: no join, the index has them; the few names are read once below.
            items.filter(cause_id__in=ids)
            .values_list("cause_id", "customer_name", "legal_entity_id")
            .order_by()
            .distinct()[:2000]
        ):
            if customer:
                customers.setdefault(cause_id, set()).add(customer)
            if entity:
                entity_ids.setdefault(cause_id, set()).add(entity)
    names = dict(LegalEntity.objects.values_list("pk", "name")) if entity_ids else {}
    roots = cause_roots(user, ids)
    groups = [
        InboxGroup(
            cause=causes[r["cause_id"]],
            count=r["count"],
            first_seen=r["first"],
            last_seen=r["last"],
            money=money.get(r["cause_id"], []),
            customers=sorted(customers.get(r["cause_id"], set())),
            entities=sorted({names[e] for e in entity_ids.get(r["cause_id"], set())}),
            sla_remaining=remaining.get(r["cause_id"]),
            **roots.get(r["cause_id"], {}),
        )
        for r in rows
    ]
    return groups, totals


def _ordered(rows: list[dict], sort: str) -> list[dict]:
    """The causes in the order of the chosen sort, ties by cause id. Most money at risk is a plain
    sum across currencies (the urgency order converts); causes with no amount at all come last."""
    rows.sort(key=lambda r: r["cause_id"])
    if sort == "count":
        rows.sort(key=lambda r: -r["count"])
    elif sort == "recent":
        rows.sort(key=lambda r: r["last"], reverse=True)
    elif sort == "money":
        rows.sort(key=lambda r: (r["money"] is None, -(r["money"] or 0)))
    else:  # "oldest", and "urgency" before its own order (which keeps this one for equal keys)
        rows.sort(key=lambda r: r["first"])
    return rows


def _sla_remaining(rows: list[dict]) -> dict[int, float]:
    """Per cause: seconds until its oldest handoff's flow SLA is breached (negative when it is),
    counted from the business start the source gave (the same SLA as the dashboards, sla_for).
    A target in business days is counted as calendar days here: a lower bound on the time left."""
    from dashboards.facts import slas_for
    from dashboards.models import FlowSla
    from pscsync import clock

    now = clock.now()
    targets: dict[str, float] = {}
    for flow, sla in slas_for({r["flow"] for r in rows if r.get("started") is not None}).items():
        hours = float(sla.target) * (24 if sla.unit == FlowSla.Unit.BUSINESS_DAYS else 1)
        targets[flow] = hours * 3600
    return {
        r["cause_id"]: (r["started"] - now).total_seconds() + targets[r["flow"]]
        for r in rows
        if r.get("started") is not None
    }


def _converted(money: dict[int, list]) -> dict[int, float]:
    """Money at risk per cause in the reporting currency at today's closing rate (the dashboards'
    converter and policy), so GBP and USD are not compared at face value."""
    import datetime as dt

    from dashboards.metrics import Converter
    from pscsync import clock

    converter = Converter()
    today: dt.date = clock.now().date()
    return {
        cause: float(sum(converter.convert(total, currency, today, "closing") for currency, total in rows))
        for cause, rows in money.items()
    }


def cause_roots(user: User | AnonymousUser, cause_ids: list[int]) -> dict[int, dict[str, object]]:
    """For each cause: how many open handoffs (the user may see) wait on its handoffs and their
    money per currency, and the causes its own handoffs wait on. Two small aggregates over the
    blocked exceptions (few: only handoffs that another failure stops), none when there are none."""
    from django.db.models import Count, Sum

    from pscsync.access import scope_queryset
    from remediation.models import ExceptionCause, ExceptionStatus, HandoffException

    if not cause_ids:
        return {}
    blocked = scope_queryset(HandoffException.objects.filter(status=ExceptionStatus.OPEN), user).filter(
        blocked_by__isnull=False
    )
    out: dict[int, dict[str, object]] = {}
    for r in (
        blocked.filter(blocked_by__exception__cause_id__in=cause_ids)
        .values("blocked_by__exception__cause_id", "currency")
        .annotate(n=Count("id"), total=Sum("amount"))
        .order_by("currency")
    ):
        entry = out.setdefault(r["blocked_by__exception__cause_id"], {"blocks": 0, "blocks_money": []})
        entry["blocks"] += r["n"]
        if r["total"] is not None and r["currency"]:
            entry["blocks_money"].append((r["currency"], r["total"]))
    waits = list(
        blocked.filter(cause_id__in=cause_ids)
        .values_list("cause_id", "blocked_by__exception__cause_id")
        .order_by()
        .distinct()
    )
    root_causes = ExceptionCause.objects.in_bulk({root for _, root in waits if root})
    for cause_id, root in waits:
        if root in root_causes:
            out.setdefault(cause_id, {}).setdefault("waiting_on", []).append(root_causes[root])
    return out


def inbox_choices(user: User | AnonymousUser) -> dict[str, list]:
    """Values for the filter selects, from what the user may see."""
    from django.contrib.auth import get_user_model
    from django.db.models import Exists, OuterRef

    from connectors.models import Connection
    from pscsync.access import scope_queryset
    from pscsync.flows import FLOWS
    from pscsync.models import LegalEntity
    from remediation.models import ExceptionCause, HandoffException

    # An exception copies its cause's step and error class, so the causes with an exception the
    # user may see give the same choices as a DISTINCT over every exception (all 150,000 of them
    # in bench/inbox), one index probe per cause.
    visible = scope_queryset(HandoffException.objects.filter(cause=OuterRef("pk")), user)
    mine = ExceptionCause.objects.filter(Exists(visible))
    from pscsync.access import entity_ids_for

    ids = entity_ids_for(user)
    entities = LegalEntity.objects.all() if ids is None else LegalEntity.objects.filter(pk__in=ids)
    return {
        "flows": [(f.name, f.label) for f in FLOWS.values()],
        "steps": sorted({s for s in mine.values_list("step_name", flat=True).order_by().distinct() if s}),
        "error_classes": sorted({s for s in mine.values_list("error_class", flat=True).order_by().distinct() if s}),
        "entities": [(e.code, e.name) for e in entities],
        "connections": list(Connection.objects.order_by("slug").values_list("slug", "name")),
        "assignees": list(
            get_user_model()
            .objects.filter(groups__permissions__codename="work_exceptions", is_active=True)
            .distinct()
            .order_by("username")
            .values_list("username", flat=True)
        ),
        "tabs": list(TABS.items()),
        "sorts": [
            ("urgency", "Most urgent (SLA, money, age)"),
            ("count", "Most handoffs"),
            ("money", "Most money at risk"),
            ("oldest", "Oldest"),
            ("recent", "Most recent"),
        ],
    }


def inbox_totals(user: User | AnonymousUser, f: InboxFilter) -> dict[str, object]:
    """The totals of everything the filter matches that the user may see (not only the groups
    shown): causes, handoffs and money at risk per currency."""
    return inbox_page(user, f, limit=0)[1]


# ---------------------------------------------------------------------------------------------
# Bulk jobs: real end states, place in the queue, and retries that will fail again
# ---------------------------------------------------------------------------------------------
RESULT_NAMES = {
    "succeeded": "Succeeded",
    "failed_same": "Failed again, same cause",
    "failed_other": "Failed, another cause",
    "retrying": "Still running or retrying",
    "ended": "Resolved or cancelled by a person",
    "done": "Done",
    "skipped": "Skipped",
}


@dataclass
class JobResults:
    rows: list[tuple[object, str]]  # (BulkJobItem, result key)
    counts: dict[str, int]
    settled: bool  # every handoff it acted on has reached an end state

    @property
    def headline(self) -> list[tuple[str, str, int]]:
        return [(key, RESULT_NAMES[key], self.counts[key]) for key in RESULT_NAMES if self.counts.get(key)]


def job_results(job, *, limit: int = 500) -> JobResults:  # a BulkJob
    """Each handoff's real end state after the job: a retry is "done" only when the handoff
    succeeded; one back in the workbench failed again with the same cause, or with another."""
    from remediation.models import BulkJob, BulkJobItem, HandoffException

    items = list(job.items.select_related("handoff").order_by("pk"))
    causes_now = dict(
        HandoffException.objects.filter(handoff_id__in=[i.handoff_id for i in items]).values_list(
            "handoff_id", "cause_id"
        )
    )
    rows, counts = [], {}
    for item in items:
        if item.outcome != BulkJobItem.Outcome.DONE:
            key = "skipped"
        elif job.kind not in (BulkJob.Kind.RETRY, BulkJob.Kind.REPLAY):
            key = "done"
        else:
            status = item.handoff.status
            if status == Handoff.Status.SUCCEEDED:
                key = "succeeded"
            elif status == Handoff.Status.NEEDS_ATTENTION:
                same = causes_now.get(item.handoff_id) == item.cause_before_id
                key = "failed_same" if same else "failed_other"
            elif status in (Handoff.Status.RESOLVED, Handoff.Status.CANCELLED):
                key = "ended"
            else:
                key = "retrying"
        counts[key] = counts.get(key, 0) + 1
        rows.append((item, key))
    settled = job.is_finished and not counts.get("retrying")
    return JobResults(rows=rows[:limit], counts=counts, settled=settled)


def job_queue_place(job) -> dict[str, object]:
    """A queued job's place (jobs ahead of it) and an estimate of when it is done, from how
    long recent jobs took per handoff."""
    from django.db.models import F, Sum

    from remediation.models import BulkJob

    ahead = BulkJob.objects.filter(
        status__in=[BulkJob.Status.QUEUED, BulkJob.Status.RUNNING], created_at__lt=job.created_at
    )
    left_ahead = sum(max(j.total - j.done, 0) for j in ahead.only("total", "done"))
    recent = BulkJob.objects.filter(status=BulkJob.Status.DONE, started_at__isnull=False, total__gt=0).order_by(
        "-finished_at"
    )[:20]
    took = recent.aggregate(seconds=Sum(F("finished_at") - F("started_at")), handoffs=Sum("total"))
    per = (took["seconds"].total_seconds() / took["handoffs"]) if took["seconds"] and took["handoffs"] else 0.2
    return {
        "place": ahead.count() + 1,
        "ahead": ahead.count(),
        "estimate_seconds": max(1.0, (left_ahead + job.total - job.done) * per),
    }


def retry_warnings(user: User | AnonymousUser, handoff_ids: list[int]) -> list[str]:
    """Why a plain retry of these handoffs will fail again, for a confirmation before the job:
    a mapping-kind failure whose mapping has not been published since it failed, or a
    validation-kind failure whose data has not changed (no newer change for its key arrived,
    and it waits on no root that has since succeeded): the stored data is checked again."""
    from pscsync.access import scope_queryset
    from pscsync.models import Event, MappingVersion
    from remediation.models import HandoffException

    items = scope_queryset(HandoffException.objects.filter(handoff_id__in=handoff_ids), user).filter(
        status="open", error_class__in=("mapping", "validation")
    )
    mapping_same: list[str] = []
    validation_same = 0
    published: dict[int, object] = {}
    rows = items.select_related("handoff__failed_mapping__mapping__connection", "blocked_by")[:2000]
    for item in rows:
        handoff = item.handoff
        if item.error_class == "mapping":
            # The mapping version the failure stored (Handoff.failed_mapping): none, nothing to say.
            version = handoff.failed_mapping
            if version is None:
                continue
            mapping = version.mapping
            if mapping.pk not in published:
                published[mapping.pk] = (
                    MappingVersion.objects.filter(mapping=mapping)
                    .exclude(published_at=None)
                    .order_by("-published_at")
                    .values_list("published_at", flat=True)
                    .first()
                )
            latest = published[mapping.pk]
            if latest is None or latest <= item.last_failed_at:
                mapping_same.append(f"the {mapping.entity} mapping of {mapping.connection.name}")
        else:
            if item.blocked_by is not None and item.blocked_by.status == Handoff.Status.SUCCEEDED:
                continue
            newer = Event.objects.filter(
                flow=handoff.flow, business_key=handoff.business_key, received_at__gt=item.last_failed_at
            ).exists()
            if not newer:
                validation_same += 1
    warnings = []
    if mapping_same:
        names = sorted(set(mapping_same))
        warnings.append(
            f"{len(mapping_same)} failed on a mapping ({', '.join(names)}) that has not been published again since: "
            "a retry maps them the same way and they will fail again. Fix the mapping in the studio first."
        )
    if validation_same:
        warnings.append(
            f"{validation_same} failed a check of their data, and no newer version of that data has arrived since: "
            "a retry checks the same stored data and they will fail again. Correct the record at the source and "
            "re-map, or edit the payload on the handoff page."
        )
    return warnings
