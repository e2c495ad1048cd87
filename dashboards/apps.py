from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from pscsync.lifecycle import Move


class DashboardsConfig(AppConfig):
    name = "dashboards"
    verbose_name = "Dashboards"

    def ready(self) -> None:
        # The engine knows no screen: the dashboards follow every committed move of a handoff
        # through the lifecycle's listeners (told after the mover's commit, never inside its
        # transaction) and update their aggregates. The beat jobs (rollups_catch_up,
        # backlog_repair) put right what a process killed between commit and listener missed.
        from pscsync import ledger, lifecycle

        # Told once per worker batch with its moves (lifecycle.moves_batched): the work is set-based.
        lifecycle.listener_add("dashboards.aggregates", _handoffs_moved, batch=True)
        # The money cycles end on the ERP ledger's days (posted, paid): a move there refreshes them.
        ledger.listener_add("dashboards.facts", _invoice_moved)


def _invoice_moved(invoice_id: int) -> None:
    from dashboards.facts import ledger_moved_safely

    ledger_moved_safely(invoice_id)


def _handoffs_moved(moves: list[Move]) -> None:
    from dashboards.backlog import backlog_follow_safely, move_may_move
    from dashboards.facts import END_STATES, handoffs_finished_safely

    # An end state adds the item's delta to the rollups; so does leaving one (a resubmit puts the
    # item back in progress), so the rollups equal a rebuild whenever no handoff is mid-run. Each
    # handoff once, however many of the batch's moves it made: the work reads what is committed.
    ended = {m.handoff_id for m in moves if m.to_status in END_STATES or m.from_status in END_STATES}
    if ended:
        handoffs_finished_safely(ended)
    # The open backlog follows every move that can take the handoff into, out of or between groups.
    followed = {m.handoff_id for m in moves if move_may_move(m.flow, m.from_status, m.to_status)}
    if followed:
        backlog_follow_safely(followed)
