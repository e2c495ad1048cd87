from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    name = "dashboards"
    verbose_name = "Dashboards"

    def ready(self) -> None:
        # The engine knows no screen: the dashboards listen for handoffs reaching an end state and
        # update their aggregates after the runner's commit (never inside its transaction).
        from django.db import transaction
        from django.db.models.signals import post_save

        from pscsync.models import Handoff

        def _on_handoff_saved(sender: Any, instance: Handoff, update_fields: Any = None, **kwargs: Any) -> None:
            from dashboards.backlog import backlog_sync_safely, save_may_move
            from dashboards.facts import END_STATES, handoff_finished_safely

            handoff_id = instance.pk
            if instance.status in END_STATES:
                transaction.on_commit(lambda: handoff_finished_safely(handoff_id))
            # The open backlog follows every save that can move the handoff between groups (it
            # opens, changes status, learns its release date or amount, closes).
            if save_may_move(instance.flow, instance.status, update_fields):
                transaction.on_commit(lambda: backlog_sync_safely(handoff_id))

        post_save.connect(_on_handoff_saved, sender=Handoff, weak=False, dispatch_uid="dashboards-handoff-finished")
