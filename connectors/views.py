"""Admin pages for connections: list, create, edit, and "Test connection"."""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import Max, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from connectors.filters import ConnectionFilter, connections_for
from connectors.forms import ConnectionForm
from connectors.models import Connection
from connectors.registry import connector_class, connector_for
from pscsync.access import CONFIGURE, entity_ids_for, permission_required
from pscsync.crypto import CredentialsUnreadable
from pscsync.models import LegalEntity
from pscsync.services import ConnectionChangeRefused, connection_save


def _connections_for(request: HttpRequest) -> QuerySet[Connection]:
    return connections_for(request.user)


def _entities_for(request: HttpRequest) -> QuerySet[LegalEntity]:
    ids = entity_ids_for(request.user)
    return LegalEntity.objects.all() if ids is None else LegalEntity.objects.filter(pk__in=ids)


@permission_required(CONFIGURE)
@require_GET
def connection_list(request: HttpRequest) -> HttpResponse:
    # The API's filter set (GET /api/v1/connections/?kind=erp&legal_entity=uk) over the same scope.
    # The form's "any" is an empty value, which the API refuses as a mistake: the page leaves it out.
    params = request.GET.copy()
    for name in [n for n in params if not any(params.getlist(n))]:
        del params[name]
    found = ConnectionFilter(params or None, queryset=_connections_for(request), request=request)
    if found.is_bound and not found.is_valid():
        context = {"rows": [], "filters": found, "filtered": True}
        return render(request, "connections/list.html", context, status=400)
    connections = found.qs.select_related("poll_cursor")
    rows = [
        {
            "connection": c,
            "webhook_url": request.build_absolute_uri(reverse("webhook", args=[c.slug])),
            "entities": ", ".join(e.name for e in c.legal_entities.all()),
            "cursor": getattr(c, "poll_cursor", None),
        }
        for c in connections
    ]
    context = {"rows": rows, "filters": found, "filtered": found.is_bound}
    return render(request, "connections/list.html", context)


def _save(request: HttpRequest, form: ConnectionForm, slug: str) -> Connection | None:
    """Save, or put the refusal on the form (None); a change beyond the admin's scope is a 403."""
    data = form.cleaned_data
    try:
        return _connection_save(request, data, slug)
    except ConnectionChangeRefused as refusal:
        if refusal.forbidden:
            raise PermissionDenied(refusal.message) from None
        form.add_error(refusal.field, refusal.message)
        return None


def _connection_save(request: HttpRequest, data: dict, slug: str) -> Connection:
    return connection_save(
        slug=slug,
        name=data["name"],
        kind=data["kind"],
        vendor=data["vendor"],
        base_url=data["base_url"],
        api_version=data["api_version"],
        intake=data["intake"],
        rate_limit_per_minute=data["rate_limit_per_minute"],
        entities=data["legal_entities"],
        credentials=data["credentials"],
        is_sandbox=data["is_sandbox"],
        is_active=data["is_active"],
        actor=cast(User, request.user),  # the view is for signed-in admins only
    )


@permission_required(CONFIGURE)
@require_http_methods(["GET", "POST"])
def connection_create(request: HttpRequest) -> HttpResponse:
    form = ConnectionForm(request.POST or None, entities=_entities_for(request))
    if request.method == "POST" and form.is_valid():
        connection = _save(request, form, form.cleaned_data["slug"])
        if connection is not None:
            messages.success(request, f"Connection “{connection.name}” saved. Its credentials are sealed.")
            return redirect("connections:edit", pk=connection.pk)
    return render(request, "connections/form.html", {"form": form, "connection": None})


@permission_required(CONFIGURE)
@require_http_methods(["GET", "POST"])
def connection_edit(request: HttpRequest, pk: int) -> HttpResponse:
    connection = get_object_or_404(_connections_for(request), pk=pk)
    initial = {
        "name": connection.name,
        "slug": connection.slug,
        "kind": connection.kind,
        "vendor": connection.vendor,
        "base_url": connection.base_url,
        "api_version": connection.api_version,
        "intake": connection.intake,
        "rate_limit_per_minute": connection.rate_limit_per_minute,
        "legal_entities": list(connection.legal_entities.all()),
        "is_sandbox": connection.is_sandbox,
        "is_active": connection.is_active,
    }
    # A connection shared with entities outside a scoped admin's scope is theirs to read and test,
    # not to change (pscsync.services.connection_change_check refuses the save as well).
    ids = entity_ids_for(request.user)
    others = [] if ids is None else [e.name for e in connection.legal_entities.all() if e.pk not in ids]
    if others and request.method == "POST":
        raise PermissionDenied("This connection also serves legal entities outside your scope.")
    form = ConnectionForm(request.POST or None, initial=initial, entities=_entities_for(request), editing=connection)
    if request.method == "POST" and form.is_valid() and _save(request, form, connection.slug) is not None:
        messages.success(request, f"Connection “{connection.name}” saved.")
        return redirect("connections:edit", pk=connection.pk)
    webhook_url = request.build_absolute_uri(reverse("webhook", args=[connection.slug]))
    context = {
        "form": form,
        "connection": connection,
        "webhook_url": webhook_url,
        "other_entities": others,
        "api_version": connection.api_version or connector_class(connection.vendor).default_api_version,
        "findings": list(connection.governance_findings.filter(resolved_at__isnull=True)),
        "checked_at": connection.record_schemas.aggregate(at=Max("read_at"))["at"],
    }
    return render(request, "connections/form.html", context)


@permission_required(CONFIGURE)
@require_POST
def connection_test(request: HttpRequest, pk: int) -> HttpResponse:
    """Authenticate and make one cheap call; show the answer and how long it took."""
    connection = get_object_or_404(_connections_for(request), pk=pk)
    try:
        result = connector_for(connection).check()
    except (LookupError, CredentialsUnreadable) as exc:
        return render(request, "connections/_check.html", {"ok": False, "message": str(exc), "latency_ms": None})
    context = {"ok": result.ok, "message": result.message, "latency_ms": result.latency_ms}
    return render(request, "connections/_check.html", context)
