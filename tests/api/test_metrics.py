"""Metrics under DRF (the overview's KPIs, the weekly latency series), reconciliation runs and
flow SLAs: token auth, legal-entity scope, clear 400s for bad input."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from api.serializers import MetricsSerializer
from dashboards.facts import rollups_rebuild_all
from dashboards.kpis import KPIS
from dashboards.metrics import Filters
from dashboards.models import FlowSla
from dashboards.views import metrics_payload
from pscsync import clock
from pscsync.models import AuditEntry
from tests.dashboards.builders import T0, connection, handoff

H = dt.timedelta(hours=1)
PERIOD = "from=2026-10-01&to=2026-10-31"


@pytest.fixture
def deals(entities, monkeypatch):
    """A deal activated in 5 h in the US and one in 11 h in the UK."""
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    crm = connection("salesforce", list(entities.values()))
    for code, hours in (("us", 5), ("uk", 11)):
        handoff(
            flow="quote-to-project",
            conn=crm,
            entity=entities[code],
            key=f"OPP-{code}",
            started=T0,
            finished=T0 + hours * H,
            times={"deal_closed": T0, "project_activated": T0 + hours * H},
        )
    rollups_rebuild_all()
    return entities


@pytest.mark.django_db
def test_metrics_give_every_overview_kpi_for_the_callers_entities(api, tokens, deals) -> None:
    response = api("GET", f"/api/v1/metrics/?{PERIOD}", tokens["viewer"])
    assert response.status_code == 200
    data = response.json()
    figures = {m["key"]: m for m in data["metrics"]}
    assert figures["quote-to-project.latency_median"]["value"] == 5.0  # the US deal only
    assert figures["quote-to-project.finished"]["count"] == 1
    fields = {
        "key",
        "name",
        "value",
        "unit",
        "count",
        "definition",
        "state",
        "as_of",
        "state_note",
        "drill_down",
        "sla",
    }
    # Money figures also say whether every amount converted, and what is missing per currency.
    assert all(set(m) in (fields, fields | {"complete", "missing"}) for m in data["metrics"])
    # (A figure not measured has no value, so nothing to be complete about: no reconciliation ran here.)
    assert data["currency"] == "USD" and figures["billing.released_not_invoiced"]["complete"] is True
    assert "complete" not in figures["money_at_risk"]
    # Every figure of the registry, once, and each says whether it was measured.
    assert [m["key"] for m in data["metrics"]] == list(KPIS)
    assert figures["quote-to-project.finished"]["state"] == "measured"
    # No reconciliation ran: its figures are not measured (null), never a reassuring zero.
    assert (figures["revenue.match_rate"]["state"], figures["revenue.match_rate"]["value"]) == ("not_measured", None)
    assert figures["revenue.mismatch_value"]["as_of"] is None
    # The same payload the overview's figures come from, for the same filters.
    expected = metrics_payload(
        Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31), entity_ids=(deals["us"].pk,))
    )
    assert data == json.loads(json.dumps(MetricsSerializer(expected).data))
    uk = api("GET", f"/api/v1/metrics/?{PERIOD}&legal_entity=uk", tokens["admin"]).json()
    assert {m["key"]: m for m in uk["metrics"]}["quote-to-project.latency_median"]["value"] == 11.0
    # Another entity's code counts nothing, rather than showing its figures or confirming it exists.
    other = api("GET", f"/api/v1/metrics/?{PERIOD}&legal_entity=uk", tokens["viewer"]).json()
    assert {m["key"]: m for m in other["metrics"]}["quote-to-project.finished"]["value"] == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field", "status"),
    [
        # Malformed: 400.
        ("from=2026-13-01&to=2026-10-31", "from", 400),
        ("from=2026-10-01&to=yesterday", "to", 400),
        ("from=2026-10-01T00:00:00Z", "from", 400),
        ("from=&to=2026-10-31", "from", 400),
        # Well-formed dates the dashboards cannot answer for: 422 (docs/api.md's error table).
        ("from=2026-10-31&to=2026-10-01", "from", 422),
        ("from=2020-01-01&to=2026-10-31", "to", 422),  # longer than two years
        ("from=1999-12-31&to=2000-01-10", "from", 422),
    ],
)
def test_bad_dates_are_refused_with_an_error_that_names_the_parameter(api, tokens, deals, query, field, status) -> None:
    for url in ("/api/v1/metrics/", "/api/v1/metrics/latency/"):
        response = api("GET", f"{url}?{query}", tokens["viewer"])
        assert response.status_code == status, (url, response.content)
        assert field in response.json()["errors"], response.json()


@pytest.mark.django_db
def test_the_latency_series_is_weekly_per_flow(api, tokens, deals) -> None:
    data = api("GET", f"/api/v1/metrics/latency/?{PERIOD}&flow=quote-to-project", tokens["admin"]).json()
    (flow,) = data["flows"]
    assert flow["flow"] == "quote-to-project" and flow["sla"] == "1 business day"
    week = next(w for w in flow["weeks"] if w["measured"])
    assert week == {
        "week": "2026-10-05",
        "measured": 2,
        "median_hours": 5.0,
        "p90_hours": 11.0,
        "pct_within_sla": 100.0,
    }
    viewer = api("GET", f"/api/v1/metrics/latency/?{PERIOD}", tokens["viewer"]).json()
    assert len(viewer["flows"]) == 5
    assert sum(w["measured"] for w in viewer["flows"][0]["weeks"]) == 1  # the US deal only
    assert api("GET", "/api/v1/metrics/latency/?flow=nope", tokens["viewer"]).status_code == 400


@pytest.mark.django_db
def test_metrics_are_throttled_per_token(api, tokens, deals, settings, mid_minute) -> None:
    settings.API_RATE_PER_MINUTE = 2
    codes = [api("GET", "/api/v1/metrics/", tokens["viewer"]).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- Reconciliation runs ------------------------------------------------------------------------


@pytest.mark.django_db
def test_reconciliation_runs_are_listed_for_the_callers_entities(api, world, tokens) -> None:
    runs = api("GET", "/api/v1/reconciliation-runs/", tokens["viewer"]).json()["results"]
    assert [r["legal_entity"] for r in runs] == ["us"]
    assert runs[0]["summary"]["deal_value"]["checked"] == 1
    admin = api("GET", "/api/v1/reconciliation-runs/?legal_entity=uk&status=complete", tokens["admin"]).json()
    assert [r["id"] for r in admin["results"]] == [world["uk"]["reconciliation_run"].pk]
    bad = api("GET", "/api/v1/reconciliation-runs/?status=finished", tokens["admin"])
    assert bad.status_code == 400 and "status" in bad.json()["errors"]


# --- SLAs ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_flow_has_an_sla_default_until_an_admin_sets_one(api, tokens, entities) -> None:
    slas = {s["flow"]: s for s in api("GET", "/api/v1/slas/", tokens["viewer"]).json()["results"]}
    # Two clocks: the business cycle's SLA and the integration's own sync SLA (minutes).
    assert slas["bill-to-cash"]["target_label"] == "30 days" and slas["bill-to-cash"]["sync_target_minutes"] == 15
    assert set(slas) == {"quote-to-project", "project-to-bill", "bill-to-cash", "contract-change", "pipeline-to-demand"}
    assert slas["quote-to-project"] | {"measure": "", "sync_measure": "", "sync_target_minutes": 15} == {
        "flow": "quote-to-project",
        "measure": "",
        "sync_measure": "",
        "sync_target_minutes": 15,
        "target": "1.00",
        "unit": "business_days",
        "target_label": "1 business day",
        "note": "default (no SLA set by an admin)",
        "is_default": True,
        "updated_at": None,
    }
    assert api("GET", "/api/v1/slas/echo/", tokens["viewer"]).status_code == 404


@pytest.mark.django_db
def test_an_admin_sets_an_sla_audited_and_the_breach_flags_are_recomputed(
    api, tokens, entities, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from dashboards import tasks

    rebuilt: list[bool] = []
    monkeypatch.setattr(tasks.rollups_rebuild_task, "delay", lambda: rebuilt.append(True))
    with django_capture_on_commit_callbacks(execute=True):
        response = api(
            "PUT",
            "/api/v1/slas/bill-to-cash/",
            tokens["admin"],
            {"target": "12", "unit": "hours", "note": "CFO", "sync_target_minutes": 30},
        )
    assert response.status_code == 200 and response.json()["target_label"] == "12 h"
    assert response.json()["sync_target_minutes"] == 30
    assert response.json()["is_default"] is False and rebuilt == [True]
    sla = FlowSla.objects.get(flow="bill-to-cash")
    assert (sla.target, sla.unit, sla.note) == (Decimal("12"), "hours", "CFO")
    entry = AuditEntry.objects.get(action="sla.set")
    assert entry.before == {"target": "720", "unit": "hours", "sync_minutes": 15}
    assert entry.after == {"target": "12.00", "unit": "hours", "sync_minutes": 30}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"target": "0", "unit": "hours"}, 422),
        ({"target": "-1", "unit": "hours"}, 422),
        ({"target": "8", "unit": "fortnights"}, 400),
        ({"target": "8"}, 400),
        ({"target": "eight", "unit": "hours"}, 400),
        ({"target": "8", "unit": "hours", "sync_target_minutes": 0}, 400),
        ({"target": "8", "unit": "hours", "flow": "bill-to-cash"}, 400),
    ],
)
def test_a_bad_sla_is_refused_and_nothing_changes(api, tokens, entities, body, status) -> None:
    response = api("PUT", "/api/v1/slas/bill-to-cash/", tokens["admin"], body)
    assert response.status_code == status and response.json()["errors"]
    assert not FlowSla.objects.exists() and not AuditEntry.objects.filter(action="sla.set").exists()
