"""Schema governance: catch a vendor's schema change before a handoff fails on it.

`schema_check` reads, for every active connection, the vendor's own description of each record
its published mappings write (through the connector: Salesforce describe, NetSuite metadata
catalog, Business Central $metadata, Kantata's documented fields) and compares it with those
mappings. Four changes break a mapping, and each becomes a GovernanceFinding on the connection:

- field_missing: a field a mapping writes is no longer on the record;
- type_changed: a mapped field's kind (text, number, date, ...) differs from what the vendor said
  at the last check;
- became_required: a field is now required (it was not at the last check, or did not exist) and
  no mapping of that record writes it, so every create will be refused;
- value_removed: a value a mapping writes into a pick list (from its value map or its default)
  is no longer one of the list's values.

A finding names the mappings (with their versions) and the flows that write through them. Seen
again it is touched (last seen); no longer seen it is resolved. The last description of each
record is kept (RecordSchema) as the baseline for the next check; a field with an open type or
required finding keeps its old baseline, so the finding stays open until the vendor's schema is
back or an admin accepts the new one (`accept=True`, `manage.py schema_check --accept`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.dispatch import Signal

from connectors.canonical import UPSERT, capability_or_none
from connectors.errors import ConnectorError, RejectedError
from connectors.models import Connection, GovernanceFinding, RecordSchema
from connectors.registry import connector_for
from connectors.schema import KIND_WORDS, PICKLIST, RecordShape
from pscsync import clock
from pscsync.models import Mapping, MappingVersion

Kind = GovernanceFinding.Kind


@dataclass(frozen=True)
class MappedField:
    """One vendor field a published mapping writes, and the pick-list values it may write there."""

    version: MappingVersion
    purpose: str
    entity: str  # the connector's entity (what describe_record takes)
    field: str  # the vendor's field
    rule: int  # 1-based position of the rule in the mapping
    values: frozenset[str]  # values it writes from its value map or default (empty: not known)
    creates: bool  # the connector upserts this purpose: its writes may create the record

    @property
    def mapping_label(self) -> str:
        return f"“{self.version.mapping.name}” version {self.version.number}"


@dataclass
class ConnectionCheck:
    """What the check of one connection found."""

    connection: Connection
    records_checked: list[str] = field(default_factory=list)
    findings: list[GovernanceFinding] = field(default_factory=list)
    new: list[GovernanceFinding] = field(default_factory=list)
    resolved: int = 0
    errors: list[str] = field(default_factory=list)  # records that could not be described, why


def _written_values(rule: dict[str, Any], value_maps: dict[str, Any]) -> frozenset[str]:
    """The values a rule can write: its value map's targets (when they are plain values) and its
    default. A rule that copies the source as it is writes values nobody can list in advance."""
    values: set[str] = set()
    table = value_maps.get(rule.get("value_map") or "", None)
    if isinstance(table, dict):
        values.update(str(v) for v in table.values() if isinstance(v, str | int | float) and not isinstance(v, bool))
    default = rule.get("default")
    if isinstance(default, str) and default:
        values.add(default)
    return frozenset(values)


def mapped_fields(connection: Connection) -> list[MappedField]:
    """Every vendor field the connection's published mappings write, with the connector's entity."""
    connector = connector_for(connection)
    published = (
        MappingVersion.objects.select_related("mapping__connection")
        .filter(
            mapping__connection=connection,
            mapping__direction=Mapping.Direction.OUTBOUND,
            status=MappingVersion.Status.PUBLISHED,
        )
        .order_by("mapping__entity")
    )
    out: list[MappedField] = []
    for version in published:
        purpose = version.mapping.entity
        found = capability_or_none(connection, purpose)
        if found is None:
            continue  # a mapping for a record this connector does not hold: the studio's concern
        for position, rule in enumerate(version.rules or [], start=1):
            if not isinstance(rule, dict) or not rule.get("target"):
                continue
            vendor_field = connector.schema_field(purpose, str(rule["target"]))
            if vendor_field is None:
                continue
            values = _written_values(rule, version.value_maps or {})
            creates = found.can(UPSERT)
            out.append(MappedField(version, purpose, found.entity, vendor_field, position, values, creates))
    return out


def flows_writing(connection: Connection, purpose: str) -> list[str]:
    """The flows (their labels) with a step that writes `purpose` to a system of this kind."""
    from pscsync.flows import FLOWS
    from pscsync.flows.steps import WriteStep

    labels = []
    for flow in FLOWS.values():
        if any(
            isinstance(step, WriteStep) and step.purpose == purpose and step.system == connection.kind
            for step in flow.steps
        ):
            labels.append(flow.label)
    return labels


def _and(items: list[str]) -> str:
    items = list(dict.fromkeys(items))
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _kind_words(kind: str, vendor_type: str) -> str:
    return f"{KIND_WORDS.get(kind, kind)} ({vendor_type})" if vendor_type else KIND_WORDS.get(kind, kind)


@dataclass(frozen=True)
class _Problem:
    entity: str
    field: str
    kind: str
    what: str  # the change, in words
    uses: tuple[MappedField, ...]


def _problems(
    entity: str, uses: list[MappedField], now_shape: RecordShape, before: RecordShape | None
) -> list[_Problem]:
    """What in `now_shape` breaks the mappings that write `entity` (see the module doc)."""
    problems: list[_Problem] = []
    by_field: dict[str, list[MappedField]] = defaultdict(list)
    for use in uses:
        by_field[use.field].append(use)
    for name, field_uses in by_field.items():
        current = now_shape.get(name)
        if current is None:
            problems.append(
                _Problem(
                    entity, name, Kind.FIELD_MISSING, f"{name} is no longer a field of {entity}", tuple(field_uses)
                )
            )
            continue
        previous = before.get(name) if before else None
        if previous is not None and previous.kind != current.kind:
            what = (
                f"{name} on {entity} changed from {_kind_words(previous.kind, previous.vendor_type)} "
                f"to {_kind_words(current.kind, current.vendor_type)}"
            )
            problems.append(_Problem(entity, name, Kind.TYPE_CHANGED, what, tuple(field_uses)))
        if current.kind == PICKLIST and current.values:
            allowed = {v.lower() for v in current.values}
            lost = sorted({v for use in field_uses for v in use.values if v.lower() not in allowed})
            if lost:
                what = (
                    f"the pick list {name} on {entity} no longer allows {_and([f'“{v}”' for v in lost])} "
                    f"(it allows {_and([f'“{v}”' for v in current.values])})"
                )
                problems.append(_Problem(entity, name, Kind.VALUE_REMOVED, what, tuple(field_uses)))
    if before is not None:
        # A newly required field breaks the creates of every purpose whose mapping does not
        # write it (an update of an existing record is not refused for it).
        creators: dict[str, list[MappedField]] = defaultdict(list)
        for use in uses:
            if use.creates:
                creators[use.purpose].append(use)
        for name, current in now_shape.fields.items():
            previous = before.get(name)
            if not current.required or (previous is not None and previous.required):
                continue  # not required, or required all along (the connector or the vendor fills it)
            breaking = [
                use
                for purpose_uses in creators.values()
                if name.lower() not in {u.field.lower() for u in purpose_uses}
                for use in purpose_uses
            ]
            if breaking:
                what = (
                    f"{name} on {entity} is now required and the mapping does not write it, "
                    "so new records will be refused"
                )
                problems.append(_Problem(entity, name, Kind.BECAME_REQUIRED, what, tuple(breaking)))
    return problems


def _detail(connection: Connection, problem: _Problem, flows: list[str]) -> str:
    mappings = _and([use.mapping_label for use in problem.uses])
    flow_words = f"the flows {_and(flows)}" if len(flows) > 1 else f"the flow {flows[0]}" if flows else "no flow yet"
    return (
        f"In {connection.name}, {problem.what}. Mapping {mappings} writes to it, used by {flow_words}: "
        "their handoffs will fail at that write until the mapping is changed or the field restored."
    )


def _finding_record(connection: Connection, problem: _Problem, *, now: dt.datetime) -> tuple[GovernanceFinding, bool]:
    """Open the finding, or touch the open one (same connection, record, field and kind)."""
    flows = sorted({f for use in problem.uses for f in flows_writing(connection, use.purpose)})
    mappings = sorted({use.mapping_label.replace("“", "").replace("”", "") for use in problem.uses})
    detail = _detail(connection, problem, flows)
    finding = (
        GovernanceFinding.objects.select_for_update()
        .filter(connection=connection, record=problem.entity, field=problem.field, kind=problem.kind)
        .filter(resolved_at__isnull=True)
        .first()
    )
    if finding is not None:
        finding.detail, finding.mappings, finding.flows, finding.last_seen_at = detail, mappings, flows, now
        finding.save(update_fields=["detail", "mappings", "flows", "last_seen_at"])
        return finding, False
    finding = GovernanceFinding.objects.create(
        connection=connection,
        record=problem.entity,
        field=problem.field,
        kind=problem.kind,
        detail=detail,
        mappings=mappings,
        flows=flows,
        first_seen_at=now,
        last_seen_at=now,
    )
    return finding, True


def _baseline(before: RecordShape | None, now_shape: RecordShape, held: set[str]) -> dict[str, Any]:
    """The description to compare the next check with: the new one, except that fields with an
    open type or required finding keep their old entry (the finding stays open until resolved)."""
    data = now_shape.as_dict()
    if before is None:
        return data
    for name in held:
        old = before.get(name)
        if old is not None:
            data[old.name] = old.as_dict()
        else:
            data.pop(name, None)
    return data


def schema_check_connection(connection: Connection, *, accept: bool = False) -> ConnectionCheck:
    """Describe each record the connection's published mappings write and record what breaks them."""
    result = ConnectionCheck(connection)
    uses_by_entity: dict[str, list[MappedField]] = defaultdict(list)
    for use in mapped_fields(connection):
        uses_by_entity[use.entity].append(use)
    connector = connector_for(connection)
    now = clock.now()
    for entity, uses in sorted(uses_by_entity.items()):
        try:
            shape = connector.describe_record(entity)
        except RejectedError as exc:
            result.errors.append(f"{entity}: {exc.message}")
            continue
        except ConnectorError as exc:
            result.errors.append(f"{entity}: {exc.message}")
            continue
        with transaction.atomic():
            stored = RecordSchema.objects.select_for_update().filter(connection=connection, record=entity).first()
            before = None if stored is None or accept else RecordShape.from_dict(entity, stored.fields)
            seen: set[int] = set()
            held: set[str] = set()
            for problem in _problems(entity, uses, shape, before):
                finding, created = _finding_record(connection, problem, now=now)
                seen.add(finding.pk)
                result.findings.append(finding)
                if created:
                    result.new.append(finding)
                if problem.kind in (Kind.TYPE_CHANGED, Kind.BECAME_REQUIRED):
                    held.add(problem.field)
            result.resolved += (
                GovernanceFinding.objects.filter(connection=connection, record=entity, resolved_at__isnull=True)
                .exclude(pk__in=seen)
                .update(resolved_at=now)
            )
            RecordSchema.objects.update_or_create(
                connection=connection,
                record=entity,
                defaults={"fields": _baseline(before, shape, held), "read_at": now},
            )
        result.records_checked.append(entity)
    return result


