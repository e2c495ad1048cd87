from __future__ import annotations

from django.urls import path

from api import pages

app_name = "account"
urlpatterns = [
    path("tokens/", pages.token_list, name="tokens"),
    path("tokens/<int:pk>/revoke/", pages.token_revoke, name="token-revoke"),
]
