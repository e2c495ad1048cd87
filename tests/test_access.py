"""Every URL the project has, for every role and for a user scoped to another legal entity.

The matrix is generated from the URL resolver: a new URL that is not in EXPECTED fails the test,
so nobody adds a page without deciding who may see it.
"""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from pscsync.models import Event, Handoff

ROLES = ["anonymous", "norole", "viewer", "operator", "admin", "outsider"]

_ADMIN_ONLY = {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "outsider": 403}

# name -> (method, expected status per role). "own" detail pages use a US handoff; the outsider
# works for the UK entity only, so every US record is a 404 for them, never a 403 that confirms it exists.
EXPECTED: dict[str, tuple[str, dict[str, int]]] = {
    "home": ("GET", {"anonymous": 302, "norole": 403, "viewer": 302, "operator": 302, "admin": 302, "outsider": 302}),
    "login": ("GET", {"anonymous": 200, "norole": 302, "viewer": 302, "operator": 302, "admin": 302, "outsider": 302}),
    "logout": ("GET", dict.fromkeys(ROLES, 405)),
    "healthz": ("GET", dict.fromkeys(ROLES, 200)),
    "webhook": ("GET", dict.fromkeys(ROLES, 405)),
    "handoffs:list": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "handoffs:detail": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 404},
    ),
    "dashboards:health": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "remediation:inbox": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "connections:create": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "connections:edit": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "connections:test": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "connections:list": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    # The API's v1 routes have their own matrix (tests/api/test_api_access.py, tokens × entities).
    "account:tokens": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "account:token-revoke": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 405, "operator": 405, "admin": 405, "outsider": 405},
    ),
    "alerts:list": ("GET", {**_ADMIN_ONLY, "admin": 200}),
    "alerts:create": ("GET", {**_ADMIN_ONLY, "admin": 200}),
    "alerts:edit": ("GET", {**_ADMIN_ONLY, "admin": 404}),  # no subscription 999999
    "alerts:test": ("GET", {**_ADMIN_ONLY, "admin": 405}),
    "alerts:delete": ("GET", {**_ADMIN_ONLY, "admin": 405}),
    "alerts:deliveries": ("GET", {**_ADMIN_ONLY, "admin": 200}),
    "api:schema": ("GET", {**dict.fromkeys(ROLES, 200), "anonymous": 401}),
    "api:docs": ("GET", {**dict.fromkeys(ROLES, 200), "anonymous": 401}),
    "api:redoc": ("GET", {**dict.fromkeys(ROLES, 200), "anonymous": 401}),
    "api:not-found": ("GET", dict.fromkeys(ROLES, 404)),
}


def _patterns(resolver, namespace: str = ""):  # noqa: ANN001, ANN202
    for p in resolver.url_patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}{p.namespace}:" if p.namespace else namespace
            yield from _patterns(p, ns)
        elif isinstance(p, URLPattern):
            yield f"{namespace}{p.name}", p


def test_every_url_has_a_row_in_the_access_matrix() -> None:
    from tests.api.test_api_access import API_ROUTES

    names = {name for name, _ in _patterns(get_resolver())} - API_ROUTES.keys()
    assert names - EXPECTED.keys() == set(), "add these URLs to the access matrix"
    assert EXPECTED.keys() - names == set(), "these matrix rows name URLs that no longer exist"


@pytest.fixture
def cast(viewer, operator, admin, outsider, entities):  # noqa: ANN001, ANN201
    from django.contrib.auth import get_user_model

    from pscsync.models import AccessProfile

    norole = get_user_model().objects.create_user("nora.norole", password="a-long-test-password")
    AccessProfile.objects.create(user=norole, all_entities=True)
    return {"viewer": viewer, "operator": operator, "admin": admin, "outsider": outsider, "norole": norole}


