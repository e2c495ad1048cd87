"""The mapping studio's services: bad input refused with the position and reason, nothing
published half-valid, versions compared and restored, import/export round trip, audit."""

from __future__ import annotations

import json

import pytest

from pscsync.mappings import mapping_publish
from pscsync.models import AuditEntry, MappingVersion
from studio import services
from studio.services import StudioError

pytestmark = pytest.mark.django_db

RULES = [
    {"target": "companyName", "source": "account.name", "required": True},
    {"target": "custbody_department", "source": "deal.service_line", "value_map": "service_line", "required": True},
]
MAPS = {"service_line": {"Advisory": "D10", "Implementation": "D20"}}


@pytest.fixture
def mapping(echo_connection):
    return mapping_publish(
        connection=echo_connection, entity="contract", rules=RULES, value_maps=MAPS, comment="shipped"
    ).mapping


@pytest.fixture
def draft(mapping, admin):
    return services.draft_open(mapping=mapping, actor=admin)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"target": "x", "source": "deal.["}, "rule 3 (source): invalid expression at character"),
        ({"target": "x", "source": "deal.a", "transform": "shout"}, "rule 3 (transform): 'shout' is not one of"),
        ({"target": "x", "source": "deal.a", "value_map": "nope"}, "rule 3 (value map): no value map is named 'nope'"),
        ({"target": "companyName", "source": "deal.a"}, "rule 3 (target): 'companyName' is already set by rule 1"),
        ({"target": "x", "source": "a" * 501}, "rule 3 (source): is longer than 500 characters"),
        ({"target": "x"}, "rule 3 (source): is empty and there is no default"),
    ],
)
def test_a_bad_rule_is_refused_with_its_position_and_reason_and_nothing_is_saved(draft, admin, data, expected) -> None:
    with pytest.raises(StudioError) as refused:
        services.rule_save(draft=draft, position=3, data=data, actor=admin)
    assert expected in str(refused.value)
    draft.refresh_from_db()
    assert draft.rules == RULES


def test_a_value_map_with_the_same_key_twice_is_refused(draft, admin) -> None:
    with pytest.raises(StudioError) as refused:
        services.value_map_rows([("Advisory", "D10"), ("advisory ", "D11")], "service_line")
    assert "value map 'service_line' row 2: 'advisory' is already on row 1" in str(refused.value)
    with pytest.raises(StudioError):
        services.value_map_from_csv("key,value\nCyber,D50\nCYBER,D51\n", "service_line")


def test_csv_round_trip_and_a_row_without_a_value(draft, admin) -> None:
    table = services.value_map_from_csv("key,value\nAdvisory,D10\nCyber Security,D50\n", "service_line")
    services.value_map_save(draft=draft, name="service_line", table=table, actor=admin)
    assert services.value_map_from_csv(services.value_map_to_csv(table), "service_line") == table
    with pytest.raises(StudioError, match="needs two columns"):
        services.value_map_from_csv("Cyber Security\n", "service_line")


def test_a_value_map_name_must_be_simple(draft, admin) -> None:
    with pytest.raises(StudioError, match="name"):
        services.value_map_save(draft=draft, name="bad name!", table={}, actor=admin)


def test_publishing_needs_a_comment_and_keeps_the_previous_version(mapping, draft, admin) -> None:
    services.rule_save(draft=draft, position=3, data={"target": "memo", "source": "deal.name"}, actor=admin)
    with pytest.raises(StudioError, match="needs a comment"):
        services.draft_publish(draft=draft, comment=" ", actor=admin)
    draft = services.draft_open(mapping=mapping, actor=admin)
    version = services.draft_publish(draft=draft, comment="memo from the deal name", actor=admin)
    assert version.number == 2 and version.status == MappingVersion.Status.PUBLISHED
    assert mapping.versions.get(number=1).status == MappingVersion.Status.RETIRED
    assert AuditEntry.objects.filter(action="mapping.publish").count() == 2  # shipped + this


