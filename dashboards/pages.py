"""What each dashboard page shows: tiles, charts and tables built from metrics.py, as plain data a
single template renders. Every tile and row carries its drill-down link and its help text."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.db.models import Count, F, OuterRef, Subquery, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import TruncMonth
from django.urls import reverse

from dashboards import charts, kpis, leaders, ledger, metrics, wip
from dashboards.demand import demand_for
from dashboards.facts import MEASURES, sla_for
from dashboards.metrics import Converter, Filters, converter_for
from dashboards.models import FlowFact
from dashboards.money import Money, money_text
from pscsync.glossary import count_words, duration_words, step_name, when_words
from pscsync.models import Attempt, ErpInvoice, LegalEntity, Mismatch, Step
from remediation import timeline
from remediation.models import HandoffException


@dataclass
class Tile:
    label: str
    figure: str
    note: str = ""
    href: str = ""
    help: str = ""
    state: str = ""  # good | bad | stale | incomplete (a money figure misses an amount: amber) | ""
    question: str = ""
    measurement: str = ""  # "", or why the figure is stale
    as_of: dt.datetime | None = None
    unmeasured: bool = False  # its source was never read: no figure


def kpi_tile(
    reading: kpis.Reading,
    key: str,
    figure: str,
    note: str = "",
    *,
    state: str = "",
    question: str = "",
    label: str = "",
    href: str | None = None,
) -> Tile:
    """A tile of a registered figure: its name, definition and drill-down come from the registry,
    and it says when its source was last read. Not measured: no figure and no colour, never a
    reassuring zero; stale: amber, with when it was last read."""
    kpi = kpis.KPIS[key]
    m = reading.measurement(kpi.source)
    if href is None:
        href = link(kpi.drill, reading.f, **dict(kpi.drill_params)) if kpi.drill.startswith("dashboards:") else ""
        if kpi.drill and not kpi.drill.startswith("dashboards:"):
            href = reverse(kpi.drill) + ("?" + urlencode(dict(kpi.drill_params)) if kpi.drill_params else "")
    tile = Tile(label or kpi.name, figure, note, href, kpi.describe(), state, question)
    if m.state == kpis.NOT_MEASURED:
        tile.figure, tile.note, tile.state, tile.unmeasured = "Not measured yet", m.note + ".", "", True
    elif m.state == kpis.STALE:
        tile.state, tile.measurement, tile.as_of = "stale", f"Stale: {m.note}", m.as_of
    elif kpi.source != kpis.HANDOFFS:
        tile.as_of = m.as_of
    return tile


@dataclass
class Table:
    name: str
    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)  # a cell is a value or (value, href)
    help: str = ""
    empty: str = "Nothing in this period."
    # The page shows the first `limit` rows; the CSV export has every row. A backlog of thousands
    # of open handoffs would otherwise make a page of thousands of table rows.
    limit: int = 200
    # A table of a backlog reads only the rows it shows: then `total` says how many there are and
    # `every_row` builds them all for the CSV export (a generator may read them as it goes).
    total: int | None = None
    every_row: Callable[[], Iterable[list[Any]]] | None = None

    @property
    def cells(self) -> list[list[dict[str, Any]]]:
        """The shown rows as {text, href} cells for the template."""
        return [
            [{"text": c[0], "href": c[1]} if isinstance(c, tuple) else {"text": c, "href": ""} for c in row]
            for row in self.rows[: self.limit]
        ]

    @property
    def hidden(self) -> int:
        """Rows not shown on the page (in the CSV export only)."""
        return max(0, (len(self.rows) if self.total is None else self.total) - self.limit)

    def all_rows(self) -> Iterable[list[Any]]:
        return self.every_row() if self.every_row is not None else self.rows


@dataclass
class Chart:
    id: str
    title: str
    figure: dict[str, Any]
    help: str = ""

    @property
    def data_id(self) -> str:
        return f"{self.id}-data"

    @property
    def has_data(self) -> bool:
        def values(trace: dict[str, Any]) -> list[Any]:
            return trace.get("x" if trace.get("orientation") == "h" else "y") or []

        return any(any(v for v in values(t) if v) for t in self.figure.get("data", []))


@dataclass
class Page:
    title: str
    intro: str
    tiles: list[Tile] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[Tile]]] = field(default_factory=list)  # titled groups of tiles


def hours_label(hours: float | None) -> str:
    if hours is None:
        return "—"
    if hours == float("inf"):
        return "over a year"
    if hours < 72:
        return f"{hours:g} h"
    return f"{hours / 24:.1f} days"


def money(value: Money | Decimal | None) -> str:
    """A money figure as a person reads it, naming what it could not convert (dashboards.money)."""
    return money_text(value, metrics.reporting_currency())


def money_state(*values: Money | Decimal | None, otherwise: str = "") -> str:
    """A tile showing a money figure that misses an amount turns amber ("incomplete"), whatever else."""
    if any(isinstance(v, Money) and not v.complete for v in values):
        return "incomplete"
    return otherwise


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def trend(now: float | None, before: float | None, unit: str = "", lower_is_better: bool = True) -> str:
    if now is None or before is None:
        return "no previous period to compare"
    delta = now - before
    if abs(delta) < 1e-9:
        return "same as the previous period"
    better = (delta < 0) == lower_is_better
    arrow = "▼" if delta < 0 else "▲"
    return f"{arrow} {abs(delta):g}{unit} vs previous period ({'better' if better else 'worse'})"


def link(name: str, f: Filters, **params: Any) -> str:
    query = {"from": f.start.isoformat(), "to": f.end.isoformat(), **{k: v for k, v in params.items() if v != ""}}
    if f.service_line:
        query["service_line"] = f.service_line
    if f.customer:
        query["customer"] = f.customer
    if f.entity_ids is not None and "legal_entity" not in query:
        if "codes" not in f.memo:
            f.memo["codes"] = ",".join(
                LegalEntity.objects.filter(pk__in=f.entity_ids).order_by("code").values_list("code", flat=True)
            )
        query["legal_entity"] = f.memo["codes"]
    return f"{reverse(name)}?{urlencode(query)}"


def batches_of(ex: dict[str, Any]) -> str:
    """ "3 of 40 batches", "1 of 1 batch"."""
    return f"{ex['exceptions']} of {count_words(ex['attempted'], 'batch', 'batches')}"


def age_bucket_link(f: Filters, lo: int, hi: int | None) -> str:
    """The handoffs behind one bar of "needing attention, by age": the handoffs list, needing
    attention, started lo..hi-1 days ago (the bucket's own rule), in the page's legal entities."""
    query: dict[str, Any] = {"status": "needs_attention", "age_min": lo}
    if hi is not None:
        query["age_max"] = hi - 1
    if f.entity_ids is not None:
        query["legal_entity"] = ",".join(
            LegalEntity.objects.filter(pk__in=f.entity_ids).order_by("code").values_list("code", flat=True)
        )
    return f"{reverse('handoffs:list')}?{urlencode(query)}"


def handoff_link(pk: int | None) -> str:
    return reverse("handoffs:detail", args=[pk]) if pk else ""


def flow_title(flow: str) -> str:
    return flow.replace("-", " ").capitalize()


# Overview ---------------------------------------------------------------------------------------
def overview(f: Filters) -> Page:
    r = kpis.Reading(f, with_previous=True)
    conv = r.conv
    stats = r.stats
    q2p, p2b = stats["quote-to-project"], stats["project-to-bill"]
    blocked, dso, cash, won, risk = r.blocked, r.dso, r.cash, r.won, r.risk
    page = Page(
        "Overview",
        "Are deals becoming projects, is approved work being billed, is billing becoming cash, and where is "
        "money stuck? From the business times the source systems reported, for the legal entities you can see.",
    )
    page.tiles = [
        kpi_tile(
            r,
            "quote-to-project.latency_median",
            hours_label(q2p.median_hours),
            f"{pct(q2p.pct_within_sla)} within SLA ({q2p.sla_label}) · {count_words(q2p.measured, 'deal')} · "
            + trend(q2p.median_hours, q2p.previous.median_hours if q2p.previous else None, " h"),
            label="Deal closed → project active (median)",
            href=link("dashboards:quote_to_project", f),
            state=_sla_state(q2p),
            question="Are deals becoming projects?",
        ),
        kpi_tile(
            r,
            "project-to-bill.latency_median",
            hours_label(p2b.median_hours),
            f"{pct(p2b.pct_within_sla)} within SLA ({p2b.sla_label}) · {money(blocked['value'])} released, "
            f"not invoiced ({count_words(blocked['count'], 'batch', 'batches')}"
            + (f", {blocked['unread']} not read from the PSA yet)" if blocked["unread"] else ")"),
            label="Approved time → invoice posted (median)",
            href=link("dashboards:project_to_bill", f),
            state=money_state(blocked["value"], otherwise="bad" if blocked["count"] else "good"),
            question="Is approved work being billed?",
        ),
        _dso_tile(f, dso, question="Is billing becoming cash?", reading=r),
        _cash_tile(f, cash, r),
        kpi_tile(
            r,
            "money_at_risk",
            money(risk["value"]),
            " · ".join(
                f"{money(p['value'])} {p['label'][:1].lower() + p['label'][1:]}" for p in risk["parts"] if p["value"]
            )
            or "none",
            state=money_state(risk["value"], otherwise="bad" if risk["value"] else "good"),
            question="Where is money stuck?",
        ),
    ]
    page.tables.append(_flows_table(f, stats))
    ex, rev, opened = r.exceptions, r.revenue, r.opened
    page.tiles.append(_wip_tile(f, r.unbilled, r))
    health = metrics.health_line(f, dead_lettered=opened["count"])
    page.tiles += [
        kpi_tile(
            r,
            "billing.exception_rate",
            pct(ex["rate"]),
            f"{ex['exceptions']} of {count_words(ex['attempted'], 'batch', 'batches')} · "
            f"{money(ex['exception_value'])} "
            f"({pct(ex['value_rate'])} of value)",
            state=money_state(ex["exception_value"], ex["value"], otherwise="bad" if ex["exceptions"] else "good"),
        ),
        kpi_tile(
            r,
            "revenue.mismatch_value",
            money(rev["value"]),
            f"{rev['open']} open · match rate {pct(rev['match_rate'])} ({rev['matched']} of {rev['checked']})",
            state=money_state(rev["value"], otherwise="bad" if rev["open"] else "good"),
        ),
        kpi_tile(
            r,
            "exceptions.open",
            str(opened["count"]),
            " · ".join(f"{b['label']}: {b['count']}" for b in opened["buckets"] if b["count"]) or "none",
            state="bad" if opened["count"] else "good",
        ),
        kpi_tile(
            r,
            "deals.won_not_activated",
            str(won["count"]),
            f"{money(won['value'])} · {won['over_sla_count']} past SLA",
            state=money_state(won["value"], otherwise="bad" if won["over_sla_count"] else ""),
        ),
    ]
    page.sections.append(("Leader figures", leader_tiles(f, conv)))
    page.notes.append(
        f"Integration: {health['attempts']} calls in 24 h, {pct(health['failure_rate'])} failed, "
        f"{health['rate_limited']} rate-limited; {health['dead_lettered']} needing attention; oldest unfinished "
        + (duration_words(health["oldest_unfinished_age"]) if health["oldest_unfinished_age"] else "none")
        + "."
    )
    page.charts.append(
        Chart(
            "chart-age",
            "Handoffs needing attention, by age",
            charts.bars(
                [b["label"] for b in opened["buckets"]],
                [b["count"] for b in opened["buckets"]],
                "handoffs",
                [age_bucket_link(f, lo, hi) for lo, hi, _label in metrics.EXCEPTION_AGE_BUCKETS],
            ),
            "Click a bar for its handoffs.",
        )
    )
    _currency_note(page, conv)
    return page


def _sla_state(s: metrics.FlowStats) -> str:
    if s.pct_within_sla is None:
        return ""
    return "bad" if s.pct_within_sla < 90 else "good"


def minutes_label(minutes: float | None) -> str:
    if minutes is None:
        return "—"
    if minutes == float("inf"):
        return "over a month"
    if minutes < 120:
        return f"{minutes:g} min"
    return hours_label(minutes / 60)


def _flows_table(f: Filters, stats: dict[str, metrics.FlowStats]) -> Table:
    """Each flow's two clocks: the business cycle against its SLA, the sync latency against its own."""
    rows = []
    for flow, s in stats.items():
        prev = s.previous
        rows.append(
            [
                (flow_title(flow), link(FLOW_PAGES.get(flow, "dashboards:items"), f, flow=flow)),
                (s.measured, link("dashboards:items", f, flow=flow, measure="measured")),
                hours_label(s.median_hours),
                hours_label(s.p90_hours),
                pct(s.pct_within_sla),
                (s.breaches, link("dashboards:items", f, flow=flow, measure="breached")),
                s.sla_label,
                trend(s.median_hours, prev.median_hours if prev else None, " h"),
                minutes_label(s.sync_median_minutes),
                pct(s.pct_sync_within_sla),
                s.sync_sla_label,
            ]
        )
    return Table(
        "flows",
        "Each flow in the period: business cycle and sync latency",
        [
            "Flow",
            "Completed",
            "Cycle median",
            "Cycle p90",
            "Within SLA",
            "Breaches",
            "SLA",
            "Median vs previous period",
            "Sync median",
            "Sync within SLA",
            "Sync SLA",
        ],
        rows,
        "Business cycle per flow: "
        + "; ".join(f"{flow_title(k)}: {v['label']}" for k, v in MEASURES.items())
        + ". Sync latency: the integration's own time from the source change to every target updated. "
        "Percentiles are nearest-rank, exact to the hour up to 3 days, to 6 h up to 14 days, to a day beyond "
        "(sync: to the minute up to 3 minutes, then 5, 10, 15, 20, 30, 45 min, 1 h …).",
    )


def _dso_figure(dso: dict[str, Any]) -> str:
    """Days, or what keeps DSO from being computed (amounts without a rate, named in the note)."""
    # Not a sum of the two parts' gaps (no business quantity): which currencies lack a rate.
    missing = sorted({*dso["receivables"].missing, *dso["billings"].missing})
    if missing:
        return f"— · no rate for {', '.join(missing)}"
    return "—" if dso["days"] is None else f"{dso['days']:.0f} days"


FLOW_PAGES = {
    "quote-to-project": "dashboards:quote_to_project",
    "project-to-bill": "dashboards:project_to_bill",
    "bill-to-cash": "dashboards:bill_to_cash",
}


def _currency_note(page: Page, conv: Converter) -> None:
    # What a figure could not convert is on that figure (money_text), not summed for the page.
    page.notes.append(metrics.policy_text(conv.target))


def _flow_common(page: Page, f: Filters, flow: str, conv: Converter) -> metrics.FlowStats:
    """The flow's two clocks: first the business cycle a leader manages, against the flow's SLA;
    then the integration's own sync latency, against its sync SLA."""
    s = metrics.flow_stats(f, flow, conv=conv)
    r = kpis.Reading(f, conv)
    page.tiles.append(
        kpi_tile(
            r,
            f"{flow}.latency_median",
            hours_label(s.median_hours),
            f"{MEASURES[flow]['label']} · "
            + trend(s.median_hours, s.previous.median_hours if s.previous else None, " h"),
            label="Business cycle (median)",
        )
    )
    page.tiles.append(
        kpi_tile(
            r, f"{flow}.latency_p90", hours_label(s.p90_hours), "nine in ten are faster", label="Business cycle (p90)"
        )
    )
    page.tiles.append(
        kpi_tile(
            r,
            f"{flow}.within_sla",
            pct(s.pct_within_sla),
            f"{s.breaches} breaches of {s.sla_label}",
            label="Cycle within SLA",
            state=("bad" if s.breaches else "good") if s.measured else "",
        )
    )
    page.tiles.append(
        kpi_tile(
            r,
            f"{flow}.sync_median",
            minutes_label(s.sync_median_minutes),
            f"p90 {minutes_label(s.sync_p90_minutes)} · {s.synced} handoffs",
            label="Sync latency (median)",
        )
    )
    page.tiles.append(
        kpi_tile(
            r,
            f"{flow}.sync_within_sla",
            pct(s.pct_sync_within_sla),
            f"{s.synced - s.sync_within_sla} over {s.sync_sla_label}",
            label="Sync within SLA",
            state=("bad" if s.synced - s.sync_within_sla else "good") if s.synced else "",
        )
    )
    weekly = metrics.weekly_latency(f, flow)
    page.charts.append(
        Chart(
            f"chart-{flow}-weekly",
            "Median and p90 by week",
            charts.weekly(
                [w["week"] for w in weekly], [w["median_hours"] for w in weekly], [w["p90_hours"] for w in weekly]
            ),
            "Hours, per ISO week the items finished in.",
        )
    )
    page.charts.append(
        Chart(
            f"chart-{flow}-dist",
            "Latency distribution",
            charts.histogram(s.hist, float(sla_for(flow).target) if sla_for(flow).unit == "hours" else None),
            "Items per latency bucket (hours).",
        )
    )
    entities = dict(LegalEntity.objects.values_list("pk", "name"))
    for dim, title in (("legal_entity_id", "By legal entity"), ("service_line", "By service line")):
        rows = []
        for r in metrics.latency_by(f, flow, dim):
            key = r[dim]
            label = entities.get(key, "—") if dim == "legal_entity_id" else (key or "—")
            params = {"flow": flow, "measure": "measured"}
            if dim == "service_line":
                params["service_line"] = key
            else:
                params["legal_entity"] = LegalEntity.objects.filter(pk=key).values_list("code", flat=True).first() or ""
            rows.append(
                [
                    (label, link("dashboards:items", f, **params)),
                    r["measured"],
                    hours_label(r["median_hours"]),
                    hours_label(r["p90_hours"]),
                    pct(r["pct_within_sla"]),
                ]
            )
        page.tables.append(Table(f"{flow}-{dim}", title, ["", "Finished", "Median", "p90", "Within SLA"], rows))
    return s


def quote_to_project(f: Filters) -> Page:
    conv = converter_for(f)
    page = Page("Quote to project", "How fast won deals become active projects in the PSA.")
    _flow_common(page, f, "quote-to-project", conv)
    won = metrics.won_not_activated(f, conv, limit=Table.limit)

    def won_rows(rows: list[dict[str, Any]], links: bool = True) -> list[list[Any]]:
        return [
            [
                (r["business_key"], handoff_link(r["id"])) if links else r["business_key"],
                r["customer_name"],
                r["service_line"],
                money(r["value"]),
                r["age"],
                STATUS_WORDS.get(r["status"], r["status"]),
            ]
            for r in rows
        ]

    page.tables.insert(
        0,
        Table(
            "won-not-activated",
            "Won, not yet a project",
            ["Deal", "Customer", "Service line", "Value", "Age (days)", "Status"],
            won_rows(won["rows"]),
            "Open quote-to-project handoffs, oldest first: age in days since the deal closed won.",
            "Every won deal has an active project.",
            total=won["count"],
            every_row=lambda: won_rows(metrics.won_not_activated(f, converter_for(f), limit=None)["rows"], links=False),
        ),
    )
    _currency_note(page, conv)
    return page


def project_to_bill(f: Filters) -> Page:
    conv = converter_for(f)
    page = Page(
        "Project to bill",
        "Approved time, expenses and completed milestones turning into ERP invoices, and the approved work "
        "not invoiced yet (unbilled WIP).",
    )
    s = _flow_common(page, f, "project-to-bill", conv)
    page.tiles.append(
        Tile(
            "Released → invoiced (median)",
            hours_label(s.extra_median_hours),
            f"p90 {hours_label(s.extra_p90_hours)}",
            "",
            "Billing batch released in the PSA → invoice created in the ERP.",
        )
    )
    blocked = metrics.blocked_billing(f, conv, limit=Table.limit)
    unbilled = wip.unbilled_wip(f, conv, released=blocked)
    reading = kpis.Reading(f, conv)
    page.tiles.insert(0, _wip_tile(f, unbilled, reading))
    psa_read = reading.measurement(kpis.PSA)
    labels = unbilled["labels"]
    page.charts.insert(
        0,
        Chart(
            "chart-wip",
            "Unbilled WIP by age",
            charts.stacked(
                labels,
                {wip.PART_LABELS[kind]: [float(v) for v in values] for kind, values in unbilled["by_kind"].items()},
                conv.target,
            ),
            "Approved work not on a posted invoice, by age: PSA items by work date, released batches by release "
            "date, invoices the ERP has not posted (draft or pending approval) by invoice date. "
            + _psa_as_of(psa_read),
        ),
    )
    psa = _psa_of(f)

    def blocked_rows(rows: list[dict[str, Any]], links: bool = True) -> list[list[Any]]:
        return [
            [
                (r["business_key"], handoff_link(r["id"])) if links else r["business_key"],
                r["customer_name"],
                f"{r['amount'] or 0:,.2f}",
                r["currency"],
                r["age"],
                STATUS_WORDS.get(r["status"], r["status"]),
            ]
            for r in rows
        ]

    handoffs_url = reverse("handoffs:list")  # once: reverse() per row of thousands costs seconds
    page.tables[0:0] = [
        Table(
            "wip-by-entity",
            "Unbilled WIP by legal entity",
            ["Legal entity", *labels, "Total"],
            [
                [name, *(money(v) for v in buckets), money(sum(buckets))]
                for name, buckets in unbilled["by_entity"].items()
            ],
            "Approved time, expenses and completed milestones the PSA has not batched, plus batches released "
            "with no ERP invoice, plus ERP invoices not posted yet (net of tax), at the period-end rate. "
            + _psa_as_of(psa_read),
            _unmeasured_empty(psa_read, "No unbilled work: everything approved is invoiced."),
        ),
        Table(
            "wip-by-project",
            "Unbilled WIP by project",
            ["Project", "Customer", "Items", "Oldest (days)", *labels, "Total"],
            [
                [
                    (
                        p["name"] or p["key"],
                        handoffs_url + "?" + urlencode({"q": p["key"].removeprefix("P-")}),
                    ),
                    p["customer"],
                    p["items"],
                    p["oldest"],
                    *(money(v) for v in p["buckets"]),
                    money(p["total"]),
                ]
                for p in unbilled["projects"]
            ],
            "Approved work the PSA has not batched, largest first; the page shows the 15 largest, Export CSV has "
            "every project. A project links to its handoffs. Batches already released are under Released, not "
            "invoiced.",
            _unmeasured_empty(psa_read, "No unbilled work: everything approved is invoiced."),
            limit=15,
        ),
        Table(
            "milestones-not-billed",
            "Milestones completed, not billed",
            ["Milestone", "Project", "Customer", "Completed", "Age (days)", "Value", "Currency"],
            [
                [
                    (m["description"], timeline.record_url(psa.get(m["legal_entity_id"]), "milestone", m["source_id"])),
                    m["project_name"] or m["project_key"],
                    m["customer_name"],
                    m["work_date"],
                    m["age"],
                    f"{m['amount']:,.2f}",
                    m["currency"],
                ]
                for m in unbilled["milestones"]
            ],
            "Milestones approved in the PSA that no billing batch holds yet, oldest first; a milestone links to "
            "the PSA record. " + _psa_as_of(psa_read),
            _unmeasured_empty(psa_read, "No completed milestone is waiting to be billed."),
        ),
        Table(
            "blocked-billing",
            "Released, not invoiced",
            ["Batch", "Customer", "Value", "Currency", "Age (days)", "Status"],
            blocked_rows(blocked["rows"]),
            "Open project-to-bill handoffs, oldest first, in the batch's currency; age in days since release.",
            "Every released batch has its invoice.",
            total=blocked["count"],
            every_row=lambda: blocked_rows(
                metrics.blocked_billing(f, converter_for(f), limit=None)["rows"], links=False
            ),
        ),
    ]
    _currency_note(page, conv)
    return page


STATUS_WORDS = {
    "needs_attention": "needs a person",
    "pending": "queued",
    "running": "running",
    "waiting_retry": "waiting to retry",
}


def _psa_of(f: Filters) -> dict[int, Any]:
    """Each visible legal entity's PSA connection (for links to PSA records)."""
    from connectors.errors import MappingError
    from pscsync.flows.routing import systems_for

    found = {}
    for entity in LegalEntity.objects.filter(connections__isnull=False).distinct():
        if f.entity_ids is None or entity.pk in f.entity_ids:
            try:
                found[entity.pk] = systems_for(entity).psa
            except MappingError:
                continue  # no single PSA serves it: its milestones are listed without a link
    return found


def _wip_tile(f: Filters, unbilled: dict[str, Any], reading: kpis.Reading | None = None) -> Tile:
    """Unbilled WIP: before the PSA was read it is not measured (never "nothing is waiting")."""
    reading = reading or kpis.Reading(f)
    ages = " · ".join(
        f"{money(sum(v[i] for v in unbilled['by_kind'].values()))} {label}"
        for i, label in enumerate(unbilled["labels"])
        if any(v[i] for v in unbilled["by_kind"].values())
    )
    return kpi_tile(
        reading,
        "billing.unbilled_wip",
        money(unbilled["value"]),
        ages or "nothing approved is waiting",
        href=link("dashboards:project_to_bill", f) + "#wip-by-entity",
        state=money_state(unbilled["value"], otherwise="bad" if unbilled["over_60"] else "good"),
    )


def _psa_as_of(m: kpis.Measurement) -> str:
    """When the PSA snapshot behind the WIP figures was read (the registry's measurement)."""
    if m.as_of is None:
        return "The PSA has not been read yet: reconciliation reads its unbilled work on its schedule."
    stale = " (stale: older than its schedule allows)" if m.state == kpis.STALE else ""
    return f"As of the last PSA read, {m.as_of:%d %b %Y %H:%M} UTC{stale}."


def _unmeasured_empty(m: kpis.Measurement, empty: str) -> str:
    """What an empty table says: good news only after a measurement."""
    if m.state == kpis.NOT_MEASURED:
        return f"Not measured yet: {m.note[:1].lower() + m.note[1:]}."
    return empty


def _dso_tile(f: Filters, d: dict[str, Any], *, question: str = "", reading: kpis.Reading | None = None) -> Tile:
    """DSO from the ERP ledger: not measured before any ERP invoice was read."""
    owed = d["ageing"]
    return kpi_tile(
        reading or kpis.Reading(f),
        "cash.dso",
        _dso_figure(d),
        f"{money(d['receivables'])} receivables at {owed['at']:%d %b %Y} · {money(owed['past_due'])} past due",
        href=link("dashboards:bill_to_cash", f) + "#receivables-ageing",
        state=money_state(d["receivables"], d["billings"], otherwise="bad" if owed["buckets"][-1] else ""),
        question=question,
    )


def _cash_tile(f: Filters, cash: dict[str, Any], reading: kpis.Reading | None = None) -> Tile:
    return kpi_tile(
        reading or kpis.Reading(f),
        "cash.collected",
        money(cash["value"]),
        f"{cash['count']} payment applications in the period",
        href=link("dashboards:bill_to_cash", f),
        state=money_state(cash["value"]),
    )


CUSTOMER_ROWS = 200  # receivables ageing: the largest customers on the page, every one in the CSV
INVOICE_ROWS = 25  # open invoices: the longest overdue on the page, every one in the CSV


def bill_to_cash(f: Filters) -> Page:
    conv = converter_for(f)
    page = Page(
        "Bill to cash",
        "Days to pay and cash collected as the ERPs' ledgers hold them (the customer's cycle), what customers "
        "owe and how late, then how fast invoice and payment status reaches CRM and PSA (the integration's own "
        "clock).",
    )
    _flow_common(page, f, "bill-to-cash", conv)
    reading = kpis.Reading(f, conv)
    books = reading.measurement(kpis.LEDGER)
    # The page shows the 200 largest customers and the 25 longest overdue invoices; the CSV exports
    # build every row (6,000 customers and 11k open invoices at the 1M-handoff firm).
    d = ledger.dso(f, conv, rows=CUSTOMER_ROWS, invoices=INVOICE_ROWS)
    owed = d["ageing"]
    billed = ledger.invoiced(f, conv)
    cash = ledger.cash_collected(f, conv)
    weeks = ledger.by_week(f, conv)
    page.charts.insert(
        0,
        Chart(
            "chart-posted-paid",
            "Invoiced and collected by week",
            charts.grouped(
                [w.isoformat() for w in weeks],
                {"Invoiced (posted)": [v[0] for v in weeks.values()], "Cash collected": [v[1] for v in weeks.values()]},
                conv.target,
            ),
            "Invoices the ERP posted, by ISO week of their posting date, and payments the ERP applied, by week of "
            "the application (month's average rate).",
        ),
    )
    page.tiles[0].label = "Days to pay (median)"
    page.tiles += [
        kpi_tile(
            reading,
            "billing.invoiced",
            money(billed["value"]),
            f"{count_words(billed['count'], 'invoice')} posted in the period",
            href=link("dashboards:items", f, flow="bill-to-cash", measure="started"),
        ),
        _cash_tile(f, cash, reading),
        _dso_tile(f, d, reading=reading),
    ]
    entities = dict(LegalEntity.objects.values_list("pk", "name"))

    def customer_row(r: dict[str, Any]) -> list[Any]:
        return [
            entities.get(r["legal_entity_id"], "—"),
            r["customer"] or "—",
            *(money(v) for v in r["buckets"]),
            money(r["total"]),
        ]

    def invoice_row(i: dict[str, Any]) -> list[Any]:
        return [
            i["number"],
            entities.get(i["legal_entity_id"], "—"),
            i["customer_name"] or "—",
            when_words(i["posting_date"], with_time=False),
            when_words(i["due_date"], with_time=False),
            i["days_past_due"],
            f"{i['open']:,.2f}",
            i["currency"],
            ErpInvoice.Status(i["status"]).label,
        ]

    per_entity = sorted((entities.get(pk, "—"), values) for pk, values in owed["entity_buckets"].items())
    page.tables[0:0] = [
        Table(
            "receivables-ageing",
            "Receivables ageing by customer",
            ["Legal entity", "Customer", *owed["labels"], "Total"],
            [customer_row(r) for r in owed["rows"]],
            f"What each customer owes at {owed['at']:%d %b %Y}: posted invoices' totals less the payments the ERP "
            "applied up to that day, by days past the due date; at the closing rate. Largest first.",
            _unmeasured_empty(books, "No customer owes anything: every posted invoice is paid."),
            limit=CUSTOMER_ROWS,
            total=owed["customers"],
            every_row=lambda: (customer_row(r) for r in owed["every_row"]()),
        ),
        Table(
            "receivables-by-entity",
            "Receivables by legal entity",
            ["Legal entity", *owed["labels"], "Total"],
            [[name, *(money(v) for v in values), money(sum(values, conv.zero()))] for name, values in per_entity],
            "The same open balances summed per legal entity.",
            _unmeasured_empty(books, "No customer owes anything: every posted invoice is paid."),
        ),
        Table(
            "open-invoices",
            "Open invoices",
            ["Invoice", "Legal entity", "Customer", "Posted", "Due", "Days past due", "Open", "Currency", "State"],
            [invoice_row(i) for i in owed["invoices"]],
            "The invoices behind the receivables, the longest overdue first, in their own currency: total less "
            "the payments applied up to the period end. The state is the ERP's today. The page shows the 25 "
            "longest overdue; Export CSV has every open invoice.",
            _unmeasured_empty(books, "No invoice is open."),
            limit=INVOICE_ROWS,
            total=owed["count"],
            every_row=lambda: (invoice_row(i) for i in ledger.open_invoices(f, owed["at"])),
        ),
    ]
    _currency_note(page, conv)
    return page


def exceptions(f: Filters) -> Page:
    conv = converter_for(f)
    page = Page("Exceptions and mismatches", "Billing exceptions and reconciliation mismatches, with their causes.")
    r = kpis.Reading(f, conv)
    ex, rev, risk = r.exceptions, r.revenue, r.risk
    reconciled = r.measurement(kpis.RECONCILIATION)
    page.tiles = [
        kpi_tile(r, "billing.exception_rate", pct(ex["rate"]), batches_of(ex)),
        kpi_tile(r, "revenue.match_rate", pct(rev["match_rate"]), f"{rev['open']} open · {money(rev['value'])}"),
        kpi_tile(
            r,
            "money_at_risk",
            money(risk["value"]),
            "",
            state=money_state(risk["value"], otherwise="bad" if risk["value"] else "good"),
            href="",
        ),
    ]
    qs = metrics.mismatches(f)
    causes: dict[str, list[Any]] = defaultdict(lambda: [0, conv.zero()])
    for cause, diff, cur in qs.values_list("cause", "difference", "currency"):
        causes[cause][0] += 1
        causes[cause][1] += conv.money(abs(diff), cur, f.end, "closing")
    labels = dict(Mismatch.Cause.choices)
    page.charts.append(
        Chart(
            "chart-causes",
            "Open mismatches by explanation",
            charts.hbars([labels.get(c, c) for c in causes], [float(v[1]) for v in causes.values()], conv.target),
            "The sum of the absolute differences, per explanation.",
        )
    )
    page.tables.append(
        Table(
            "mismatch-causes",
            "By explanation",
            ["Cause", "Open", "Value"],
            [[labels.get(c, c), v[0], money(v[1])] for c, v in sorted(causes.items(), key=lambda x: -x[1][1])],
            "Open mismatches for the period's months and contract-level ones.",
            _unmeasured_empty(
                reconciled, "No open mismatch: the systems agree. Reconciliation compares them every day."
            ),
        )
    )
    entities = dict(LegalEntity.objects.values_list("pk", "code"))
    handoffs_url = reverse("handoffs:list")  # once: reverse() per row of thousands costs seconds
    page.tables.append(
        Table(
            "mismatches",
            "Open mismatches",
            ["Comparison", "Entity", "Customer", "Subject", "Period", "Cause", "Difference", "Handoff"],
            [
                [
                    m.get_comparison_display(),
                    entities.get(m.legal_entity_id, ""),
                    m.customer_name,
                    (
                        m.subject_name or m.subject_key,
                        handoffs_url + "?" + urlencode({"q": m.subject_key.split("-", 1)[-1]}),
                    ),
                    m.period or "contract",
                    m.get_cause_display(),
                    f"{m.difference:,.2f} {m.currency}",
                    ("open", handoff_link(m.handoff_id)) if m.handoff_id else "",
                ]
                for m in qs.order_by("-difference")
            ],
            "Largest first. A subject links to the handoffs behind it.",
            _unmeasured_empty(reconciled, "No open mismatch."),
            limit=200,
        )
    )
    page.tables += _billing_exception_tables(f, conv)
    page.tables.append(_mismatches_by_customer(qs, conv, f, entities))
    page.tables[-1].empty = _unmeasured_empty(reconciled, page.tables[-1].empty)
    if reconciled.as_of:
        page.notes.insert(
            0, f"Mismatches as of the last complete reconciliation, {reconciled.as_of:%d %b %Y %H:%M} UTC."
        )
    _currency_note(page, conv)
    return page


def _billing_exception_tables(f: Filters, conv: Converter) -> list[Table]:
    """Billing batches of the period that needed a person or were rejected, by what went wrong, by
    customer, by legal entity and by project. The type is the error class of the workbench cause
    the batch was filed under; the project is read from the batch document its read step stored."""
    facts = f.apply(FlowFact.objects.filter(flow="project-to-bill", exception=True, start_day__range=(f.start, f.end)))
    # Grouped in the database, per key, currency and month (converted at the month's average rate,
    # once per group): a month of a large firm holds thousands of such batches. The type is the
    # error class of the workbench record of the batch's handoff and the project comes from the
    # batch document its read step stored, each one index probe per batch inside the query.
    keys = {
        # What went wrong: the class of the workbench cause it was filed under (every batch that
        # needed a person has one; a fallback to its failed attempts cost 270 ms at 1M).
        "type": Subquery(
            HandoffException.objects.filter(handoff_id=OuterRef("handoff_id"))
            .exclude(error_class="")
            .order_by()
            .values("error_class")[:1]
        ),
        "customer": F("customer_name"),
        "entity": F("legal_entity_id"),
        "project": Subquery(
            Step.objects.filter(handoff_id=OuterRef("handoff_id"), name="read_billing")
            .order_by()
            .values(p=KT("output__billing__project_name"))[:1]
        ),
    }
    outcome_words = {**dict(Attempt.Outcome.choices), "transient": "Vendor unavailable", "unknown": "Outcome unknown"}
    entities = dict(LegalEntity.objects.values_list("pk", "name"))
    words = {
        "type": lambda k: outcome_words.get(k or "", "Not filed in the workbench"),
        "customer": lambda k: k or "—",
        "entity": lambda k: entities.get(k, "—"),
        "project": lambda k: k or "—",
    }
    groups: dict[str, dict[str, list[Any]]] = {dim: defaultdict(lambda: [0, conv.zero()]) for dim in keys}
    for dim, key in keys.items():
        field_name = {"customer": "customer_name", "entity": "legal_entity_id"}.get(dim)
        grouped = facts.annotate(_month=TruncMonth("start_day"))
        if field_name is None:
            grouped = grouped.annotate(_key=key)
        for g in (
            grouped.values(field_name or "_key", "currency", "_month")
            .annotate(n=Count("id"), total=Sum("amount"))
            .order_by()
        ):
            month = g["_month"].date() if isinstance(g["_month"], dt.datetime) else g["_month"]
            value = conv.money(g["total"] or Decimal("0"), g["currency"], month)
            label = words[dim](g[field_name or "_key"])
            groups[dim][label][0] += g["n"]
            groups[dim][label][1] += value

    def table(dim: str, title: str, header: str, href: Callable[[str], str] | None = None) -> Table:
        ordered = sorted(groups[dim].items(), key=lambda x: -x[1][1])
        return Table(
            f"billing-exceptions-by-{dim}",
            title,
            [header, "Batches", "Value"],
            # Links only for the rows the page shows (the CSV has none): thousands of customers would
            # otherwise cost a reverse() and an entity lookup each.
            [
                [(k, href(k) if i < Table.limit else "") if href else k, v[0], money(v[1])]
                for i, (k, v) in enumerate(ordered)
            ],
            "Batches released in the period that needed a person or were rejected, at the month's average rate.",
            "No billing exception in this period.",
        )

    return [
        table("type", "Billing exceptions by type", "What went wrong"),
        table(
            "customer",
            "Billing exceptions by customer",
            "Customer",
            lambda c: link("dashboards:items", f, flow="project-to-bill", measure="exceptions", customer=c),
        ),
        table("entity", "Billing exceptions by legal entity", "Legal entity"),
        table("project", "Billing exceptions by project", "Project"),
    ]


def _mismatches_by_customer(qs: Any, conv: Converter, f: Filters, entities: dict[int, str]) -> Table:
    grouped: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, conv.zero()])
    for entity_id, customer, diff, cur in qs.values_list("legal_entity_id", "customer_name", "difference", "currency"):
        key = (entities.get(entity_id, ""), customer or "—")
        grouped[key][0] += 1
        grouped[key][1] += conv.money(abs(diff), cur, f.end, "closing")
    return Table(
        "mismatches-by-customer",
        "Open mismatches by legal entity and customer",
        ["Legal entity", "Customer", "Open", "Value"],
        [[e, c, v[0], money(v[1])] for (e, c), v in sorted(grouped.items(), key=lambda x: -x[1][1])],
        "Σ|difference| at the period-end rate.",
        "No open mismatch.",
    )


