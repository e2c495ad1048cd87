"""Every URL the project has, for every role and for a user scoped to another legal entity.

The matrix is generated from the URL resolver: a new URL that is not in EXPECTED fails the test,
so nobody adds a page without deciding who may see it.
"""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from pscsync.models import Handoff

ROLES = ["anonymous", "norole", "viewer", "operator", "admin", "outsider"]

_WORK = {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 200, "admin": 200, "outsider": 200}
_WORK_POST = {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 405, "admin": 405, "outsider": 405}
_ADMIN_ONLY = {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "outsider": 403}

# name -> (method, expected status per role). "own" detail pages use a US handoff; the outsider
# works for the UK entity only, so every US record is a 404 for them, never a 403 that confirms it exists.
# The mapping studio is for admins only (pages 200; actions refuse GET with 405 once allowed).
STUDIO_PAGE = ("GET", {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403})
STUDIO_ACTION = (
    "GET",
    {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
)
EXPECTED: dict[str, tuple[str, dict[str, int]]] = {
    "studio:list": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "studio:detail": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "studio:impact": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "studio:version": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "studio:value_map_csv": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "studio:export": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "studio:draft": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:rule": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:rule_remove": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:rule_move": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:value_map": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:preview": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:publish": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:discard": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:rerun": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:restore": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "studio:import": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "home": ("GET", {"anonymous": 302, "norole": 403, "viewer": 302, "operator": 302, "admin": 302, "outsider": 302}),
    "login": ("GET", {"anonymous": 200, "norole": 302, "viewer": 302, "operator": 302, "admin": 302, "outsider": 302}),
    "logout": ("GET", dict.fromkeys(ROLES, 405)),
    "healthz": ("GET", dict.fromkeys(ROLES, 200)),
    "readyz": ("GET", dict.fromkeys(ROLES, 503)),  # no worker or beat runs in these tests
    "metrics": ("GET", dict.fromkeys(ROLES, 404)),  # off without PSCSYNC_METRICS_TOKEN; a session is no token
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
    "dashboards:overview": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "dashboards:quote_to_project": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "dashboards:project_to_bill": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "dashboards:bill_to_cash": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "dashboards:exceptions": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    # Merged into Integration health (dashboards:health): old links are sent there.
    "dashboards:integration": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 301, "operator": 301, "admin": 301, "outsider": 301},
    ),
    "dashboards:leaders": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "studio:value_map_add": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "dashboards:demand": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "dashboards:items": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 200},
    ),
    "dashboards:settings": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "remediation:inbox": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 200, "admin": 200, "outsider": 200},
    ),
    # The workbench (remediation/): operators act; viewers may read one handoff's timeline.
    "remediation:cause": ("GET", _WORK | {"outsider": 404}),
    "remediation:cause_items": ("GET", _WORK | {"outsider": 404}),
    "remediation:cause_act": ("GET", _WORK_POST),
    "remediation:handoff": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 404},
    ),
    "remediation:resubmit": ("GET", _WORK | {"outsider": 404}),
    "remediation:handoff_act": ("GET", _WORK_POST),
    "remediation:bulk": ("GET", _WORK_POST),
    "remediation:job": ("GET", _WORK | {"outsider": 404}),
    "remediation:job_cancel": ("GET", _WORK_POST),
    "remediation:replay": ("GET", _WORK),
    "remediation:saved_view": ("GET", _WORK_POST),
    "remediation:saved_view_delete": ("GET", _WORK_POST),
    "remediation:export": ("GET", _WORK),  # the outsider's export holds only the outsider's rows
    "remediation:compensate": ("GET", _WORK_POST),
    "remediation:compensation": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 200, "operator": 200, "admin": 200, "outsider": 404},
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
    # Sign-in security (accounts/): anyone signed in may set up a second factor; the users and
    # sessions page is for admins (manage_users).
    "accounts:two_factor_setup": ("GET", {"anonymous": 302, **dict.fromkeys(ROLES[1:], 200)}),
    "accounts:two_factor_verify": ("GET", {"anonymous": 302, **dict.fromkeys(ROLES[1:], 302)}),
    "accounts:password_change": ("GET", {"anonymous": 302, **dict.fromkeys(ROLES[1:], 200)}),
    "accounts:users": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "accounts:sso_rules": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    # Single sign-on is off in the matrix's settings: both ends answer 404 to everyone.
    "oidc_authentication_init": ("GET", dict.fromkeys(ROLES, 404)),
    "oidc_authentication_callback": ("GET", dict.fromkeys(ROLES, 404)),
    "accounts:user_create": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "accounts:user_edit": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 200, "outsider": 403},
    ),
    "accounts:end_sessions": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
    ),
    "accounts:reset_two_factor": (
        "GET",
        {"anonymous": 302, "norole": 403, "viewer": 403, "operator": 403, "admin": 405, "outsider": 403},
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
    "api:not-found": ("GET", dict.fromkeys(ROLES, 404)),
}