@pytest.fixture
def records(echo_connection, entities):  # noqa: ANN001, ANN201
    """One handoff in the US entity and one in the UK entity."""
    import datetime as dt

    made = {}
    for code in ("us", "uk"):
        at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        event = Event.objects.create(
            connection=echo_connection,
            source_event_id=f"evt-{code}",
            flow="echo",
            business_key=f"OPP-{code.upper()}",
            legal_entity=entities[code],
            occurred_at=at,
            received_at=at,
            raw_body="{}",
            payload={},
        )
        made[code] = Handoff.objects.create(
            flow="echo",
            business_key=f"OPP-{code.upper()}",
            legal_entity=entities[code],
            source_connection=echo_connection,
            trigger_event=event,
            business_started_at=at,
            created_at=at,
        )
    return made


def _args(name: str, records) -> list:  # noqa: ANN001
    if name == "handoffs:detail":
        return [records["us"].pk]
    if name == "webhook":
        return ["echo-us"]
    if name in ("connections:edit", "connections:test"):
        return [records["us"].source_connection_id]
    if name in ("alerts:edit", "alerts:test", "alerts:delete", "account:token-revoke"):
        return [999999]
    return []


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_the_expected_answer_on_every_url(client, cast, records, role) -> None:  # noqa: ANN001
    from django.urls import reverse

    if role != "anonymous":
        client.force_login(cast[role])
    wrong = {}
    for name, (method, expected) in EXPECTED.items():
        url = reverse(name, args=_args(name, records))
        response = client.generic(method, url)
        if response.status_code != expected[role]:
            wrong[name] = (response.status_code, expected[role])
    assert wrong == {}, f"{role}: (got, expected) per URL"


@pytest.mark.django_db
def test_lists_and_figures_never_include_another_entitys_records(client, cast, records) -> None:  # noqa: ANN001
    client.force_login(cast["outsider"])
    page = client.get("/handoffs/").content.decode()
    assert "OPP-UK" in page and "OPP-US" not in page
    client.force_login(cast["viewer"])
    page = client.get("/handoffs/").content.decode()
    assert "OPP-US" in page and "OPP-UK" not in page
    assert client.get(f"/handoffs/{records['uk'].pk}/").status_code == 404


@pytest.mark.django_db
def test_a_user_with_a_role_but_no_entities_sees_nothing(client, cast, records) -> None:  # noqa: ANN001
    from pscsync.models import AccessProfile

    AccessProfile.objects.filter(user=cast["viewer"]).get().legal_entities.clear()
    client.force_login(cast["viewer"])
    page = client.get("/handoffs/").content.decode()
    assert "OPP-US" not in page and "OPP-UK" not in page
    assert client.get(f"/handoffs/{records['us'].pk}/").status_code == 404


@pytest.mark.django_db
def test_navigation_shows_only_what_the_role_may_use(client, cast) -> None:  # noqa: ANN001
    client.force_login(cast["viewer"])
    page = client.get("/handoffs/").content.decode()
    assert "Dashboards" in page and "Handoffs" in page
    assert "Workbench" not in page and "Connections" not in page
    client.force_login(cast["admin"])
    page = client.get("/handoffs/").content.decode()
    assert all(label in page for label in ("Dashboards", "Workbench", "Handoffs", "Connections", "Alerts"))


@pytest.mark.django_db
def test_a_disabled_user_is_out_on_the_next_request(client, cast) -> None:  # noqa: ANN001
    client.force_login(cast["operator"])
    assert client.get("/handoffs/").status_code == 200
    cast["operator"].is_active = False
    cast["operator"].save()
    assert client.get("/handoffs/").status_code == 302


@pytest.mark.django_db
def test_credentials_never_appear_on_the_connections_page(client, cast, echo_connection) -> None:  # noqa: ANN001
    from tests.helpers import SECRET

    client.force_login(cast["admin"])
    page = client.get("/connections/").content.decode()
    assert "Echo US" in page
    assert SECRET not in page and echo_connection.credentials()["token"] not in page
