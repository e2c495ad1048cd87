"""Schema governance end to end: a sandbox changes its schema (its control API, as a vendor admin
would), the schema check reads the vendor's own description over HTTP and raises a finding and an
alert naming the mappings and flows affected, before any handoff of those flows fails."""

from __future__ import annotations

import httpx
import pytest

from alerts.models import AlertDelivery, AlertSubscription
from connectors.models import GovernanceFinding
from pscsync import clock
from pscsync.governance import schema_check, schema_check_alerting
from pscsync.models import Handoff
from tests.flows.conftest import run, trigger, won_deal
from tests.flows.test_german_entity import firm_de, german_deal  # noqa: F401  (firm_de: the fixture)

pytestmark = pytest.mark.django_db


def change_schema(sandbox, **change: object) -> None:
    httpx.post(f"{sandbox.url}/_sandbox/schema", json=change, timeout=5).raise_for_status()


@pytest.fixture
def watching():
    """An admin's subscription to schema drift alerts for every legal entity."""
    return AlertSubscription.objects.create(
        name="Integration team",
        channel=AlertSubscription.Channel.EMAIL,
        target="integrations@example.com",
        event_types=[AlertSubscription.EventType.SCHEMA_DRIFT],
        all_entities=True,
        created_at=clock.now(),
    )


@pytest.fixture
def baseline(firm):
    """The first check reads every vendor's schema as it is and finds nothing to report."""
    results = schema_check()
    assert {r.connection.slug: r.errors for r in results if r.errors} == {}
    assert GovernanceFinding.objects.count() == 0
    return results


def test_nothing_changed_means_no_finding(firm, baseline, watching) -> None:
    # Every record every published mapping writes was described; the demo firm writes to 15 records on five connections.
    checked = {r.connection.slug: sorted(r.records_checked) for r in baseline}
    assert checked["certinia-us"] == ["billing_event", "budget", "milestone", "project", "resource_request"]
    assert checked["salesforce"] == ["opportunity"]
    assert checked["netsuite-us"] == ["customer", "invoice", "sales_order"]
    assert checked["businesscentral-uk"] == ["customers", "projects", "salesInvoices"]
    assert checked["kantata-uk"] == ["invoices", "stories", "workspaces"]
    again = schema_check_alerting()
    assert again["new"] == 0 and again["open"] == 0 and again["errors"] == 0
    assert not AlertDelivery.objects.exists()


def test_a_dropped_mapped_field_is_found_and_alerted_before_the_handoff_fails(firm, baseline, watching) -> None:
    change_schema(firm.sandboxes["salesforce"], record="pse__Proj__c", field="pse__Practice__c", change="drop")

    summary = schema_check_alerting()

    assert summary["new"] == 1 and summary["alerts_queued"] == 1
    finding = GovernanceFinding.objects.get()
    assert finding.connection.slug == "certinia-us" and finding.record == "project"
    assert (finding.field, finding.kind) == ("pse__Practice__c", GovernanceFinding.Kind.FIELD_MISSING)
    assert finding.mappings == ["Certinia PSA (US): project version 1"]
    assert finding.flows == ["Pipeline to demand", "Quote to project"]
    assert "pse__Practice__c is no longer a field of project" in finding.detail
    alert = AlertDelivery.objects.get(event_type="schema.drift")
    assert "Certinia PSA (US): project” version 1" in alert.subject
    assert "Quote to project" in alert.payload["data"]["detail"]
    assert alert.payload["data"]["flows"] == ["Pipeline to demand", "Quote to project"]

    # The finding was right: the next quote-to-project handoff fails at that very write, after it.
    deal = won_deal(firm, entity="us", key="41")
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION
    assert "pse__Practice__c" in handoff.last_error_message
    failed_at = handoff.steps.get(name="upsert_project").attempts.order_by("-started_at").first().started_at
    assert finding.first_seen_at < failed_at

    # Seen again: the same finding, touched, and no second alert.
    assert schema_check_alerting()["new"] == 0
    assert GovernanceFinding.objects.filter(resolved_at__isnull=True).count() == 1
    assert AlertDelivery.objects.filter(event_type="schema.drift").count() == 1

    # The field comes back: the finding is resolved.
    httpx.delete(f"{firm.sandboxes['salesforce'].url}/_sandbox/schema", timeout=5).raise_for_status()
    assert schema_check_alerting()["resolved"] == 1
    finding.refresh_from_db()
    assert finding.resolved_at is not None


