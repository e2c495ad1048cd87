from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from pscsync.lifecycle import Move


class RemediationConfig(AppConfig):
    name = "remediation"
    verbose_name = "Exception workbench"

    def ready(self) -> None:
        # The engine knows no screen: the workbench follows every committed move of a handoff
        # through the lifecycle's listeners (DESIGN.md rule 9, and which way imports run).
        # remediation.services.exceptions_reconcile repairs what a process killed between a
        # commit and its listener left behind.
        from pscsync import lifecycle

        # Told once per worker batch with its moves (lifecycle.moves_batched): one query a batch.
        lifecycle.listener_add("remediation.exceptions", _handoffs_moved, batch=True)


def _handoffs_moved(moves: list[Move]) -> None:
    from remediation.services import exceptions_follow

    exceptions_follow(moves)