def rate_limited_last_day(f: Filters) -> int:
    """Attempts the vendors refused with 429 in the last 24 h (their Retry-After waits are in the
    calls table)."""
    return int(metrics.health_line(f)["rate_limited"])


def integration_calls(f: Filters) -> Table:
    """Calls to the vendors in the last 24 h, per connection and step (Integration health)."""
    from connectors.models import Connection

    since = metrics.clock.now() - dt.timedelta(days=1)
    names = dict(Connection.objects.values_list("pk", "name"))
    rows = metrics.attempt_stats(f, since, ("connection_id", "step"))
    return Table(
        "calls",
        "Calls per connection and step, last 24 h",
        [
            "Connection",
            "Step",
            "Calls",
            "Failed",
            "Failure rate",
            "Temporary failures",
            "Rate-limited (429)",
            "Retry-After waited",
            "p95",
        ],
        [
            [
                names.get(r["connection_id"], "pscsync (checks, no vendor call)"),
                step_name(r["step"]),
                r["attempts"],
                r["failures"],
                pct(r["failure_rate"]),
                r["transient"],
                r["rate_limited"],
                duration_words(r["retry_after_seconds"] or 0),
                "—" if r["p95_ms"] is None else f"≤ {r['p95_ms']:g} ms",
            ]
            for r in rows
        ],
        "From attempts of finished handoffs, counted once each; p95 is exact to the duration bucket.",
        "No calls in the last 24 hours.",
    )


