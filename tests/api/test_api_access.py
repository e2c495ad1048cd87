"""Every API route × every role × a record of the caller's own legal entity and of another.

Generated from the router: a new API route without a row here fails, so nobody adds an endpoint
without deciding who may use it. "Own" records are US records; the outsider (UK operator) and
the UK admin must get 404 for them, never 403, so an id does not confirm another entity's record.
"""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from api.selectors import group_id
from remediation.selectors import cause_signature
from tests.helpers import status_force

VIEW, WORK, CONFIGURE, AUDIT, DASH = "view", "work", "configure", "audit", "dashboards"
LEVELS = {
    "viewer": {VIEW, DASH},
    "operator": {VIEW, DASH, WORK},
    "outsider": {VIEW, DASH, WORK},
    "admin": {VIEW, DASH, WORK, CONFIGURE, AUDIT},
    "ukadmin": {VIEW, DASH, WORK, CONFIGURE, AUDIT},
    "norole": set(),
}
SEES = {
    "viewer": {"us"},
    "operator": {"us"},
    "outsider": {"uk"},
    "admin": {"us", "uk"},
    "ukadmin": {"uk"},
    "norole": set(),
}
ROLES = ["anonymous", "badtoken", *LEVELS]

# name -> (method, permission level, record kind for detail routes or None, body, status when allowed and visible)
API_ROUTES: dict[str, tuple[str, str, str | None, dict | None, int]] = {
    "api:handoff-list": ("GET", VIEW, None, None, 200),
    "api:handoff-detail": ("GET", VIEW, "handoff", None, 200),
    "api:event-list": ("GET", VIEW, None, None, 200),
    "api:event-detail": ("GET", VIEW, "event", None, 200),
    "api:exception-list": ("GET", WORK, None, None, 200),
    "api:exception-detail": ("GET", WORK, "handoff", None, 200),
    "api:exception-resubmit": ("POST", WORK, "handoff", {"reason": "go"}, 200),
    "api:exception-resolve": ("POST", WORK, "handoff", {"reason": "fixed by hand"}, 200),
    "api:exception-cancel": ("POST", WORK, "handoff", {"reason": "not needed"}, 200),
    "api:exception-reopen": ("POST", WORK, "handoff", {"reason": "again"}, 409),  # it is not resolved
    "api:exception-assign": ("POST", WORK, "handoff", {"assignee": "otto.operator"}, 200),
    "api:exception-comment": ("POST", WORK, "handoff", {"body": "looking"}, 201),
    "api:exception-group-list": ("GET", WORK, None, None, 200),
    "api:exception-group-detail": ("GET", WORK, "group", None, 200),
    "api:job-list": ("GET", WORK, None, None, 200),
    "api:job-detail": ("GET", WORK, "job", None, 200),
    "api:mapping-list": ("GET", WORK, None, None, 200),
    "api:mapping-detail": ("GET", WORK, "mapping", None, 200),
    "api:mapping-publish": (
        "POST",
        CONFIGURE,
        "mapping",
        {"rules": [{"target": "n", "source": "name"}], "comment": "c"},
        201,
    ),
    "api:connection-list": ("GET", CONFIGURE, None, None, 200),
    "api:connection-detail": ("GET", CONFIGURE, "connection", None, 200),
    "api:mismatch-list": ("GET", DASH, None, None, 200),
    "api:mismatch-detail": ("GET", DASH, "mismatch", None, 200),
    "api:audit-entry-list": ("GET", AUDIT, None, None, 200),
    "api:audit-entry-detail": ("GET", AUDIT, "audit", None, 200),
    "api:metrics-health": ("GET", DASH, None, None, 200),
    "api:metrics-connections": ("GET", DASH, None, None, 200),
    "api:metrics": ("GET", DASH, None, None, 200),
    "api:metrics-latency": ("GET", DASH, None, None, 200),
    # The workbench's causes (v1.1.0). Archive runs before reopen on purpose: reopen needs an archived cause.
    "api:exception-cause-list": ("GET", WORK, None, None, 200),
    "api:exception-cause-detail": ("GET", WORK, "cause", None, 200),
    "api:exception-cause-assign": ("POST", WORK, "cause", {"assignee": "otto.operator"}, 200),
    "api:exception-cause-archive": ("POST", WORK, "cause", {"occurrences": 5, "reason": "known"}, 200),
    "api:exception-cause-reopen": ("POST", WORK, "cause", {}, 200),
    "api:exception-cause-runbook": ("POST", CONFIGURE, "cause", {"action": "Set the tax code"}, 200),
    "api:exception-cause-comment": ("POST", WORK, "cause", {"body": "seen"}, 201),
    "api:job-cancel": ("POST", WORK, "job", {}, 200),
    # Saved views and SLAs are the team's, not an entity's: both records are everyone's with the role.
    "api:saved-view-list": ("GET", WORK, None, None, 200),
    "api:saved-view-detail": ("GET", WORK, "saved_view", None, 200),
    # Replays are created with POST (below); GET on the collection is not a method it has.
    "api:replay-list": ("GET", WORK, None, None, 405),
    "api:replay-preview": ("GET", WORK, "replay_window", None, 200),
    "api:reconciliation-run-list": ("GET", DASH, None, None, 200),
    "api:reconciliation-run-detail": ("GET", DASH, "reconciliation_run", None, 200),
    "api:sla-list": ("GET", DASH, None, None, 200),
    "api:sla-detail": ("GET", DASH, "sla", None, 200),
}
UNSCOPED = {"saved_view", "sla"}
# Writes on list routes, checked separately with a body the caller may send.
API_WRITES = {
    ("api:job-list", "POST"): (WORK, {"kind": "resolve", "handoffs": ["own"], "reason": "bulk"}, 202),
    ("api:mapping-list", "POST"): (
        CONFIGURE,
        {"connection": "own", "entity": "project", "rules": [{"target": "n", "source": "name"}], "comment": "c"},
        201,
    ),
    ("api:connection-list", "POST"): (CONFIGURE, "connection-body", 201),
    ("api:connection-detail", "PATCH"): (CONFIGURE, {"name": "Renamed"}, 200),
    ("api:replay-list", "POST"): (
        WORK,
        {"connection": "own", "start": "2026-10-31T00:00:00Z", "end": "2026-11-02T00:00:00Z", "reason": "outage"},
        202,
    ),
}
# Writes on the team's records (no legal entity): the same answer for both records.
TEAM_WRITES = {
    ("api:saved-view-list", "POST"): (WORK, {"name": "Tax codes", "query": "tab=open&q=tax"}, 201),
    ("api:sla-detail", "PUT"): (CONFIGURE, {"target": "2.5", "unit": "business_days"}, 200),
}
NOT_API = {"api:schema", "api:docs", "api:not-found"}


