"""Contract tests: the Certinia PSA connector (pse__ objects on the Salesforce transport)
against the Salesforce sandbox, over real HTTP."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from connectors import base
from connectors.errors import RejectedError
from connectors.registry import connector_for
from pscsync.services import connection_save

pytestmark = pytest.mark.django_db

MONDAY = dt.date(2026, 11, 2)


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory("salesforce")


@pytest.fixture
def certinia(sandbox, entities, monkeypatch):
    monkeypatch.setattr(base, "_tokens", {})
    connection = connection_save(
        slug="certinia",
        name="Certinia PSA",
        kind="psa",
        vendor="certinia",
        base_url=sandbox.url,
        entities=[entities["us"]],
        credentials={"client_id": "sandbox-client", "client_secret": "sandbox-secret", "webhook_secrets": []},
        is_sandbox=True,
    )
    return connector_for(connection)


@pytest.fixture
def staffed_project(certinia):
    """A project with a milestone, a resource, a schedule and an assignment at 150/h."""
    account = certinia.upsert(entity="Account", key="ACME", fields={"Name": "Acme"}).external_id
    project = certinia.upsert(
        entity="project",
        key="PRJ-1",
        fields={"Name": "Acme ERP rollout", "pse__Account__c": account, "pse__Billing_Type__c": "Time and Materials"},
    ).external_id
    resource = certinia.upsert(
        entity="resource", key="RES-1", fields={"LastName": "Okafor", "pse__Is_Resource__c": True}
    ).external_id
    schedule = certinia.upsert(
        entity="schedule",
        key="SCH-1",
        fields={"pse__Start_Date__c": "2026-11-02", "pse__End_Date__c": "2026-12-31"},
    ).external_id
    assignment = certinia.upsert(
        entity="assignment",
        key="ASG-1",
        fields={
            "pse__Project__c": project,
            "pse__Resource__c": resource,
            "pse__Schedule__c": schedule,
            "pse__Bill_Rate__c": 150,
        },
    ).external_id
    return {"project": project, "resource": resource, "assignment": assignment}


def timecard_fields(staffed: dict[str, str], **extra: object) -> dict[str, object]:
    return {
        "pse__Project__c": staffed["project"],
        "pse__Resource__c": staffed["resource"],
        "pse__Assignment__c": staffed["assignment"],
        "pse__Start_Date__c": MONDAY.isoformat(),
        "pse__End_Date__c": (MONDAY + dt.timedelta(days=6)).isoformat(),
        "pse__Monday_Hours__c": 8,
        "pse__Tuesday_Hours__c": 7.5,
        "pse__Status__c": "Saved",
        "pse__Billable__c": True,
        **extra,
    }


def test_projects_upsert_once_by_key_under_their_pse_object(sandbox, certinia) -> None:
    first = certinia.upsert(entity="project", key="PRJ-9", fields={"Name": "Rollout"})
    again = certinia.upsert(entity="pse__Proj__c", key="PRJ-9", fields={"Name": "Rollout phase 1"})
    assert first.external_id == again.external_id and first.external_id.startswith("a2Q")
    assert "/sobjects/pse__Proj__c/pscsync_Key__c/PRJ-9" in first.request["url"]
    assert sandbox.journal()["creates_by_key"] == {"pse__Proj__c/PRJ-9": 1}
    [row] = list(certinia.read("project"))
    assert row["Name"] == "Rollout phase 1"


def test_a_milestone_without_its_project_is_explained_in_psa_words(certinia) -> None:
    with pytest.raises(RejectedError) as caught:
        certinia.upsert(entity="milestone", key="MS-1", fields={"Name": "Go-live"})
    assert caught.value.message == (
        "Salesforce rejected the milestone MS-1: required field(s) missing: pse__Project__c"
    )


def test_an_approved_timecard_can_no_longer_be_edited(certinia, staffed_project) -> None:
    certinia.upsert(entity="timecard", key="TC-1", fields=timecard_fields(staffed_project))
    certinia.upsert(entity="timecard", key="TC-1", fields={"pse__Status__c": "Approved", "pse__Approved__c": True})
    with pytest.raises(RejectedError, match="This timecard is Approved and can no longer be edited"):
        certinia.upsert(entity="timecard", key="TC-1", fields={"pse__Monday_Hours__c": 10})


def test_a_timecard_must_cover_one_week(certinia, staffed_project) -> None:
    fields = timecard_fields(staffed_project, pse__End_Date__c=(MONDAY + dt.timedelta(days=9)).isoformat())
    with pytest.raises(RejectedError, match="A timecard covers one week"):
        certinia.upsert(entity="timecard", key="TC-2", fields=fields)


def test_billing_run_bundles_approved_time_expenses_and_milestones(sandbox, certinia, staffed_project) -> None:
    project = staffed_project["project"]
    certinia.upsert(entity="timecard", key="TC-3", fields=timecard_fields(staffed_project, pse__Status__c="Approved"))
    certinia.upsert(
        entity="expense",
        key="EX-1",
        fields={
            "pse__Project__c": project,
            "pse__Resource__c": staffed_project["resource"],
            "pse__Expense_Date__c": "2026-11-04",
            "pse__Amount__c": 120.5,
            "pse__Billable__c": True,
            "pse__Status__c": "Approved",
        },
    )
    certinia.upsert(
        entity="milestone",
        key="MS-2",
        fields={"Name": "Design signed off", "pse__Project__c": project, "pse__Milestone_Amount__c": 10000},
    )  # not approved yet: not billed
    answer = httpx.post(f"{sandbox.url}/_sandbox/certinia/billing-events", json={"project": project}).json()
    assert len(answer["billingEvents"]) == 1
    [event] = list(certinia.read("billing_event"))
    assert event["pse__Summary_Amount__c"] == 15.5 * 150 + 120.5
    items = list(certinia.read("billing_event_item", where={"pse__Billing_Event__c": event["Id"]}))
    assert sorted(i["pse__Category__c"] for i in items) == ["Expense", "Timecard"]
    again = httpx.post(f"{sandbox.url}/_sandbox/certinia/billing-events", json={"project": project}).json()
    assert again["billingEvents"] == []  # nothing is billed twice


def test_psa_changes_arrive_on_their_change_event_channel(certinia, staffed_project) -> None:
    changes, _ = certinia.poll(cursor="")
    projects = [c for c in changes if c.event_type == "pse__Proj__c.CREATE"]
    assert [c.business_key for c in projects] == [staffed_project["project"]]
    assert projects[0].payload["channel"] == "/data/pse__Proj__ChangeEvent"
