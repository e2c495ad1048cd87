"""The Integration health page's per-connection vendor use: calls and 429s over the last hour as
every worker counted them (connectors/limiter.py, in Redis), calls per record written, the
limits kept to and a vendor's pause, in words."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from connectors import limiter
from connectors.errors import TransientError
from connectors.registry import connector_for
from tests.helpers import ROOT, change_body

CHROMIUM = "/usr/bin/chromium"


def _row(html: str, name: str) -> str:
    """The text of the connections table's row for `name`, tags dropped, spaces collapsed."""
    connections = html[html.index("<h2>Connections</h2>") :]  # not the calls-per-step table above it
    row = re.search(rf"<tr>\s*<td>{re.escape(name)}</td>(.*?)</tr>", connections, re.S)
    assert row, f"no row for {name}"
    return " ".join(re.sub(r"<[^>]+>", " ", row.group(1)).split())


@pytest.mark.django_db(transaction=True)
def test_the_health_page_shows_each_connections_calls_429s_and_limits(
    client, operator, echo_connection, echo, monkeypatch
) -> None:
    from pscsync.intake import event_receive
    from pscsync.runner import handoff_run

    monkeypatch.setattr("pscsync.intake.handoffs_publish", lambda ids, **kw: None)
    body = change_body("OPP-H1")
    connector = connector_for(echo_connection)
    [change] = connector.parse_webhook(event_id="h1", body=body)
    handoff = event_receive(connection=echo_connection, change=change, headers={}, raw_body=body.decode()).handoff
    # Three steps, one write each: three calls, three records written.
    assert handoff_run(handoff_id=handoff.pk, worker="w1") == "succeeded"
    # A fourth call the vendor refuses with 429 and a Retry-After of 30 s.
    echo.fault(mode="status", status=429, retry_after=30, count=1)
    with pytest.raises(TransientError):
        connector.send("PUT", "/records/customer/CUST-OPP-H2", json={})

    client.force_login(operator)
    html = client.get("/dashboards/health/").content.decode()
    row = _row(html, "Echo US")
    assert "4 calls" in row
    # 4 calls for 3 records written: 1.33, shown to one decimal.
    assert "1.3 for each of 3 records" in row
    assert "1 call refused (429)" in row
    # Its own 600 a minute; the echo target declares no limit on calls at once.
    assert "600 calls a minute;" in row and "at once" not in row
    paused = re.search(r"paused for (\d+) more seconds", row)
    assert paused and 25 <= int(paused.group(1)) <= 30 and "as the vendor asked" in row


@pytest.mark.django_db(transaction=True)
def test_with_the_counts_unreadable_the_page_says_so_and_still_renders(client, operator, echo_connection, settings):
    settings.LIMITER_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    client.force_login(operator)
    response = client.get("/dashboards/health/")
    assert response.status_code == 200
    row = _row(response.content.decode(), "Echo US")
    assert row.count("not counted just now") == 2 and "no records written" in row
    assert "600 calls a minute" in row


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not shutil.which(CHROMIUM) and not os.getenv("PSCSYNC_REQUIRE_SERVICES"),
    reason="Debian's chromium is not installed (make test installs it)",
)
def test_the_health_page_in_a_browser_with_calls_limits_and_a_pause(live_server, admin, monkeypatch) -> None:
    """The seeded firm's health page after an hour of calls, one vendor pausing us; a screenshot
    for people to look at (docs/screenshots/dashboards-health-limits.png)."""
    from connectors.models import Connection
    from tests.dashboards.test_screenshots import SHOTS, _signed_in

    with _signed_in(live_server, admin, monkeypatch) as page:
        connections = list(Connection.objects.order_by("name"))
        busiest, paused = connections[0], connections[-1]
        for connection in connections:
            for n in range(40 if connection == busiest else 12):
                limiter.record_call(connection.pk, "429" if connection == paused and n < 3 else "200")
        limiter.pause(paused.pk, 120)
        page.goto(f"{live_server.url}/dashboards/health/")
        table = page.locator("table.grid").last
        busy_row = table.locator("tr", has_text=busiest.name).inner_text()
        assert "40 calls" in busy_row and "calls a minute" in busy_row
        paused_row = table.locator("tr", has_text=paused.name).inner_text()
        assert "3 calls refused (429)" in paused_row and "as the vendor asked" in paused_row
        table.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "dashboards-health-limits.png"), full_page=True)
    assert ROOT.joinpath("docs", "screenshots", "dashboards-health-limits.png").exists()
