"""Dashboard pages, their CSV exports and the metrics JSON. Thin: parse filters, read, render."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

from csp.decorators import csp_update
from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from connectors.models import Connection, GovernanceFinding
from dashboards import kpis, metrics, pages
from dashboards.facts import MEASURES, sla_for
from dashboards.fx import fx_last_read, fx_rate_override, known_currencies
from dashboards.metrics import Filters
from dashboards.models import FlowSla, FxRate
from dashboards.queries import OVERDUE_AFTER, connection_activity, health_summary
from dashboards.services import flow_sla_set
from pscsync import clock
from pscsync.access import CONFIGURE, VIEW_DASHBOARDS, entity_ids_for, permission_required, scope_queryset
from pscsync.csvsafe import SafeWriter
from pscsync.glossary import count_words, flow_name, money_words, when_words
from pscsync.models import LegalEntity

DASH_PAGES = [
    ("dashboards:overview", "Overview"),
    ("dashboards:quote_to_project", "Quote to project"),
    ("dashboards:project_to_bill", "Project to bill"),
    ("dashboards:bill_to_cash", "Bill to cash"),
    ("dashboards:exceptions", "Exceptions & mismatches"),
    ("dashboards:health", "Integration health"),
    ("dashboards:demand", "Resource demand"),
    ("dashboards:leaders", "Leader figures"),
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
        # A currency we hold no rates for is ignored like an unknown entity code (the API says 422).
        currency=currency if (currency := request.GET.get("currency", "")) in known_currencies() else "",
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
        "currencies": known_currencies(),
        "default_currency_label": f"Default ({metrics.figure_currency(replace(f, currency=''))})",
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


@permission_required(VIEW_DASHBOARDS)
@require_GET
def integration(request: HttpRequest) -> HttpResponse:
    """The page that was merged into Integration health: old links land there."""
    query = request.GET.urlencode()
    return redirect(reverse("dashboards:health") + (f"?{query}" if query else ""), permanent=True)


demand = _page_view(pages.demand, "dashboards:demand")
leaders = _page_view(pages.leaders_page, "dashboards:leaders")


@permission_required(VIEW_DASHBOARDS)
@require_GET
def items(request: HttpRequest) -> HttpResponse:
    f = filters_from(request)
    flow = request.GET.get("flow", "")
    measure = request.GET.get("measure", "measured")
    page, qs = pages.items(f, flow, measure)
    entities = dict(LegalEntity.objects.values_list("pk", "name"))
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
        "Cycle (h)",
        "Within SLA",
        "Sync (min)",
        "Exception",
        "Handoffs",
    ]

    def row(x: Any, *, page: bool = True) -> list[Any]:
        # The page shows money as money ("£12,435.00"); the CSV keeps the number for a spreadsheet.
        return [
            (x.key, pages.handoff_link(x.handoff_id)),
            flow_name(x.flow),
            entities.get(x.legal_entity_id, ""),
            x.customer_name,
            x.service_line,
            money_words(x.amount, x.currency) if page else x.amount,
            x.currency,
            when_words(x.start_at) if x.start_at else "",
            when_words(x.end_at) if x.end_at else "open",
            "" if x.latency_hours is None else round(x.latency_hours, 1),
            {True: "yes", False: "no", None: ""}[x.within_sla],
            "" if x.sync_minutes is None else round(x.sync_minutes, 1),
            "yes" if x.exception else "",
            x.handoff_count,
        ]

    if request.GET.get("csv"):
        return _csv(
            pages.Table("items", "", headers, [row(x, page=False) for x in qs.iterator()]), f"items-{flow}-{measure}"
        )
    paged = Paginator(qs, 50).get_page(request.GET.get("page"))
    page.tables.append(
        pages.Table(
            "items",
            count_words(paged.paginator.count, "item"),
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
    """Every registered KPI with value, unit, count, definition, state and as-of time (GET
    /api/v1/metrics/, api.views): read from the registry, dashboards.kpis."""
    return kpis.payload(f)


class SlaForm(forms.Form):
    flow = forms.ChoiceField(choices=[(f, f) for f in MEASURES])
    target = forms.DecimalField(min_value=0, max_digits=8, decimal_places=2)
    unit = forms.ChoiceField(choices=FlowSla.Unit.choices)
    sync_target_minutes = forms.IntegerField(
        min_value=1, max_value=43200, required=False, label="Sync SLA (minutes)", help_text="Empty: keep it."
    )


class FxForm(forms.Form):
    currency = forms.RegexField(regex=r"^[A-Z]{3}$", help_text="From, e.g. GBP")
    to_currency = forms.RegexField(regex=r"^[A-Z]{3}$", help_text="To, e.g. USD")
    month = forms.RegexField(regex=r"^\d{4}-(0[1-9]|1[0-2])$", error_messages={"invalid": "Give the month as YYYY-MM."})
    kind = forms.ChoiceField(choices=FxRate.Kind.choices)
    rate = forms.DecimalField(
        required=False, min_value=Decimal("0.00000001"), max_digits=18, decimal_places=8, help_text="Empty: clear"
    )
    reason = forms.CharField(required=False, max_length=200)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("currency") and data.get("currency") == data.get("to_currency"):
            raise forms.ValidationError("A rate converts between two different currencies.")
        return data


@permission_required(CONFIGURE)
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    """Admins set each flow's SLA, and may override a month's FX rate read from the ERPs (audited)."""
    sla_form, fx_form = SlaForm(prefix="sla"), FxForm(prefix="fx")
    if request.method == "POST":
        if "sla-flow" in request.POST:
            sla_form = SlaForm(request.POST, prefix="sla")
            if sla_form.is_valid():
                d = sla_form.cleaned_data
                flow_sla_set(
                    actor=request.user,
                    flow=d["flow"],
                    target=d["target"],
                    unit=d["unit"],
                    sync_target_minutes=d["sync_target_minutes"],
                )
                messages.success(request, f"SLA for {d['flow']} saved; breach flags are being recomputed.")
                return redirect("dashboards:settings")
        else:
            fx_form = FxForm(request.POST, prefix="fx")
            if fx_form.is_valid():
                d = fx_form.cleaned_data
                fx_rate_override(
                    actor=request.user,
                    currency=d["currency"],
                    to_currency=d["to_currency"],
                    month=d["month"],
                    kind=d["kind"],
                    rate=d["rate"],
                    reason=d["reason"],
                )
                done = "overridden: it wins over the ERP's rate" if d["rate"] is not None else "back to the ERP's rate"
                messages.success(request, f"{d['currency']} → {d['to_currency']} {d['month']} {done}.")
                return redirect("dashboards:settings")
        # Here only when the form was not valid: it is shown again with what is wrong, nothing changed.
        return render(request, "dashboards/settings.html", _settings_context(sla_form, fx_form), status=400)
    return render(request, "dashboards/settings.html", _settings_context(sla_form, fx_form))


def _settings_context(sla_form: SlaForm, fx_form: FxForm) -> dict[str, Any]:
    return {
        "slas": [sla_for(f) for f in MEASURES],
        "measures": MEASURES,
        "rates": FxRate.objects.select_related("connection", "overridden_by").order_by("-month", "currency", "kind")[
            :120
        ],
        "rates_read": fx_last_read(),
        "sla_form": sla_form,
        "fx_form": fx_form,
        "reporting_currency": metrics.reporting_currency(),
        "dash_pages": DASH_PAGES,
    }


@permission_required(VIEW_DASHBOARDS)
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    """One Integration health page: the handoffs' state (scoped to the user's entities), the
    vendor calls of the last 24 h per connection and step, and each connection's activity."""
    f = filters_from(request)
    calls = pages.integration_calls(f)
    if request.GET.get("csv") == calls.name:
        return _csv(calls, f"{calls.name}-{clock.now().date()}")
    context = {
        "summary": health_summary(request.user),
        "calls": calls,
        "rate_limited": pages.rate_limited_last_day(f),
        "connections": connection_activity(request.user),
        "findings": list(
            scope_queryset(
                GovernanceFinding.objects.filter(resolved_at__isnull=True).select_related("connection"),
                request.user,
                "connection__legal_entities",
            ).distinct()
        ),
        "overdue_minutes": int(OVERDUE_AFTER.total_seconds() // 60),
        "dash_pages": DASH_PAGES,
        "url_name": "dashboards:health",
    }
    return render(request, "dashboards/health.html", context)
