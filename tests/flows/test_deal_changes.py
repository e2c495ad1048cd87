"""contract-change and pipeline-to-demand against the sandboxes."""

from __future__ import annotations

import pytest

from pscsync.models import Handoff
from tests.flows.conftest import run, trigger, won_deal
from tests.flows.test_project_to_bill import provisioned

pytestmark = pytest.mark.django_db


def test_an_amendment_adds_a_change_budget_and_updates_the_netsuite_contract(firm) -> None:
    deal = provisioned(firm, "us", "41")
    opp = deal["opportunity"]
    firm.salesforce.update(
        entity="opportunity",
        record_id=opp,
        fields={"Amount": 150000, "Contract_Version__c": 2, "Contract_End__c": "2027-08-31"},
    )

    handoff = run(trigger(firm, "contract-change", opp))

    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    certinia = firm.connector("certinia-us")
    budgets = {
        b["pscsync_Key__c"]: float(b["pse__Amount__c"])
        for b in certinia.read("budget", fields=["pscsync_Key__c", "pse__Amount__c"])
    }
    assert budgets == {f"B-{opp}-v1": 120000.0, f"B-{opp}-v2": 30000.0}  # the change order holds the change
    order = firm.connector("netsuite-us").lookup(entity="sales_order", key=f"SO-{opp}").response
    assert order["total"] == 150000.0 and order["custbody_contract_version"] == 2 and order["endDate"] == "2027-08-31"
    synced = next(firm.salesforce.read("opportunity", where={"Id": opp}, fields=["Contract_Synced_Version__c"]))
    assert int(synced["Contract_Synced_Version__c"]) == 2


def test_an_amendment_before_the_project_exists_waits_instead_of_failing(firm) -> None:
    deal = won_deal(firm, entity="uk", key="42", Contract_Version__c=2)  # amended before provisioning
    handoff = run(trigger(firm, "contract-change", deal["opportunity"]))
    assert handoff.status == Handoff.Status.WAITING_RETRY
    assert "not provisioned yet" in handoff.last_error_message


def test_a_uk_amendment_changes_the_kantata_project_price(firm) -> None:
    deal = provisioned(firm, "uk", "43")
    firm.salesforce.update(
        entity="opportunity", record_id=deal["opportunity"], fields={"Amount": 99000, "Contract_Version__c": 2}
    )
    handoff = run(trigger(firm, "contract-change", deal["opportunity"]))
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    project = firm.connector("kantata-uk").lookup(entity="workspaces", key=f"P-{deal['opportunity']}").response
    assert project["price"] == 9900000


def test_pipeline_moves_forecast_demand_then_the_won_deal_firms_it_up(firm) -> None:
    deal = won_deal(firm, entity="us", key="44", StageName="Proposal", Probability=40)
    opp = deal["opportunity"]
    forecast = run(trigger(firm, "pipeline-to-demand", opp))
    assert forecast.status == Handoff.Status.SUCCEEDED, forecast.last_error_message
    certinia = firm.connector("certinia-us")
    fields = ["pse__Status__c", "pse__SOW_Hours__c", "Weighted_Hours__c", "pse__Resource_Role__c"]
    demand = {r["pse__Resource_Role__c"]: r for r in certinia.read("resource_request", fields=fields)}
    assert demand["Consultant"]["pse__Status__c"] == "Tentative"
    assert float(demand["Consultant"]["Weighted_Hours__c"]) == 192.0  # 480 h at 40 %

    firm.salesforce.update(entity="opportunity", record_id=opp, fields={"StageName": "Closed Won", "Probability": 100})
    assert run(trigger(firm, "quote-to-project", opp, minutes_later=10)).status == Handoff.Status.SUCCEEDED
    firm_demand = {
        r["pse__Resource_Role__c"]: r["pse__Status__c"] for r in certinia.read("resource_request", fields=fields)
    }
    assert firm_demand == {
        "Project Manager": "Ready to Staff",
        "Solution Architect": "Ready to Staff",
        "Consultant": "Ready to Staff",
    }
    assert firm.sandboxes["salesforce"].journal()["creates_by_key"][f"pse__Resource_Request__c/RR-{opp}-3"] == 1


