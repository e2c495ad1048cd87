from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboards.queries import OVERDUE_AFTER, connection_activity, health_summary
from pscsync.access import VIEW_DASHBOARDS, permission_required


@permission_required(VIEW_DASHBOARDS)
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    context = {
        "summary": health_summary(request.user),
        "connections": connection_activity(request.user),
        "overdue_minutes": int(OVERDUE_AFTER.total_seconds() // 60),
    }
    return render(request, "dashboards/health.html", context)
