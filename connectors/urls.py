from __future__ import annotations

from django.urls import path

from connectors import views

app_name = "connections"
urlpatterns = [
    path("", views.connection_list, name="list"),
    path("new/", views.connection_create, name="create"),
    path("<int:pk>/", views.connection_edit, name="edit"),
    path("<int:pk>/test/", views.connection_test, name="test"),
]
