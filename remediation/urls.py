from __future__ import annotations

from django.urls import path

from remediation import views

app_name = "remediation"
urlpatterns = [path("", views.inbox, name="inbox")]
