"""/metrics scraped after real work: webhooks through the real view, a handoff run over real HTTP
against the echo target with a 429 on one step, on the real database."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from pscsync.intake import events_route
from pscsync.models import Event, Handoff
from pscsync.runner import handoff_run
from tests.helpers import change_body, sign

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "scrape-token-for-tests-only"


@pytest.fixture(autouse=True)
def _metrics_on(settings, monkeypatch) -> None:
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_BUSINESS_SECONDS = 0  # read the business gauges on every scrape
    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.dispatch.handoffs_publish", lambda ids, **kw: None)
    monkeypatch.setattr("pscsync.intake.events_ring", lambda ids, **kw: None)


def scrape() -> dict[tuple[str, tuple], float]:
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def deliver(key: str, *, msg_id: str | None = None, slug: str = "echo-us", signed: bool = True) -> int:
    body = change_body(key)
    headers = sign(body, msg_id=msg_id or f"{key}-v1") if signed else {}
    extra = {f"HTTP_{name.upper().replace('-', '_')}": v for name, v in headers.items()}
    return Client().post(f"/webhooks/{slug}/", body, content_type="application/json", **extra).status_code


def test_metrics_need_the_token_and_are_off_without_one(settings) -> None:
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


def test_counters_and_gauges_move_with_real_work(echo_connection, echo) -> None:
    before = scrape()
    # Intake: one accepted, the same delivery again (duplicate), one unsigned, one unknown connection.
    assert deliver("OPP-M1") == 202
    assert deliver("OPP-M1") == 200
    assert deliver("OPP-M2", signed=False) == 401
    assert deliver("OPP-M3", slug="no-such-connection") == 404
    # A worker routes what intake stored (the doorbell's work).
    events_route(list(Event.objects.filter(status=Event.Status.RECEIVED).values_list("pk", flat=True)))
    handoff = Handoff.objects.get(business_key="OPP-M1")
    # The run: customer and project are written (201 each), the invoice gets a 429 asking 30 s.
    echo.fault(mode="status", status=429, retry_after=30, match="/invoice/", count=1)
    handoff_run(handoff_id=handoff.pk, worker="w1")
    handoff.refresh_from_db()
    assert handoff.status == Handoff.Status.WAITING_RETRY
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pscsync_intake_events_total", connection="echo-us", outcome="accepted") == 1
    assert delta("pscsync_intake_events_total", connection="echo-us", outcome="duplicate") == 1
    assert delta("pscsync_intake_events_total", connection="echo-us", outcome="refused") == 1
    # A made-up slug is never a label value (callers choose URLs): it counts under "unknown".
    assert delta("pscsync_intake_events_total", connection="unknown", outcome="refused") == 1
    assert value(after, "pscsync_intake_events_total", connection="no-such-connection", outcome="refused") == 0

    assert delta("pscsync_vendor_calls_total", connection="echo-us", status="429") == 1
    assert delta("pscsync_vendor_rate_limited_total", connection="echo-us") == 1
    assert delta("pscsync_vendor_retry_after_seconds_sum", connection="echo-us") == 30
    successes = sum(delta("pscsync_vendor_calls_total", connection="echo-us", status=code) for code in ("200", "201"))
    assert successes >= 2  # customer and project (plus any look-ups the flow makes)
    assert delta("pscsync_vendor_call_seconds_count", connection="echo-us") == successes + 1

    # Gauges from the database: one handoff of this flow waiting for its retry, none needing a person.
    assert value(after, "pscsync_handoffs", flow=handoff.flow, status="waiting_retry") == 1
    assert value(after, "pscsync_handoffs_retrying") == 1
    assert value(after, "pscsync_handoffs_needing_person") == 0
    assert value(after, "pscsync_sweeper_lag_seconds") == -1  # no sweep has run in this test
    assert value(after, "pscsync_metrics_collect_errors", part="engine") == 0
    assert value(after, "pscsync_metrics_collect_errors", part="business") == 0
    # Business gauges, one series per legal entity (us, uk), bounded by the configured entities.
    # No deal, no PSA work and no mismatch exist here, so by hand every figure is 0.
    wip = {labels: v for (name, labels), v in after.items() if name == "pscsync_unbilled_wip"}
    assert {dict(labels)["entity"] for labels in wip} == {"us", "uk"} and set(wip.values()) == {0.0}
    assert value(after, "pscsync_won_not_activated", entity="us") == 0


def test_counters_add_up_across_processes_in_multiprocess_mode(tmp_path) -> None:
    """gunicorn workers and Celery prefork children each count; the scrape sums their files."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    count = "import django; django.setup(); from ops.metrics import vendor_call_observed as v; "
    count += "v(connection='c1', status='200', seconds=0.2)"
    for _ in range(2):  # two separate processes, like two gunicorn workers
        subprocess.run([sys.executable, "-c", count], env=env, cwd=ROOT, check=True, timeout=60)
    show = (
        "import django; django.setup(); from ops.metrics import render; import sys; sys.stdout.write(render().decode())"
    )
    # The database gauges need no database here to prove the summing; a failed part is reported.
    text = subprocess.run(
        [sys.executable, "-c", show], env=env, cwd=ROOT, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert 'pscsync_vendor_calls_total{connection="c1",status="200"} 2.0' in text


def test_every_series_the_grafana_dashboard_plots_is_exposed(echo_connection, echo) -> None:
    import json
    import re

    from tests.helpers import ROOT

    assert deliver("OPP-G1") == 202
    echo.fault(mode="status", status=429, retry_after=5, match="/invoice/", count=1)
    events_route(list(Event.objects.filter(status=Event.Status.RECEIVED).values_list("pk", flat=True)))
    handoff_run(handoff_id=Handoff.objects.get(business_key="OPP-G1").pk, worker="w1")
    exposed = {name for name, _labels in scrape()}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    plotted = {
        name
        for panel in dashboard["panels"]
        for t in panel["targets"]
        for name in re.findall(r"pscsync_\w+", t["expr"])
    }
    assert plotted and plotted <= exposed, plotted - exposed