def demand(f: Filters) -> Page:
    page = Page(
        "Resource demand",
        "Pipeline-weighted demand hours by role and month, from the latest pipeline-to-demand handoff of each open "
        "deal (plan hours × probability, spread evenly over the contract months), against the hours people are "
        "already assigned in the PSA.",
    )
    found = demand_for(f)
    months, deals, default_plan = found.hours, found.deals, found.default_plan
    all_months = sorted({m for _, m in months if m >= f.start.strftime("%Y-%m")})
    assigned = wip.assigned_hours(f, all_months)
    roles = sorted({r for r, m in months if m in all_months} | {r for r, _ in assigned})
    page.charts.append(
        Chart(
            "chart-demand",
            "Weighted demand hours by month",
            charts.stacked(all_months, {r: [months.get((r, m), 0) for m in all_months] for r in roles}),
            "Hours × probability.",
        )
    )
    page.charts.append(
        Chart(
            "chart-supply",
            "Pipeline demand against hours assigned",
            charts.grouped(
                all_months,
                {
                    "Pipeline demand (weighted)": [sum(months.get((r, m), 0) for r in roles) for m in all_months],
                    "Assigned in the PSA": [sum(assigned.get((r, m), 0) for r in roles) for m in all_months],
                },
                "hours",
            ),
            "All roles. Assigned: people scheduled on projects in the PSA (schedule hours a week, weekdays).",
        )
    )
    page.tables.append(
        Table(
            "demand",
            "Weighted demand by role and month",
            ["Role", *all_months],
            [[r, *[round(months.get((r, m), 0)) for m in all_months]] for r in roles],
            "",
            "No open deal with a resource plan. Demand appears as the CRM's opportunities change stage.",
        )
    )
    page.tables.append(
        Table(
            "assigned",
            "Hours assigned in the PSA by role and month",
            ["Role", *all_months],
            [[r, *[round(assigned.get((r, m), 0)) for m in all_months]] for r in roles],
            "Each PSA assignment's scheduled hours a week ÷ 5 per weekday of the month, for the legal entities "
            "you can see (the service-line and customer filters do not apply to people). Read from the PSA with "
            "each reconciliation; Kantata's API gives no scheduled hours, so its entities show demand only.",
            "No assignment in the PSA for these months.",
        )
    )
    if default_plan:
        page.notes.append(
            f"{default_plan} open deals use their service line's default plan (held in the PSA mapping), not shown."
        )
    page.tiles.append(
        Tile(
            "Open deals with a plan",
            str(deals),
            "",
            link("dashboards:items", f, flow="pipeline-to-demand", measure="started"),
        )
    )
    return page