def test_diff_and_restore(mapping, draft, admin) -> None:
    services.value_map_save(draft=draft, name="service_line", table={"Advisory": "D11", "Cyber": "D50"}, actor=admin)
    services.rule_remove(draft=draft, position=1, actor=admin)
    changes = {(c.what, c.name, c.kind) for c in services.versions_diff(services.published(mapping), draft)}
    assert changes == {
        ("rule", "companyName", "removed"),
        ("value map", "service_line: Advisory", "changed"),
        ("value map", "service_line: Implementation", "removed"),
        ("value map", "service_line: Cyber", "added"),
    }
    v2 = services.draft_publish(draft=draft, comment="trim", actor=admin)
    restored = services.draft_open(mapping=mapping, actor=admin, based_on=mapping.versions.get(number=1))
    assert restored.rules == RULES and restored.status == "draft" and v2.status == "published"


def test_export_then_import_as_drafts_and_a_bad_file_names_the_rule(mapping, admin, echo_connection) -> None:
    exported = services.mappings_export(echo_connection)
    assert exported["mappings"][0]["rules"] == RULES
    broken = json.loads(json.dumps(exported))
    broken["mappings"][0]["rules"][1]["transform"] = "shout"
    with pytest.raises(StudioError) as refused:
        services.mappings_import(connection=echo_connection, document=broken, actor=admin)
    assert "rule 2 (contract: transform): 'shout' is not one of" in str(refused.value)
    assert not mapping.versions.filter(status="draft").exists()
    drafts = services.mappings_import(connection=echo_connection, document=exported, actor=admin)
    assert [d.status for d in drafts] == ["draft"]


def test_preview_shows_each_field_and_the_rule_that_failed(mapping) -> None:
    version = services.published(mapping)
    result = services.preview(version, {"account": {"name": "Acme"}, "deal": {"service_line": "Cyber"}})
    assert not result["ok"]
    rows = {r["rule"]["target"]: r for r in result["rows"]}
    assert rows["companyName"]["value"] == "Acme"
    assert "'Cyber' is not in value map 'service_line'" in rows["custbody_department"]["error"].message


def _mapped_before(connection, document: dict, version=None) -> None:
    """A record this mapping mapped in a past run (as the write step stores it on its attempt)."""
    from pscsync import clock
    from pscsync.models import Attempt, Event, Handoff, Step

    now = clock.now()
    event = Event.objects.create(
        connection=connection, source_event_id="e-1", occurred_at=now, received_at=now, raw_body="{}"
    )
    handoff = Handoff.objects.create(
        flow="quote-to-project",
        business_key="006A",
        source_connection=connection,
        trigger_event=event,
        business_started_at=now,
        created_at=now,
        status="succeeded",
    )
    version = version or MappingVersion.objects.get(mapping__connection=connection, status="published")
    step = Step.objects.create(
        handoff=handoff,
        name="upsert_contract",
        position=6,
        target_connection=connection,
        status="succeeded",
        mapping_version=version,
        finished_at=now,
    )
    Attempt.objects.create(
        step=step,
        number=1,
        started_at=now,
        request={"purpose": "contract", "records": [{"key": "SO-006A", "source": document}]},
    )


def test_publishing_a_rule_that_returns_the_wrong_type_on_real_records_is_refused(
    mapping, draft, admin, echo_connection
) -> None:
    _mapped_before(
        echo_connection, {"account": {"name": "Acme"}, "deal": {"service_line": "Advisory", "lines": [1, 2]}}
    )
    services.rule_save(
        draft=draft,
        position=3,
        data={"target": "contract_amount", "source": "deal.lines", "transform": "amount"},
        actor=admin,
    )
    with pytest.raises(StudioError) as refused:
        services.draft_publish(draft=draft, comment="amount from the lines", actor=admin)
    assert "rule 3 (transform): amount: [1, 2] is not an amount" in str(refused.value)
    assert "returns the wrong type" in str(refused.value)
    assert services.published(mapping).number == 1  # nothing published half-valid


def _failing(connection, message: str, deal: dict, key: str = "006F") -> object:
    """A quote-to-project handoff that failed before writing, with the deal it read kept."""
    from pscsync import clock
    from pscsync.models import Event, Handoff, Step

    now = clock.now()
    event = Event.objects.create(
        connection=connection, source_event_id=f"e-{key}", occurred_at=now, received_at=now, raw_body="{}"
    )
    handoff = Handoff.objects.create(
        flow="quote-to-project",
        business_key=key,
        source_connection=connection,
        trigger_event=event,
        business_started_at=now,
        created_at=now,
        status="needs_attention",
        last_error_class="mapping",
        last_error_message=message,
    )
    Step.objects.create(
        handoff=handoff,
        name="read_deal",
        position=1,
        status="succeeded",
        output={"deal": deal, "account": {"name": "Acme"}},
    )
    return handoff


