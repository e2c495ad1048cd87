"""The step kinds the business flows are made of.

- CheckStep: validates what was read; calls no system; a failure is a validation error a
  person must fix at the source.
- ReadStep: reads the source records the flow works from; calls a system but writes nothing, so
  after an unknown outcome it is simply read again.
- WriteStep: writes one or more records to a target, each under a key built from business data,
  through the mapping in force for (connection, purpose). After an unknown outcome it looks every
  key up before writing again (connectors upsert by key, so a repeat never duplicates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from connectors.base import WriteResult
from connectors.canonical import UPSERT, capability
from connectors.errors import MappingError
from connectors.registry import connector_for
from pscsync.flows.base import StepContext, StepDef
from pscsync.flows.routing import Systems, legal_entity_get, systems_for
from pscsync.mappings import mapping_in_force, mapping_run

if TYPE_CHECKING:
    from connectors.models import Connection
    from pscsync.models import Handoff, MappingVersion


def mapping_for(ctx: StepContext, connection: Connection, purpose: str) -> MappingVersion:
    """The mapping version in force, read once per claimed batch (ctx.shared): every record of a
    run maps alike, and a version published meanwhile applies from the worker's next batch."""
    key = ("mapping", connection.pk, purpose)
    if key not in ctx.shared:
        ctx.shared[key] = mapping_in_force(connection=connection, entity=purpose)
    return ctx.shared[key]


def systems(ctx: StepContext) -> Systems:
    """The CRM, PSA and ERP of the handoff's legal entity (known once the source is read)."""
    entity = ctx.handoff.legal_entity
    if entity is not None:
        return systems_of(ctx, entity.code)
    return systems_of(ctx, ctx.outputs.get("read_deal", {}).get("deal", {}).get("legal_entity", ""))


def systems_of(ctx: StepContext, code: str) -> Systems:
    """The systems of the legal entity with this code, read once per claimed batch (ctx.shared):
    the check step and every write step of every handoff ask (three queries each time); the
    handoff's own entity is not read again."""
    key = ("systems", code.strip().lower())
    if key not in ctx.shared:
        entity = ctx.handoff.legal_entity
        if entity is None or entity.code.strip().lower() != key[1]:
            entity = legal_entity_get(code)
        ctx.shared[key] = systems_for(entity)
    return ctx.shared[key]


def key_of(connection: Connection, purpose: str, **parts: Any) -> str:
    """The key a record is written under on that connection (its declared key format)."""
    return capability(connection, purpose).key_format(**parts)


def find_by_key(connection: Connection, purpose: str, **parts: Any) -> WriteResult | None:
    """The record written under our key for `purpose` on that connection, or None."""
    found = capability(connection, purpose)
    return connector_for(connection).lookup(entity=found.entity, key=found.key_format(**parts))


@dataclass
class CheckStep(StepDef):
    name: str
    keys_a_record: ClassVar[bool] = False
    check: Callable[[StepContext], dict[str, Any]]

    def idempotency_key(self, ctx: StepContext) -> str:
        return f"{self.name}:{ctx.handoff.business_key}"

    def target(self, ctx: StepContext) -> Connection | None:
        return None

    def planned_request(self, ctx: StepContext) -> dict[str, Any]:
        return {"operation": "check", "step": self.name}

    def perform(self, ctx: StepContext) -> WriteResult:
        return WriteResult(external_id="", output=self.check(ctx))

    def find_existing(self, ctx: StepContext) -> WriteResult | None:
        return None  # a check changes nothing anywhere: run it again


@dataclass
class ReadStep(StepDef):
    name: str
    keys_a_record: ClassVar[bool] = False
    system: Callable[[StepContext], Connection]
    read: Callable[[StepContext, Connection], dict[str, Any]]

    def idempotency_key(self, ctx: StepContext) -> str:
        return f"{self.name}:{ctx.handoff.business_key}"

    def target(self, ctx: StepContext) -> Connection:
        return self.system(ctx)

    def planned_request(self, ctx: StepContext) -> dict[str, Any]:
        return {"operation": "read", "step": self.name, "key": ctx.handoff.business_key}

    def perform(self, ctx: StepContext) -> WriteResult:
        connection = self.system(ctx)
        output = self.read(ctx, connection)
        return WriteResult(external_id="", output=output)

    def find_existing(self, ctx: StepContext) -> WriteResult | None:
        return None  # reading twice is harmless