ITEM_MEASURES = {
    "measured": "finished in the period (with a latency)",
    "breached": "over the SLA",
    "started": "started in the period",
    "finished": "completed in the period",
    "exceptions": "needed a person or were rejected",
    "synced": "whose last handoff updated every target in the period",
    "sync_breached": "whose last handoff took longer than the sync SLA",
}


def items(f: Filters, flow: str, measure: str) -> tuple[Page, Any]:
    """The records behind a figure: the facts, each linked to its latest handoff."""
    qs = f.apply(FlowFact.objects.all())
    if flow:
        qs = qs.filter(flow=flow)
    if measure in ("measured", "breached"):
        qs = qs.filter(measured_day__range=(f.start, f.end), latency_hours__gte=0)
        if measure == "breached":
            qs = qs.filter(within_sla=False)
    elif measure in ("synced", "sync_breached"):
        qs = qs.filter(sync_day__range=(f.start, f.end), sync_minutes__isnull=False)
        if measure == "sync_breached":
            qs = qs.filter(sync_within_sla=False)
    elif measure == "finished":
        qs = qs.filter(end_day__range=(f.start, f.end))
    else:
        qs = qs.filter(start_day__range=(f.start, f.end))
        if measure == "exceptions":
            qs = qs.filter(exception=True)
    page = Page(
        f"{flow_title(flow) if flow else 'All flows'}: items {ITEM_MEASURES.get(measure, '')}",
        "The records behind the figure. Open one for its handoff: steps, attempts and source events.",
    )
    return page, qs.order_by("-latency_hours", "key")


