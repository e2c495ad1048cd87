from __future__ import annotations

from django.urls import path

from dashboards import views

app_name = "dashboards"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("quote-to-project/", views.quote_to_project, name="quote_to_project"),
    path("project-to-bill/", views.project_to_bill, name="project_to_bill"),
    path("bill-to-cash/", views.bill_to_cash, name="bill_to_cash"),
    path("exceptions/", views.exceptions, name="exceptions"),
    path("integration/", views.integration, name="integration"),
    path("demand/", views.demand, name="demand"),
    path("leaders/", views.leaders, name="leaders"),
    path("items/", views.items, name="items"),
    path("settings/", views.settings_page, name="settings"),
    path("health/", views.health, name="health"),
]
