"""Issue 17, high: an entity-scoped admin must not take over a connection shared with another
entity, and no admin moves stored credentials to a new host without entering them again.

The probe that found it: a UK-only admin PATCHed the base URL of a US+UK connection (200),
pressed "Test connection", and a listener received the stored `Authorization: Bearer …`.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from connectors.models import Connection
from pscsync.models import AuditEntry
from tests.api.conftest import make_connection

pytestmark = pytest.mark.django_db


@pytest.fixture
def shared(entities):
    """One connection serving both the US and the UK entity, with a stored token."""
    connection = make_connection("erp-shared", entities["us"], base_url="http://127.0.0.1:9/")
    connection.legal_entities.add(entities["uk"])
    return connection


@pytest.fixture
def listener():
    """An attacker's HTTP listener on loopback: records every Authorization header it receives."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    server.shutdown()
    server.server_close()


def _unchanged(connection: Connection, base_url: str, codes: set[str]) -> None:
    connection.refresh_from_db()
    assert connection.base_url == base_url
    assert set(connection.legal_entities.values_list("code", flat=True)) == codes
    assert connection.credentials() == {"token": "secret-token-erp-shared"}


def test_a_uk_admin_cannot_repoint_a_connection_that_also_serves_the_us(api, tokens, shared, listener) -> None:
    url, seen = listener
    response = api("PATCH", f"/api/v1/connections/{shared.pk}/", tokens["ukadmin"], {"base_url": url})
    assert response.status_code == 403, response.content
    assert "outside your scope" in response.json()["detail"]
    _unchanged(shared, "http://127.0.0.1:9/", {"us", "uk"})
    assert seen == []


def test_a_uk_admin_cannot_drop_the_us_entity_or_change_credentials(api, tokens, shared) -> None:
    for body in ({"legal_entities": ["uk"]}, {"credentials": {"token": "mine"}}, {"name": "Renamed"}):
        response = api("PATCH", f"/api/v1/connections/{shared.pk}/", tokens["ukadmin"], body)
        assert response.status_code == 403, (body, response.content)
    _unchanged(shared, "http://127.0.0.1:9/", {"us", "uk"})
    assert not AuditEntry.objects.filter(action="connection.save", actor__username="ulla.ukadmin").exists()


def test_a_uk_admin_still_changes_a_uk_only_connection(api, tokens, entities) -> None:
    own = make_connection("erp-uk", entities["uk"])
    response = api("PATCH", f"/api/v1/connections/{own.pk}/", tokens["ukadmin"], {"name": "ERP UK (renamed)"})
    assert response.status_code == 200, response.content
    # ...but not to add an entity outside their scope.
    response = api("PATCH", f"/api/v1/connections/{own.pk}/", tokens["ukadmin"], {"legal_entities": ["uk", "us"]})
    assert response.status_code == 422


def test_moving_a_connection_to_another_host_requires_its_credentials_again(api, tokens, shared, listener) -> None:
    url, seen = listener
    response = api("PATCH", f"/api/v1/connections/{shared.pk}/", tokens["admin"], {"base_url": url})
    assert response.status_code == 422, response.content
    assert "enter the credentials again" in response.json()["errors"]["credentials"][0]
    _unchanged(shared, "http://127.0.0.1:9/", {"us", "uk"})
    # The same host with another path keeps them (an API version in the path is not a new host).
    response = api(
        "PATCH", f"/api/v1/connections/{shared.pk}/", tokens["admin"], {"base_url": "http://127.0.0.1:9/v2/"}
    )
    assert response.status_code == 200
    # With the credentials entered again the move is allowed, and only the new ones travel.
    body = {"base_url": url, "credentials": {"token": "fresh-token-for-new-host"}}
    assert api("PATCH", f"/api/v1/connections/{shared.pk}/", tokens["admin"], body).status_code == 200
    shared.refresh_from_db()
    assert shared.credentials() == {"token": "fresh-token-for-new-host"}


