"""Pages of the engine: home and the handoff list and detail. Thin: parse, select, render."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from pscsync.access import CONFIGURE, VIEW_HANDOFFS, WORK_EXCEPTIONS, navigation, permission_required
from pscsync.filters import HandoffFilter, page_params
from pscsync.flows import FLOWS
from pscsync.glossary import document_text
from pscsync.models import Handoff, LegalEntity
from pscsync.request_types import SignedInRequest
from pscsync.secrets import mask_secrets
from pscsync.selectors import events_for_handoff, handoff_get_for_user, handoffs_visible_to


@login_required
@require_GET
def home(request: SignedInRequest) -> HttpResponse:
    """Send each user to the first page their role may use."""
    items = navigation(request)["nav_items"]
    if request.user.has_perm(WORK_EXCEPTIONS) and not request.user.has_perm(CONFIGURE):
        return redirect("remediation:inbox")  # operators land on the work, not the dashboards
    if items:
        return redirect(items[0]["url"])
    return render(request, "no_access.html", status=403)


@permission_required(VIEW_HANDOFFS)
@require_GET
def handoff_list(request: SignedInRequest) -> HttpResponse:
    # The API's filter set (GET /api/v1/handoffs/?status=needs_attention&legal_entity=uk) over the
    # same scope: one definition of each filter, and bad input is refused on both alike.
    params = page_params(request.GET)
    if params is not None:
        params.pop("page", None)
    found = HandoffFilter(params or None, queryset=handoffs_visible_to(request.user), request=request)
    valid = not found.is_bound or found.is_valid()
    qs = found.qs.order_by("-created_at") if valid else Handoff.objects.none()
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    values = found.form.cleaned_data if valid and found.is_bound else {}
    entities = values.get("legal_entity") or []
    context = {
        "page": page,
        "filters": found,
        "values": {name: (params or {}).get(name, "") for name in ("status", "flow", "q", "record")},
        "query": params.urlencode() if params else "",
        "ages": {k: values[k] for k in ("age_min", "age_max") if values.get(k) is not None},
        "entities": entities,
        "entity_names": LegalEntity.objects.filter(code__in=entities).order_by("name").values_list("name", flat=True),
        "statuses": Handoff.Status.choices,
        "flows": [(f.name, f.label) for f in FLOWS.values()],
    }
    status = 200 if valid else 400
    if request.htmx and not request.htmx.boosted:
        return render(request, "handoffs/_table.html", context, status=status)
    return render(request, "handoffs/list.html", context, status=status)


@permission_required(VIEW_HANDOFFS)
@require_GET
def handoff_detail(request: SignedInRequest, pk: int) -> HttpResponse:
    handoff = handoff_get_for_user(user=request.user, pk=pk)
    steps = list(handoff.steps.select_related("target_connection").prefetch_related("attempts"))
    for step in steps:
        step.shown_attempts = [  # type: ignore[attr-defined]  # for the template only
            {
                "attempt": a,
                "request": document_text(mask_secrets(a.request)),
                "response": document_text(mask_secrets(a.response)),
            }
            for a in step.attempts.all()
        ]
    context = {
        "handoff": handoff,
        "steps": steps,
        "events": events_for_handoff(handoff),
        "flow": FLOWS.get(handoff.flow),
    }
    return render(request, "handoffs/detail.html", context)