def test_a_rule_that_cannot_evaluate_on_a_record_is_that_records_error_not_a_crash(
    mapping, draft, admin, echo_connection
) -> None:
    # join() over a field this kind of record does not have raises JMESPathTypeError inside
    # jmespath; the preview and the impact list must answer with it as the record's error.
    services.rule_save(
        draft=draft,
        position=3,
        data={"target": "memo", "source": "join('', ['Resource request: ', item.role])"},
        actor=admin,
    )
    draft.refresh_from_db()
    result = services.preview(draft, {"account": {"name": "Acme"}, "deal": {"service_line": "Advisory"}})
    memo = next(r for r in result["rows"] if r["rule"]["target"] == "memo")
    assert "cannot be read from this record: join() found an empty field" in memo["error"].message
    _failing(
        echo_connection,
        f"service line 'Cyber' is not in the 'service_line' value map of mapping {services.published(mapping).label}",
        {"service_line": "Cyber"},
    )
    impact = services.impact(draft)
    assert impact.total == 1
    assert not impact.would_pass


def test_only_failures_this_mapping_produced_are_counted_and_the_rule_is_named(
    mapping, draft, admin, echo_connection
) -> None:
    label = services.published(mapping).label
    ours = _failing(
        echo_connection,
        f"service line 'Cyber' is not in the 'service_line' value map of mapping {label} — fix: an admin adds it",
        {"service_line": "Cyber"},
        key="006-ours",
    )
    # Fails on another mapping of the same connection: this mapping's rules would fail on its
    # deal too (no service line), but this mapping did not produce the failure.
    _failing(
        echo_connection,
        "mapping echo/customer@v2 could not map this record: companyName is required",
        {},
        key="006-other",
    )
    impact = services.impact(draft)
    assert [f.handoff.pk for f in impact.still_failing] == [ours.pk]
    failure = impact.still_failing[0]
    assert failure.rule == 2
    assert failure.why.startswith("rule 2 (custbody_department) 'Cyber' is not in value map 'service_line'")
    assert (failure.value_map, failure.missing_value) == ("service_line", "Cyber")
    # One click: the value goes into the draft and the same handoff would now pass.
    services.value_map_entry_add(mapping=mapping, name="service_line", key="Cyber", value="D50", actor=admin)
    after = services.impact(services.draft_of(mapping))
    assert [h.pk for h in after.would_pass] == [ours.pk]
    with pytest.raises(StudioError, match="already in it"):
        services.value_map_entry_add(mapping=mapping, name="service_line", key="cyber", value="D51", actor=admin)


def test_samples_are_the_failing_records_then_the_ones_it_mapped(mapping, echo_connection) -> None:
    _mapped_before(echo_connection, {"account": {"name": "Mapped Co"}, "deal": {"service_line": "Advisory"}})
    _failing(
        echo_connection,
        f"service line 'Cyber' is not in the 'service_line' value map of mapping {services.published(mapping).label}",
        {"service_line": "Cyber"},
    )
    samples = services.sample_documents(mapping)
    assert [s.failing for s in samples] == [True, False]
    assert samples[0].document["deal"] == {"service_line": "Cyber"}
    assert samples[0].label.startswith("Failing now · Quote to project for ")
    assert samples[1].document["account"]["name"] == "Mapped Co"


def test_version_changes_read_as_sentences(mapping, draft, admin) -> None:
    services.rule_save(
        draft=draft,
        position=1,
        data={"target": "companyName", "source": "account.legal_name", "required": "on"},
        actor=admin,
    )
    services.value_map_save(
        draft=draft, name="service_line", table={**MAPS["service_line"], "Cyber": "D50"}, actor=admin
    )
    words = [c.sentence for c in services.versions_diff(services.published(mapping), draft)]
    assert words == [
        "The rule for companyName: source changed from “account.name” to “account.legal_name”.",
        "“Cyber” added to the value map service_line, mapped to “D50”.",
    ]
    assert not any("{'" in w for w in words)
