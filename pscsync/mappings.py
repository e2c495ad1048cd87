"""Mapping versions: publish a validated rule set, find the one in force, apply it."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max

from connectors.errors import MappingError
from connectors.models import Connection
from pscsync import clock
from pscsync.audit import audit_record
from pscsync.mapping import MappingResult, RuleProblem, mapping_apply, mapping_validate
from pscsync.models import Mapping, MappingVersion


class MappingInvalid(Exception):
    """The rule set cannot be published; `problems` says where and why."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@transaction.atomic
def mapping_publish(
    *,
    connection: Connection,
    entity: str,
    rules: list[dict[str, Any]],
    value_maps: dict[str, dict[str, Any]],
    comment: str,
    actor: User | None = None,
    direction: str = Mapping.Direction.OUTBOUND,
    name: str = "",
) -> MappingVersion:
    """Validate and publish a new version; the previous one is retired, never changed."""
    problems = mapping_validate(rules, value_maps)
    if problems:
        raise MappingInvalid(problems)
    if not comment.strip():
        raise MappingInvalid([RuleProblem(0, "comment", "publishing needs a comment that says what changed")])
    mapping, _ = Mapping.objects.select_for_update().get_or_create(
        connection=connection,
        entity=entity,
        direction=direction,
        defaults={"name": name or f"{connection.name}: {entity}"},
    )
    previous = mapping.versions.filter(status=MappingVersion.Status.PUBLISHED).first()
    if previous is not None:
        previous.status = MappingVersion.Status.RETIRED
        previous.save(update_fields=["status"])
    now = clock.now()
    number = (mapping.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = MappingVersion.objects.create(
        mapping=mapping,
        number=number,
        status=MappingVersion.Status.PUBLISHED,
        rules=rules,
        value_maps=value_maps,
        comment=comment,
        created_by=actor if actor and actor.is_authenticated else None,
        created_at=now,
        published_at=now,
    )
    audit_record(
        actor=actor,
        actor_label="" if actor else "system:setup",
        action="mapping.publish",
        obj=version,
        before={"version": previous.number, "rules": previous.rules, "value_maps": previous.value_maps}
        if previous
        else {},
        after={"version": number, "rules": rules, "value_maps": value_maps},
        comment=comment,
    )
    return version


def mapping_in_force(
    *, connection: Connection, entity: str, direction: str = Mapping.Direction.OUTBOUND
) -> MappingVersion:
    version = (
        MappingVersion.objects.select_related("mapping__connection")
        .filter(
            mapping__connection=connection,
            mapping__entity=entity,
            mapping__direction=direction,
            status=MappingVersion.Status.PUBLISHED,
        )
        .first()
    )
    if version is None:
        raise MappingError(f"no published mapping for {entity} on {connection.name}: an admin must publish one")
    return version


def mapping_run(version: MappingVersion, source: dict[str, Any]) -> MappingResult:
    """Apply a version; raise MappingError naming every rule that failed."""
    result = mapping_apply(version.rules, version.value_maps, source)
    if not result.ok:
        details = "; ".join(f"{p.part} {p.message}" for p in result.errors)
        raise MappingError(
            f"mapping {version.label} could not map this record: {details}",
            mapping_version=version.pk,
            fields=tuple(dict.fromkeys(p.part for p in result.errors)),
            value_map=next((p.value_map for p in result.errors if p.value_map), ""),
        )
    return result
