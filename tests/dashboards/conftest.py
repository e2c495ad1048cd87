"""Fixtures the dashboards' tests share."""

from __future__ import annotations

import pytest

from tests.dashboards.builders import connection


@pytest.fixture
def crm(entities):
    """The CRM connection every hand-built handoff comes from, serving both legal entities."""
    return connection("salesforce", list(entities.values()))