def _patterns(resolver, namespace: str = ""):
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
def cast(viewer, operator, admin, outsider, entities):
    from django.contrib.auth import get_user_model

    from pscsync.models import AccessProfile

    norole = get_user_model().objects.create_user("nora.norole", password="a-long-test-password")
    AccessProfile.objects.create(user=norole, all_entities=True)
    return {"viewer": viewer, "operator": operator, "admin": admin, "outsider": outsider, "norole": norole}


@pytest.fixture
def records(echo_connection, entities):
    """One handoff in the US entity and one in the UK entity."""
    import datetime as dt

    from tests.helpers import handoffs_per_entity

    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    made = handoffs_per_entity(echo_connection, {code: entities[code] for code in ("us", "uk")})
    # The US handoff needs a person (so it has a cause) and is in a bulk job.
    from pscsync.lifecycle import handoff_move
    from remediation.models import BulkJob
    from tests.helpers import moves_told

    with moves_told():
        handoff_move(
            made["us"],
            from_states=[Handoff.Status.PENDING],
            to=Handoff.Status.NEEDS_ATTENTION,
            actor="test",
            fields={"last_error_class": "validation", "last_error_message": "echo: account has no Tax Profile"},
        )
    BulkJob.objects.create(kind="retry", created_at=at, handoff_ids=[made["us"].pk], total=1)
    return made


def _mapping_args(name: str, records) -> list:
    from pscsync.mappings import mapping_publish
    from pscsync.models import Mapping

    connection = records["us"].source_connection
    mapping = Mapping.objects.filter(connection=connection, entity="customer").first()
    if mapping is None:
        rules = [{"target": "name", "source": "account.name", "required": True}]
        mapping = mapping_publish(
            connection=connection, entity="customer", rules=rules, value_maps={"tax": {"A": "1"}}, comment="first"
        ).mapping
    if name == "studio:export" or name == "studio:import":
        return [connection.pk]
    if name in ("studio:rule", "studio:rule_remove", "studio:rule_move"):
        return [mapping.pk, 1]
    if name in ("studio:version", "studio:restore"):
        return [mapping.pk, 1]
    if name == "studio:value_map_csv":
        return [mapping.pk, "tax"]
    return [] if name == "studio:list" else [mapping.pk]


def _cause_for(handoff: Handoff):
    """A cause holding this handoff, for the workbench's URLs (when the handoff did not fail)."""
    from remediation.models import ExceptionCause, HandoffException

    at = handoff.created_at
    cause = ExceptionCause.objects.create(
        signature=f"access-matrix-{handoff.pk}", flow=handoff.flow, message="—", first_seen_at=at, last_seen_at=at
    )
    HandoffException.objects.create(
        handoff=handoff,
        cause=cause,
        flow=handoff.flow,
        legal_entity=handoff.legal_entity,
        opened_at=at,
        last_failed_at=at,
    )
    return cause


