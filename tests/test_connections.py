"""Admins add and edit connections in the browser: credentials write-only, addresses checked,
"Test connection" answers with the result and its latency."""

from __future__ import annotations

import json

import pytest

from connectors.egress import DestinationRefused, check_destination
from connectors.models import Connection
from pscsync.models import AuditEntry

pytestmark = pytest.mark.django_db


def form_data(**overrides: object) -> dict:
    data = {
        "name": "NetSuite US",
        "slug": "netsuite-us",
        "kind": "erp",
        "vendor": "netsuite",
        "base_url": "http://127.0.0.1:8793",
        "api_version": "v1",
        "intake": "poll",
        "rate_limit_per_minute": "600",
        "is_sandbox": "on",
        "is_active": "on",
        "credentials": json.dumps({"client_id": "sandbox-client", "client_secret": "s3cret-value"}),
    }
    data.update(overrides)
    return data


def test_an_admin_creates_a_connection_and_its_credentials_are_sealed(client, admin, entities) -> None:
    client.force_login(admin)
    response = client.post("/connections/new/", form_data(legal_entities=[entities["us"].pk]))
    assert response.status_code == 302
    connection = Connection.objects.get(slug="netsuite-us")
    assert connection.credentials() == {"client_id": "sandbox-client", "client_secret": "s3cret-value"}
    page = client.get(response["Location"]).content.decode()
    assert "s3cret-value" not in page and "Credentials are set" in page
    entry = AuditEntry.objects.get(action="connection.save", object_id=str(connection.pk))
    assert entry.actor == admin and "s3cret" not in json.dumps(entry.after)


def test_editing_without_credentials_keeps_the_stored_ones(client, admin, entities) -> None:
    client.force_login(admin)
    client.post("/connections/new/", form_data(legal_entities=[entities["us"].pk]))
    connection = Connection.objects.get(slug="netsuite-us")
    response = client.post(
        f"/connections/{connection.pk}/",
        form_data(name="NetSuite US (renamed)", credentials="", legal_entities=[entities["us"].pk]),
    )
    assert response.status_code == 302
    connection.refresh_from_db()
    assert connection.name == "NetSuite US (renamed)"
    assert connection.credentials()["client_secret"] == "s3cret-value"


@pytest.mark.parametrize(
    ("url", "sandbox", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", True, "link-local"),
        ("https://127.0.0.1:8793/", False, "loopback"),
        ("https://[::ffff:10.0.0.5]/", False, "private"),
        ("http://2130706433:8793/", False, "Enter a valid URL"),
        ("https://2130706433:8793/", False, "loopback"),
        ("https://10.1.2.3/", True, "private"),
        ("https://user:pass@127.0.0.1/", True, "user name or password"),
        ("https://127.0.0.1:6379/", False, "loopback"),
    ],
)
def test_unsafe_addresses_are_refused_at_save(client, admin, entities, url, sandbox, reason) -> None:
    client.force_login(admin)
    data = form_data(base_url=url, legal_entities=[entities["us"].pk])
    if not sandbox:
        del data["is_sandbox"]
    response = client.post("/connections/new/", data)
    assert response.status_code == 200
    assert reason in response.content.decode()
    assert not Connection.objects.filter(slug="netsuite-us").exists()


def test_a_vendor_host_must_match_the_vendor(monkeypatch, settings) -> None:
    monkeypatch.setattr("connectors.egress._resolve", lambda host, port: ["151.101.1.69"])
    check_destination("https://1234567.suitetalk.api.netsuite.com/services/rest", vendor="netsuite", is_sandbox=False)
    with pytest.raises(DestinationRefused, match="not a netsuite API host"):
        check_destination("https://evil.example.com/", vendor="netsuite", is_sandbox=False)


def test_sandbox_connections_may_not_use_loopback_once_sandboxes_are_turned_off(settings) -> None:
    settings.ALLOW_SANDBOXES = False
    with pytest.raises(DestinationRefused):
        check_destination("http://127.0.0.1:8791/", vendor="salesforce", is_sandbox=True)


def test_the_address_is_checked_again_at_call_time(echo_connection) -> None:
    from connectors.errors import RejectedError
    from connectors.registry import connector_for

    Connection.objects.filter(pk=echo_connection.pk).update(is_sandbox=False)
    echo_connection.refresh_from_db()
    with pytest.raises(RejectedError, match="must use https"):
        connector_for(echo_connection).lookup(entity="customer", key="K")


def test_test_connection_reports_success_and_latency(client, admin, echo_connection) -> None:
    client.force_login(admin)
    response = client.post(f"/connections/{echo_connection.pk}/test/", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert "Connected" in body and " ms" in body


def test_test_connection_reports_bad_credentials_in_plain_words(client, admin, echo_connection) -> None:
    echo_connection.set_credentials({"token": "wrong"})
    echo_connection.save()
    client.force_login(admin)
    body = client.post(f"/connections/{echo_connection.pk}/test/").content.decode()
    assert "Could not connect" in body and "refused our credentials" in body


def test_an_admin_limited_to_one_entity_cannot_open_another_entitys_connection(
    client, entities, echo_connection
) -> None:
    from pscsync.services import user_provision

    uk_admin = user_provision(
        username="ukadmin", password="a-long-test-password", role="admin", entities=[entities["uk"]]
    )
    client.force_login(uk_admin)
    assert client.get(f"/connections/{echo_connection.pk}/").status_code == 404
    assert "Echo US" not in client.get("/connections/").content.decode()