@dataclass(frozen=True)
class Record:
    """One record a WriteStep writes: its key, the document its mapping reads, fields set by code
    (references to records written earlier, which a mapping cannot know)."""

    key: str
    source: dict[str, Any]
    references: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Compensation:
    """How a person may undo what a write step wrote, where the vendor allows it (the workbench's
    "Compensate"). Each record the step wrote is removed through the connector's `withdraw`, which
    the vendor may refuse (a paid or posted invoice); then `release` undoes our own bookkeeping
    that assumed the record exists (e.g. the billed-item claims) and says what it released."""

    label: str  # what the button does, in an operator's words
    explain: str  # when the vendor allows it and what happens afterwards
    release: Callable[[Handoff, list[str]], dict[str, Any]] | None = None  # (handoff, record keys)


@dataclass
class WriteStep(StepDef):
    name: str
    system: str  # "crm", "psa" or "erp" of the handoff's legal entity
    # The canonical record (or write-back purpose) it writes, which names the mapping too:
    # customer, project, milestone, contract, ... The connector's own entity for it, its key and
    # how it is written come from the connector's declared capability (connectors/canonical.py).
    purpose: str
    records: Callable[[StepContext, Connection], list[Record]]
    # Given the context, a function that writes one record some other way than the connector's
    # upsert (a duplicate check first, an update by the source's own id); returns a WriteResult.
    write: Callable[[StepContext], Callable[[Connection, str, Record, dict[str, Any]], WriteResult]] | None = None
    # Business facts to record on the handoff when the step succeeds.
    facts: Callable[[StepContext], dict[str, Any]] | None = None
    # How a person may undo what this step wrote; None when it must not be undone by us.
    compensation: Compensation | None = None

    def target(self, ctx: StepContext) -> Connection:
        return systems(ctx).of(self.system)

    def entity(self, connection: Connection) -> str:
        return capability(connection, self.purpose).entity

    def _records(self, ctx: StepContext) -> list[Record]:
        key = ("records", self.name)
        if key not in ctx.cache:
            ctx.cache[key] = self.records(ctx, self.target(ctx))
        return ctx.cache[key]

    def idempotency_key(self, ctx: StepContext) -> str:
        keys = [r.key for r in self._records(ctx)]
        text = ",".join(keys) if keys else f"{self.name}:{ctx.handoff.business_key}:none"
        return text if len(text) <= 200 else f"{keys[0]}..{keys[-1]} ({len(keys)} records)"

    def _mapped(self, ctx: StepContext) -> tuple[int | None, list[tuple[Record, dict[str, Any]]]]:
        memo = ("mapped", self.name)
        if memo in ctx.cache:
            return ctx.cache[memo]
        records = self._records(ctx)
        if not records:
            return None, []
        connection = self.target(ctx)
        version = mapping_for(ctx, connection, self.purpose)
        connector = connector_for(connection)
        mapped = []
        for record in records:
            fields = {**mapping_run(version, record.source).output, **record.references}
            mapped.append((record, connector.shape(self.purpose, fields)))
        ctx.cache[memo] = (version.pk, mapped)
        return version.pk, mapped

    def planned_request(self, ctx: StepContext) -> dict[str, Any]:
        connection = self.target(ctx)
        try:
            _, mapped = self._mapped(ctx)
        except MappingError as exc:
            # Keep what would have been mapped: the fix (a mapping change) is previewed against it.
            return {
                "operation": "upsert",
                "system": connection.slug,
                "purpose": self.purpose,
                "mapping_error": exc.message,
                "records": [{"key": r.key, "source": r.source} for r in self._records(ctx)],
            }
        if not mapped:
            return {"operation": "none", "system": connection.slug, "reason": "nothing to write here"}
        return {
            "operation": "upsert",
            "system": connection.slug,
            "entity": self.entity(connection),
            "purpose": self.purpose,
            # The document each record was mapped from: the workbench and the mapping studio's
            # previews re-map it without asking the source system again.
            "records": [{"key": r.key, "fields": f, "source": r.source} for r, f in mapped],
        }

    def perform(self, ctx: StepContext) -> WriteResult:
        connection = self.target(ctx)
        version_id, mapped = self._mapped(ctx)
        if not mapped:
            return WriteResult(external_id="", output={"entity_type": self.purpose, "ids": {}, "skipped": True})
        connector = connector_for(connection)
        entity = self.entity(connection)
        write = self.write(ctx) if self.write is not None else None
        ids: dict[str, str] = {}
        responses = []
        if write is None:
            # One call for many records where the vendor has a bulk API (fewer calls, same keys).
            written = connector.upsert_many(entity=entity, records=[(r.key, f) for r, f in mapped])
        else:
            written = [write(connection, entity, record, fields) for record, fields in mapped]
        for (record, _), result in zip(mapped, written, strict=True):
            ids[record.key] = result.external_id
            responses.append({"key": record.key, "id": result.external_id, "status": result.http_status})
        return WriteResult(
            external_id=next(iter(ids.values()), ""),
            # The source documents stay with the request: the mapping studio offers the records a
            # mapping really mapped as preview samples, without asking the source system again.
            request={
                "entity": entity,
                "purpose": self.purpose,
                "records": [{"key": r.key, "fields": f, "source": r.source} for r, f in mapped],
            },
            response={"written": responses},
            output={
                "entity_type": self.purpose,
                "ids": ids,
                **({"handoff_facts": self.facts(ctx)} if self.facts else {}),
            },
            mapping_version_id=version_id,
        )

    def find_existing(self, ctx: StepContext) -> WriteResult | None:
        """Adopt the step only when every record is found under its key; otherwise write again
        (upserts by key: what exists is updated, what is missing is created)."""
        connection = self.target(ctx)
        records = self._records(ctx)
        if not records:
            return None
        connector = connector_for(connection)
        entity = self.entity(connection)
        ids = {}
        for record in records:
            found = connector.lookup(entity=entity, key=record.key)
            if found is None:
                return None
            ids[record.key] = found.external_id
        return WriteResult(
            external_id=next(iter(ids.values()), ""),
            response={"found": ids},
            output={
                "entity_type": self.purpose,
                "ids": ids,
                **({"handoff_facts": self.facts(ctx)} if self.facts else {}),
            },
        )


def update_by_id(ctx: StepContext) -> Callable[[Connection, str, Record, dict[str, Any]], WriteResult]:
    """A WriteStep `write` for records a person made in the target (an opportunity, a billing
    event, an invoice): they carry no key of ours, so they are changed by their own id (the
    record's key). Setting the same values again is harmless, so a repeat needs no lookup."""

    def write(connection: Connection, entity: str, record: Record, fields: dict[str, Any]) -> WriteResult:
        return connector_for(connection).update(entity=entity, record_id=record.key, fields=fields)

    return write


def write_as_declared(purpose: str) -> Callable[[StepContext], Callable[..., WriteResult]]:
    """A WriteStep `write` for a purpose some vendors keep under our key (upsert) and others on a
    record a person made (changed by its own id): the target's declared capability decides."""

    def for_run(ctx: StepContext) -> Callable[[Connection, str, Record, dict[str, Any]], WriteResult]:
        def write(connection: Connection, entity: str, record: Record, fields: dict[str, Any]) -> WriteResult:
            connector = connector_for(connection)
            if capability(connection, purpose).can(UPSERT):
                return connector.upsert(entity=entity, key=record.key, fields=fields)
            return connector.update(entity=entity, record_id=record.key, fields=fields)

        return write

    return for_run