# Leader figures ------------------------------------------------------------------------------------
FORECAST_HELP = (
    "Resource forecast accuracy: for each month of the period that has ended, the weighted "
    "demand forecast (open deals' plan hours × probability) as it stood N days before the month (the latest "
    "weekly snapshot then) against the hours people were later assigned in the PSA and the approved hours they "
    "worked, by role. WAPE = Σ|forecast − actual| ÷ Σ actual; accuracy = 1 − WAPE, not below 0; "
    "bias = Σ(forecast − actual) ÷ Σ actual (positive: over-forecast)."
)
REVENUE_HELP = (
    "Revenue schedule accuracy, as of each legal entity's latest complete reconciliation: "
    "value accuracy = 1 − Σ|PSA − ERP| of the open revenue mismatches ÷ Σ|ERP recognised| of every "
    "project-month compared (differences within tolerance count as agreement); row match rate = project-months "
    "matched ÷ compared. Amounts at the closing rate of the period's last month."
)
EFFORT_HELP = (
    "Reconciliation effort: people's actions on exceptions and mismatches in the period (resubmit, resolve, "
    "cancel, assign, comment, bulk actions; from the audit trail) and the hours they spent. Hours are sittings: "
    "one person's actions no more than 30 minutes apart are one sitting, from its first action to its last plus "
    "10 minutes of reading before the first."
)


