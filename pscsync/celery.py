"""The Celery app. Workers and beat run the same code in the demo and in production."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pscsync.settings")

app = Celery("pscsync")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
