"""The echo connector: the engine's own test target (connectors/sandboxes/echo.py).

It speaks a deliberately small protocol so the engine can be exercised before, and apart from,
the vendor connectors: records upserted by key under /records/<entity>/<key>, a change feed at
/changes for polling, Standard Webhooks signatures on pushed changes, a bearer token for auth.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import quote

from connectors.base import Connector, InboundChange, Token, WriteResult
from connectors.errors import WebhookRejected


def _change(item: Any, *, event_id: str) -> InboundChange:
    if not isinstance(item, dict):
        raise WebhookRejected(400, "the body must be a JSON object")
    missing = [f for f in ("key", "version", "occurred_at", "data") if f not in item]
    if missing:
        raise WebhookRejected(400, f"missing field(s): {', '.join(missing)}")
    if not isinstance(item["key"], str) or not item["key"] or len(item["key"]) > 150:
        raise WebhookRejected(400, "key must be a non-empty string of at most 150 characters")
    if not isinstance(item["version"], int):
        raise WebhookRejected(400, "version must be a whole number")
    if not isinstance(item["data"], dict):
        raise WebhookRejected(400, "data must be a JSON object")
    try:
        occurred_at = dt.datetime.fromisoformat(item["occurred_at"])
    except (TypeError, ValueError):
        raise WebhookRejected(400, "occurred_at must be an ISO 8601 date-time") from None
    if occurred_at.tzinfo is None:
        raise WebhookRejected(400, "occurred_at must carry a time zone")
    return InboundChange(
        source_event_id=event_id,
        event_type=str(item.get("type", "record.changed")),
        flow="echo",
        business_key=item["key"],
        occurred_at=occurred_at,
        sequence=item["version"],
        payload={"key": item["key"], "version": item["version"], "data": item["data"]},
        legal_entity_code=str(item.get("legal_entity", "")),
    )


class EchoConnector(Connector):
    vendor = "echo"
    api_hosts = ()  # the engine's test target: sandbox only, no public host

    def fetch_token(self) -> Token:
        # The echo target takes a fixed bearer token from the credentials; it never expires.
        return Token(value=self.connection.credentials().get("token", ""), expires_at=float("inf"))

    def ping(self) -> None:
        self.send("GET", "/changes", params={"after": "0"})

    def parse_webhook(self, *, event_id: str, body: bytes) -> list[InboundChange]:
        try:
            item = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookRejected(400, f"the body is not valid JSON: {exc}") from None
        return [_change(item, event_id=event_id)]

    def poll(self, *, cursor: str) -> tuple[list[InboundChange], str]:
        result = self.send("GET", "/changes", params={"after": cursor or "0"})
        changes = [_change(item, event_id=f"change-{item['id']}") for item in result.body["changes"]]
        return changes, str(result.body["next"])

    def upsert(self, *, entity: str, key: str, fields: dict[str, Any]) -> WriteResult:
        url = self.url(f"/records/{quote(entity, safe='')}/{quote(key, safe='')}")
        result = self.send("PUT", url, json=fields)
        return WriteResult(
            external_id=str(result.body["id"]),
            request={"method": "PUT", "url": url, "json": fields},
            response=result.body,
            http_status=result.status,
            created=result.status == 201,
        )

    def lookup(self, *, entity: str, key: str) -> WriteResult | None:
        url = self.url(f"/records/{quote(entity, safe='')}/{quote(key, safe='')}")
        result = self.send("GET", url, accept_statuses=(404,))
        if result.status == 404:
            return None
        return WriteResult(
            external_id=str(result.body["id"]),
            request={"method": "GET", "url": url},
            response=result.body,
            http_status=result.status,
        )
