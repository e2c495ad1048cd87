from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts.oidc import SignInCallbackView, SignInRequestView
from accounts.views import SignInView
from connectors.webhooks import webhook_receive
from ops.views import healthz, metrics, readyz
from pscsync import views

handoff_patterns = (
    [path("", views.handoff_list, name="list"), path("<int:pk>/", views.handoff_detail, name="detail")],
    "handoffs",
)

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Single sign-on (accounts/oidc.py): 404 unless PSCSYNC_OIDC_CLIENT_ID is set.
    path("oidc/authenticate/", SignInRequestView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", SignInCallbackView.as_view(), name="oidc_authentication_callback"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("webhooks/<slug:slug>/", webhook_receive, name="webhook"),
    path("handoffs/", include(handoff_patterns)),
    path("dashboards/", include("dashboards.urls")),
    path("workbench/", include("remediation.urls")),
    path("connections/", include("connectors.urls")),
    path("mappings/", include("studio.urls")),
    path("account/", include("accounts.urls")),
    path("api/", include("api.urls")),
    path("account/", include("api.account_urls")),
    path("alerts/", include("alerts.urls")),
]