def _names(resolver, namespace: str = ""):
    for p in resolver.url_patterns:
        if isinstance(p, URLResolver):
            yield from _names(p, f"{namespace}{p.namespace}:" if p.namespace else namespace)
        elif isinstance(p, URLPattern) and p.name:
            yield f"{namespace}{p.name}"


def test_every_api_route_has_a_row_in_the_matrix() -> None:
    names = {n for n in _names(get_resolver()) if n.startswith("api:")} - NOT_API
    assert names - API_ROUTES.keys() == set(), "add these API routes to the matrix"
    assert API_ROUTES.keys() - names == set(), "these rows name routes that no longer exist"


def _expected(role: str, level: str, entity: str | None, allowed_status: int, kind: str | None) -> int:
    if role in ("anonymous", "badtoken"):
        return 401
    if level not in LEVELS[role]:
        return 403
    if entity is None or kind in UNSCOPED:
        return allowed_status
    if kind == "job":  # a job is its creator's: the operator made the US one, the outsider the UK one
        creator = {"us": "operator", "uk": "outsider"}[entity]
        return allowed_status if role == creator else 404
    return allowed_status if entity in SEES[role] else 404


def _record_id(world, kind: str, entity: str):
    if kind == "group":
        h = world[entity]["handoff"]
        return group_id(h.flow, h.last_error_class, cause_signature(h.last_error_message))
    if kind == "cause":
        return world[entity]["handoff"].exception.cause_id
    if kind == "sla":
        return "quote-to-project"
    return world[entity][kind].pk


def _url(name: str, kind: str | None, world, entity: str | None) -> str:
    if kind == "replay_window":
        # The preview's window names a connection: another entity's is unknown.
        slug = world[entity]["connection"].slug
        return f"{reverse(name)}?connection={slug}&start=2026-10-31T00:00:00Z&end=2026-11-02T00:00:00Z"
    return reverse(name, args=[_record_id(world, kind, entity)] if kind else [])


def _token(role: str, tokens: dict[str, str]) -> str | None:
    if role == "anonymous":
        return None
    if role == "badtoken":
        return "psc_000000000000_not-a-real-token"
    return tokens[role]


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_the_expected_answer_on_every_api_route(api, world, tokens, role) -> None:
    wrong = {}
    for name, (method, level, kind, body, allowed) in API_ROUTES.items():
        for entity in ("us", "uk") if kind else (None,):
            response = api(method, _url(name, kind, world, entity), _token(role, tokens), body)
            expected = _expected(role, level, entity, allowed, kind)
            if kind == "replay_window" and expected == 404:
                expected = 422  # a connection named in the query that the caller cannot see
            if response.status_code != expected:
                wrong[f"{name} {entity or ''}"] = (response.status_code, expected, response.content[:200])
            # A state-changing call that succeeded changes the record: rebuild nothing, but stop
            # later rows from depending on it (resolve/cancel/resubmit run in this order on purpose).
            if method == "POST" and response.status_code == 200 and kind == "handoff":
                _reset(world[entity]["handoff"])
    assert wrong == {}, f"{role}: (got, expected, body) per route"


