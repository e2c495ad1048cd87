from __future__ import annotations

from django.urls import path

from alerts import views

app_name = "alerts"
urlpatterns = [
    path("", views.subscription_list, name="list"),
    path("new/", views.subscription_edit, name="create"),
    path("<int:pk>/", views.subscription_edit, name="edit"),
    path("<int:pk>/test/", views.subscription_test, name="test"),
    path("<int:pk>/delete/", views.subscription_delete, name="delete"),
    path("deliveries/", views.delivery_log, name="deliveries"),
]
