from __future__ import annotations

from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Running pscsync in production: health, readiness, the beat leader, metrics, logs, traces."""

    name = "ops"
    verbose_name = "Operations"
