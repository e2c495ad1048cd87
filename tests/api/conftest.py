"""The API cast and records: a US and a UK record of every kind, and a token per person.

viewer, operator: US only; admin: every entity; outsider: a UK operator; ukadmin: a UK admin.
"US" records are "own" for viewer/operator/admin and "other" for outsider and ukadmin.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

AT = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def ukadmin(entities):
    from pscsync.services import user_provision

    return user_provision(
        username="ulla.ukadmin", password="a-long-test-password", role="admin", entities=[entities["uk"]]
    )


@pytest.fixture
def norole(entities):
    from django.contrib.auth import get_user_model

    from pscsync.models import AccessProfile

    user = get_user_model().objects.create_user("nora.norole", password="a-long-test-password")
    AccessProfile.objects.create(user=user, all_entities=True)
    return user


@pytest.fixture
def people(viewer, operator, admin, outsider, ukadmin, norole):
    return {
        "viewer": viewer,
        "operator": operator,
        "admin": admin,
        "outsider": outsider,
        "ukadmin": ukadmin,
        "norole": norole,
    }


@pytest.fixture
def tokens(people):
    from api.tokens import api_token_issue

    return {role: api_token_issue(user=user, name=f"{role} test", days=30).plaintext for role, user in people.items()}


def make_connection(slug: str, entity, base_url: str = "http://127.0.0.1:9/"):
    from connectors.models import Connection
    from pscsync.services import connection_save

    return connection_save(
        slug=slug,
        name=slug.upper(),
        kind=Connection.Kind.TEST,
        vendor=Connection.Vendor.ECHO,
        base_url=base_url,
        entities=[entity],
        credentials={"token": f"secret-token-{slug}"},
        is_sandbox=True,
    )


def make_exception(connection, entity, key: str, message: str, *, error_class: str = "validation"):
    """A handoff that needs attention, with a succeeded step and a failed one."""
    from pscsync.models import Attempt, Event, Handoff, Step
    from remediation.services import exception_sync

    event = Event.objects.create(
        connection=connection,
        source_event_id=f"evt-{key}",
        flow="echo",
        business_key=key,
        legal_entity=entity,
        occurred_at=AT,
        received_at=AT,
        raw_body="{}",
        payload={"name": key, "amount": "100.00"},
    )
    handoff = Handoff.objects.create(
        flow="echo",
        business_key=key,
        legal_entity=entity,
        source_connection=connection,
        trigger_event=event,
        payload={"name": key, "amount": "100.00"},
        status=Handoff.Status.NEEDS_ATTENTION,
        business_started_at=AT,
        created_at=AT,
        last_error_class=error_class,
        last_error_message=f"upsert_project: {message}",
        failed_step="upsert_project",  # as the runner stores it with the failure
        failure_reason=message,
    )
    event.handoff = handoff
    event.save()
    done = Step.objects.create(
        handoff=handoff,
        name="upsert_customer",
        position=1,
        status=Step.Status.SUCCEEDED,
        idempotency_key=f"{key}-1",
        output={"name": key},
    )
    Attempt.objects.create(
        step=done, number=1, outcome=Attempt.Outcome.SUCCEEDED, started_at=AT, request={"authorization": "Bearer x"}
    )
    failed = Step.objects.create(
        handoff=handoff, name="upsert_project", position=2, status=Step.Status.FAILED, idempotency_key=f"{key}-2"
    )
    Attempt.objects.create(
        step=failed,
        number=1,
        outcome=Attempt.Outcome.VALIDATION,
        started_at=AT,
        error_class=error_class,
        error_message=message,
    )
    exception_sync(handoff)  # the workbench's exception and cause rows, as the runner makes them
    return handoff


@pytest.fixture
def world(entities, people):
    """One record of every kind per entity."""
    from pscsync.audit import audit_record
    from pscsync.mappings import mapping_publish
    from pscsync.models import Mismatch, ReconciliationRun
    from remediation.services import bulk_job_create, saved_view_save

    made: dict[str, dict] = {"us": {}, "uk": {}}
    for code in ("us", "uk"):
        entity = entities[code]
        connection = make_connection(f"echo-{code}", entity)
        handoff = make_exception(
            connection,
            entity,
            f"OPP-{code.upper()}",
            "the customer 'Acme' has no tax code" if code == "us" else "budget is missing",
        )
        version = mapping_publish(
            connection=connection,
            entity="customer",
            rules=[{"target": "name", "source": "name"}],
            value_maps={},
            comment="first",
        )
        mismatch = Mismatch.objects.create(
            comparison=Mismatch.Comparison.DEAL_VALUE,
            legal_entity=entity,
            subject_key=f"OPP-{code.upper()}",
            cause=Mismatch.Cause.UNEXPLAINED,
            explanation="differs",
            currency=entity.currency,
            amounts={"crm": "1200.00", "erp": "1000.00"},
            difference=Decimal("200.00"),
            first_seen_at=AT,
            last_seen_at=AT,
        )
        audit = audit_record(actor=None, action="test.touch", obj=handoff, legal_entity=entity)
        made[code] = {
            "connection": connection,
            "handoff": handoff,
            "event": handoff.trigger_event,
            "mapping": version.mapping,
            "mismatch": mismatch,
            "audit": audit,
        }
    for code, person in (("us", "operator"), ("uk", "outsider")):
        made[code]["job"] = bulk_job_create(
            actor=people[person], kind="resolve", handoff_ids=[made[code]["handoff"].pk], reason="x"
        )
        made[code]["saved_view"] = saved_view_save(
            actor=people[person], name=f"{code} queue", query=f"legal_entity={code}"
        )
        made[code]["reconciliation_run"] = ReconciliationRun.objects.create(
            legal_entity=entities[code],
            status=ReconciliationRun.Status.COMPLETE,
            started_at=AT,
            finished_at=AT,
            summary={"deal_value": {"checked": 1, "matched": 0, "mismatches": {"unexplained": 1}, "cleared": 0}},
        )
    return made


@pytest.fixture
def api(client):
    """Calls the API with a token (or none, or a bad one), as an integration would."""
    import json

    def call(method: str, url: str, token: str | None = None, body: object = None):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
        if method == "GET":
            return client.get(url, **headers)
        return client.generic(method, url, data=json.dumps(body or {}), content_type="application/json", **headers)

    return call


@pytest.fixture
def mid_minute(monkeypatch):
    """Throttle windows are clock minutes: hold the clock mid-minute so a test never straddles two."""
    from api import throttling

    monkeypatch.setattr(throttling, "_now", lambda: 1_800_000_030.0)  # hh:mm:30
