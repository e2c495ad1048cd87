from __future__ import annotations

from django.urls import path

from api import pages

app_name = "alerts"
urlpatterns = [
    path("", pages.subscription_list, name="list"),
    path("new/", pages.subscription_edit, name="create"),
    path("<int:pk>/", pages.subscription_edit, name="edit"),
    path("<int:pk>/test/", pages.subscription_test, name="test"),
    path("<int:pk>/delete/", pages.subscription_delete, name="delete"),
    path("deliveries/", pages.delivery_log, name="deliveries"),
]
