"""Measured, stale, not measured: no empty state claims good news before a completed measurement,
and every figure says when its source was last read (pages and JSON)."""

from __future__ import annotations

import datetime as dt

import pytest

from dashboards.facts import rollups_rebuild_all
from pscsync import clock
from pscsync.models import ReconciliationRun
from tests.dashboards.builders import connection, handoff

NOW = dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC)
PERIOD = "from=2026-10-01&to=2026-10-31"


@pytest.fixture
def firm(entities, monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: NOW)
    crm = connection("salesforce", list(entities.values()))
    handoff(flow="quote-to-project", conn=crm, entity=entities["us"], key="OPP-1", finished=NOW)
    rollups_rebuild_all()
    return entities


def reconciled(entities: dict, at: dt.datetime) -> None:
    for entity in entities.values():
        ReconciliationRun.objects.create(
            legal_entity=entity, status="complete", started_at=at - dt.timedelta(minutes=1), finished_at=at
        )


def figures(client) -> dict:
    return {m["key"]: m for m in client.get(f"/api/v1/metrics/?{PERIOD}").json()["metrics"]}


@pytest.mark.django_db
def test_before_the_first_reconciliation_nothing_says_the_systems_agree(client, admin, firm) -> None:
    client.force_login(admin)
    page = client.get(f"/dashboards/exceptions/?{PERIOD}").content.decode()
    assert "the systems agree" not in page and "Not measured yet" in page
    overview = client.get(f"/dashboards/?{PERIOD}").content.decode()
    # Unbilled WIP before the PSA was read: no "nothing approved is waiting", no green zero.
    assert "nothing approved is waiting" not in overview and "The PSA has not been read yet" in overview
    data = figures(client)
    assert data["revenue.mismatch_value"] | {"definition": ""} == data["revenue.mismatch_value"] | {
        "definition": "",
        "value": None,
        "state": "not_measured",
        "as_of": None,
    }
    assert data["billing.unbilled_wip"]["state"] == "not_measured" and data["billing.unbilled_wip"]["value"] is None
    assert data["money_at_risk"]["state"] == "not_measured"
    # Figures kept from handoffs are measured as of now.
    assert data["quote-to-project.finished"]["state"] == "measured"


@pytest.mark.django_db
def test_after_a_complete_reconciliation_the_good_news_is_measured(client, admin, firm) -> None:
    reconciled(firm, NOW - dt.timedelta(hours=2))
    client.force_login(admin)
    page = client.get(f"/dashboards/exceptions/?{PERIOD}").content.decode()
    assert "No open mismatch: the systems agree" in page and "31 Oct 2026 10:00 UTC" in page
    overview = client.get(f"/dashboards/?{PERIOD}").content.decode()
    # The run read the PSA and it held nothing unbilled: now the empty WIP is a measurement.
    assert "nothing approved is waiting" in overview
    data = figures(client)
    assert data["revenue.mismatch_value"]["state"] == "measured"
    assert data["revenue.mismatch_value"]["as_of"] == "2026-10-31T10:00:00Z"
    assert data["billing.unbilled_wip"]["value"] == "0" and data["billing.unbilled_wip"]["state"] == "measured"


@pytest.mark.django_db
def test_a_source_read_longer_ago_than_its_schedule_allows_is_stale(client, admin, firm, settings) -> None:
    settings.RECONCILE_SECONDS = 24 * 3600  # stale after two schedules: 48 h
    reconciled(firm, NOW - dt.timedelta(hours=49))
    client.force_login(admin)
    data = figures(client)
    assert data["revenue.match_rate"]["state"] == "stale"
    assert data["revenue.match_rate"]["as_of"] == "2026-10-29T11:00:00Z"
    assert "longer ago than its schedule allows" in data["revenue.match_rate"]["state_note"]
    page = client.get(f"/dashboards/exceptions/?{PERIOD}").content.decode()
    assert "Stale:" in page and "last read 29 Oct 2026 11:00 UTC" in page
    # One entity never reconciled: stale, naming it.
    ReconciliationRun.objects.filter(legal_entity=firm["uk"]).delete()
    reconciled({"us": firm["us"]}, NOW)
    note = figures(client)["revenue.match_rate"]["state_note"]
    assert "not read yet for Acme Consulting Ltd." in note
