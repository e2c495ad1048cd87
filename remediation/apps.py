from __future__ import annotations

from django.apps import AppConfig


class RemediationConfig(AppConfig):
    name = "remediation"
    verbose_name = "Exception workbench"

    def ready(self) -> None:
        # The engine knows no screen: the workbench follows every committed move of a handoff
        # through the lifecycle's listeners (DESIGN.md rule 9, and which way imports run).
        # remediation.services.exceptions_reconcile repairs what a process killed between a
        # commit and its listener left behind.
        from pscsync import lifecycle

        lifecycle.listener_add("remediation.exceptions", _handoff_moved)


def _handoff_moved(move: object) -> None:
    from remediation.services import exception_follow

    exception_follow(move)  # type: ignore[arg-type]
