"""Kantata OX (formerly Mavenlink) API v1: projects, tasks, time, expenses and invoices in the PSA.

Connection:
  base_url     the API host without the version, e.g. https://api.mavenlink.com (the sandbox:
               http://127.0.0.1:8792). The API lives under /api/v1, the token endpoint at /oauth/token.
  credentials  {"client_id": "...", "client_secret": "..."}; optional "token_url" when the
               account's token endpoint is on another host (e.g. https://app.mavenlink.com/oauth/token).

Kantata has no upsert and no idempotency key: a retried POST makes a second project. So every
write is keyed by an *external reference* (service_name "pscsync", service_model_ref = our
business key) stored with the object in the same create call, and `upsert` looks the key up
before it creates. Within one process a lock per (connection, object, key) covers the gap
between lookup and create; across processes and machines the engine's per-handoff lease does
(only one worker runs a given handoff at a time), so two creates for one key never race.

Kantata does not push changes: `poll` reads the Subscribed Events feed (9 days retained).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from connectors import canonical as c
from connectors import holdings as h
from connectors.base import Connector, InboundChange, Token, WriteResult
from connectors.errors import ConnectorError, MappingError, RejectedError, WebhookRejected
from connectors.schema import (
    BOOLEAN,
    DATE,
    NUMBER,
    PICKLIST,
    REFERENCE,
    TEXT,
    TEXT_OR_NUMBER,
    DateText,
    FieldShape,
    NumberText,
    RecordShape,
    payload_check,
    records_checked,
    sent,
    shape_of,
)

logger = logging.getLogger(__name__)

API = "/api/v1"  # the default version's root (a connection's own: KantataConnector.api_root)
SERVICE_NAME = "pscsync"  # our name on every external reference we write
PAGE_SIZE = 200  # Kantata's maximum per_page
# Events can be committed out of order, so each poll re-reads this much before the cursor; the
# engine drops what it already has (events are unique per connection and Kantata event id).
POLL_OVERLAP = dt.timedelta(seconds=30)
EVENT_RETENTION = dt.timedelta(days=9)
# Kantata documents tokens as non-expiring until revoked; when the answer gives no lifetime we
# re-authenticate daily anyway, and a 401 on the way refreshes at once.
DEFAULT_TOKEN_SECONDS = 24 * 3600
# A project-to-bill handoff for a Kantata invoice is keyed by it; its ERP invoice by "I-K<id>".
BATCH_KEY = c.KeyFormat("kantata-invoice:{batch}")
INVOICE_KEY = c.KeyFormat("I-K{batch}")


@dataclass(frozen=True)
class ObjectType:
    """A Kantata object as the API names it, and what a finance person calls it."""

    collection: str
    singular: str
    subject_type: str
    label: str


OBJECTS: dict[str, ObjectType] = {
    "workspaces": ObjectType("workspaces", "workspace", "Workspace", "project"),
    "stories": ObjectType("stories", "story", "Story", "task"),
    "participations": ObjectType("participations", "participation", "Participation", "project team member"),
    "time_entries": ObjectType("time_entries", "time_entry", "TimeEntry", "time entry"),
    "expenses": ObjectType("expenses", "expense", "Expense", "expense"),
    "invoices": ObjectType("invoices", "invoice", "Invoice", "invoice"),
    "users": ObjectType("users", "user", "User", "user"),
}
# The names flows and mappings may use for each object.
ALIASES: dict[str, str] = {
    "workspace": "workspaces",
    "project": "workspaces",
    "projects": "workspaces",
    "story": "stories",
    "task": "stories",
    "tasks": "stories",
    "milestone": "stories",
    "milestones": "stories",
    "phase": "stories",
    "phases": "stories",
    "participation": "participations",
    "time_entry": "time_entries",
    "time": "time_entries",
    "expense": "expenses",
    "invoice": "invoices",
    "user": "users",
}
SUBJECTS = {o.subject_type: o for o in OBJECTS.values()}

# One lock per (connection, object, key) while a lookup-then-create is in flight in this process.
_key_locks: dict[tuple[int | None, str, str], tuple[threading.Lock, int]] = {}
_key_locks_guard = threading.Lock()


@contextmanager
def key_lock(connection_id: int | None, collection: str, key: str) -> Iterator[None]:
    """Serialise writes of one business key in this process; forgotten when nobody holds it."""
    ident = (connection_id, collection, key)
    with _key_locks_guard:
        lock, holders = _key_locks.get(ident, (threading.Lock(), 0))
        _key_locks[ident] = (lock, holders + 1)
    try:
        with lock:
            yield
    finally:
        with _key_locks_guard:
            lock, holders = _key_locks[ident]
            if holders <= 1:
                del _key_locks[ident]
            else:
                _key_locks[ident] = (lock, holders - 1)


def object_type(entity: str) -> ObjectType:
    name = ALIASES.get(entity, entity)
    if name not in OBJECTS:
        known = ", ".join(sorted(OBJECTS))
        raise MappingError(f"Kantata has no object called {entity!r}; use one of: {known}")
    return OBJECTS[name]


def parse_when(value: Any) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return dt.datetime.now(tz=dt.UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _money(value: Any) -> str:
    return str(Decimal(str(value or 0)).quantize(Decimal("0.01")))


# Declared shapes of what Kantata sends (connectors/schema.py): its envelope (a `results` list
# of {key, id} and a map of objects per collection) and the objects pscsync reads. Checked before
# reading, so an answer of another shape is a MalformedRecord naming the field instead of a
# KeyError in a flow, or an empty answer read as "nothing there".
_COUNT = (int, float, NumberText)  # minutes, cents: Kantata sends integers; text that reads as one passes
ENVELOPE_SHAPE = {
    "results": ((list,), True, {"key": ((str,), True), "id": (TEXT_OR_NUMBER, True)}),
    "meta": ((dict,), False, {"page_count": ((int,), False)}),
}
REFERENCES_SHAPE = {"external_references": ((dict,), False), "meta": ENVELOPE_SHAPE["meta"]}
REFERENCE_SHAPE = {"subject_id": (TEXT_OR_NUMBER, False), "service_model_ref": ((str,), False)}
RECORD_SHAPES: dict[str, dict[str, tuple[Any, ...]]] = {
    "workspaces": {
        "id": (TEXT_OR_NUMBER, True),
        "title": ((str,), False),
        "currency": ((str,), False),
        "price": (_COUNT, False),
    },
    "invoices": {
        "id": (TEXT_OR_NUMBER, True),
        "workspace_id": (TEXT_OR_NUMBER, True),
        "title": ((str,), False),
        "status": ((str,), False),
        "invoice_date": ((DateText,), False),
        "time_entry_ids": ((list,), False),
        "expense_ids": ((list,), False),
    },
    "time_entries": {
        "id": (TEXT_OR_NUMBER, True),
        "workspace_id": (TEXT_OR_NUMBER, False),
        "time_in_minutes": (_COUNT, False),
        "rate_in_cents": (_COUNT, False),
        "date_performed": ((DateText,), False),
        "updated_at": ((str,), False),
    },
    "expenses": {
        "id": (TEXT_OR_NUMBER, True),
        "workspace_id": (TEXT_OR_NUMBER, False),
        "amount_in_cents": (_COUNT, False),
        "currency": ((str,), False),
        "date": ((DateText,), False),
        "updated_at": ((str,), False),
    },
    "subscribed_events": {
        "id": (TEXT_OR_NUMBER, True),
        "created_at": ((DateText,), True),
        "event_type": ((str,), False),
        "subject_type": ((str,), False),
        "subject_id": (TEXT_OR_NUMBER, False),
        "subject_changed_at": ((DateText,), False),
    },
}
RECORD_WORDS = {"workspaces": "workspace", "time_entries": "time entry", "subscribed_events": "event"}


def records_of(body: Any, collection: str) -> list[dict[str, Any]]:
    """The objects of one type in Kantata's envelope, in `results` order (the keyed map has none),
    each checked against its declared shape."""
    noun = RECORD_WORDS.get(collection, collection.removesuffix("s"))
    envelope = payload_check(body, ENVELOPE_SHAPE, what=f"Kantata sent a list of {noun}s")
    objects = envelope.get(collection) or {}
    if not isinstance(objects, dict):
        payload_check(envelope, {collection: ((dict,), False)}, what=f"Kantata sent a list of {noun}s")
    found = [objects[r["id"]] for r in envelope["results"] if r["key"] == collection and r["id"] in objects]
    shape = RECORD_SHAPES.get(collection, {"id": (TEXT_OR_NUMBER, True)})
    return list(records_checked(found, shape, what=sent("Kantata", noun), id_field="id"))


# Kantata publishes no describe endpoint: its documented fields (VENDOR_APIS.md section 3.5, from
# Kantata's API reference and published schemas) are the description the schema check compares
# mappings with. name -> (kind, required on create, allowed values).
DOCUMENTED_FIELDS: dict[str, dict[str, tuple[str, bool, tuple[str, ...]]]] = {
    "workspaces": {
        "title": (TEXT, True, ()),
        "description": (TEXT, False, ()),
        "budgeted": (BOOLEAN, False, ()),
        "price": (NUMBER, False, ()),
        "currency": (TEXT, False, ()),
        "start_date": (DATE, False, ()),
        "due_date": (DATE, False, ()),
        "creator_role": (PICKLIST, False, ("maven", "consultant", "buyer", "client")),
        "archived": (BOOLEAN, False, ()),
    },
    "stories": {
        "workspace_id": (REFERENCE, True, ()),
        "title": (TEXT, True, ()),
        "description": (TEXT, False, ()),
        "story_type": (PICKLIST, False, ("task", "deliverable", "milestone", "issue")),
        "parent_id": (REFERENCE, False, ()),
        "start_date": (DATE, False, ()),
        "due_date": (DATE, False, ()),
        "state": (TEXT, False, ()),
        "billable": (BOOLEAN, False, ()),
        "fixed_fee": (BOOLEAN, False, ()),
        "time_estimate_in_minutes": (NUMBER, False, ()),
        "budget_estimate_in_cents": (NUMBER, False, ()),
    },
    "invoices": {
        "invoice_date": (DATE, False, ()),
        "due_date": (DATE, False, ()),
        "payment_schedule": (NUMBER, False, ()),
        "status": (PICKLIST, False, ("new", "cancelled", "accepted payment")),
        "draft": (BOOLEAN, False, ()),
        "balance_in_cents": (NUMBER, False, ()),
        "currency": (TEXT, False, ()),
        "tax_rate": (NUMBER, False, ()),
        "user_invoice_number": (TEXT, False, ()),
        "title": (TEXT, False, ()),
        "message": (TEXT, False, ()),
        "purchase_order": (TEXT, False, ()),
        "project_code": (TEXT, False, ()),
    },
}


class KantataConnector(Connector):
    default_api_version = "v1"
    vendor = "kantata"
    api_hosts = ("api.mavenlink.com", "*.mavenlink.com", "*.kantata.com")
    capabilities: ClassVar[dict[str, c.Capability]] = {
        c.PROJECT: c.Capability(c.PROJECT, "workspaces", c.can(c.UPSERT, c.FIND, c.RECONCILE)),
        c.MILESTONE: c.Capability(c.MILESTONE, "stories", c.can(c.UPSERT, c.FIND)),
        # Kantata keeps no budget records: the contract value is the workspace's price.
        c.BUDGET: c.Capability(
            c.BUDGET, "workspaces", c.can(c.UPSERT, c.FIND, c.RECONCILE), key=c.KEYS[c.PROJECT], held_on=c.ON_PROJECT
        ),
        # Forecast demand lives on a project: the deal's future workspace, kept as an estimate.
        c.RESOURCE_REQUEST: c.Capability(c.RESOURCE_REQUEST, "stories", c.can(c.UPSERT, c.FIND), needs_project=True),
        c.BILLING_BATCH: c.Capability(
            c.BILLING_BATCH,
            "invoices",
            c.can(c.READ_ONE, c.READ_CHANGED, c.UPDATE, c.RECONCILE),
            key=BATCH_KEY,
            identifier="psa_invoice",
        ),
        "billing_status": c.Capability(c.BILLING_BATCH, "invoices", c.can(c.UPDATE)),
        # Kantata records payment only: the invoice it raised is marked once fully paid.
        "project_billing": c.Capability(
            c.BILLING_BATCH, "invoices", c.can(c.UPDATE), held_on=c.ON_BILLING_BATCH, when_paid_only=True
        ),
        c.TIME: c.Capability(c.TIME, "time_entries", c.can(c.RECONCILE)),
        c.EXPENSE: c.Capability(c.EXPENSE, "expenses", c.can(c.RECONCILE)),
    }
    limits: ClassVar[c.Limits] = c.Limits(page_size=PAGE_SIZE)
    # The ERP invoice key of a batch billed from here (a Certinia event's is the default "I-<id>").
    invoice_key: ClassVar[c.KeyFormat] = INVOICE_KEY

    # Auth -------------------------------------------------------------------------------------
    def fetch_token(self) -> Token:
        credentials = self.connection.credentials()
        url = credentials.get("token_url") or self.url("/oauth/token")
        body = {
            "grant_type": "client_credentials",
            "client_id": credentials.get("client_id", ""),
            "client_secret": credentials.get("client_secret", ""),
        }
        try:
            # OAuth 2 token requests are form-encoded (RFC 6749 section 4.4).
            result = self.call("POST", url, data=body)
        except ConnectorError as exc:
            self.describe_error(exc)
            raise
        answer = result.body if isinstance(result.body, dict) else {}
        if not answer.get("access_token"):
            raise RejectedError("Kantata's token endpoint answered without an access token", response=answer)
        lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        return Token(value=answer["access_token"], expires_at=dt.datetime.now(tz=dt.UTC).timestamp() + lifetime)

    # Schema governance -------------------------------------------------------------------------
    def describe_record(self, entity: str) -> RecordShape:
        """Kantata's documented fields of the object (DOCUMENTED_FIELDS): Kantata has no describe
        endpoint, so a change on Kantata's side is only seen once its documentation changes here;
        a mapping that writes an undocumented field is still found."""
        documented = DOCUMENTED_FIELDS.get(entity)
        if documented is None:
            raise RejectedError(f"Kantata documents no fields for {entity!r} here")
        return shape_of(
            entity,
            [FieldShape(name, kind, kind, required, values) for name, (kind, required, values) in documented.items()],
        )

    @property
    def api_root(self) -> str:
        """/api/{version}: Kantata has one version, v1, in the path (VENDOR_APIS.md section 3)."""
        return f"/api/{self.pinned_api_version}"

    def ping(self) -> None:
        self.send("GET", f"{self.api_root}/users/me")

    def describe_error(self, error: ConnectorError) -> None:
        """Say in plain words what Kantata objected to."""
        body = error.response if isinstance(error.response, dict) else {}
        errors = body.get("errors")
        problems = errors if isinstance(errors, list) else []
        said = "; ".join(
            f"{p.get('message', '')}" + (f" (field: {p['field']})" if p.get("field") else "")
            for p in problems
            if isinstance(p, dict)
        )
        status = error.http_status
        if body.get("error") and status in (400, 401):  # the OAuth token endpoint's own shape
            error.message = (
                f"Kantata refused the connection's client id and secret ({body['error']}); "
                "check the credentials of this connection"
            )
        elif status == 401:
            error.message = f"Kantata refused our access token: {said or 'unauthorised'}; check the credentials"
        elif status == 403:
            error.message = f"Kantata does not allow this for the connection's user: {said or 'forbidden'}"
        elif status == 404:
            error.message = f"Kantata has no such record: {said or 'not found'}"
        elif status == 422:
            error.message = f"Kantata rejected the change: {said}"
        elif status == 429:
            wait = getattr(error, "retry_after", None)
            error.message = "Kantata is limiting how fast we call it" + (
                f"; retrying after {wait:.0f} s" if wait else ""
            )
        elif status is not None and status >= 500:
            error.message = f"Kantata failed ({status}): {said or 'server error'}"
        elif status is not None and said:
            error.message = f"Kantata rejected the request ({status}): {said}"

    # Reading ----------------------------------------------------------------------------------
    def read(
        self,
        entity: str,
        *,
        since: dt.datetime | None = None,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,  # whole records come back: they hold these fields too
    ) -> Iterator[dict[str, Any]]:
        """Every object of `entity`, following page/per_page until the last page Kantata reports."""
        kind = object_type(entity)
        params: dict[str, Any] = {**(where or {}), "per_page": PAGE_SIZE}
        if since is not None:
            params["updated_after"] = since.isoformat()
        page = 1
        while True:
            result = self.send("GET", f"{self.api_root}/{kind.collection}", params={**params, "page": page})
            yield from records_of(result.body, kind.collection)
            if page >= int((result.body.get("meta") or {}).get("page_count") or 0):
                return
            page += 1

    # Outbound ---------------------------------------------------------------------------------
    def find(self, kind: ObjectType, key: str) -> tuple[dict[str, Any] | None, str]:
        """The object carrying our external reference `key`, and the URL asked."""
        params = {
            "external_reference_service_name": SERVICE_NAME,
            "external_reference_service_model_ref": key,
            "order": "id:asc",
            "per_page": 2,
        }
        path = f"{self.api_root}/{kind.collection}"
        if kind.collection == "workspaces":
            params["include_archived"] = "true"  # an archived project is still the one we made
        result = self.send("GET", path, params=params)
        found = records_of(result.body, kind.collection)
        if len(found) > 1:
            # Someone else (or an old integration) wrote the same key twice; keep writing the oldest.
            logger.warning("Kantata holds %s %ss for key %s; using %s", len(found), kind.label, key, found[0]["id"])
        return (found[0] if found else None), self.url(path)

    def lookup(self, *, entity: str, key: str) -> WriteResult | None:
        kind = object_type(entity)
        record, url = self.find(kind, key)
        if record is None:
            return None
        return WriteResult(
            external_id=str(record["id"]), request={"method": "GET", "url": url, "key": key}, response=record
        )

    def upsert(self, *, entity: str, key: str, fields: dict[str, Any]) -> WriteResult:
        """Create the object under `key`, or update the one already there. Safe to repeat."""
        kind = object_type(entity)
        with key_lock(self.connection.pk, kind.collection, key):
            existing, _ = self.find(kind, key)
            if existing is None:
                method, path = "POST", f"{self.api_root}/{kind.collection}"
                reference = {
                    "service_name": SERVICE_NAME,
                    "service_model": kind.singular,
                    "service_model_ref": key,
                    "status": "successful",
                }
                # The reference travels in the create call itself, so the object never exists
                # without it: a lost answer is found by the next lookup, not created twice.
                body = {kind.singular: {**fields, "external_reference": reference}}
            else:
                method, path = "PUT", f"{self.api_root}/{kind.collection}/{existing['id']}"
                body = {kind.singular: dict(fields)}
            try:
                result = self.send(method, path, json=body)
            except RejectedError as exc:
                exc.message = f"{exc.message} [{kind.label} {key}]"
                raise
            written = records_of(result.body, kind.collection)
            return WriteResult(
                external_id=str(written[0]["id"]) if written else str((existing or {}).get("id", "")),
                request={"method": method, "url": self.url(path), "json": body},
                response=result.body,
                http_status=result.status,
                created=existing is None,
            )

    # Objects Kantata creates in bulk, and how many a call (its documented limits).
    bulk_limits: ClassVar[dict[str, int]] = {
        "stories": 300,
        "time_entries": 100,
        "expenses": 100,
        "participations": 100,
    }

    def find_many(self, kind: ObjectType, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The objects carrying our references `keys` (up to 200 a call), by key."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            params = {
                "external_reference_service_name": SERVICE_NAME,
                "external_reference_service_model_refs": ",".join(chunk),
                "include": "external_references",
                "per_page": 200,
                "order": "id:asc",
            }
            result = self.send("GET", f"{self.api_root}/{kind.collection}", params=params)
            references = (result.body.get("external_references") or {}) if isinstance(result.body, dict) else {}
            for record in records_of(result.body, kind.collection):
                for ref_id in record.get("external_reference_ids") or []:
                    ref = references.get(str(ref_id)) or {}
                    key = ref.get("service_model_ref")
                    if ref.get("service_name") == SERVICE_NAME and key in chunk:
                        found.setdefault(key, record)  # the oldest, as find() keeps
        return found

    def upsert_many(self, *, entity: str, records: list[tuple[str, dict[str, Any]]]) -> list[WriteResult]:
        """One lookup for every key, one bulk create for the missing (each with its reference in
        the same call), an update for each that exists. Safe to repeat: a lost answer is found by
        the next lookup."""
        kind = object_type(entity)
        limit = self.bulk_limits.get(kind.collection, 0)
        if len(records) < 2 or not limit:
            return super().upsert_many(entity=entity, records=records)
        existing = self.find_many(kind, [key for key, _ in records])
        results: dict[str, WriteResult] = {}
        missing = [(key, fields) for key, fields in records if key not in existing]
        path = f"{self.api_root}/{kind.collection}"
        for start in range(0, len(missing), limit):
            chunk = missing[start : start + limit]
            body = {
                kind.collection: [
                    {
                        **fields,
                        "external_reference": {
                            "service_name": SERVICE_NAME,
                            "service_model": kind.singular,
                            "service_model_ref": key,
                            "status": "successful",
                        },
                    }
                    for key, fields in chunk
                ]
            }
            try:
                result = self.send("POST", path, json=body)
            except RejectedError as exc:
                exc.message = f"{exc.message} [{len(chunk)} {kind.label}s]"
                raise
            written = records_of(result.body, kind.collection)
            for (key, fields), record in zip(chunk, written, strict=True):
                results[key] = WriteResult(
                    external_id=str(record["id"]),
                    request={"method": "POST", "url": self.url(path), "key": key, "json": fields},
                    response=record,
                    http_status=result.status,
                    created=True,
                )
        for key, fields in records:
            if key in existing:
                current = existing[key]
                update = f"{self.api_root}/{kind.collection}/{current['id']}"
                result = self.send("PUT", update, json={kind.singular: dict(fields)})
                results[key] = WriteResult(
                    external_id=str(current["id"]),
                    request={"method": "PUT", "url": self.url(update), "json": fields},
                    response=result.body,
                    http_status=result.status,
                    created=False,
                )
        return [results[key] for key, _ in records]

    def update(self, *, entity: str, record_id: str, fields: dict[str, Any]) -> WriteResult:
        """Change an object by its Kantata id (objects people made carry no reference of ours)."""
        kind = object_type(entity)
        path = f"{self.api_root}/{kind.collection}/{int(record_id)}"
        body = {kind.singular: dict(fields)}
        try:
            result = self.send("PUT", path, json=body)
        except RejectedError as exc:
            exc.message = f"{exc.message} [{kind.label} {record_id}]"
            raise
        return WriteResult(
            external_id=str(record_id),
            request={"method": "PUT", "url": self.url(path), "json": body},
            response=result.body,
            http_status=result.status,
            created=False,
        )

    # Inbound ----------------------------------------------------------------------------------
    def verify_webhook(self, *, headers: dict[str, str], body: bytes, now: dt.datetime) -> str:
        raise WebhookRejected(404, "Kantata does not push changes; this connection polls")

    def parse_webhook(self, *, event_id: str, body: bytes) -> list[InboundChange]:
        raise WebhookRejected(404, "Kantata does not push changes; this connection polls")

    def poll(self, *, cursor: str) -> tuple[list[InboundChange], str]:
        """Subscribed events created since the cursor (an ISO time), oldest first, de-duplicated.

        The cursor is the newest event time seen. Each poll starts POLL_OVERLAP before it, so an
        event committed late is still read; repeats carry the same event id and are dropped by
        the engine. A cursor older than Kantata's 9-day window means events may be gone: we log
        it, and the reconciliation job (a full read) is what catches up.
        """
        now = dt.datetime.now(tz=dt.UTC)
        since = parse_when(cursor) - POLL_OVERLAP if cursor else None
        if since is not None and since < now - EVENT_RETENTION:
            logger.warning("Kantata keeps 9 days of events; cursor %s is older, some changes may be missed", cursor)
        params: dict[str, Any] = {"per_page": PAGE_SIZE, "include": "subject"}
        if since is not None:
            params["created_after"] = since.isoformat()
        seen: dict[str, InboundChange] = {}
        newest = cursor
        page = 1
        while True:
            result = self.send("GET", f"{self.api_root}/subscribed_events", params={**params, "page": page})
            for event in records_of(result.body, "subscribed_events"):
                change = self.change_of(event, result.body)
                seen.setdefault(change.source_event_id, change)
                if not newest or parse_when(event["created_at"]) > parse_when(newest):
                    newest = event["created_at"]
            if page >= int((result.body.get("meta") or {}).get("page_count") or 0):
                break
            page += 1
        # Kantata may list events out of order; apply them in the order they happened.
        changes = sorted(seen.values(), key=lambda c: (c.occurred_at, c.sequence))
        return changes, newest or ""

    def change_subject(self, change: InboundChange) -> c.ChangeSubject:
        """An invoice created in Kantata is a billing batch to bill in the ERP."""
        event = change.payload.get("event") or {}
        if event.get("subject_type") == "Invoice" and str(event.get("event_type", "")).endswith("created"):
            return c.ChangeSubject(
                record=c.BILLING_BATCH, action="created", key=BATCH_KEY(batch=event.get("subject_id"))
            )
        return c.ChangeSubject()

    # Canonical records -------------------------------------------------------------------------
    def references(self, purpose: str, **links: Any) -> dict[str, Any]:
        if purpose == c.PROJECT and "archived" in links:
            # A won deal's workspace is open even if it was archived as a lost estimate before.
            return {"archived": links["archived"]}
        if purpose == c.MILESTONE:
            return {"workspace_id": links.get("project_id", ""), "story_type": "milestone"}
        if purpose == c.RESOURCE_REQUEST:
            return {"workspace_id": links.get("project_id", ""), "story_type": "task"}
        return {}

    def record_url(self, record: str, external_id: str) -> str:
        if record in (c.PROJECT, c.BUDGET):  # a budget is the workspace's price
            return f"{self.connection.base_url.rstrip('/')}/workspaces/{external_id}"
        return ""

    def billing_batch(self, key: str, *, currency: str = "") -> dict[str, Any] | None:
        """A Kantata invoice with its time entries and expenses. Kantata carries neither our project
        key nor the CRM account on it: project_key and customer_key are left for our own records."""
        parts = BATCH_KEY.parse(key)
        invoice_id = parts["batch"] if parts else key
        invoices = list(self.read("invoices", where={"only": invoice_id}))
        if not invoices:
            return None
        invoice = invoices[0]
        workspace_id = str(invoice.get("workspace_id"))
        workspace = next(iter(self.read("workspaces", where={"only": workspace_id, "include_archived": "true"})), {})
        currency = (workspace.get("currency") or "").upper()
        items = []
        time_ids = [str(i) for i in invoice.get("time_entry_ids") or []]
        expense_ids = [str(i) for i in invoice.get("expense_ids") or []]
        if time_ids:
            for entry in self.read("time_entries", where={"only": ",".join(time_ids)}):
                hours = Decimal(entry.get("time_in_minutes") or 0) / 60
                rate = Decimal(entry.get("rate_in_cents") or 0) / 100
                items.append(
                    {
                        "id": f"TE-{entry['id']}",
                        "kind": "Time",
                        "source_id": f"time_entry:{entry['id']}",
                        "date": entry.get("date_performed") or "",
                        "quantity": _money(hours),
                        "unit_price": _money(rate),
                        "amount": _money(hours * rate),
                        "currency": currency,
                    }
                )
        if expense_ids:
            for expense in self.read("expenses", where={"only": ",".join(expense_ids)}):
                amount = Decimal(expense.get("amount_in_cents") or 0) / 100
                items.append(
                    {
                        "id": f"EX-{expense['id']}",
                        "kind": "Expense",
                        "source_id": f"expense:{expense['id']}",
                        "date": expense.get("date") or "",
                        "quantity": "1.00",
                        "unit_price": _money(amount),
                        "amount": _money(amount),
                        "currency": (expense.get("currency") or currency).upper(),
                    }
                )
        return {
            "id": invoice_id,
            "invoice_key": INVOICE_KEY(batch=invoice_id),
            "name": invoice.get("title") or f"Kantata invoice {invoice_id}",
            "project_id": workspace_id,
            "project_key": "",
            "project_name": workspace.get("title") or "",
            "date": (invoice.get("invoice_date") or "")[:10],
            "currency": currency,
            "customer_key": "",
            "items": items,
        }

    # Reconciliation -------------------------------------------------------------------------
    def psa_holdings(self) -> h.PsaHoldings:
        projects, batches = self._projects_and_batches()
        # Kantata's API (VENDOR_APIS.md) exposes no scheduled hours per person, nor a role on a
        # time entry: assignments and worked hours by role are not measured there.
        return h.PsaHoldings(projects=projects, batches=batches, unbilled=self._unbilled(projects))

    def _references(self, model: str) -> dict[str, str]:
        """Kantata id -> our key, from the external references we wrote."""
        found: dict[str, str] = {}
        page = 1
        while True:
            params = {"service_name": "pscsync", "service_model": model, "per_page": 200, "page": page}
            body = payload_check(
                self.send("GET", f"{self.api_root}/external_references", params=params).body or {},
                REFERENCES_SHAPE,
                what="Kantata sent a list of external references",
            )
            refs = (body.get("external_references") or {}).values()
            for ref in records_checked(refs, REFERENCE_SHAPE, what="Kantata sent an external reference", id_field="id"):
                found[str(ref.get("subject_id"))] = str(ref.get("service_model_ref") or "")
            if page >= int((body.get("meta") or {}).get("page_count") or 0):
                return found
            page += 1

    def _projects_and_batches(self) -> tuple[dict[str, h.PsaProject], list[h.PsaBatch]]:
        keys = self._references("workspace")
        workspaces: dict[str, h.PsaProject] = {}
        for row in self.read("workspaces", where={"include_archived": "true"}):
            key = keys.get(str(row["id"]), "")
            if not key.startswith("P-"):
                continue
            price = row.get("price")
            workspaces[str(row["id"])] = h.PsaProject(
                key=key,
                id=str(row["id"]),
                name=row.get("title") or key,
                currency=(row.get("currency") or "").upper(),
                budget=(h.money(Decimal(price) / 100) if price is not None else None),
                budget_version=None,
                budget_records=[f"project price {h.money(Decimal(price) / 100)}" if price is not None else "no price"],
            )
        entries = {str(r["id"]): r for r in self.read("time_entries")}
        expenses = {str(r["id"]): r for r in self.read("expenses")}
        batches = []
        for invoice in self.read("invoices"):
            if (invoice.get("status") or "") == "cancelled":
                continue
            project = workspaces.get(str(invoice.get("workspace_id")))
            currency = project.currency if project else ""
            batch = h.PsaBatch(
                id=str(invoice["id"]),
                name=invoice.get("title") or f"Kantata invoice {invoice['id']}",
                invoice_key=f"I-K{invoice['id']}",
                project_key=project.key if project else f"workspace:{invoice.get('workspace_id')}",
                project_name=project.name if project else "",
                date=h.day(invoice.get("invoice_date")),
                currency=currency,
                fx_rate=None,
            )
            for entry_id in invoice.get("time_entry_ids") or []:
                entry = entries.get(str(entry_id)) or {}
                hours = Decimal(entry.get("time_in_minutes") or 0) / 60
                amount = h.money(hours * Decimal(entry.get("rate_in_cents") or 0) / 100)
                batch.items.append(
                    h.PsaItem(
                        id=f"TE-{entry_id}",
                        kind="Time",
                        source_id=f"time_entry:{entry_id}",
                        date=h.day(entry.get("date_performed")),
                        amount=amount,
                        currency=currency,
                        modified_at=h.instant(entry.get("updated_at")),
                    )
                )
            for expense_id in invoice.get("expense_ids") or []:
                expense = expenses.get(str(expense_id)) or {}
                batch.items.append(
                    h.PsaItem(
                        id=f"EX-{expense_id}",
                        kind="Expense",
                        source_id=f"expense:{expense_id}",
                        date=h.day(expense.get("date")),
                        amount=h.money(Decimal(expense.get("amount_in_cents") or 0) / 100),
                        currency=(expense.get("currency") or currency).upper(),
                        modified_at=h.instant(expense.get("updated_at")),
                    )
                )
            if batch.items:
                batches.append(batch)
        return {p.key: p for p in workspaces.values()}, batches

    def _unbilled(self, projects: dict[str, h.PsaProject]) -> list[h.Unbilled]:
        """Approved, billable time entries and expenses no Kantata invoice holds yet (`is_invoiced`),
        time priced at the entry's own h.rate. Kantata bills fixed fees on the workspace price, not on
        milestones pscsync could read, so there are no milestone rows here."""
        by_id = {p.id: p for p in projects.values()}
        found: list[h.Unbilled] = []
        for collection, kind in (("time_entries", "time"), ("expenses", "expense")):
            for row in self.read(collection, where={"approved": "true", "is_invoiced": "false"}):
                project = by_id.get(str(row.get("workspace_id")))
                if project is None or row.get("billable") is False or row.get("is_invoiced"):
                    continue
                if kind == "time":
                    hours = Decimal(row.get("time_in_minutes") or 0) / 60
                    amount = h.money(hours * Decimal(row.get("rate_in_cents") or 0) / 100)
                    work_date, currency = row.get("date_performed"), project.currency
                    description = str(row.get("notes") or f"time entry {row['id']}")
                else:
                    amount = h.money(Decimal(row.get("amount_in_cents") or 0) / 100)
                    work_date, currency = row.get("date"), (row.get("currency") or project.currency)
                    description = str(row.get("category") or f"expense {row['id']}")
                found.append(
                    h.Unbilled(
                        kind=kind,
                        source_id=f"{collection[:-1]}:{row['id']}",
                        description=description[:200],
                        project_key=project.key,
                        project_name=project.name,
                        work_date=h.day(work_date),
                        amount=amount,
                        currency=currency.upper(),
                    )
                )
        return found

    def change_of(self, event: dict[str, Any], body: dict[str, Any]) -> InboundChange:
        kind = SUBJECTS.get(event.get("subject_type", ""))
        subject = None
        if kind is not None:
            subject = (body.get(kind.collection) or {}).get(str(event.get("subject_id")))
        return InboundChange(
            source_event_id=str(event["id"]),
            event_type=str(event.get("event_type", "")),
            flow="",
            business_key=f"{event.get('subject_type', '')}:{event.get('subject_id', '')}",
            occurred_at=parse_when(event.get("subject_changed_at") or event.get("created_at")),
            payload={"event": event, "subject": subject},
            sequence=int(event["id"]) if str(event["id"]).isdigit() else 0,
        )