def _args(name: str, records) -> list:
    from remediation.models import BulkJob, ExceptionCause

    if name.startswith("studio:"):
        return _mapping_args(name, records)
    if name in (
        "handoffs:detail",
        "remediation:handoff",
        "remediation:resubmit",
        "remediation:handoff_act",
        "remediation:compensate",
        "remediation:compensation",
    ):
        return [records["us"].pk]
    if name == "remediation:saved_view_delete":
        return [999999]  # GET is refused before the lookup
    if name.startswith("remediation:cause"):
        cause = ExceptionCause.objects.filter(items__handoff=records["us"]).first()
        return [cause.pk if cause else _cause_for(records["us"]).pk]
    if name.startswith("remediation:job"):
        job = BulkJob.objects.filter(handoff_ids=[records["us"].pk]).first()
        return [
            (
                job
                or BulkJob.objects.create(
                    kind="retry", created_at=records["us"].created_at, handoff_ids=[records["us"].pk], total=1
                )
            ).pk
        ]
    if name == "webhook":
        return ["echo-us"]
    if name in ("connections:edit", "connections:test"):
        return [records["us"].source_connection_id]
    if name == "accounts:user_edit":
        return [cast_user_pk(records)]
    if name in ("accounts:end_sessions", "accounts:reset_two_factor"):
        return [records["us"].source_connection_id]  # any user id: GET is refused before the lookup
    if name in ("alerts:edit", "alerts:test", "alerts:delete", "account:token-revoke"):
        return [999999]
    return []


def cast_user_pk(records) -> int:
    """Any user: the matrix's admin sees every entity, so may open any user's page."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.order_by("pk").values_list("pk", flat=True).first()


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_the_expected_answer_on_every_url(client, cast, records, role) -> None:
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
def test_lists_and_figures_never_include_another_entitys_records(client, cast, records) -> None:
    client.force_login(cast["outsider"])
    page = client.get("/handoffs/").content.decode()
    assert "OPP-UK" in page and "OPP-US" not in page
    client.force_login(cast["viewer"])
    page = client.get("/handoffs/").content.decode()
    assert "OPP-US" in page and "OPP-UK" not in page
    assert client.get(f"/handoffs/{records['uk'].pk}/").status_code == 404


@pytest.mark.django_db
def test_a_user_with_a_role_but_no_entities_sees_nothing(client, cast, records) -> None:
    from pscsync.models import AccessProfile

    AccessProfile.objects.filter(user=cast["viewer"]).get().legal_entities.clear()
    client.force_login(cast["viewer"])
    page = client.get("/handoffs/").content.decode()
    assert "OPP-US" not in page and "OPP-UK" not in page
    assert client.get(f"/handoffs/{records['us'].pk}/").status_code == 404


@pytest.mark.django_db
def test_navigation_shows_only_what_the_role_may_use(client, cast) -> None:
    client.force_login(cast["viewer"])
    page = client.get("/handoffs/").content.decode()
    assert "Dashboards" in page and "Handoffs" in page
    assert "Workbench" not in page and "Connections" not in page
    client.force_login(cast["admin"])
    page = client.get("/handoffs/").content.decode()
    assert all(label in page for label in ("Dashboards", "Workbench", "Handoffs", "Connections", "Alerts"))


@pytest.mark.django_db
def test_a_disabled_user_is_out_on_the_next_request(client, cast) -> None:
    client.force_login(cast["operator"])
    assert client.get("/handoffs/").status_code == 200
    cast["operator"].is_active = False
    cast["operator"].save()
    assert client.get("/handoffs/").status_code == 302


@pytest.mark.django_db
def test_credentials_never_appear_on_the_connections_page(client, cast, echo_connection) -> None:
    from tests.helpers import SECRET

    client.force_login(cast["admin"])
    page = client.get("/connections/").content.decode()
    assert "Echo US" in page
    assert SECRET not in page and echo_connection.credentials()["token"] not in page
