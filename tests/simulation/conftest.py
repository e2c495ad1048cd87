"""Simulation tests: the vendor sandboxes (the German entity's Kantata account and Dynamics 365
Finance among them) as real processes over HTTP (no engine)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from demo.simulation.drivers import drivers_for
from demo.simulation.plan import Options, Plan, scenario_plan
from demo.simulation.simulator import Settings, Simulation
from tests.connectors.conftest import sandbox_factory  # noqa: F401  (the fixture, shared)

START = dt.datetime(2026, 8, 31, tzinfo=dt.UTC)  # a Monday
QUIET = {
    "missing_tax_profile": 0.0,
    "unknown_service_line": 0.0,
    "duplicate_customer": 0.0,
    "late_time": 0.0,
    "fx_date": 0.0,
    "mixed_currency": 0.0,
    "erp_outages": 0,
    "rate_limit_bursts": 0,
}


@pytest.fixture
def sandboxes(sandbox_factory):  # noqa: F811
    names = ("salesforce", "kantata", "netsuite", "businesscentral", "dynamicsfinance", "kantata-de")
    return {name: sandbox_factory(name) for name in names}


@pytest.fixture
def simulation(sandboxes):
    def make(options: Options | None = None, plan: Plan | None = None, **overrides: Any) -> Simulation:
        options = options or Options(**{"days": 7, "seed": 7, **QUIET, **overrides})
        plan = plan or scenario_plan(options, start_weekday=START.weekday())
        urls = {name: s.url for name, s in sandboxes.items()}
        return Simulation(
            plan, Settings(urls=urls, start=START, day_seconds=0.0), drivers_for(urls), echo=lambda _: None
        )

    return make
