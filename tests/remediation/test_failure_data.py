"""What a failure is about is stored as data when it happens (Handoff.failed_mapping,
failed_fields, failed_value_map), and the workbench warns and links from that data, never from
the message: rewording a message changes no warning, no link and no marked field."""

from __future__ import annotations

import pytest

from pscsync.models import Handoff, Mapping, MappingVersion
from remediation.selectors import retry_warnings
from tests.flows.conftest import run, trigger, won_deal

pytestmark = pytest.mark.django_db


def _reworded(handoff: Handoff) -> Handoff:
    """The same failure with a message that names nothing (no mapping label, no field)."""
    Handoff.objects.filter(pk=handoff.pk).update(last_error_message="it failed", failure_reason="it failed")
    handoff.refresh_from_db()
    return handoff


def test_a_value_the_mapping_cannot_translate_is_stored_with_its_mapping_and_value_map(firm) -> None:
    deal = won_deal(firm, key="fd1", account={"Tax_Profile__c": "US-UNKNOWN"})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    in_force = MappingVersion.objects.get(
        mapping__connection__slug="netsuite-us", mapping__entity="customer", status="published"
    )
    assert handoff.last_error_class == "mapping"
    assert (handoff.failed_mapping_id, handoff.failed_value_map) == (in_force.pk, "tax_code")
    assert handoff.failed_fields == ["custentity_tax_code"]  # the rule's target field


def test_a_failed_check_stores_the_document_fields_it_is_about(firm) -> None:
    deal = won_deal(firm, key="fd2", account={"Tax_Profile__c": None, "BillingCountry": None})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.last_error_class == "validation"
    assert handoff.failed_fields == ["account.tax_profile", "account.country"]
    assert handoff.failed_mapping_id is None and handoff.failed_value_map == ""


def test_the_retry_warning_names_the_stored_mapping_until_it_is_published_again(firm, operator, admin) -> None:
    from pscsync.mappings import mapping_publish

    deal = won_deal(firm, key="fd3", account={"Tax_Profile__c": "US-UNKNOWN"})
    handoff = _reworded(run(trigger(firm, "quote-to-project", deal["opportunity"])))
    [warning] = retry_warnings(operator, [handoff.pk])
    assert warning.startswith("1 failed on a mapping (the customer mapping of NetSuite (US))")
    # An admin adds the value: a new version is published after the failure, so a retry can help.
    version = handoff.failed_mapping
    maps = {**version.value_maps, "tax_code": {**version.value_maps["tax_code"], "US-UNKNOWN": "7"}}
    mapping = Mapping.objects.get(pk=version.mapping_id)
    rules = version.rules
    mapping_publish(
        connection=mapping.connection, entity="customer", rules=rules, value_maps=maps, comment="add", actor=admin
    )
    assert retry_warnings(operator, [handoff.pk]) == []


def test_the_fix_link_and_the_marked_field_come_from_the_stored_failure(client, firm, admin, operator) -> None:
    deal = won_deal(firm, key="fd4", account={"Tax_Profile__c": "US-UNKNOWN"})
    mapped = _reworded(run(trigger(firm, "quote-to-project", deal["opportunity"])))
    client.force_login(admin)
    page = client.get(f"/workbench/handoffs/{mapped.pk}/").content.decode()
    mapping = Mapping.objects.get(connection__slug="netsuite-us", entity="customer")
    assert f"/mappings/{mapping.pk}/?open=tax_code#value-map-tax_code" in page

    deal = won_deal(firm, key="fd5", account={"Tax_Profile__c": None})
    checked = _reworded(run(trigger(firm, "quote-to-project", deal["opportunity"])))
    client.force_login(operator)
    page = client.get(f"/workbench/handoffs/{checked.pk}/resubmit/").content.decode()
    assert page.count("— the failure is about this field") == 1
    assert 'data-path="account.tax_profile"' in page


def test_a_project_links_to_its_handoffs_by_its_key(client, firm, admin) -> None:
    from connectors.canonical import KEYS, keys_behind

    deal = won_deal(firm, key="fd6", account={"Tax_Profile__c": None})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    project = KEYS["project"](deal=deal["opportunity"])
    assert keys_behind(project) == {project, deal["opportunity"]}
    client.force_login(admin)
    page = client.get("/handoffs/", {"record": project})
    assert [h.pk for h in page.context["page"].object_list] == [handoff.pk]
    assert list(client.get("/handoffs/", {"record": "P-nothing-by-this-key"}).context["page"].object_list) == []