def test_a_type_change_of_a_mapped_field_is_found(firm, baseline) -> None:
    change_schema(
        firm.sandboxes["salesforce"],
        record="pse__Milestone__c",
        field="pse__Milestone_Amount__c",
        change="type",
        type="string",
    )

    schema_check()

    finding = GovernanceFinding.objects.get()
    assert (finding.record, finding.kind) == ("milestone", GovernanceFinding.Kind.TYPE_CHANGED)
    assert "changed from a number (currency) to text (string)" in finding.detail
    assert finding.mappings == ["Certinia PSA (US): milestone version 1"]
    assert finding.flows == ["Quote to project"]
    # It stays open on the next check (the baseline keeps the old type) until accepted.
    schema_check()
    assert GovernanceFinding.objects.filter(resolved_at__isnull=True).count() == 1
    schema_check(accept=True)
    assert GovernanceFinding.objects.filter(resolved_at__isnull=True).count() == 0


def test_a_lost_picklist_value_the_value_map_writes_is_found(firm, baseline) -> None:
    change_schema(
        firm.sandboxes["salesforce"],
        record="pse__Proj__c",
        field="pse__Billing_Type__c",
        change="remove_value",
        value="Fixed Price",
    )

    schema_check()

    finding = GovernanceFinding.objects.get()
    assert (finding.field, finding.kind) == ("pse__Billing_Type__c", GovernanceFinding.Kind.VALUE_REMOVED)
    assert "no longer allows “Fixed Price”" in finding.detail
    assert finding.flows == ["Pipeline to demand", "Quote to project"]


def test_a_field_that_became_required_is_found_for_the_mappings_that_create_without_it(firm, baseline) -> None:
    # Billed to date is written by the project-billing mapping, not when the project is created.
    change_schema(firm.sandboxes["salesforce"], record="pse__Proj__c", field="Billed_To_Date__c", change="required")

    schema_check()

    finding = GovernanceFinding.objects.get()
    assert (finding.field, finding.kind) == ("Billed_To_Date__c", GovernanceFinding.Kind.BECAME_REQUIRED)
    assert finding.mappings == ["Certinia PSA (US): project version 1"]
    assert finding.flows == ["Pipeline to demand", "Quote to project"]


def test_findings_show_on_the_connection_page_and_the_health_page(firm, baseline, client, admin) -> None:
    change_schema(firm.sandboxes["salesforce"], record="pse__Proj__c", field="pse__Practice__c", change="drop")
    schema_check()
    client.force_login(admin)
    certinia = firm.connections["certinia-us"]

    page = client.get(f"/connections/{certinia.pk}/").content.decode()
    assert "API version <strong>v62.0</strong>" in page  # pinned when the connection was saved
    assert "Field no longer exists" in page and "pse__Practice__c is no longer a field of project" in page
    assert "Quote to project" in page

    health = client.get("/dashboards/health/").content.decode()
    assert "Schema changes that break a mapping" in health and "Certinia PSA (US)" in health
    assert "pse__Practice__c" in health


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/bin/chromium").exists(), reason="no chromium")
def test_a_person_sees_the_finding_in_a_browser(firm, baseline, live_server, admin, monkeypatch) -> None:
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, _shot, _sign_in

    change_schema(firm.sandboxes["salesforce"], record="pse__Proj__c", field="pse__Practice__c", change="drop")
    schema_check()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1360, "height": 860})
        _sign_in(page, live_server, admin, start=f"/connections/{firm.connections['certinia-us'].pk}/")
        page.wait_for_selector("text=Schema governance")
        assert page.locator("td", has_text="Field no longer exists").count() == 1
        _shot(page, "connection-schema-governance")
        page.goto(f"{live_server.url}/dashboards/health/")
        page.wait_for_selector("text=Schema changes that break a mapping")
        _shot(page, "health-schema-governance")
        browser.close()