def _acc_text(a: leaders.Accuracy | None) -> str:
    if a is None or a.accuracy is None or a.wape is None:
        return "—"
    return f"{a.accuracy:.0f}%" + (f" (off by {a.wape:.0f}%)" if a.wape > 100 else "")


def leader_tiles(
    f: Filters,
    conv: Converter,
    fc: leaders.ForecastAccuracy | None = None,
    rev: dict[str, Any] | None = None,
    effort: dict[str, Any] | None = None,
) -> list[Tile]:
    """The three leader figures' tiles (from the figures when the caller has them already)."""
    fc = fc or leaders.forecast_accuracy(f)
    rev = rev or leaders.revenue_schedule_accuracy(f, conv, with_rows=False)
    effort = effort or leaders.reconciliation_effort(f, with_entries=False)
    head = fc.headline
    shortest = min(fc.lags, default=None)
    assigned = fc.lags[shortest]["assigned"] if shortest else None
    return [
        Tile(
            "Resource forecast accuracy",
            _acc_text(head) if head else "—",
            (
                f"{shortest}-day forecast vs hours worked · vs hours assigned {_acc_text(assigned)} · bias "
                + ("—" if head.bias is None else f"{head.bias:+.0f}%")
                if head
                else "not measured yet: no forecast snapshot is that much older than an ended month"
            ),
            link("dashboards:leaders", f) + "#forecast",
            FORECAST_HELP,
            "" if head is None or head.accuracy is None else ("good" if head.accuracy >= 80 else "bad"),
            "Are we staffing what we forecast?",
        ),
        Tile(
            "Revenue schedule accuracy",
            "—" if rev["value_accuracy"] is None else f"{rev['value_accuracy']:.1f}%",
            ("not measured yet: no reconciliation has completed · " if rev["value_accuracy"] is None else "")
            + ("the differences reach what the ERP recognised (shown as 0 %) · " if rev["floored"] else "")
            + f"match rate {pct(rev['match_rate'])} ({rev['matched']} of {rev['checked']} project-months) · "
            f"{money(rev['abs_difference'])} apart",
            link("dashboards:leaders", f) + "#revenue",
            REVENUE_HELP,
            "" if rev["value_accuracy"] is None else ("good" if rev["value_accuracy"] >= 99 else "bad"),
            "Do the PSA and the ERP recognise the same revenue?",
        ),
        Tile(
            "Reconciliation effort",
            f"{effort['hours']:g} h",
            f"{count_words(effort['actions'], 'action')} on exceptions and mismatches · "
            f"{count_words(len(effort['weeks']), 'week')}",
            link("dashboards:leaders", f) + "#effort",
            EFFORT_HELP,
            "",
            "What does keeping the systems in step cost us?",
        ),
    ]


