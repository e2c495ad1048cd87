"""/api/: the versioned REST API, its OpenAPI schema and the offline docs."""

from __future__ import annotations

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from api import views
from api.errors import api_not_found

app_name = "api"


class Router(DefaultRouter):
    include_root_view = False


router = Router()
router.register("handoffs", views.HandoffViewSet, basename="handoff")
router.register("events", views.EventViewSet, basename="event")
router.register("exceptions", views.ExceptionViewSet, basename="exception")
router.register("jobs", views.BulkJobViewSet, basename="job")
router.register("mappings", views.MappingViewSet, basename="mapping")
router.register("connections", views.ConnectionViewSet, basename="connection")
router.register("mismatches", views.MismatchViewSet, basename="mismatch")
router.register("audit-entries", views.AuditEntryViewSet, basename="audit-entry")
router.register("exception-causes", views.ExceptionCauseViewSet, basename="exception-cause")
router.register("saved-views", views.SavedViewViewSet, basename="saved-view")
router.register("replays", views.ReplayViewSet, basename="replay")
router.register("reconciliation-runs", views.ReconciliationRunViewSet, basename="reconciliation-run")
router.register("slas", views.FlowSlaViewSet, basename="sla")

urlpatterns = [
    path("v1/", include(router.urls)),
    path("v1/exception-groups/", views.ExceptionGroupListView.as_view(), name="exception-group-list"),
    path("v1/exception-groups/<str:gid>/", views.ExceptionGroupDetailView.as_view(), name="exception-group-detail"),
    path("v1/metrics/", views.MetricsView.as_view(), name="metrics"),
    path("v1/metrics/latency/", views.LatencySeriesView.as_view(), name="metrics-latency"),
    path("v1/metrics/health/", views.HealthMetricsView.as_view(), name="metrics-health"),
    path("v1/metrics/connections/", views.ConnectionActivityView.as_view(), name="metrics-connections"),
    path("schema/", SpectacularAPIView.as_view(api_version="v1"), name="schema"),
    # The split view serves its start-up script as a file: no inline script for the CSP to refuse.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
    # Any character, newlines included: every unknown path answers in the API's shape.
    re_path(r"^[\s\S]*$", api_not_found, name="not-found"),
]
