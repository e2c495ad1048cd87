"""Probes for load balancers, container runtimes and monitoring: no login, no session, no secrets."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from ops.health import readiness
from ops.metrics import render


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


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, for a scraper holding PSCSYNC_METRICS_TOKEN; absent when none is set."""
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("metrics are off: set PSCSYNC_METRICS_TOKEN")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        response = HttpResponse("a bearer token is required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
