"""A short simulation through the real engine: web, a Celery worker and beat as processes on
PostgreSQL and Redis, the sandboxes pushing and polled, the shared file clock steered by the
simulator. The engine works in the firm's business time."""

from __future__ import annotations

import datetime as dt
import os

import httpx
import pytest

from connectors import base
from demo.firm import firm_connections_save, firm_subscriptions_register
from demo.simulation.drivers import drivers_for
from demo.simulation.plan import Action, Options, Plan
from demo.simulation.simulator import Settings, Simulation
from pscsync.models import Handoff
from tests.connectors.conftest import sandbox_factory  # noqa: F401  (the fixture, shared)
from tests.helpers import ROOT, free_port
from tests.integration.conftest import Stack, _flush_broker, _test_database_url, wait_until
from tests.simulation.conftest import QUIET
from tests.simulation.test_sandboxes import PEOPLE, _deal_actions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim_stack(django_db_setup, django_db_blocker, echo_target, tmp_path_factory):
    var_dir = tmp_path_factory.mktemp("sim-stack")
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "PSCSYNC_VAR_DIR": str(var_dir),
        "PSCSYNC_CLOCK": f"file:{var_dir / 'clock.json'}",
        "PSCSYNC_TASK_TIME_LIMIT": "20",
        "PSCSYNC_LEASE_SECONDS": "25",
        "PSCSYNC_SWEEP_SECONDS": "1",
        "PSCSYNC_REDISPATCH_SECONDS": "3",
        "PSCSYNC_RETRY_BASE_SECONDS": "1",
        "PSCSYNC_POLL_SECONDS": "1",
        "PSCSYNC_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }
    stack = Stack(env=env, var_dir=var_dir, web_port=free_port(), echo=echo_target)
    stack.start_web()
    yield stack
    stack.stop()


def test_a_short_simulation_runs_through_the_engine_in_business_time(
    sim_stack,
    sandbox_factory,  # noqa: F811
    entities,
    transactional_db,
    monkeypatch,
) -> None:
    monkeypatch.setattr(base, "_tokens", {})
    _flush_broker(sim_stack.env["CELERY_BROKER_URL"])
    sandboxes = {name: sandbox_factory(name) for name in ("salesforce", "kantata", "netsuite", "businesscentral")}
    urls = {name: s.url for name, s in sandboxes.items()}
    connections = firm_connections_save(us=entities["us"], uk=entities["uk"], sandbox_urls=urls)
    firm_subscriptions_register(connections=connections, web_url=f"http://127.0.0.1:{sim_stack.web_port}")
    sim_stack.start_worker()
    sim_stack.start_beat()
    try:
        start = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=28)
        start -= dt.timedelta(days=start.weekday())  # a Monday
        actions = _deal_actions("us", 1) + _deal_actions("uk", 2)
        actions += [Action(18, 16 * 60, "billing_run", "", {})]
        actions += [Action(day, 17 * 60 + 30, "finance_round", "", {}) for day in range(19, 21)]
        options = Options(days=21, seed=7, **QUIET)
        plan = Plan(options=options, people=PEOPLE, actions=sorted(actions, key=lambda a: (a.day, a.minute)))
        settings = Settings(urls=urls, start=start, day_seconds=1.5, clock_file=sim_stack.var_dir / "clock.json")
        sim = Simulation(plan, settings, drivers_for(urls), echo=lambda _: None)
        sim.run()
        assert sim.stats["week_time"] == 2, dict(sim.stats)  # both projects were there in time
        wait_until(
            lambda: Handoff.objects.filter(flow="project-to-bill", status=Handoff.Status.SUCCEEDED).count() == 2,
            timeout=120,
            stack=sim_stack,
            what="both billing batches invoiced in the ERPs",
        )
        provisioned = Handoff.objects.filter(flow="quote-to-project", status=Handoff.Status.SUCCEEDED)
        assert provisioned.count() == 2
        for handoff in provisioned:
            # Stamped by the engine in the firm's business time, weeks ago, not today.
            assert start <= handoff.business_finished_at < start + dt.timedelta(days=22)
            assert handoff.business_times["deal_closed"].startswith(str((start + dt.timedelta(days=2)).date()))
    finally:
        sim_stack.beat.kill()
        sim_stack.worker.kill()
        httpx.delete(f"{sandboxes['salesforce'].url}/_sandbox/subscribers", timeout=5)