def leaders_page(f: Filters) -> Page:
    conv = metrics.converter_for(f)  # one entity: its functional currency, as the overview
    page = Page(
        "Leader figures",
        "Resource forecast accuracy, revenue schedule accuracy and reconciliation effort, with the records each "
        "figure is built from.",
    )
    fc = leaders.forecast_accuracy(f)
    rev = leaders.revenue_schedule_accuracy(f, conv)
    effort = leaders.reconciliation_effort(f)
    page.tiles = leader_tiles(f, conv, fc, rev, effort)
    page.tables.append(
        Table(
            "forecast",
            "Resource forecast accuracy by lag",
            [
                "Made before the month",
                "Forecast (h)",
                "Worked (h)",
                "Accuracy vs worked",
                "Bias vs worked",
                "Assigned (h)",
                "Accuracy vs assigned",
                "Bias vs assigned",
            ],
            [
                [
                    f"{lag} days",
                    round(a["worked"].forecast),
                    round(a["worked"].actual),
                    _acc_text(a["worked"]),
                    "—" if a["worked"].bias is None else f"{a['worked'].bias:+.0f}%",
                    round(a["assigned"].actual),
                    _acc_text(a["assigned"]),
                    "—" if a["assigned"].bias is None else f"{a['assigned'].bias:+.0f}%",
                ]
                for lag, a in sorted(fc.lags.items())
            ],
            FORECAST_HELP,
            "Not measured yet: no month of the period has ended with a forecast snapshot taken 30 days or more "
            "before it (snapshots are kept weekly).",
        )
    )
    page.tables.append(
        Table(
            "forecast_rows",
            "Forecast against actuals by role and month",
            ["Made before the month", "Month", "Forecast of", "Role", "Forecast (h)", "Assigned (h)", "Worked (h)"],
            [
                [
                    f"{r['lag']} days",
                    r["month"],
                    f"{r['snapshot']:%d %b %Y}",
                    r["role"],
                    round(r["forecast"], 1),
                    round(r["assigned"], 1),
                    round(r["worked"], 1),
                ]
                for r in fc.rows
            ],
            "Each row is one role in one month at one lag; the table above sums them.",
            "No forecast to compare yet.",
        )
    )
    page.tables.append(
        Table(
            "revenue",
            "Revenue rows that differ (the numerator of revenue schedule accuracy)",
            [
                "Entity",
                "Project",
                "Customer",
                "Month",
                "Cause",
                "PSA",
                "ERP",
                "Difference",
                f"|Difference| ({conv.target})",
            ],
            [
                [
                    r["mismatch"].legal_entity.code.upper(),
                    r["mismatch"].subject_name or r["mismatch"].subject_key,
                    r["mismatch"].customer_name,
                    r["mismatch"].period,
                    r["mismatch"].get_cause_display(),
                    f"{Decimal(r['mismatch'].amounts.get('psa', '0')):,.2f} {r['mismatch'].currency}",
                    f"{Decimal(r['mismatch'].amounts.get('erp', '0')):,.2f} {r['mismatch'].currency}",
                    f"{r['mismatch'].difference:,.2f} {r['mismatch'].currency}",
                    money(r["abs_difference"]),
                ]
                for r in rev["rows"]
            ],
            f"{REVENUE_HELP} Σ|difference| {money(rev['abs_difference'])} of {money(rev['erp_total'])} ERP recognised.",
            "No revenue row differs in the latest reconciliation."
            if rev["checked"]
            else "Not measured yet: no reconciliation has completed.",
        )
    )
    page.tables.append(
        Table(
            "effort",
            "Reconciliation effort by week",
            ["Week of", "Actions", "People", "Exceptions and mismatches worked", "Hours"],
            [[f"{w['week']:%d %b %Y}", w["actions"], w["people"], w["items"], w["hours"]] for w in effort["weeks"]],
            EFFORT_HELP,
            "No one acted on an exception or mismatch in this period.",
        )
    )
    page.tables.append(
        Table(
            "effort_actions",
            "The actions",
            ["When", "Who", "Action", "On", "Comment"],
            [
                [
                    f"{e.created_at:%d %b %Y %H:%M}",
                    e.actor_label,
                    e.action.replace(".", " ").replace("_", " "),
                    e.object_repr,
                    e.comment,
                ]
                for e in reversed(effort["entries"])
            ],
            "Newest first; the audit trail holds each one with its before and after.",
            "No action in this period.",
        )
    )
    _currency_note(page, conv)
    return page