def test_a_lost_deal_cancels_its_forecast_demand_in_kantata(firm) -> None:
    deal = won_deal(firm, entity="uk", key="45", StageName="Proposal", Probability=60)
    assert run(trigger(firm, "pipeline-to-demand", deal["opportunity"])).status == Handoff.Status.SUCCEEDED
    firm.salesforce.update(entity="opportunity", record_id=deal["opportunity"], fields={"StageName": "Closed Lost"})
    lost = run(trigger(firm, "pipeline-to-demand", deal["opportunity"], minutes_later=5))
    assert lost.status == Handoff.Status.SUCCEEDED, lost.last_error_message
    kantata = firm.connector("kantata-uk")
    workspace = kantata.lookup(entity="workspaces", key=f"P-{deal['opportunity']}").external_id
    requests = [
        s
        for s in kantata.read("stories", where={"workspace_id": workspace})
        if s["title"].startswith("Resource request")
    ]
    assert requests and all(s["description"] == "Demand status: Cancelled" for s in requests)
    # The lost deal's estimate workspace is closed (archived): Kantata's own project lists and
    # reports leave it out, so no PSA backlog counts its 120,000.00 that will never come.
    estimate = kantata.lookup(entity="workspaces", key=f"P-{deal['opportunity']}").response
    assert estimate["archived"] is True
    assert all(w["id"] != workspace for w in kantata.read("workspaces"))  # default list: open ones only
    # Back in the pipeline, the estimate reopens; won, it is the open project.
    firm.salesforce.update(
        entity="opportunity", record_id=deal["opportunity"], fields={"StageName": "Closed Won", "Probability": 100}
    )
    assert run(trigger(firm, "quote-to-project", deal["opportunity"], minutes_later=9)).status == "succeeded"
    assert kantata.lookup(entity="workspaces", key=f"P-{deal['opportunity']}").response["archived"] is False


def test_the_contract_terms_set_as_the_deal_closes_are_not_an_amendment(firm) -> None:
    deal = won_deal(firm, entity="us", key="46")  # Contract_Version__c 1, not provisioned yet
    handoff = run(trigger(firm, "contract-change", deal["opportunity"]))
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    assert handoff.steps.get(name="validate_amendment").output["action"] == "none"
    assert firm.connector("netsuite-us").lookup(entity="sales_order", key=f"SO-{deal['opportunity']}") is None


def test_an_amendment_before_the_project_exists_revalues_won_not_yet_a_project(
    firm,
    django_capture_on_commit_callbacks,
) -> None:
    from dashboards.models import OpenItem

    # Won at 120,000.00 but the deal cannot be provisioned yet (a billing model pscsync does not
    # bill), so it waits for a person; the salesperson then amends it to 150,000.00 (v2).
    deal = won_deal(firm, entity="us", key="47", Billing_Model__c="Retainer")
    opp = deal["opportunity"]
    with django_capture_on_commit_callbacks(execute=True):
        waiting = run(trigger(firm, "quote-to-project", opp))
    assert waiting.status == Handoff.Status.NEEDS_ATTENTION and waiting.amount == 120000
    assert OpenItem.objects.get(pk=waiting.pk).amount == 120000
    firm.salesforce.update(entity="opportunity", record_id=opp, fields={"Amount": 150000, "Contract_Version__c": 2})
    with django_capture_on_commit_callbacks(execute=True):
        amendment = run(trigger(firm, "contract-change", opp, minutes_later=5))
    assert amendment.status == Handoff.Status.WAITING_RETRY  # the amendment itself waits for the project
    # "Won, not yet a project" now counts the deal at its latest value, 150,000.00, not 120,000.00.
    waiting.refresh_from_db()
    assert waiting.amount == 150000 and waiting.status == Handoff.Status.NEEDS_ATTENTION
    assert OpenItem.objects.get(pk=waiting.pk).amount == 150000
