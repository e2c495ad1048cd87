"""quote-to-project end to end against the sandboxes, for both vendor combinations."""

from __future__ import annotations

import pytest

from pscsync.models import Handoff, Step
from tests.flows.conftest import run, trigger, won_deal

pytestmark = pytest.mark.django_db


def test_a_us_deal_becomes_a_netsuite_customer_a_certinia_project_and_a_contract(firm) -> None:
    deal = won_deal(firm, entity="us", key="7")
    # The change is heard 30 minutes after the deal closed (e.g. a delayed push).
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"], minutes_later=30))

    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    opp = deal["opportunity"]
    netsuite, certinia = firm.connector("netsuite-us"), firm.connector("certinia-us")
    customer = netsuite.lookup(entity="customer", key=f"C-{deal['account']}")
    assert customer is not None and customer.response["companyName"] == "Globex 7"
    order = netsuite.lookup(entity="sales_order", key=f"SO-{opp}").response
    assert order["total"] == 120000.0 and order["custbody_rev_method"] == "Milestone"
    milestones = list(certinia.read("milestone", fields=["Name", "pse__Milestone_Amount__c", "pscsync_Key__c"]))
    assert sorted(m["Name"] for m in milestones) == ["Build", "Discovery", "Go-live"]
    assert sum(float(m["pse__Milestone_Amount__c"]) for m in milestones) == 120000.0
    requests = list(certinia.read("resource_request", fields=["pse__Resource_Role__c", "pse__Status__c"]))
    assert {r["pse__Resource_Role__c"] for r in requests} == {"Project Manager", "Solution Architect", "Consultant"}
    budget = certinia.lookup(entity="budget", key=f"B-{opp}-v1")
    assert budget is not None
    written_back = next(
        firm.salesforce.read(
            "opportunity", where={"Id": opp}, fields=["ERP_Customer_Id__c", "PSA_Project_Id__c", "Project_Status__c"]
        )
    )
    assert written_back["ERP_Customer_Id__c"] == customer.external_id
    assert written_back["Project_Status__c"] == "Provisioned"
    # The handoff carries the business facts and the mapping version each write used.
    assert handoff.customer_name == "Globex 7" and handoff.service_line == "Implementation"
    assert handoff.business_times["deal_closed"].startswith("2026-11-20T15:04")
    assert handoff.business_started_at.isoformat().startswith("2026-11-20T15:04")  # the deal's close, not the CDC
    assert "project_activated" in handoff.business_times
    assert Step.objects.filter(handoff=handoff, mapping_version__isnull=False).count() >= 5


def test_a_uk_deal_becomes_a_business_central_customer_and_a_kantata_project(firm) -> None:
    deal = won_deal(firm, entity="uk", key="8", Billing_Model__c="Time and Materials", Service_Line__c="Advisory")
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))

    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    opp = deal["opportunity"]
    bc, kantata = firm.connector("businesscentral-uk"), firm.connector("kantata-uk")
    customer = bc.lookup(entity="customers", key=f"C-{deal['account']}")
    assert customer is not None and customer.response["currencyCode"] == "GBP"
    assert bc.lookup(entity="projects", key=f"P-{opp}") is not None
    project = kantata.lookup(entity="workspaces", key=f"P-{opp}")
    assert project is not None and project.response["price"] == 12000000
    stories = list(kantata.read("stories", where={"workspace_id": project.external_id}))
    assert {s["title"] for s in stories} >= {"Assessment", "Recommendations", "Resource request: Senior Consultant"}


def test_running_it_again_writes_nothing_twice(firm) -> None:
    deal = won_deal(firm, entity="us", key="9")
    first = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert first.status == Handoff.Status.SUCCEEDED, first.last_error_message
    second = run(trigger(firm, "quote-to-project", deal["opportunity"], event_id="again", minutes_later=5))
    assert second.status == Handoff.Status.SUCCEEDED, second.last_error_message

    creates = firm.sandboxes["netsuite"].journal()["creates_by_key"]
    assert creates[f"customer/C-{deal['account']}"] == 1
    assert creates[f"salesOrder/SO-{deal['opportunity']}"] == 1
    sf_creates = firm.sandboxes["salesforce"].journal()["creates_by_key"]
    assert sf_creates[f"pse__Proj__c/P-{deal['opportunity']}"] == 1
    assert all(count == 1 for key, count in sf_creates.items() if key.startswith("pse__Milestone__c/"))


def test_a_run_reads_its_entitys_systems_once(firm, monkeypatch) -> None:
    """The check step and every write step ask for the entity's CRM, PSA and ERP (three queries
    each time): the first answer serves the rest of the run."""
    from pscsync.flows import deals, routing, steps

    asked: list[str] = []
    systems_for = routing.systems_for

    def counted(entity):
        asked.append(entity.code)
        return systems_for(entity)

    monkeypatch.setattr(steps, "systems_for", counted)
    monkeypatch.setattr(deals, "systems_for", counted, raising=False)  # where the check steps asked before
    deal = won_deal(firm, entity="us", key="11")
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    assert asked == ["us"]  # was three: the check, the service-line check, then the writes


def test_a_batch_reads_each_entitys_systems_and_each_mapping_in_force_once(firm, monkeypatch) -> None:
    """The handoffs a worker claims together share what does not change within a second of work:
    the systems serving a legal entity and the mapping versions in force are read once per batch,
    not once per handoff."""
    from pscsync.flows import routing, steps
    from pscsync.runner import Pace, handoffs_claim_run
    from tests.helpers import moves_told

    systems_asked: list[str] = []
    mappings_asked: list[tuple[str, str]] = []
    systems_for, mapping_in_force = routing.systems_for, steps.mapping_in_force

    def counted_systems(entity):
        systems_asked.append(entity.code)
        return systems_for(entity)

    def counted_mapping(*, connection, entity):
        mappings_asked.append((connection.slug, entity))
        return mapping_in_force(connection=connection, entity=entity)

    monkeypatch.setattr(steps, "systems_for", counted_systems)
    monkeypatch.setattr(steps, "mapping_in_force", counted_mapping)
    handoffs = [
        trigger(firm, "quote-to-project", won_deal(firm, entity="us", key=f"2{n}")["opportunity"]) for n in range(3)
    ]
    pace = Pace()
    pace.record(0.001)  # quick handoffs: the three are claimed in one batch
    with moves_told():
        assert handoffs_claim_run(worker="test-worker", limit=10, pace=pace) == 3
    for handoff in handoffs:
        handoff.refresh_from_db()
        assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    assert systems_asked == ["us"]  # was three, one for each handoff
    # Each (connection, purpose) once for the batch; every step that maps wrote with it.
    assert mappings_asked and len(mappings_asked) == len(set(mappings_asked))
    versions = set(
        Step.objects.filter(handoff__in=handoffs, mapping_version__isnull=False).values_list("name", "mapping_version")
    )
    assert len(versions) == len({name for name, _ in versions})  # one version per step across the batch
