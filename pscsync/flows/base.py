"""The shapes of a flow and its steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from connectors.base import WriteResult
from connectors.registry import connector_for

if TYPE_CHECKING:
    from connectors.models import Connection
    from pscsync.models import Handoff


@dataclass
class StepContext:
    handoff: Handoff
    # What earlier steps wrote, by step name: their external ids, for later steps to refer to.
    results: dict[str, str] = field(default_factory=dict)
    # What earlier steps kept (Step.output), by step name.
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-run memo (records built, what they were mapped to): never stored.
    cache: dict[Any, Any] = field(default_factory=dict)
    # Per-batch memo, shared by the handoffs a worker claimed together (runner._run_batch): what
    # does not change within a second of work, the systems serving a legal entity and the mapping
    # versions in force, read once per batch instead of once per handoff. Never stored.
    shared: dict[Any, Any] = field(default_factory=dict)

    @property
    def payload(self) -> dict[str, Any]:
        return self.handoff.payload


class StepDef:
    """One step. Subclasses say how to key, perform and find the write."""

    name: str
    # Whether the step's idempotency key is our key of a record in a target ("C-…", "P-…"): true
    # for writes; a read or a check is keyed by the engine alone ("read_deal:…").
    keys_a_record: ClassVar[bool] = True

    def idempotency_key(self, ctx: StepContext) -> str:
        raise NotImplementedError

    def target(self, ctx: StepContext) -> Connection | None:
        raise NotImplementedError

    def planned_request(self, ctx: StepContext) -> dict[str, Any]:
        """What this step is about to send, recorded before sending so a failed attempt shows it."""
        raise NotImplementedError

    def perform(self, ctx: StepContext) -> WriteResult:
        raise NotImplementedError

    def find_existing(self, ctx: StepContext) -> WriteResult | None:
        """After an unknown outcome: the object written under this step's key, if it exists."""
        raise NotImplementedError


@dataclass
class UpsertStep(StepDef):
    """Upsert one entity in a target system under a key built from business data."""

    name: str
    entity: str
    key: Callable[[StepContext], str]
    fields: Callable[[StepContext], dict[str, Any]]
    # Which connection to write to; by default the one the change came from.
    choose_target: Callable[[StepContext], Connection] = field(default=lambda ctx: ctx.handoff.source_connection)

    def idempotency_key(self, ctx: StepContext) -> str:
        return self.key(ctx)

    def target(self, ctx: StepContext) -> Connection:
        return self.choose_target(ctx)

    def planned_request(self, ctx: StepContext) -> dict[str, Any]:
        return {"operation": "upsert", "entity": self.entity, "key": self.key(ctx), "fields": self.fields(ctx)}

    def perform(self, ctx: StepContext) -> WriteResult:
        connector = connector_for(self.target(ctx))
        return connector.upsert(entity=self.entity, key=self.key(ctx), fields=self.fields(ctx))

    def find_existing(self, ctx: StepContext) -> WriteResult | None:
        return connector_for(self.target(ctx)).lookup(entity=self.entity, key=self.key(ctx))


@dataclass(frozen=True)
class Flow:
    name: str
    label: str
    steps: tuple[StepDef, ...]
    # Retryable failures allowed before the handoff goes to the workbench.
    attempt_budget: int = 8