def test_a_payload_of_another_shape_is_a_classified_error_not_a_crash(firm) -> None:
    from connectors.errors import ValidationError

    # An admin turned Contract Version into text: the deal read says so instead of crashing.
    deal = won_deal(firm, entity="us", key="43", Contract_Version__c="two")
    with pytest.raises(ValidationError) as caught:
        firm.salesforce.deal_read(deal["opportunity"])
    assert caught.value.error_class == "validation"
    assert caught.value.message == (
        f"Salesforce sent an opportunity ({deal['opportunity']}) we cannot read: "
        "Contract_Version__c should be a number, got text 'two'"
    )
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION and handoff.last_error_class == "validation"


def test_netsuite_metadata_catalog_type_change_is_found(firm, baseline) -> None:
    change_schema(
        firm.sandboxes["netsuite"],
        record="salesOrder",
        field="custbody_contract_version",
        change="type",
        type="string",
    )

    schema_check()

    finding = GovernanceFinding.objects.get()
    assert (finding.connection.slug, finding.record) == ("netsuite-us", "sales_order")
    assert (finding.field, finding.kind) == ("custbody_contract_version", GovernanceFinding.Kind.TYPE_CHANGED)
    assert "changed from a number (integer) to text (string)" in finding.detail
    assert "Quote to project" in finding.flows


def test_business_central_metadata_enum_member_loss_is_found(firm, baseline) -> None:
    change_schema(
        firm.sandboxes["businesscentral"], record="customers", field="type", change="remove_value", value="Company"
    )

    schema_check()

    finding = GovernanceFinding.objects.get()
    assert (finding.connection.slug, finding.record) == ("businesscentral-uk", "customers")
    assert (finding.field, finding.kind) == ("type", GovernanceFinding.Kind.VALUE_REMOVED)
    assert "no longer allows “Company” (it allows “Person”)" in finding.detail
    assert finding.flows == ["Quote to project"]


def test_dynamics_365_finance_metadata_losing_a_mapped_field_is_found_and_alerted_before_the_handoff_fails(
    firm_de,  # noqa: F811  (the fixture imported above)
    watching,
) -> None:
    # The German entity's ERP describes its data entities in /data/$metadata like the others.
    baseline = {r.connection.slug: r for r in schema_check()}
    assert {slug: r.errors for slug, r in baseline.items() if r.errors} == {}
    assert sorted(baseline["dynamicsfinance-de"].records_checked) == [
        "CustomersV3",
        "FreeTextInvoiceHeaders",
        "ProjectContracts",
    ]
    assert firm_de.connections["dynamicsfinance-de"].api_version == "4.0"  # pinned when saved

    # An admin removes the customer group from the customers entity; the customer mapping writes it.
    change_schema(firm_de.sandboxes["dynamicsfinance"], record="CustomersV3", field="CustomerGroupId", change="drop")
    summary = schema_check_alerting()

    assert summary["new"] == 1 and summary["alerts_queued"] == 1
    finding = GovernanceFinding.objects.get()
    assert (finding.connection.slug, finding.record) == ("dynamicsfinance-de", "CustomersV3")
    assert (finding.field, finding.kind) == ("CustomerGroupId", GovernanceFinding.Kind.FIELD_MISSING)
    assert finding.mappings == ["Dynamics 365 Finance (DE): customer version 1"]
    assert finding.flows == ["Quote to project"]
    alert = AlertDelivery.objects.get(event_type="schema.drift")
    assert "Dynamics 365 Finance (DE): customer” version 1" in alert.subject
    assert alert.payload["data"]["flows"] == ["Quote to project"]

    # The next German quote-to-project handoff fails at that write, after the finding was raised.
    deal = german_deal(firm_de, "91")
    handoff = run(trigger(firm_de, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION
    assert "CustomerGroupId" in handoff.last_error_message
    failed_at = handoff.steps.get(name="upsert_customer").attempts.order_by("-started_at").first().started_at
    assert finding.first_seen_at < failed_at

    # The field comes back: the finding is resolved.
    httpx.delete(f"{firm_de.sandboxes['dynamicsfinance'].url}/_sandbox/schema", timeout=5).raise_for_status()
    assert schema_check_alerting()["resolved"] == 1
