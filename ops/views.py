"""Probes for load balancers, container runtimes and monitoring: no login, no session, no secrets."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from ops.health import readiness


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the web process answers. It reads nothing, so a database outage never gets a
    healthy web process restarted (readiness is /readyz)."""
    return JsonResponse({"ok": True})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness of the whole engine: 200 when every check passes, else 503 naming what is wrong."""
    checks = readiness()
    failing = [c.name for c in checks if not c.ok]
    body = {
        "ok": not failing,
        "failing": failing,
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
    return JsonResponse(body, status=503 if failing else 200)
