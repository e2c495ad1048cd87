"""Dashboard pages, their CSV exports and the metrics JSON. Thin: parse filters, read, render."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from csp.decorators import csp_update
from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from connectors.models import Connection
from dashboards import ledger, metrics, pages, wip
from dashboards.facts import MEASURES, sla_for
from dashboards.metrics import Filters
from dashboards.models import FlowSla, FxRate
from dashboards.queries import OVERDUE_AFTER, connection_activity, health_summary
from dashboards.services import flow_sla_set
from pscsync import clock
from pscsync.access import CONFIGURE, VIEW_DASHBOARDS, entity_ids_for, permission_required
from pscsync.audit import audit_record
from pscsync.csvsafe import SafeWriter
from pscsync.models import LegalEntity

DASH_PAGES = [
    ("dashboards:overview", "Overview"),
    ("dashboards:quote_to_project", "Quote to project"),
    ("dashboards:project_to_bill", "Project to bill"),
    ("dashboards:bill_to_cash", "Bill to cash"),
    ("dashboards:exceptions", "Exceptions & mismatches"),
    ("dashboards:integration", "Integration health"),
    ("dashboards:demand", "Resource demand"),
]


def _date(value: str | None, default: dt.date) -> dt.date:
    try:
        return dt.date.fromisoformat(value) if value else default
    except ValueError:
        return default


def filters_from(request: HttpRequest) -> Filters:
    """The URL's filters, limited to the user's legal entities (a code outside them is ignored)."""
    today = clock.now().date()
    end = _date(request.GET.get("to"), today)
    start = _date(request.GET.get("from"), end - dt.timedelta(days=29))
    if start > end:
        start, end = end, start
    allowed = entity_ids_for(request.user)
    codes = [c for c in request.GET.get("legal_entity", "").split(",") if c]
    ids: tuple[int, ...] | None = allowed if allowed is None else tuple(allowed)
    if codes:
        wanted = set(LegalEntity.objects.filter(code__in=codes).values_list("pk", flat=True))
        ids = tuple(sorted(wanted if allowed is None else wanted & set(allowed)))
    conn = Connection.objects.filter(slug=request.GET.get("connection", "")).values_list("pk", flat=True).first()
    return Filters(
        start=start,
        end=end,
        entity_ids=ids,
        service_line=request.GET.get("service_line", "").strip(),
        customer=request.GET.get("customer", "").strip(),
        connection_id=conn,
    )


def _filter_context(request: HttpRequest, f: Filters) -> dict[str, Any]:
    allowed = entity_ids_for(request.user)
    entities = LegalEntity.objects.all() if allowed is None else LegalEntity.objects.filter(pk__in=allowed)
    return {
        "f": f,
        "entities": entities,
        "selected_entity": request.GET.get("legal_entity", ""),
        "connections": Connection.objects.order_by("name").values_list("slug", "name"),
        "selected_connection": request.GET.get("connection", ""),
        "dash_pages": DASH_PAGES,
        "reporting_currency": metrics.reporting_currency(),
    }


def _csv(table: pages.Table, filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
    writer = SafeWriter(response)  # vendor text never runs as a spreadsheet formula
    writer.writerow(table.headers)
    for row in table.all_rows():
        writer.writerow([c[0] if isinstance(c, tuple) else c for c in row])
    return response


def _page_view(builder: Callable[[Filters], pages.Page], url_name: str) -> Callable[[HttpRequest], HttpResponse]:
    # plotly.js sets inline styles on the elements it draws (and adds its own <style>): chart pages
    # allow inline *styles*; scripts stay nonce-only everywhere (docs/security.md).
    @csp_update({"style-src": ["'unsafe-inline'"]})
    @permission_required(VIEW_DASHBOARDS)
    @require_GET
    def view(request: HttpRequest) -> HttpResponse:
        f = filters_from(request)
        page = builder(f)
        wanted = request.GET.get("csv")
        if wanted:
            table = next((t for t in page.tables if t.name == wanted), None)
            if table is None:
                raise Http404("no such table")
            return _csv(table, f"{wanted}-{f.start}-{f.end}")
        return render(
            request, "dashboards/page.html", {"page": page, "url_name": url_name, **_filter_context(request, f)}
        )

    view.__name__ = url_name.split(":")[1]
    return view


overview = _page_view(pages.overview, "dashboards:overview")
quote_to_project = _page_view(pages.quote_to_project, "dashboards:quote_to_project")
project_to_bill = _page_view(pages.project_to_bill, "dashboards:project_to_bill")
bill_to_cash = _page_view(pages.bill_to_cash, "dashboards:bill_to_cash")
exceptions = _page_view(pages.exceptions, "dashboards:exceptions")
integration = _page_view(pages.integration, "dashboards:integration")
demand = _page_view(pages.demand, "dashboards:demand")


@permission_required(VIEW_DASHBOARDS)
@require_GET
def items(request: HttpRequest) -> HttpResponse:
    f = filters_from(request)
    flow = request.GET.get("flow", "")
    measure = request.GET.get("measure", "measured")
    page, qs = pages.items(f, flow, measure)
    entities = dict(LegalEntity.objects.values_list("pk", "code"))
    headers = [
        "Item",
        "Flow",
        "Entity",
        "Customer",
        "Service line",
        "Amount",
        "Currency",
        "Started",
        "Finished",
        "Latency (h)",
        "Within SLA",
        "Exception",
        "Handoffs",
    ]

    def row(x: Any) -> list[Any]:
        return [
            (x.key, pages.handoff_link(x.handoff_id)),
            x.flow,
            entities.get(x.legal_entity_id, ""),
            x.customer_name,
            x.service_line,
            x.amount,
            x.currency,
            x.start_at.isoformat() if x.start_at else "",
            x.end_at.isoformat() if x.end_at else "open",
            "" if x.latency_hours is None else round(x.latency_hours, 1),
            {True: "yes", False: "no", None: ""}[x.within_sla],
            "yes" if x.exception else "",
            x.handoff_count,
        ]

    if request.GET.get("csv"):
        return _csv(pages.Table("items", "", headers, [row(x) for x in qs.iterator()]), f"items-{flow}-{measure}")
    paged = Paginator(qs, 50).get_page(request.GET.get("page"))
    page.tables.append(
        pages.Table(
            "items",
            f"{paged.paginator.count} items",
            headers,
            [row(x) for x in paged],
            "",
            "No record behind this figure for these filters.",
        )
    )
    return render(
        request,
        "dashboards/page.html",
        {"page": page, "paged": paged, "url_name": "dashboards:items", **_filter_context(request, f)},
    )


def metrics_payload(f: Filters) -> dict[str, Any]:
    """Every overview KPI with value, unit, count of records and definition (GET /api/v1/metrics/, api.views)."""
    conv = metrics.Converter()
    cur = metrics.reporting_currency()
    out: list[dict[str, Any]] = []

    def add(key: str, value: Any, unit: str, count: int, definition: str) -> None:
        if hasattr(value, "quantize"):
            value = str(value)
        if isinstance(value, float) and not math.isfinite(value):
            # A percentile in the histogram's open last bucket: over a year. JSON has no infinity.
            value = None
            definition += " Null: longer than the histograms resolve (over a year)."
        out.append({"key": key, "value": value, "unit": unit, "count": count, "definition": definition})

    stats = {}
    for flow in metrics.FLOWS:
        s = stats[flow] = metrics.flow_stats(f, flow, conv=conv, with_previous=False)
        label = MEASURES[flow]["label"]
        add(f"{flow}.finished", s.finished, "count", s.finished, f"Items of {flow} completed in the period.")
        add(f"{flow}.latency_median", s.median_hours, "hours", s.measured, f"Nearest-rank median of: {label}.")
        add(f"{flow}.latency_p90", s.p90_hours, "hours", s.measured, f"Nearest-rank 90th percentile of: {label}.")
        add(
            f"{flow}.within_sla",
            s.pct_within_sla,
            "percent",
            s.measured,
            f"Share measured within the SLA ({sla_for(flow).target_label}).",
        )
    blocked = metrics.blocked_billing(f, conv, with_rows=False)
    add(
        "billing.released_not_invoiced",
        blocked["value"],
        cur,
        blocked["count"],
        "Billing batches released in the PSA with no ERP invoice yet, at the period-end rate.",
    )
    unbilled = wip.unbilled_wip(f, conv, detail=False, released=blocked)
    add(
        "billing.unbilled_wip",
        unbilled["value"],
        cur,
        unbilled["count"],
        "Approved billable time, expenses and completed milestones not in a PSA billing batch (as of the last "
        "PSA read) + batches released with no ERP invoice + ERP invoices not posted yet (draft or pending "
        "approval, net of tax), at the period-end rate.",
    )
    add(
        "billing.unbilled_wip_over_60_days",
        unbilled["over_60"],
        cur,
        unbilled["count"],
        "The part of unbilled WIP older than 60 days (work date; release date for batches).",
    )
    ex = metrics.billing_exceptions(f, conv, rows=stats["project-to-bill"].rows)
    add(
        "billing.exception_rate",
        ex["rate"],
        "percent",
        ex["attempted"],
        "Batches released in the period that needed a person or were rejected ÷ batches released.",
    )
    add("billing.exception_value", ex["exception_value"], cur, ex["exceptions"], "Value of those batches.")
    rev = metrics.revenue_accuracy(f, conv)
    add("revenue.mismatch_value", rev["value"], cur, rev["open"], "Σ|PSA − ERP| of open revenue mismatches.")
    add(
        "revenue.match_rate",
        rev["match_rate"],
        "percent",
        rev["checked"],
        "Matched ÷ checked in each entity's latest complete reconciliation.",
    )
    d = ledger.dso(f, conv)
    add("cash.dso", d["days"], "days", d["invoices"], ledger.DSO_DEFINITION)
    owed = d["ageing"]
    add(
        "cash.receivables",
        owed["value"],
        cur,
        owed["count"],
        "Posted invoices' totals less the payments the ERP applied up to the period end, at the period-end rate.",
    )
    for (low, high, label), value, count in zip(ledger.AGEING_BUCKETS, owed["buckets"], owed["counts"], strict=True):
        band = "current" if low is None else f"{low}_{high}_days" if high else f"over_{low - 1}_days"
        add(f"cash.receivables_{band}", value, cur, count, f"Receivables {label.lower()} (by due date).")
    billed = ledger.invoiced(f, conv)
    add(
        "billing.invoiced",
        billed["value"],
        cur,
        billed["count"],
        "Invoices the ERP posted in the period, by posting date (drafts, pending approval, voided not counted).",
    )
    cash = ledger.cash_collected(f, conv)
    add(
        "cash.collected",
        cash["value"],
        cur,
        cash["count"],
        "Payments the ERP applied to invoices in the period, by application date, at the month's average rate.",
    )
    b2c = stats["bill-to-cash"]
    add(
        "bill-to-cash.days_to_pay_median",
        b2c.extra_median_hours,
        "hours",
        sum(b2c.extra_hist.values()),
        f"Nearest-rank median of: {MEASURES['bill-to-cash']['extra']}.",
    )
    won = metrics.won_not_activated(f, conv, with_rows=False)
    add("deals.won_not_activated", won["count"], "count", won["count"], "Won deals whose project is not active yet.")
    add(
        "deals.won_not_activated_value",
        won["value"],
        cur,
        won["count"],
        "Value of those deals, at the period-end rate.",
    )
    add(
        "deals.won_not_activated_past_sla",
        won["over_sla_count"],
        "count",
        won["count"],
        f"Those of them older than the quote-to-project SLA ({sla_for('quote-to-project').target_label}).",
    )
    opened = metrics.open_exceptions(f, conv)
    add("exceptions.open", opened["count"], "count", opened["count"], "Handoffs that need a person.")
    risk = metrics.money_at_risk(f, conv, blocked=blocked, won=won)
    add(
        "money_at_risk",
        risk["value"],
        cur,
        len(risk["parts"]),
        "Released-not-invoiced + won deals not activated past SLA + open billing/revenue mismatch |Δ|.",
    )
    return {
        "from": f.start.isoformat(),
        "to": f.end.isoformat(),
        "reporting_currency": cur,
        "currency_policy": metrics.policy_text(),
        "unconverted": {k: str(v) for k, v in conv.unconverted.items()},
        "metrics": out,
    }


class SlaForm(forms.Form):
    flow = forms.ChoiceField(choices=[(f, f) for f in MEASURES])
    target = forms.DecimalField(min_value=0, max_digits=8, decimal_places=2)
    unit = forms.ChoiceField(choices=FlowSla.Unit.choices)


class FxForm(forms.Form):
    currency = forms.RegexField(regex=r"^[A-Z]{3}$")
    month = forms.RegexField(regex=r"^\d{4}-\d{2}$")
    kind = forms.ChoiceField(choices=FxRate.Kind.choices)
    rate = forms.DecimalField(min_value=0, max_digits=18, decimal_places=8)


@permission_required(CONFIGURE)
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    """Admins set each flow's SLA and the FX rates to the reporting currency."""
    sla_form, fx_form = SlaForm(prefix="sla"), FxForm(prefix="fx")
    if request.method == "POST":
        if "sla-flow" in request.POST:
            sla_form = SlaForm(request.POST, prefix="sla")
            if sla_form.is_valid():
                d = sla_form.cleaned_data
                flow_sla_set(actor=request.user, flow=d["flow"], target=d["target"], unit=d["unit"])
                messages.success(request, f"SLA for {d['flow']} saved; breach flags are being recomputed.")
                return redirect("dashboards:settings")
        else:
            fx_form = FxForm(request.POST, prefix="fx")
            if fx_form.is_valid():
                d = fx_form.cleaned_data
                rate, _ = FxRate.objects.update_or_create(
                    currency=d["currency"], month=d["month"], kind=d["kind"], defaults={"rate": d["rate"]}
                )
                audit_record(actor=request.user, action="fx_rate.set", obj=rate, after={"rate": str(d["rate"])})
                messages.success(request, "Rate saved.")
                return redirect("dashboards:settings")
    context = {
        "slas": [sla_for(f) for f in MEASURES],
        "measures": MEASURES,
        "rates": FxRate.objects.all()[:100],
        "sla_form": sla_form,
        "fx_form": fx_form,
        "reporting_currency": metrics.reporting_currency(),
        "dash_pages": DASH_PAGES,
    }
    return render(request, "dashboards/settings.html", context)


@permission_required(VIEW_DASHBOARDS)
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    context = {
        "summary": health_summary(request.user),
        "connections": connection_activity(request.user),
        "overdue_minutes": int(OVERDUE_AFTER.total_seconds() // 60),
    }
    return render(request, "dashboards/health.html", context)
