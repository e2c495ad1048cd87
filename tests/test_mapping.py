"""The mapping engine: rules as data, validated before saving, applied with a trace."""

from __future__ import annotations

import pytest

from connectors.errors import MappingError
from pscsync.mapping import mapping_apply, mapping_validate
from pscsync.mappings import MappingInvalid, mapping_in_force, mapping_publish, mapping_run
from pscsync.models import AuditEntry, MappingVersion

DEAL = {
    "Id": "006A0000001",
    "Name": "Northwind rollout",
    "Amount": 125000.5,
    "CloseDate": "2026-11-20",
    "Account": {"Name": "  Northwind Traders ", "BillingCountry": "GB"},
    "Service_Line__c": "Cloud Advisory",
    "Lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}],
}
RULES = [
    {"target": "companyName", "source": "Account.Name", "transform": "strip", "required": True},
    {"target": "externalId", "source": "Id", "required": True},
    {"target": "department", "source": "Service_Line__c", "value_map": "service_lines", "required": True},
    {"target": "taxCode", "source": "Account.BillingCountry", "value_map": "tax_codes"},
    {"target": "contract.amount", "source": "Amount", "transform": "amount"},
    {"target": "contract.start", "source": "CloseDate", "transform": "date"},
    {"target": "currency", "source": "CurrencyIsoCode", "default": "USD"},
    {"target": "lineCount", "source": "length(Lines)"},
]
MAPS = {"service_lines": {"Cloud Advisory": "DEPT-20", "Delivery": "DEPT-30"}, "tax_codes": {"GB": "UK-VAT-20"}}


def test_a_deal_maps_to_a_customer_with_the_rule_that_produced_each_field() -> None:
    result = mapping_apply(RULES, MAPS, DEAL)
    assert result.ok
    assert result.output == {
        "companyName": "Northwind Traders",
        "externalId": "006A0000001",
        "department": "DEPT-20",
        "taxCode": "UK-VAT-20",
        "contract": {"amount": "125000.50", "start": "2026-11-20"},
        "currency": "USD",
        "lineCount": 2,
    }
    assert result.produced_by["department"] == 3


def test_every_failing_rule_is_reported_with_its_reason() -> None:
    deal = dict(DEAL, Service_Line__c="Quantum Consulting", Amount="lots")
    del deal["Id"]
    result = mapping_apply(RULES, MAPS, deal)
    messages = [str(p) for p in result.errors]
    assert messages == [
        "rule 2 (externalId): is required but 'Id' found nothing in the source",
        "rule 3 (department): 'Quantum Consulting' is not in value map 'service_lines'",
        "rule 5 (contract.amount): amount: 'lots' is not an amount",
    ]


def test_value_maps_match_regardless_of_case_and_spaces() -> None:
    result = mapping_apply(RULES, MAPS, dict(DEAL, Service_Line__c=" cloud advisory"))
    assert result.output["department"] == "DEPT-20"


@pytest.mark.parametrize(
    ("rules", "maps", "expected"),
    [
        ([{"target": "a", "source": "foo.[bar"}], {}, "rule 1 (source): invalid expression at character"),
        ([{"target": "a", "source": "x", "transform": "eval"}], {}, "rule 1 (transform): 'eval' is not one of"),
        (
            [{"target": "a", "source": "x"}, {"target": "a", "source": "y"}],
            {},
            "rule 2 (target): 'a' is already set by rule 1",
        ),
        ([{"target": "a", "source": "x", "value_map": "nope"}], {}, "rule 1 (value map): no value map is named 'nope'"),
        (
            [{"target": "a", "source": "x"}],
            {"m": {"GB": 1, " gb": 2}},
            "value map 'm': ' gb' and 'GB' are the same key",
        ),
        (
            [{"target": "a", "source": "x"}, {"target": "a.b", "source": "y"}],
            {},
            "rule 2 (target): 'a.b' would be inside 'a'",
        ),
        ([{"target": "a"}], {}, "rule 1 (source): is empty and there is no default"),
        ([{"target": "a", "source": "x", "code": "import os"}], {}, "rule 1 (rule): unknown part(s): code"),
        ([{"target": "a", "source": "a" * 501}], {}, "longer than 500 characters"),
    ],
)
def test_bad_rules_are_refused_with_position_and_reason(rules, maps, expected) -> None:
    problems = [str(p) for p in mapping_validate(rules, maps)]
    assert any(expected in p for p in problems), problems


@pytest.mark.django_db
def test_publishing_makes_a_new_version_retires_the_old_and_is_audited(echo_connection, admin) -> None:
    first = mapping_publish(
        connection=echo_connection, entity="customer", rules=RULES, value_maps=MAPS, comment="first cut", actor=admin
    )
    new_maps = dict(MAPS, service_lines={**MAPS["service_lines"], "Data": "DEPT-40"})
    second = mapping_publish(
        connection=echo_connection,
        entity="customer",
        rules=RULES,
        value_maps=new_maps,
        comment="add the Data service line",
        actor=admin,
    )
    first.refresh_from_db()
    assert (first.status, second.status, second.number) == ("retired", "published", 2)
    assert mapping_in_force(connection=echo_connection, entity="customer") == second
    entry = AuditEntry.objects.filter(action="mapping.publish").first()
    assert entry.comment == "add the Data service line" and entry.before["version"] == 1


@pytest.mark.django_db
def test_an_invalid_rule_set_publishes_nothing(echo_connection) -> None:
    with pytest.raises(MappingInvalid, match="rule 1 \\(source\\)"):
        mapping_publish(
            connection=echo_connection,
            entity="customer",
            rules=[{"target": "a", "source": "[["}],
            value_maps={},
            comment="broken",
        )
    assert not MappingVersion.objects.exists()


@pytest.mark.django_db
def test_running_a_mapping_that_fails_raises_a_mapping_error_naming_the_rules(echo_connection) -> None:
    version = mapping_publish(connection=echo_connection, entity="customer", rules=RULES, value_maps=MAPS, comment="v1")
    with pytest.raises(MappingError, match="department 'Quantum' is not in value map 'service_lines'"):
        mapping_run(version, dict(DEAL, Service_Line__c="Quantum"))


@pytest.mark.django_db
def test_without_a_published_mapping_the_error_says_what_to_do(echo_connection) -> None:
    with pytest.raises(MappingError, match="an admin must publish one"):
        mapping_in_force(connection=echo_connection, entity="invoice")
