from __future__ import annotations

from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    name = "dashboards"
    verbose_name = "Dashboards"

    def ready(self) -> None:
        # The engine knows no screen: the dashboards follow every committed move of a handoff
        # through the lifecycle's listeners (told after the mover's commit, never inside its
        # transaction) and update their aggregates. The beat jobs (rollups_catch_up,
        # backlog_repair) put right what a process killed between commit and listener missed.
        from pscsync import ledger, lifecycle

        lifecycle.listener_add("dashboards.aggregates", _handoff_moved)
        # The money cycles end on the ERP ledger's days (posted, paid): a move there refreshes them.
        ledger.listener_add("dashboards.facts", _invoice_moved)


def _invoice_moved(invoice_id: int) -> None:
    from dashboards.facts import ledger_moved_safely

    ledger_moved_safely(invoice_id)


def _handoff_moved(move: object) -> None:
    from dashboards.backlog import backlog_sync_safely, move_may_move
    from dashboards.facts import END_STATES, handoff_finished_safely

    # An end state adds the item's delta to the rollups; so does leaving one (a resubmit puts the
    # item back in progress), so the rollups equal a rebuild whenever no handoff is mid-run.
    if move.to_status in END_STATES or move.from_status in END_STATES:  # type: ignore[attr-defined]
        handoff_finished_safely(move.handoff_id)  # type: ignore[attr-defined]
    # The open backlog follows every move that can take the handoff into, out of or between groups.
    if move_may_move(move.flow, move.from_status, move.to_status):  # type: ignore[attr-defined]
        backlog_sync_safely(move.handoff_id)  # type: ignore[attr-defined]