def test_the_form_refuses_the_same_changes(client, ukadmin, admin, shared, listener, entities) -> None:
    url, seen = listener
    data = {
        "name": "ERP",
        "kind": "test",
        "vendor": "echo",
        "base_url": url,
        "intake": "none",
        "rate_limit_per_minute": "600",
        "is_sandbox": "on",
        "is_active": "on",
        "legal_entities": [entities["uk"].pk],
        "credentials": "",
    }
    client.force_login(ukadmin)
    page = client.get(f"/connections/{shared.pk}/")
    assert page.status_code == 200 and "outside your scope" in page.content.decode()
    assert client.post(f"/connections/{shared.pk}/", data).status_code == 403
    # "Test connection" still tests the stored address: the listener hears nothing.
    client.post(f"/connections/{shared.pk}/test/")
    _unchanged(shared, "http://127.0.0.1:9/", {"us", "uk"})

    client.force_login(admin)
    data["legal_entities"] = [entities["us"].pk, entities["uk"].pk]
    response = client.post(f"/connections/{shared.pk}/", data)
    assert response.status_code == 200 and "enter the credentials again" in response.content.decode()
    client.post(f"/connections/{shared.pk}/test/")
    _unchanged(shared, "http://127.0.0.1:9/", {"us", "uk"})
    assert seen == []


def _page_names(client, query: str) -> set[str]:
    from connectors.models import Connection

    body = client.get(f"/connections/?{query}").content.decode()
    return {c.name for c in Connection.objects.all() if f"<strong>{c.name}</strong>" in body}


def _api_names(api, token: str, query: str) -> set[str]:
    answer = api("GET", f"/api/v1/connections/?{query}", token)
    assert answer.status_code == 200, answer.content
    return {c["name"] for c in answer.json()["results"]}


def test_the_page_and_the_api_filter_connections_with_one_filter_set_within_the_users_scope(
    client, api, tokens, admin, ukadmin, shared, entities
) -> None:
    make_connection("crm-us", entities["us"])
    make_connection("erp-uk", entities["uk"])
    Connection.objects.filter(slug="crm-us").update(is_active=False)
    client.force_login(admin)
    # An admin of every entity: the UK's connections are the UK-only one and the shared one.
    assert _page_names(client, "legal_entity=uk") == {"ERP-UK", "ERP-SHARED"}
    assert _api_names(api, tokens["admin"], "legal_entity=uk") == {"ERP-UK", "ERP-SHARED"}
    assert _page_names(client, "is_active=false") == _api_names(api, tokens["admin"], "is_active=false") == {"CRM-US"}
    # The UK admin never sees the US-only connection, filtered or not.
    client.force_login(ukadmin)
    assert _page_names(client, "") == {"ERP-UK", "ERP-SHARED"}
    assert _api_names(api, tokens["ukadmin"], "") == {"ERP-UK", "ERP-SHARED"}
    assert _page_names(client, "kind=test&is_active=true") == {"ERP-UK", "ERP-SHARED"}
    # Filtering by the US finds only what the UK admin may see anyway (the shared one), never the
    # US-only one; an unknown code finds nothing; a bad choice is a 400; all alike on both.
    assert _page_names(client, "legal_entity=us") == _api_names(api, tokens["ukadmin"], "legal_entity=us")
    assert _page_names(client, "legal_entity=us") == {"ERP-SHARED"}
    assert _api_names(api, tokens["ukadmin"], "legal_entity=zz") == set()
    assert "No connection you may see matches" in client.get("/connections/?legal_entity=zz").content.decode()
    refused = client.get("/connections/?kind=nonsense")
    assert refused.status_code == 400 and "ERP-UK" not in refused.content.decode()
    assert api("GET", "/api/v1/connections/?kind=nonsense", tokens["ukadmin"]).status_code == 400


def test_the_pages_blank_choices_mean_any(client, admin, shared, entities) -> None:
    make_connection("erp-uk", entities["uk"])
    client.force_login(admin)
    answer = client.get("/connections/?kind=&vendor=&legal_entity=uk&is_active=")
    assert answer.status_code == 200
    assert "ERP-UK" in answer.content.decode() and "ERP-SHARED" in answer.content.decode()