def schema_check(*, connections: list[Connection] | None = None, accept: bool = False) -> list[ConnectionCheck]:
    """Check every active connection (or the ones given); one connection's failure to answer is
    reported in its result and does not stop the others."""
    targets = connections if connections is not None else list(Connection.objects.filter(is_active=True))
    return [schema_check_connection(connection, accept=accept) for connection in targets]


def findings_open(connection: Connection | None = None) -> Any:
    """Open findings, newest first (a connection's, or all)."""
    qs = GovernanceFinding.objects.filter(resolved_at__isnull=True).select_related("connection")
    return qs.filter(connection=connection) if connection is not None else qs


# Sent when a check finds something new. The alerts app (which the engine must not import)
# answers with a scan and returns how many messages it queued.
findings_found = Signal()


def alerts_for_new_findings() -> int:
    """Scan for alerts now (schema.drift reads the open findings); messages queued."""
    return sum(int(answer or 0) for _, answer in findings_found.send(sender=GovernanceFinding))


def schema_check_alerting(*, accept: bool = False) -> dict[str, int]:
    """The schema check, then an alert scan when it found something new (the alerts read open
    findings: alerts.services, schema.drift). Counts for the task's result and the command's report."""
    results = schema_check(accept=accept)
    new = sum(len(r.new) for r in results)
    queued = 0
    if new:
        queued = alerts_for_new_findings()
    return {
        "connections": len(results),
        "records": sum(len(r.records_checked) for r in results),
        "open": sum(len(r.findings) for r in results),
        "new": new,
        "resolved": sum(r.resolved for r in results),
        "errors": sum(len(r.errors) for r in results),
        "alerts_queued": queued,
    }
