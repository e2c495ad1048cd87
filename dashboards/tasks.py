"""Beat jobs of the dashboards: thin, each calls one service."""

from __future__ import annotations

from celery import shared_task

from dashboards.facts import rollups_catch_up


@shared_task(name="dashboards.tasks.rollups_catch_up_task", ignore_result=True)
def rollups_catch_up_task() -> int:
    """Refresh the aggregates of every handoff that finished recently (repairs missed updates)."""
    return rollups_catch_up()


@shared_task(name="dashboards.tasks.rollups_rebuild_task", ignore_result=True)
def rollups_rebuild_task() -> dict[str, int]:
    """Rebuild every fact and rollup (after an SLA change, or a bulk load)."""
    from dashboards.facts import rollups_rebuild_all

    return rollups_rebuild_all()


@shared_task(name="dashboards.tasks.backlog_repair_task", ignore_result=True)
def backlog_repair_task() -> dict[str, int]:
    """Put right any open handoff the backlog counts wrongly (missed update, killed process)."""
    from dashboards.backlog import backlog_repair

    return backlog_repair()


@shared_task(name="dashboards.tasks.demand_snapshot_task", ignore_result=True)
def demand_snapshot_task() -> int:
    """Keep this week's demand forecast, for resource forecast accuracy (one per 7 days)."""
    from dashboards.leaders import demand_snapshot_take

    return demand_snapshot_take()


@shared_task(name="dashboards.tasks.fx_rates_read_task", ignore_result=True)
def fx_rates_read_task() -> dict:
    """Read the ERPs' exchange rates and refresh the month rates figures convert with (daily)."""
    from dashboards.fx import fx_rates_read

    return fx_rates_read()
