from __future__ import annotations

from django.urls import path

from connectors import views

app_name = "connections"
urlpatterns = [path("", views.connection_list, name="list")]
