"""In headless Chromium: a user makes and revokes an API token from the user menu; an admin
subscribes a webhook to alerts, sends a test and reads the delivery log; the API docs load with
no request leaving the app. Screenshots land in var/screenshots/api-*.png."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.test_browser import _shot, _sign_in, page, pytestmark  # noqa: F401  (the browser fixture and marks)


def _enter(page, live_server, user) -> None:  # noqa: F811
    _sign_in(page, live_server, user)  # password, then the second factor
    # Operators land on the workbench, viewers and admins on the dashboards.
    page.wait_for_url(lambda url: "/dashboards/" in url or "/workbench/" in url)


def test_a_user_makes_and_revokes_an_api_token(page, live_server, operator) -> None:  # noqa: F811
    from api.models import ApiToken

    _enter(page, live_server, operator)
    page.click("header .who >> text=API tokens")
    page.wait_for_url("**/account/tokens/")
    page.fill("#id_name", "ServiceNow sync")
    page.select_option("#id_days", "90")
    page.click("button:has-text('Create token')")
    token = page.locator("#new-token").inner_text()
    assert token.startswith("psc_") and "shown only this once" in page.content()
    _shot(page, "api-token-created")
    # The token works against the API, as the operator.
    response = page.request.get(f"{live_server.url}/api/v1/exceptions/", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    page.goto(f"{live_server.url}/account/tokens/")
    assert token not in page.content()
    page.click("button:has-text('Revoke')")
    page.wait_for_selector("text=is revoked")
    assert "revoked" in page.locator("table.grid").inner_text()
    _shot(page, "api-tokens")
    assert ApiToken.objects.get().revoked_at is not None


def test_an_admin_subscribes_a_webhook_and_reads_the_delivery_log(page, live_server, admin, settings) -> None:  # noqa: F811
    from alerts.models import AlertDelivery
    from alerts.services import alert_delivery_attempt
    from tests.api.test_alerts import Receiver

    settings.ALERT_WEBHOOK_ALLOW_LOOPBACK = True
    receiver = Receiver()
    try:
        _enter(page, live_server, admin)
        page.click("nav >> text=Alerts")
        page.wait_for_url("**/alerts/")
        page.click("text=Add a subscription")
        page.fill("#id_name", "Integration team")
        page.select_option("#id_channel", "webhook")
        page.fill("#id_target", receiver.url)
        page.check("input[value='exception_group.new']")
        page.check("input[value='handoff.stuck']")
        page.check("#id_all_entities")
        _shot(page, "api-alert-form")
        page.click("button:has-text('Save')")
        assert page.locator("#signing-secret").inner_text().startswith("whsec_")
        _shot(page, "api-alert-secret")
        page.click("text=Done")
        page.click("button:has-text('Send a test')")
        page.wait_for_url("**/alerts/deliveries/")
        delivery = AlertDelivery.objects.get()
        assert alert_delivery_attempt(delivery_id=delivery.pk) == "delivered"
        page.reload()
        assert "Delivered" in page.locator("table.grid").inner_text()
        page.goto(f"{live_server.url}/alerts/")
        _shot(page, "api-alerts")
        page.goto(f"{live_server.url}/alerts/deliveries/")
        _shot(page, "api-alert-deliveries")
        assert len(receiver.received) == 1
    finally:
        receiver.stop()


def test_the_api_docs_load_offline(page, live_server, viewer) -> None:  # noqa: F811
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    _enter(page, live_server, viewer)
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector("text=pscsync API")
    page.wait_for_selector("text=/api/v1/handoffs/")
    _shot(page, "api-docs")
    assert hosts == {urlsplit(live_server.url).netloc}, hosts


pytest.importorskip("playwright")
