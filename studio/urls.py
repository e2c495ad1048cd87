from __future__ import annotations

from django.urls import path

from studio import views

app_name = "studio"
urlpatterns = [
    path("", views.mapping_list, name="list"),
    path("<int:pk>/", views.mapping_detail, name="detail"),
    path("<int:pk>/draft/", views.draft_start, name="draft"),
    path("<int:pk>/rules/<int:position>/", views.rule_save_view, name="rule"),
    path("<int:pk>/rules/<int:position>/remove/", views.rule_remove_view, name="rule_remove"),
    path("<int:pk>/rules/<int:position>/move/", views.rule_move_view, name="rule_move"),
    path("<int:pk>/value-maps/", views.value_map_save_view, name="value_map"),
    path("<int:pk>/value-maps/<str:name>.csv", views.value_map_csv, name="value_map_csv"),
    path("<int:pk>/preview/", views.preview_view, name="preview"),
    path("<int:pk>/impact/", views.impact_view, name="impact"),
    path("<int:pk>/impact/add-value/", views.value_map_add_view, name="value_map_add"),
    path("<int:pk>/publish/", views.publish_view, name="publish"),
    path("<int:pk>/discard/", views.discard_view, name="discard"),
    path("<int:pk>/rerun/", views.rerun_view, name="rerun"),
    path("<int:pk>/versions/<int:number>/", views.version_view, name="version"),
    path("<int:pk>/versions/<int:number>/restore/", views.restore_view, name="restore"),
    path("connections/<int:connection_id>/export.json", views.export_view, name="export"),
    path("connections/<int:connection_id>/import/", views.import_view, name="import"),
]
