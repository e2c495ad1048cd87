"""Start-up checks for settings whose mistakes lose or duplicate work silently."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_queue_timings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    hard = settings.TASK_HARD_TIME_LIMIT_SECONDS
    if not settings.CELERY_BROKER_URL.startswith("filesystem://") and hard >= settings.VISIBILITY_TIMEOUT_SECONDS - 30:
        errors.append(
            Error(
                f"The task time limit ({hard} s) must be at least 30 s below the broker's visibility timeout "
                f"({settings.VISIBILITY_TIMEOUT_SECONDS} s), or Redis redelivers running tasks (celery#2599).",
                id="pscsync.E001",
            )
        )
    if settings.LEASE_SECONDS <= hard:
        errors.append(
            Error(
                f"PSCSYNC_LEASE_SECONDS ({settings.LEASE_SECONDS}) must exceed the task time limit ({hard}), "
                "or a live worker can lose its handoff to another mid-step.",
                id="pscsync.E002",
            )
        )
    return errors