def _reset(handoff) -> None:
    from pscsync.models import Handoff

    status_force(handoff.pk, Handoff.Status.NEEDS_ATTENTION, finished_at=None)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_the_expected_answer_on_every_api_write(api, world, tokens, role, monkeypatch) -> None:
    wrong = {}
    for (name, method), (level, body, allowed) in API_WRITES.items():
        for entity in ("us", "uk"):
            if body == "connection-body":
                payload = {
                    "slug": f"new-{role}-{entity}",
                    "name": "New",
                    "kind": "test",
                    "vendor": "echo",
                    "base_url": "http://127.0.0.1:9/",
                    "is_sandbox": True,
                    "legal_entities": [entity],
                    "credentials": {"token": "t"},
                }
            else:
                payload = {
                    k: (
                        [world[entity]["handoff"].pk]
                        if v == ["own"]
                        else world[entity]["connection"].slug
                        if v == "own"
                        else v
                    )
                    for k, v in body.items()
                }
            args = [world[entity]["connection"].pk] if name.endswith("-detail") else []
            response = api(method, reverse(name, args=args), _token(role, tokens), payload)
            detail = name.endswith("-detail")
            expected = _expected(role, level, entity if detail else None, allowed, "connection" if detail else None)
            if expected == allowed and entity not in SEES[role] and not detail:
                # Naming another entity's records in a body: refused as unknown (422), not 404 or 403.
                expected = 422
            if response.status_code != expected:
                wrong[f"{method} {name} {entity}"] = (response.status_code, expected, response.content[:300])
    for (name, method), (level, body, allowed) in TEAM_WRITES.items():
        args = ["quote-to-project"] if name == "api:sla-detail" else []
        response = api(method, reverse(name, args=args), _token(role, tokens), body)
        expected = _expected(role, level, None, allowed, None)
        if response.status_code != expected:
            wrong[f"{method} {name}"] = (response.status_code, expected, response.content[:300])
    assert wrong == {}, f"{role}: (got, expected, body) per write"


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_a_saved_view_is_deleted_by_its_creator_or_an_admin(api, world, tokens, role) -> None:
    for entity, creator in (("us", "operator"), ("uk", "outsider")):
        view = world[entity]["saved_view"]
        response = api("DELETE", reverse("api:saved-view-detail", args=[view.pk]), _token(role, tokens))
        expected = _expected(role, WORK, None, 204, None)
        if expected == 204 and role != creator and CONFIGURE not in LEVELS[role]:
            expected = 403
        assert response.status_code == expected, (entity, response.content)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    ["/api/v1/handoffs/", "/api/v1/events/", "/api/v1/exceptions/", "/api/v1/mismatches/", "/api/v1/audit-entries/"],
)
def test_lists_never_include_another_entitys_records(api, world, tokens, url) -> None:
    ukadmin = api("GET", url, tokens["ukadmin"]).json()["results"]
    ids_uk = {world["uk"][k].pk for k in ("handoff", "event", "mismatch", "audit")}
    ids_us = {world["us"][k].pk for k in ("handoff", "event", "mismatch", "audit")}
    got = {row["id"] for row in ukadmin}
    assert got and got <= ids_uk | (got - ids_us), got
    assert not (
        {row["id"] for row in ukadmin} & {world["us"]["handoff"].pk} and url.endswith(("handoffs/", "exceptions/"))
    )
    keys = {row.get("business_key") or row.get("subject_key") for row in ukadmin}
    assert "OPP-US" not in keys


@pytest.mark.django_db
def test_aggregates_count_only_the_callers_entities(api, world, tokens) -> None:
    groups = api("GET", "/api/v1/exception-groups/", tokens["outsider"]).json()["results"]
    assert [g["handoffs"] for g in groups] == [[world["uk"]["handoff"].pk]]
    health = api("GET", "/api/v1/metrics/health/", tokens["viewer"]).json()
    assert health["by_status"]["needs_attention"] == 1  # the US one only; the UK one is not counted
    activity = api("GET", "/api/v1/metrics/connections/", tokens["viewer"]).json()
    assert [row["connection"] for row in activity] == ["echo-us"]


@pytest.mark.django_db
def test_connections_never_return_credentials(api, world, tokens) -> None:
    body = api("GET", "/api/v1/connections/", tokens["admin"]).content.decode()
    assert "secret-token-echo-us" not in body
    assert '"credentials"' not in body
    assert '"has_credentials":true' in body.replace(" ", "")
