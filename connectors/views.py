from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from connectors.models import Connection
from pscsync.access import CONFIGURE, permission_required, scope_queryset


@permission_required(CONFIGURE)
@require_GET
def connection_list(request: HttpRequest) -> HttpResponse:
    connections = scope_queryset(
        Connection.objects.prefetch_related("legal_entities").select_related("poll_cursor"),
        request.user,
        "legal_entities",
    )
    rows = [
        {
            "connection": c,
            "webhook_url": request.build_absolute_uri(reverse("webhook", args=[c.slug])),
            "entities": ", ".join(e.name for e in c.legal_entities.all()),
            "cursor": getattr(c, "poll_cursor", None),
        }
        for c in connections
    ]
    return render(request, "connections/list.html", {"rows": rows})
