from __future__ import annotations

from django.urls import path

from remediation import views

app_name = "remediation"
urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("export.csv", views.export, name="export"),
    path("causes/<int:pk>/", views.cause_detail, name="cause"),
    path("causes/<int:pk>/items/", views.cause_items, name="cause_items"),
    path("causes/<int:pk>/act/", views.cause_act, name="cause_act"),
    path("handoffs/<int:pk>/", views.handoff, name="handoff"),
    path("handoffs/<int:pk>/resubmit/", views.handoff_resubmit, name="resubmit"),
    path("handoffs/<int:pk>/act/", views.handoff_act, name="handoff_act"),
    path("handoffs/<int:pk>/compensate/", views.handoff_compensate, name="compensate"),
    path("handoffs/<int:pk>/compensation/", views.handoff_compensation, name="compensation"),
    path("bulk/", views.bulk, name="bulk"),
    path("jobs/<int:pk>/", views.job, name="job"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("replay/", views.replay, name="replay"),
    path("views/", views.saved_view_save, name="saved_view"),
    path("views/<int:pk>/delete/", views.saved_view_delete, name="saved_view_delete"),
]
