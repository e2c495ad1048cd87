from __future__ import annotations

from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Running pscsync in production: health, readiness, the beat leader, metrics, logs, traces."""

    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        from django.core.signals import request_finished

        from ops.logs import request_finished_clear

        # Framework glue: a request's log fields end with the request (ops.logs).
        request_finished.connect(request_finished_clear, weak=False, dispatch_uid="ops-log-context")

        # Traces: set up in every process that loads Django (web, worker, beat, commands), before
        # the web handler builds its middleware and before a Celery worker forks its children.
        from django.conf import settings

        if settings.TRACING:
            from ops.tracing import tracing_setup

            tracing_setup()
