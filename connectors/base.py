"""The one connector interface the engine and the flows use. One subclass per vendor."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar

from connectors.models import Connection


@dataclass(frozen=True)
class InboundChange:
    """A change in a source system, in our terms, ready to be stored as an Event."""

    source_event_id: str
    event_type: str
    flow: str
    business_key: str
    occurred_at: dt.datetime
    payload: dict[str, Any]
    sequence: int = 0
    legal_entity_code: str = ""


@dataclass(frozen=True)
class WriteResult:
    """What a write (or a lookup) in a target system found: its id there, and what was exchanged."""

    external_id: str
    request: dict[str, Any] = field(default_factory=dict)
    response: Any = None
    http_status: int | None = None
    created: bool | None = None


class Connector:
    vendor: ClassVar[str]

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # Inbound ---------------------------------------------------------------------------------
    def verify_webhook(self, *, headers: dict[str, str], body: bytes, now: dt.datetime) -> str:
        """Check the delivery is authentic and fresh; return the delivery's event id.

        Raises connectors.errors.WebhookRejected. Runs on the raw bytes, before any parsing.
        """
        raise NotImplementedError

    def parse_webhook(self, *, event_id: str, body: bytes) -> list[InboundChange]:
        """Turn a verified body into changes. Raises WebhookRejected(400) on a malformed body."""
        raise NotImplementedError

    def poll(self, *, cursor: str) -> tuple[list[InboundChange], str]:
        """Changes since `cursor`, and the cursor to store once they are stored."""
        raise NotImplementedError

    # Outbound --------------------------------------------------------------------------------
    def upsert(self, *, entity: str, key: str, fields: dict[str, Any]) -> WriteResult:
        """Create or update the `entity` whose external key is `key`. Idempotent by key."""
        raise NotImplementedError

    def lookup(self, *, entity: str, key: str) -> WriteResult | None:
        """Find the `entity` written under `key`, or None."""
        raise NotImplementedError
