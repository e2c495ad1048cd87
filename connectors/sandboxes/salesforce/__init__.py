"""The Salesforce sandbox: a local org that speaks the Salesforce REST API (and carries Certinia
PSA's pse__ objects, as a real org with the managed package does).

Vendor protocol (VENDOR_APIS.md sections 1 and 2; choices where it is unconfirmed are in
docs/sandboxes/salesforce.md):
  POST /services/oauth2/token                    client_credentials grant, form-encoded
  GET  /services/data/                           the API versions (no auth, not counted)
  GET  /services/data/vNN.N/                     resources;  /limits  DailyApiRequests
  GET  /services/data/vNN.N/sobjects             describe global; /sobjects/{type}/describe
  POST /services/data/vNN.N/sobjects/{type}/     create -> 201 {id, success, errors}
  GET|PATCH|DELETE  .../sobjects/{type}/{id}     read (with attributes) / update 204 / delete 204
  GET|PATCH|DELETE  .../sobjects/{type}/{extIdField}/{value}
                                                 read / upsert (201 created, 200 updated,
                                                 300 several matches, ?updateOnly=true) / delete
  POST|PATCH|DELETE .../composite/sobjects       sObject Collections (allOrNone)
  PATCH .../composite/sobjects/{type}/{extIdField}  collection upsert
  GET  .../query?q=SOQL, .../queryAll?q=SOQL     SOQL subset (soql.py), paged by nextRecordsUrl;
                                                 Sforce-Query-Options: batchSize=N
  GET  /cometd/NN.N/pull?channel=/data/ChangeEvents&replayId=-2
                                                 Change Data Capture, simplified to an HTTP pull
                                                 that answers CometD-shaped messages
Every /services/data/vNN.N response carries Sforce-Limit-Info: api-usage=N/M; when the daily
allowance is spent the answer is 403 REQUEST_LIMIT_EXCEEDED. Errors are the JSON array
[{message, errorCode, fields}].

Control API (besides the shared /_sandbox/faults, /journal, /reset of sandboxes/base.py):
  POST   /_sandbox/subscribers  {"url": ..., "secret": "whsec_...", "channel": "/data/ChangeEvents"}
                                push every change event there, signed (Standard Webhooks)
  GET    /_sandbox/subscribers  DELETE /_sandbox/subscribers
  POST   /_sandbox/certinia/billing-events   {"project": "<id>"?}  run PSA billing: bundle approved,
                                billable, unbilled timecards, expenses and milestones into
                                billing events with items
Fault settings understood besides the shared ones: {"daily_api_limit": N}.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from sqlite3 import Connection as Db
from typing import Any
from urllib.parse import parse_qs, unquote

from connectors.sandboxes.base import BadRequest, FieldDef, Request, Response, Sandbox
from connectors.sandboxes.base import serve as base_serve
from connectors.sandboxes.salesforce import soql
from connectors.sandboxes.salesforce.schema import (
    INTEGRATION_USER_ID,
    OBJECTS,
    OBJECTS_BY_PREFIX,
    ORG_ID,
    SYNC_KEY_FIELD,
    SYSTEM_FIELDS,
    SObject,
    find_object,
    new_id,
    normalise_id,
    parse_moment,
    sf_datetime,
)

API = r"/services/data/v(?P<version>[^/]+)"
LOWEST_VERSION, HIGHEST_VERSION = 31, 66
RELEASES = {58: "Summer '23", 59: "Winter '24", 60: "Spring '24", 61: "Summer '24", 62: "Winter '25"}
DEFAULT_BATCH_SIZE = 2000
COLLECTION_LIMIT = 200
CDC_RETENTION_SECONDS = 72 * 3600
ALL_CHANGES = "/data/ChangeEvents"

EXTRA_SCHEMA = """
CREATE TABLE IF NOT EXISTS sf_external_ids (
    object TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY (object, field, value, id)
);
CREATE TABLE IF NOT EXISTS sf_change_events (
    replay_id INTEGER PRIMARY KEY, channel TEXT NOT NULL, at REAL NOT NULL, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sf_query_locators (locator TEXT PRIMARY KEY, at REAL NOT NULL, data TEXT NOT NULL);
"""

INTEGRATION_USER = {
    "attributes": {"type": "User"},
    "Id": INTEGRATION_USER_ID,
    "Name": "pscsync Integration",
    "Username": "pscsync.integration@example.com",
    "IsActive": True,
}


class SfError(Exception):
    """One Salesforce error: status, errorCode, message, fields."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []

    def item(self, key: str = "errorCode") -> dict[str, Any]:
        return {"message": self.message, key: self.code, "fields": self.fields}


class MultipleMatches(Exception):
    def __init__(self, urls: list[str]) -> None:
        super().__init__("several records match")
        self.urls = urls


def _not_found() -> SfError:
    return SfError(404, "NOT_FOUND", "The requested resource does not exist")


@dataclass
class WriteContext:
    """One Salesforce transaction: its change events share a transactionKey."""

    version: str
    origin: str
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    transaction_key: str = field(default_factory=lambda: str(uuid.uuid4()))
    events: list[dict[str, Any]] = field(default_factory=list)


class SalesforceSandbox(Sandbox):
    name = "salesforce"
    daily_api_limit = 100_000

    def __init__(self, state_dir: Path | None) -> None:
        super().__init__(state_dir)
        self.store.db.executescript(EXTRA_SCHEMA)
        self.usage_lock = threading.Lock()
        usage = self.store.kv_get("sf_api_usage", {"day": "", "used": 0})
        self.usage_day, self.usage_used = usage["day"], usage["used"]
        self.token_cache: dict[str, float] = {}
        self.subscribers: list[dict[str, Any]] = list(self.store.kv_get("sf_subscribers", []))
        row = self.store.db.execute("SELECT max(replay_id) FROM sf_change_events").fetchone()
        self.last_replay_id = int(row[0] or self.store.kv_get("sf_replay_floor", 0) or 0)

    # Vendor shapes ----------------------------------------------------------------------------
    def error(self, status: int, message: str, *, code: str = "", field_name: str = "") -> Response:
        if not code:
            if message.startswith("malformed JSON"):
                code = "JSON_PARSER_ERROR"
            else:
                code = {
                    400: "FIELD_CUSTOM_VALIDATION_EXCEPTION",  # the reject fault: a validation rule
                    401: "INVALID_SESSION_ID",
                    403: "INSUFFICIENT_ACCESS",
                    404: "NOT_FOUND",
                    405: "METHOD_NOT_ALLOWED",
                    429: "REQUEST_LIMIT_EXCEEDED",
                    503: "SERVER_UNAVAILABLE",
                }.get(status, "UNKNOWN_EXCEPTION")
        if code == "NOT_FOUND" and message.startswith("the requested resource does not exist"):
            message = "The requested resource does not exist"
        fields = [field_name] if field_name else []
        return Response(status, [{"message": message, "errorCode": code, "fields": fields}])

    def unauthorised(self) -> Response:
        return Response(
            401,
            [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
            {"WWW-Authenticate": "Token"},
        )

    def rate_limited(self, retry_after: int) -> Response:
        # Salesforce throttles with 403, not 429. It documents no Retry-After; the sandbox sends
        # one so a test can see the connector carry it through (docs/sandboxes/salesforce.md).
        return Response(
            403,
            [
                {
                    "message": "ConcurrentRequests (Concurrent API Requests) Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED",
                }
            ],
            {"Retry-After": str(retry_after)},
        )

    def authorised(self, request: Request) -> bool:
        header = request.header("authorization")
        for scheme in ("Bearer ", "OAuth "):  # older clients send "OAuth <token>"
            if header.startswith(scheme):
                return self._token_valid(header.removeprefix(scheme))
        return False

    def _token_valid(self, token: str) -> bool:
        """Tokens live in the store (they survive a restart); valid ones are remembered in memory
        so that a busy integration does not cost a database read per call."""
        expires_at = self.token_cache.get(token)
        if expires_at is None:
            if not self.store.token_valid(token):
                return False
            with self.store.lock:
                row = self.store.db.execute("SELECT expires_at FROM tokens WHERE token = ?", (token,)).fetchone()
            expires_at = self.token_cache[token] = row[0] if row else 0.0
        return expires_at > time.time()

    def handle(self, request: Request) -> Response | None:
        counted = request.path.startswith("/services/data/v")
        if counted:
            limit = int(self.faults.setting("daily_api_limit") or self.daily_api_limit)
            used = self._count_call(limit)
            if used is None:
                response = Response(
                    403,
                    [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
                    {"Sforce-Limit-Info": f"api-usage={limit}/{limit}"},
                )
                return response
        response = super().handle(request)
        if response is not None and counted:
            response.headers["Sforce-Limit-Info"] = f"api-usage={used}/{limit}"
        return response

    def _count_call(self, limit: int) -> int | None:
        """Count one API call against the day's allowance; None when it is spent."""
        today = dt.datetime.now(dt.UTC).date().isoformat()
        with self.usage_lock:
            if self.usage_day != today:
                self.usage_day, self.usage_used = today, 0
            if self.usage_used >= limit:
                return None
            self.usage_used += 1
            used = self.usage_used
            if used % 25 == 1:  # kept across restarts, give or take the last few calls
                self.store.kv_set("sf_api_usage", {"day": self.usage_day, "used": used})
        return used

    # Routes -----------------------------------------------------------------------------------
    def setup_routes(self) -> None:
        self.route("POST", r"/services/oauth2/token", self.token, auth=False)
        self.route("GET", r"/services/data/?", self.versions, auth=False)
        self.api("GET", r"/?", self.resources)
        self.api("GET", r"/limits/?", self.limits)
        self.api("GET", r"/sobjects/?", self.describe_global)
        self.api("GET", r"/sobjects/(?P<sobject>[^/]+)/describe/?", self.describe)
        self.api("GET", r"/sobjects/(?P<sobject>[^/]+)/?", self.object_info)
        self.api("POST", r"/sobjects/(?P<sobject>[^/]+)/?", self.create)
        self.api("POST", r"/sobjects/(?P<sobject>[^/]+)/Id/?", self.create)
        for method in ("GET", "PATCH", "DELETE"):
            self.api(method, r"/sobjects/(?P<sobject>[^/]+)/(?P<ref>[^/]+)/?", self.by_id)
            self.api(method, r"/sobjects/(?P<sobject>[^/]+)/(?P<field>[^/]+)/(?P<value>[^/]+)/?", self.by_external_id)
        self.api("GET", r"/query/?", self.query)
        self.api("GET", r"/queryAll/?", self.query)
        self.api("GET", r"/query(?P<all>All)?/(?P<locator>01g[A-Za-z0-9]+)-(?P<offset>\d+)/?", self.query_more)
        self.api("POST", r"/composite/sobjects/?", self.collection_create)
        self.api("PATCH", r"/composite/sobjects/?", self.collection_update)
        self.api("DELETE", r"/composite/sobjects/?", self.collection_delete)
        self.api("PATCH", r"/composite/sobjects/(?P<sobject>[^/]+)/(?P<field>[^/]+)/?", self.collection_upsert)
        self.route("GET", r"/cometd/(?P<version>\d+\.\d)/pull/?", self.cdc_pull)
        self.route("POST", r"/_sandbox/subscribers", self.subscriber_add, auth=False)
        self.route("GET", r"/_sandbox/subscribers", self.subscriber_list, auth=False)
        self.route("DELETE", r"/_sandbox/subscribers", self.subscriber_clear, auth=False)
        self.route("POST", r"/_sandbox/certinia/billing-events", self.generate_billing_events, auth=False)

    def api(self, method: str, tail: str, handler: Callable[[Request], Response]) -> None:
        """A versioned REST resource: checks the version, unquotes path parts, answers SfError
        in Salesforce's shape."""

        def wrapped(request: Request) -> Response:
            version = request.params.get("version", "")
            try:
                major, _, minor = version.partition(".")
                if not (LOWEST_VERSION <= int(major) <= HIGHEST_VERSION and minor == "0"):
                    raise ValueError(version)
            except ValueError:
                return self.error(404, "The requested resource does not exist", code="NOT_FOUND")
            for name in ("sobject", "ref", "field", "value"):
                if name in request.params:
                    request.params[name] = unquote(request.params[name])
            try:
                return handler(request)
            except SfError as exc:
                return Response(exc.status, [exc.item()])
            except MultipleMatches as exc:
                return Response(300, exc.urls)
            except soql.SoqlError as exc:
                return Response(400, [{"message": exc.message, "errorCode": exc.code}])

        self.route(method, API + tail, wrapped)

    # Auth -------------------------------------------------------------------------------------
    def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        form.update({k: v[0] for k, v in request.query.items() if k not in form})
        grant = form.get("grant_type", "")
        if grant != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"})
        if not (
            hmac.compare_digest(form.get("client_id", ""), self.client_id)
            and hmac.compare_digest(form.get("client_secret", ""), self.client_secret)
        ):
            return Response(400, {"error": "invalid_client", "error_description": "invalid client credentials"})
        lifetime = float(self.faults.setting("token_lifetime_seconds") or self.token_lifetime)
        access_token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        with self.store.lock:
            self.store.db.execute(
                "INSERT INTO tokens (token, client_id, expires_at) VALUES (?, ?, ?)",
                (access_token, self.client_id, time.time() + lifetime),
            )
        instance_url = "http://" + (request.header("host") or "127.0.0.1")
        identity = f"{instance_url}/id/{ORG_ID}/{INTEGRATION_USER_ID}"
        issued_at = str(int(time.time() * 1000))
        # Salesforce signs id + issued_at with the client secret so the client can tell the answer
        # came from the org it trusts.
        signature = base64.b64encode(
            hmac.new(self.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
        ).decode()
        return Response(
            200,
            {
                "access_token": access_token,
                "signature": signature,
                "scope": "api",
                "instance_url": instance_url,
                "id": identity,
                "token_type": "Bearer",
                "issued_at": issued_at,
            },
        )

    # Discovery ---------------------------------------------------------------------------------
    def versions(self, request: Request) -> Response:
        return Response(
            200,
            [
                {"label": RELEASES.get(n, f"v{n}.0"), "url": f"/services/data/v{n}.0", "version": f"{n}.0"}
                for n in range(LOWEST_VERSION, HIGHEST_VERSION + 1)
            ],
        )

    def resources(self, request: Request) -> Response:
        base = f"/services/data/v{request.params['version']}"
        names = ("sobjects", "query", "queryAll", "composite", "limits")
        return Response(200, {name: f"{base}/{name}" for name in names})

    def limits(self, request: Request) -> Response:
        limit = int(self.faults.setting("daily_api_limit") or self.daily_api_limit)
        return Response(200, {"DailyApiRequests": {"Max": limit, "Remaining": max(0, limit - self.usage_used)}})

    def describe_global(self, request: Request) -> Response:
        base = f"/services/data/v{request.params['version']}/sobjects"
        return Response(
            200,
            {
                "encoding": "UTF-8",
                "maxBatchSize": COLLECTION_LIMIT,
                "sobjects": [
                    {
                        "name": o.name,
                        "label": o.label,
                        "keyPrefix": o.prefix,
                        "custom": o.custom,
                        "createable": o.name != "User",
                        "updateable": o.name != "User",
                        "queryable": True,
                        "urls": {"sobject": f"{base}/{o.name}", "describe": f"{base}/{o.name}/describe"},
                    }
                    for o in OBJECTS.values()
                ],
            },
        )

    def _object(self, request: Request) -> SObject:
        sobject = find_object(request.params["sobject"])
        if sobject is None:
            raise _not_found()
        return sobject

    def object_info(self, request: Request) -> Response:
        sobject = self._object(request)
        info = {"name": sobject.name, "label": sobject.label, "keyPrefix": sobject.prefix, "custom": sobject.custom}
        return Response(200, {"objectDescribe": info, "recentItems": []})

    def describe(self, request: Request) -> Response:
        """The object's fields as the org defines them now: standard, lookups, the custom fields
        the org has (schema.py), the external id fields, and any change made through
        /_sandbox/schema (a dropped field is gone, a required one is not nillable)."""
        sobject = self._object(request)
        declared = []
        for name in dict.fromkeys((*SYSTEM_FIELDS, "Name", *sobject.standard_fields, *sobject.references)):
            target = sobject.references.get(name)
            kind = "id" if name == "Id" else "reference" if target else "string"
            if name.endswith("Date") and not target:
                kind = "datetime" if name in SYSTEM_FIELDS else "date"
            declared.append(FieldDef(name, kind, name in sobject.required or name in SYSTEM_FIELDS))
        declared.extend(
            FieldDef(f.name, f.type, f.required or f.name in sobject.required, f.values) for f in sobject.custom_fields
        )
        declared.extend(FieldDef(name, "string") for name in sobject.external_id_fields)
        fields = []
        for f in self.schema_fields(sobject.name, declared):
            target = sobject.references.get(f.name)
            fields.append(
                {
                    "name": f.name,
                    "label": f.label or f.name.removesuffix("__c").removeprefix("pse__").replace("_", " "),
                    "type": f.type,
                    "nillable": not f.required,
                    "createable": f.name not in SYSTEM_FIELDS,
                    "updateable": f.name not in SYSTEM_FIELDS,
                    "custom": f.name.endswith("__c"),
                    "externalId": f.name in sobject.external_id_fields,
                    "unique": f.name == SYNC_KEY_FIELD,
                    "referenceTo": [target] if target else [],
                    "relationshipName": (f.name[:-3] + "__r" if f.name.endswith("__c") else f.name[:-2])
                    if target
                    else None,
                    "picklistValues": [
                        {"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
                        for v in f.values
                    ],
                }
            )
        return Response(
            200,
            {
                "name": sobject.name,
                "label": sobject.label,
                "keyPrefix": sobject.prefix,
                "custom": sobject.custom,
                "fields": fields,
            },
        )

    # Storage helpers (inside a transaction) ----------------------------------------------------
    @contextmanager
    def _transaction(self, request: Request) -> Iterator[tuple[Db, WriteContext]]:
        version = request.params.get("version", "62.0")
        client = ""
        for option in request.header("sforce-call-options").split(","):
            name, _, value = option.strip().partition("=")
            if name == "client":
                client = value
        origin = f"com/salesforce/api/rest/{version}" + (f";client={client}" if client else "")
        ctx = WriteContext(version=version, origin=origin)
        with self.store.transaction() as db:
            yield db, ctx
        self._push(ctx.events)

    def _load(self, db: Db, sobject: str, record_id: str) -> dict[str, Any] | None:
        row = db.execute("SELECT data FROM records WHERE object = ? AND id = ?", (sobject, record_id)).fetchone()
        return json.loads(row[0]) if row else None

    def _resolve(self, record_id: str) -> dict[str, Any] | None:
        """Any live record by its id (the key prefix names its object)."""
        if record_id == INTEGRATION_USER_ID:
            return INTEGRATION_USER
        full = normalise_id(record_id)
        sobject = OBJECTS_BY_PREFIX.get(record_id[:3]) if full else None
        if sobject is None:
            return None
        record = self.store.get(sobject.name, full)
        return record if record and not record.get("IsDeleted") else None

    def _serial(self, db: Db, name: str) -> int:
        row = db.execute(
            "INSERT INTO kv (name, value) VALUES (?, '1') "
            "ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + 1 RETURNING value",
            (name,),
        ).fetchone()
        return int(row[0])

    def _save(self, db: Db, sobject: SObject, record: dict[str, Any], *, created: bool) -> None:
        now = time.time()
        seq = self._serial(db, "seq")
        if created:
            db.execute(
                "INSERT INTO records (object, id, data, created_at, updated_at, seq) VALUES (?, ?, ?, ?, ?, ?)",
                (sobject.name, record["Id"], json.dumps(record), now, now, seq),
            )
        else:
            db.execute(
                "UPDATE records SET data = ?, updated_at = ?, seq = ? WHERE object = ? AND id = ?",
                (json.dumps(record), now, seq, sobject.name, record["Id"]),
            )
        db.execute("DELETE FROM sf_external_ids WHERE object = ? AND id = ?", (sobject.name, record["Id"]))
        if not record.get("IsDeleted"):
            for name in sobject.external_id_fields:
                if record.get(name) not in (None, ""):
                    db.execute(
                        "INSERT OR IGNORE INTO sf_external_ids (object, field, value, id) VALUES (?, ?, ?, ?)",
                        (sobject.name, name, str(record[name]), record["Id"]),
                    )

    def _matching(self, db: Db, sobject: SObject, field_name: str, value: str) -> list[str]:
        rows = db.execute(
            "SELECT id FROM sf_external_ids WHERE object = ? AND field = ? AND value = ? ORDER BY id",
            (sobject.name, field_name, value),
        ).fetchall()
        return [r[0] for r in rows]

    def _external_field(self, sobject: SObject, name: str) -> str:
        for known in sobject.external_id_fields:
            if known.lower() == name.lower():
                return known
        raise SfError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {name}")

    def _clean(self, db: Db, sobject: SObject, body: Any) -> dict[str, Any]:
        """The fields of a request body, checked the way Salesforce checks them."""
        if not isinstance(body, dict):
            raise SfError(400, "JSON_PARSER_ERROR", f"Can not deserialize SObject {sobject.name} from this JSON value")
        fields: dict[str, Any] = {}
        for name, value in body.items():
            if name == "attributes":
                continue
            if isinstance(value, dict):  # a lookup set by the parent's external id: "Account": {"Key__c": "A-1"}
                name, value = self._lookup_by_external_id(db, sobject, name, value)
            canonical = sobject.canonical_field(name)
            if canonical is None:
                raise SfError(
                    400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject.name}", [name]
                )
            if canonical in SYSTEM_FIELDS:
                raise SfError(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {canonical}. Please check the security settings of this field "
                    "and verify that it is read/write for your profile or permission set.",
                    [canonical],
                )
            if isinstance(value, list):
                raise SfError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of {canonical} from an array")
            target = sobject.references.get(canonical)
            if target is not None and value not in (None, ""):
                value = self._check_reference(sobject, canonical, target, value)
            fields[canonical] = value
        return fields

    def _lookup_by_external_id(self, db: Db, sobject: SObject, name: str, value: dict[str, Any]) -> tuple[str, str]:
        relation = sobject.relationship(name)
        if relation is None or relation[1] is None:
            raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject.name}", [name])
        lookup, target_name = relation
        target = OBJECTS[target_name]
        keys = [(k, v) for k, v in value.items() if k != "attributes"]
        if len(keys) != 1:
            raise SfError(400, "INVALID_FIELD", f"A foreign key by external id on {name} needs exactly one field")
        field_name = self._external_field(target, keys[0][0])
        ids = self._matching(db, target, field_name, str(keys[0][1]))
        if len(ids) != 1:
            raise SfError(
                400,
                "INVALID_FIELD",
                f"Foreign key external ID: {keys[0][1]} not found for field {field_name} in entity {target.name}",
                [lookup],
            )
        return lookup, ids[0]

    def _check_reference(self, sobject: SObject, field_name: str, target: str, value: Any) -> str:
        full = normalise_id(value) if isinstance(value, str) else None
        if full is None:
            raise SfError(
                400, "MALFORMED_ID", f"{sobject.label} {field_name}: id value of incorrect type: {value}", [field_name]
            )
        if target == "User":
            if not full.startswith("005"):
                raise SfError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [field_name])
            return full
        parent = self._resolve(full)
        if parent is None or not full.startswith(OBJECTS[target].prefix):
            raise SfError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [field_name])
        return full

    def _schema_changed(self, sobject: SObject, fields: dict[str, Any], *, creating: bool) -> None:
        """A write that breaks a schema change made through /_sandbox/schema fails as Salesforce
        fails it: a deleted field is an unknown column, a new required field is missing, a value
        taken off a restricted picklist is refused."""
        problem = self.schema_problem(sobject.name, fields, creating=creating)
        if problem is None:
            return
        name, kind, message = problem
        if kind == "dropped":
            raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject.name}", [name])
        if kind == "required":
            raise SfError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name])
        if kind == "value":
            raise SfError(
                400,
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                f"bad value for restricted picklist field: {fields[name]}",
                [name],
            )
        raise SfError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of {name}: {message}", [name])

    def _missing_required(self, sobject: SObject, record: dict[str, Any]) -> None:
        missing = [name for name in sobject.required if record.get(name) in (None, "")]
        if missing:
            raise SfError(
                400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )

    def _unique_key(self, db: Db, sobject: SObject, record: dict[str, Any]) -> None:
        value = record.get(SYNC_KEY_FIELD)
        if value in (None, ""):
            return
        others = [i for i in self._matching(db, sobject, SYNC_KEY_FIELD, str(value)) if i != record["Id"]]
        if others:
            raise SfError(
                400,
                "DUPLICATE_VALUE",
                f"duplicate value found: {SYNC_KEY_FIELD} duplicates value on record with id: {others[0]}",
                [SYNC_KEY_FIELD],
            )

    def _derive(self, sobject: SObject, record: dict[str, Any]) -> None:
        """Fields Salesforce computes."""
        if sobject.name == "Contact":
            record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)
        if sobject.name == "Opportunity":
            stage = str(record.get("StageName") or "")
            record["IsClosed"] = stage.startswith("Closed")
            record["IsWon"] = stage == "Closed Won"

    def _validation_rules(self, sobject: SObject, before: dict[str, Any] | None, record: dict[str, Any]) -> None:
        """Certinia's rules the sandbox enforces: a timecard covers one week, and a submitted or
        approved timecard only changes status."""
        if sobject.name != "pse__Timecard_Header__c":
            return
        start, end = parse_moment(record.get("pse__Start_Date__c")), parse_moment(record.get("pse__End_Date__c"))
        if start and end and (end - start).days != 6:
            raise SfError(
                400,
                "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                "A timecard covers one week: End Date must be 6 days after Start Date.",
                ["pse__End_Date__c"],
            )
        if before and before.get("pse__Status__c") in {"Submitted", "Approved"}:
            allowed = {"pse__Status__c", "pse__Submitted__c", "pse__Approved__c", "pse__Billed__c"}
            allowed |= {*SYSTEM_FIELDS}
            changed = {k for k in set(before) | set(record) if before.get(k) != record.get(k)} - allowed
            if changed:
                raise SfError(
                    400,
                    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                    f"This timecard is {before['pse__Status__c']} and can no longer be edited.",
                    sorted(changed),
                )

    def _event(
        self, db: Db, ctx: WriteContext, sobject: SObject, change_type: str, record_id: str, fields: dict[str, Any]
    ) -> None:
        # Opaque and gapped, as Salesforce's are; a rolled-back transaction leaves a gap too.
        self.last_replay_id += random.randint(1, 9)
        replay_id = self.last_replay_id
        commit_ms = int(ctx.now.timestamp() * 1000)
        header = {
            "entityName": sobject.name,
            "recordIds": [record_id],
            "changeType": change_type,
            "changeOrigin": ctx.origin,
            "transactionKey": ctx.transaction_key,
            "sequenceNumber": len(ctx.events) + 1,
            "commitTimestamp": commit_ms,
            "commitNumber": commit_ms * 1000 + replay_id % 1000,
            "commitUser": INTEGRATION_USER_ID,
            "changedFields": [k for k in fields if change_type == "UPDATE"],
            "diffFields": [],
            "nulledFields": [k for k, v in fields.items() if v is None and change_type == "UPDATE"],
        }
        schema = base64.urlsafe_b64encode(hashlib.sha256(sobject.name.encode()).digest()[:16]).decode().rstrip("=")
        message = {
            "data": {
                "schema": schema,
                "payload": {"ChangeEventHeader": header, **fields},
                "event": {"replayId": replay_id, "EventUuid": str(uuid.uuid4())},
            },
            "channel": f"/data/{sobject.change_event}",
        }
        db.execute(
            "INSERT INTO sf_change_events (replay_id, channel, at, data) VALUES (?, ?, ?, ?)",
            (replay_id, message["channel"], time.time(), json.dumps(message)),
        )
        ctx.events.append(message)

    # Writes (inside a transaction) -------------------------------------------------------------
    def _create(
        self, db: Db, ctx: WriteContext, sobject: SObject, body: Any, extra: dict[str, Any] | None = None
    ) -> str:
        if sobject.name == "User":
            raise SfError(400, "INSUFFICIENT_ACCESS", "The integration user may not create users")
        fields = {**self._clean(db, sobject, body), **(extra or {})}
        self._schema_changed(sobject, fields, creating=True)
        record_id = new_id(sobject.prefix, self._serial(db, f"sf_serial:{sobject.prefix}"))
        stamp = sf_datetime(ctx.now)
        record: dict[str, Any] = {
            "Id": record_id,
            "IsDeleted": False,
            "OwnerId": INTEGRATION_USER_ID,
            **fields,
            "CreatedDate": stamp,
            "CreatedById": INTEGRATION_USER_ID,
            "LastModifiedDate": stamp,
            "LastModifiedById": INTEGRATION_USER_ID,
            "SystemModstamp": stamp,
        }
        if sobject.auto_name and not record.get("Name"):
            record["Name"] = sobject.auto_name.format(self._serial(db, f"sf_autonumber:{sobject.prefix}"))
        self._derive(sobject, record)
        self._missing_required(sobject, record)
        self._unique_key(db, sobject, record)
        self._validation_rules(sobject, None, record)
        self._save(db, sobject, record, created=True)
        self._event(
            db,
            ctx,
            sobject,
            "CREATE",
            record_id,
            {k: v for k, v in record.items() if k not in {"Id", "IsDeleted"} and v is not None},
        )
        return record_id

    def _update(self, db: Db, ctx: WriteContext, sobject: SObject, record_id: str, body: Any) -> dict[str, Any]:
        before = self._load(db, sobject.name, record_id)
        if before is None:
            raise _not_found()
        if before.get("IsDeleted"):
            raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted")
        fields = self._clean(db, sobject, body)
        self._schema_changed(sobject, fields, creating=False)
        record = {**before, **fields}
        self._derive(sobject, record)
        self._missing_required(sobject, record)
        self._unique_key(db, sobject, record)
        self._validation_rules(sobject, before, record)
        changed = {k: record.get(k) for k in record if before.get(k) != record.get(k)}
        if not changed:
            return record  # nothing changed: no new LastModifiedDate, no change event
        stamp = sf_datetime(ctx.now)
        record.update(LastModifiedDate=stamp, SystemModstamp=stamp, LastModifiedById=INTEGRATION_USER_ID)
        self._save(db, sobject, record, created=False)
        self._event(db, ctx, sobject, "UPDATE", record_id, {**changed, "LastModifiedDate": stamp})
        return record

    def _delete(self, db: Db, ctx: WriteContext, sobject: SObject, record_id: str) -> None:
        record = self._load(db, sobject.name, record_id)
        if record is None:
            raise _not_found()
        if record.get("IsDeleted"):
            raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted")
        if sobject.name == "pse__Billing_Event__c" and record.get("pse__Invoiced__c"):
            raise SfError(400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", "An invoiced billing event cannot be deleted.")
        record["IsDeleted"] = True
        record["SystemModstamp"] = sf_datetime(ctx.now)
        self._save(db, sobject, record, created=False)
        self._event(db, ctx, sobject, "DELETE", record_id, {})

    def _upsert(
        self, db: Db, ctx: WriteContext, sobject: SObject, field_name: str, value: str, body: Any, *, update_only: bool
    ) -> tuple[str, bool]:
        if isinstance(body, dict):
            if "Id" in body:
                raise SfError(400, "INVALID_FIELD", "The Id field should not be specified in the sobject data.", ["Id"])
            in_body = next((v for k, v in body.items() if k.lower() == field_name.lower()), None)
            if in_body not in (None, value):
                raise SfError(
                    400,
                    "INVALID_FIELD",
                    f"The value of {field_name} in the body ({in_body}) differs from the one in the URL ({value}).",
                    [field_name],
                )
        ids = self._matching(db, sobject, field_name, value)
        if len(ids) > 1:
            raise MultipleMatches([f"/services/data/v{ctx.version}/sobjects/{sobject.name}/{i}" for i in ids])
        if ids:
            self._update(db, ctx, sobject, ids[0], body)
            return ids[0], False
        if update_only:
            raise SfError(404, "NOT_FOUND", f"No {sobject.name} has {field_name} = {value}, and updateOnly is set")
        return self._create(db, ctx, sobject, body, {field_name: value}), True

    # Record resources -------------------------------------------------------------------------
    def _journal_key(self, sobject: SObject, record: dict[str, Any] | None, fallback: str) -> str:
        key = (record or {}).get(SYNC_KEY_FIELD) or fallback
        return f"{sobject.name}/{key}"

    def create(self, request: Request) -> Response:
        sobject = self._object(request)
        body = request.json()
        try:
            with self._transaction(request) as (db, ctx):
                record_id = self._create(db, ctx, sobject, body)
        except SfError as exc:
            self.journal_write(request, exc.status, "", False)
            raise
        key = self._journal_key(sobject, body if isinstance(body, dict) else None, record_id)
        self.journal_write(request, 201, key, True)
        return Response(201, {"id": record_id, "success": True, "errors": []})

    def _record_view(
        self, sobject: SObject, record: dict[str, Any], version: str, fields: str | None
    ) -> dict[str, Any]:
        view = {
            "attributes": {
                "type": sobject.name,
                "url": f"/services/data/v{version}/sobjects/{sobject.name}/{record['Id']}",
            }
        }
        if fields:
            for name in fields.split(","):
                canonical = sobject.canonical_field(name.strip())
                if canonical is None:
                    raise SfError(
                        400, "INVALID_FIELD", f"No such column '{name.strip()}' on sobject of type {sobject.name}"
                    )
                view[canonical] = record.get(canonical)
        else:
            view.update({k: v for k, v in record.items()})
        return view

    def by_id(self, request: Request) -> Response:
        sobject = self._object(request)
        ref = request.params["ref"]
        if ref == "describe":
            return self.describe(request)
        record_id = normalise_id(ref)
        if record_id is None or not record_id.startswith(sobject.prefix):
            if request.method == "PATCH" and ref.lower() in (f.lower() for f in sobject.external_id_fields):
                raise SfError(404, "NOT_FOUND", f"Provided external ID field value is missing for {ref}")
            raise _not_found()
        if request.method == "GET":
            record = self.store.get(sobject.name, record_id)
            if record is None:
                raise _not_found()
            if record.get("IsDeleted"):
                raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted")
            return Response(200, self._record_view(sobject, record, request.params["version"], request.arg("fields")))
        if request.method == "PATCH":
            body = request.json()
            with self._transaction(request) as (db, ctx):
                record = self._update(db, ctx, sobject, record_id, body)
            self.journal_write(request, 204, self._journal_key(sobject, record, record_id), False)
            return Response(204)
        with self._transaction(request) as (db, ctx):
            record = self._load(db, sobject.name, record_id)
            self._delete(db, ctx, sobject, record_id)
        self.journal_write(request, 204, self._journal_key(sobject, record, record_id), False)
        return Response(204)

    def by_external_id(self, request: Request) -> Response:
        sobject = self._object(request)
        field_name = self._external_field(sobject, request.params["field"])
        value = request.params["value"]
        version = request.params["version"]
        if request.method == "GET":
            with self.store.lock:
                ids = self._matching(self.store.db, sobject, field_name, value)
            if not ids:
                raise SfError(
                    404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {value}"
                )
            if len(ids) > 1:
                raise MultipleMatches([f"/services/data/v{version}/sobjects/{sobject.name}/{i}" for i in ids])
            record = self.store.get(sobject.name, ids[0]) or {}
            return Response(200, self._record_view(sobject, record, version, request.arg("fields")))
        key = f"{sobject.name}/{value}"
        if request.method == "DELETE":
            with self._transaction(request) as (db, ctx):
                ids = self._matching(db, sobject, field_name, value)
                if len(ids) != 1:
                    raise _not_found() if not ids else MultipleMatches(ids)
                self._delete(db, ctx, sobject, ids[0])
            self.journal_write(request, 204, key, False)
            return Response(204)
        body = request.json()
        update_only = (request.arg("updateOnly") or "").lower() == "true"
        try:
            with self._transaction(request) as (db, ctx):
                record_id, created = self._upsert(db, ctx, sobject, field_name, value, body, update_only=update_only)
        except SfError as exc:
            self.journal_write(request, exc.status, key, False)
            raise
        status = 201 if created else 200
        self.journal_write(request, status, key, created)
        return Response(status, {"id": record_id, "success": True, "errors": [], "created": created})

    # sObject Collections ----------------------------------------------------------------------
    def _collection_body(self, request: Request) -> tuple[bool, list[Any]]:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise SfError(400, "JSON_PARSER_ERROR", 'The request body must be {"allOrNone": ..., "records": [...]}')
        if len(body["records"]) > COLLECTION_LIMIT:
            raise SfError(
                400,
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {COLLECTION_LIMIT} records into this call",
            )
        return bool(body.get("allOrNone")), body["records"]

    def _collection(
        self,
        request: Request,
        records: list[Any],
        all_or_none: bool,
        one: Callable[[Db, WriteContext, Any], tuple[dict[str, Any], str]],
    ) -> Response:
        """Run `one` per record in one transaction; roll every record back when allOrNone and one fails."""
        results: list[dict[str, Any]] = []
        keys: list[tuple[str, bool]] = []
        try:
            with self._transaction(request) as (db, ctx):
                for item in records:
                    db.execute("SAVEPOINT item")
                    pending = len(ctx.events)
                    try:
                        result, key = one(db, ctx, item)
                    except SfError as exc:
                        db.execute("ROLLBACK TO item")
                        del ctx.events[pending:]  # its change events were rolled back with it
                        # per-item errors say statusCode where top-level errors say errorCode
                        results.append({"success": False, "errors": [exc.item("statusCode")]})
                        keys.append(("", False))
                    else:
                        results.append(result)
                        keys.append((key, bool(result.get("created"))))
                    db.execute("RELEASE item")
                if all_or_none and any(not r["success"] for r in results):
                    raise _RollBack
        except _RollBack:
            rolled = {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": (
                    "Record rolled back because not all records were valid and the request was using AllOrNone header"
                ),
                "fields": [],
            }
            results = [r if not r["success"] else {"id": None, "success": False, "errors": [rolled]} for r in results]
            keys = []
        request.params["_journalled"] = "1"
        for key, created in keys:
            if key:
                self.store.journal_add(request.method, request.path, 200, key, created)
        return Response(200, results)

    def _typed(self, item: Any) -> SObject:
        kind = item.get("attributes", {}).get("type") if isinstance(item, dict) else None
        sobject = find_object(kind) if isinstance(kind, str) else None
        if sobject is None:
            raise SfError(400, "INVALID_TYPE", "Each record needs attributes.type naming an sObject type")
        return sobject

    def collection_create(self, request: Request) -> Response:
        all_or_none, records = self._collection_body(request)

        def one(db: Db, ctx: WriteContext, item: Any) -> tuple[dict[str, Any], str]:
            sobject = self._typed(item)
            if "Id" in item:
                raise SfError(400, "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
            record_id = self._create(db, ctx, sobject, item)
            return {"id": record_id, "success": True, "errors": []}, self._journal_key(sobject, item, record_id)

        return self._collection(request, records, all_or_none, one)

    def collection_update(self, request: Request) -> Response:
        all_or_none, records = self._collection_body(request)

        def one(db: Db, ctx: WriteContext, item: Any) -> tuple[dict[str, Any], str]:
            sobject = self._typed(item)
            record_id = normalise_id(str(item.get("Id", "")))
            if record_id is None:
                raise SfError(400, "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            record = self._update(db, ctx, sobject, record_id, {k: v for k, v in item.items() if k != "Id"})
            return {"id": record_id, "success": True, "errors": []}, self._journal_key(sobject, record, record_id)

        return self._collection(request, records, all_or_none, one)

    def collection_upsert(self, request: Request) -> Response:
        sobject = self._object(request)
        field_name = self._external_field(sobject, request.params["field"])
        all_or_none, records = self._collection_body(request)

        def one(db: Db, ctx: WriteContext, item: Any) -> tuple[dict[str, Any], str]:
            if self._typed(item) is not sobject:
                raise SfError(400, "INVALID_TYPE", f"Every record of this call must be a {sobject.name}")
            value = next((v for k, v in item.items() if k.lower() == field_name.lower()), None)
            if value in (None, ""):
                raise SfError(
                    400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{field_name}]", [field_name]
                )
            body = {k: v for k, v in item.items() if k.lower() != field_name.lower()}
            try:
                record_id, created = self._upsert(db, ctx, sobject, field_name, str(value), body, update_only=False)
            except MultipleMatches:
                raise SfError(
                    300, "DUPLICATE_EXTERNAL_ID", f"{field_name}: more than one record found for external id field"
                ) from None
            return {"id": record_id, "success": True, "errors": [], "created": created}, f"{sobject.name}/{value}"

        return self._collection(request, records, all_or_none, one)

    def collection_delete(self, request: Request) -> Response:
        ids = [i for i in (request.arg("ids") or "").split(",") if i]
        if not ids:
            raise SfError(400, "MISSING_ARGUMENT", "ids not specified", ["ids"])
        if len(ids) > COLLECTION_LIMIT:
            raise SfError(400, "EXCEEDED_ID_LIMIT", f"cannot delete more than {COLLECTION_LIMIT} records in one call")
        all_or_none = (request.arg("allOrNone") or "").lower() == "true"

        def one(db: Db, ctx: WriteContext, raw: Any) -> tuple[dict[str, Any], str]:
            record_id = normalise_id(raw)
            sobject = OBJECTS_BY_PREFIX.get(raw[:3]) if record_id else None
            if sobject is None or record_id is None:
                raise SfError(400, "MALFORMED_ID", f"malformed id {raw}", ["Id"])
            record = self._load(db, sobject.name, record_id)
            self._delete(db, ctx, sobject, record_id)
            return {"id": record_id, "success": True, "errors": []}, self._journal_key(sobject, record, record_id)

        return self._collection(request, ids, all_or_none, one)

    # SOQL -------------------------------------------------------------------------------------
    def _batch_size(self, request: Request) -> int:
        for option in request.header("sforce-query-options").split(","):
            name, _, value = option.strip().partition("=")
            if name.lower() == "batchsize" and value.isdigit():
                # Salesforce treats 200..2000 as a hint; the sandbox honours any positive size
                # exactly, so tests can page through a handful of records.
                return max(1, min(int(value), DEFAULT_BATCH_SIZE))
        return DEFAULT_BATCH_SIZE

    def query(self, request: Request) -> Response:
        text = request.arg("q")
        if not text:
            raise SfError(400, "MALFORMED_QUERY", "A query string has to be specified")
        parsed = soql.parse(text)
        include_deleted = request.path.rstrip("/").endswith("queryAll")
        records = [r for r in self.store.all(parsed.sobject.name) if include_deleted or not r.get("IsDeleted")]
        cache: dict[str, dict[str, Any] | None] = {}

        def resolve(record_id: str) -> dict[str, Any] | None:
            if record_id not in cache:
                cache[record_id] = self._resolve(record_id)
            return cache[record_id]

        rows = soql.run(parsed, records, resolve)
        if parsed.count_only:
            return Response(200, {"totalSize": len(rows), "done": True, "records": []})
        spec = {
            "object": parsed.sobject.name,
            "fields": parsed.fields,
            "ids": [r["Id"] for r in rows],
            "batch": self._batch_size(request),
            "all": include_deleted,
        }
        return Response(200, self._page(spec, 0, request.params["version"], rows=rows, resolve=resolve))

    def query_more(self, request: Request) -> Response:
        locator = request.params["locator"]
        with self.store.lock:
            row = self.store.db.execute("SELECT data FROM sf_query_locators WHERE locator = ?", (locator,)).fetchone()
        if row is None:
            raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        spec = json.loads(row[0])
        offset = int(request.params["offset"])
        sobject = OBJECTS[spec["object"]]
        chunk = spec["ids"][offset : offset + spec["batch"]]
        rows = [r for r in (self.store.get(sobject.name, i) for i in chunk) if r is not None]
        return Response(200, self._page(spec, offset, request.params["version"], rows=rows, resolve=self._resolve))

    def _page(
        self,
        spec: dict[str, Any],
        offset: int,
        version: str,
        *,
        rows: list[dict[str, Any]],
        resolve: soql.Resolve,
    ) -> dict[str, Any]:
        """One batch from `offset`; `rows` holds at least that batch's records in order."""
        sobject = OBJECTS[spec["object"]]
        batch = spec["batch"]
        page_rows = rows[offset : offset + batch] if len(rows) == len(spec["ids"]) else rows[:batch]
        total = len(spec["ids"])
        answer: dict[str, Any] = {
            "totalSize": total,
            "done": offset + batch >= total,
            "records": [self._render(sobject, r, spec["fields"], version, resolve) for r in page_rows],
        }
        if not answer["done"]:
            locator = spec.get("locator")
            if locator is None:
                locator = "01g" + "".join(
                    random.choices("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", k=15)
                )
                spec["locator"] = locator
                with self.store.lock:
                    self.store.db.execute(
                        "INSERT INTO sf_query_locators (locator, at, data) VALUES (?, ?, ?)",
                        (locator, time.time(), json.dumps(spec)),
                    )
                    # Salesforce keeps a limited number of open cursors; so do we.
                    self.store.db.execute(
                        "DELETE FROM sf_query_locators WHERE locator NOT IN "
                        "(SELECT locator FROM sf_query_locators ORDER BY at DESC LIMIT 500)"
                    )
            answer["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{offset + batch}"
        return answer

    def _render(
        self, sobject: SObject, record: dict[str, Any], fields: list[str], version: str, resolve: soql.Resolve
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {
                "type": sobject.name,
                "url": f"/services/data/v{version}/sobjects/{sobject.name}/{record['Id']}",
            }
        }
        for name in fields:
            if name.startswith("FIELDS("):
                wanted = name[7:-1]
                for key, value in record.items():
                    custom = key.endswith("__c")
                    if wanted == "ALL" or (wanted == "CUSTOM") == custom:
                        out[key] = value
                continue
            if "." not in name:
                out[name] = record.get(name)
                continue
            relationship, child = name.split(".", 1)
            relation = sobject.relationship(relationship)
            parent_id = record.get(relation[0]) if relation else None
            parent = resolve(parent_id) if isinstance(parent_id, str) else None
            if parent is None:
                out[relationship] = None
                continue
            parent_type = OBJECTS_BY_PREFIX[parent["Id"][:3]].name if parent["Id"][:3] in OBJECTS_BY_PREFIX else "User"
            parent_url = f"/services/data/v{version}/sobjects/{parent_type}/{parent['Id']}"
            nested = out.get(relationship) or {"attributes": {"type": parent_type, "url": parent_url}}
            nested[child] = soql.field_value(parent, child, sobject, resolve)
            out[relationship] = nested
        return out

    # Change Data Capture ----------------------------------------------------------------------
    def cdc_pull(self, request: Request) -> Response:
        channel = request.arg("channel", ALL_CHANGES) or ALL_CHANGES
        try:
            replay_from = int(request.arg("replayId", "-1") or "-1")
            limit = max(1, min(int(request.arg("limit", "200") or "200"), 1000))
        except ValueError:
            return Response(
                400, [{"message": "replayId and limit must be whole numbers", "errorCode": "INVALID_REPLAY_ID"}]
            )
        with self.store.lock:
            db = self.store.db
            cutoff = time.time() - CDC_RETENTION_SECONDS
            expired = db.execute("SELECT max(replay_id) FROM sf_change_events WHERE at < ?", (cutoff,)).fetchone()[0]
            if expired:
                db.execute("DELETE FROM sf_change_events WHERE at < ?", (cutoff,))
                self.store.kv_set("sf_replay_floor", max(expired, int(self.store.kv_get("sf_replay_floor", 0) or 0)))
            latest = db.execute("SELECT max(replay_id) FROM sf_change_events").fetchone()[0]
            latest = latest or int(self.store.kv_get("sf_replay_floor", 0) or 0)
            if replay_from == -1:  # only new events: nothing now, and where "now" is
                return Response(200, {"channel": channel, "messages": [], "latestReplayId": latest})
            after = 0 if replay_from == -2 else replay_from
            query = "SELECT data FROM sf_change_events WHERE replay_id > ?"
            params: list[Any] = [after]
            if channel != ALL_CHANGES:
                query += " AND channel = ?"
                params.append(channel)
            rows = db.execute(query + " ORDER BY replay_id LIMIT ?", (*params, limit)).fetchall()
        messages = [json.loads(r[0]) for r in rows]
        last = messages[-1]["data"]["event"]["replayId"] if messages else max(after, 0)
        return Response(
            200, {"channel": channel, "messages": messages, "latestReplayId": max(last, 0) if messages else latest}
        )

    def _subscribers(self) -> list[dict[str, Any]]:
        return list(self.subscribers)

    def _subscribers_save(self, subscribers: list[dict[str, Any]]) -> None:
        self.subscribers = subscribers
        self.store.kv_set("sf_subscribers", subscribers)

    def subscriber_add(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not body.get("url") or not str(body.get("secret", "")).startswith("whsec_"):
            raise BadRequest(
                'a subscriber is {"url": "...", "secret": "whsec_<base64>", "channel": "/data/ChangeEvents"}'
            )
        subscribers = [s for s in self._subscribers() if s["url"] != body["url"]]
        subscribers.append(
            {"url": body["url"], "secret": body["secret"], "channel": body.get("channel") or ALL_CHANGES}
        )
        self._subscribers_save(subscribers)
        return Response(200, {"subscribers": len(subscribers)})

    def subscriber_list(self, request: Request) -> Response:
        return Response(200, {"subscribers": [{"url": s["url"], "channel": s["channel"]} for s in self._subscribers()]})

    def subscriber_clear(self, request: Request) -> Response:
        self._subscribers_save([])
        return Response(200, {"subscribers": 0})

    def _push(self, events: list[dict[str, Any]]) -> None:
        """Send each committed change event to the subscribers, signed the Standard Webhooks way."""
        if not events:
            return
        subscribers = self._subscribers()
        for message in events:
            body = json.dumps(message).encode()
            msg_id = "msg_" + message["data"]["event"]["EventUuid"]
            for subscriber in subscribers:
                if subscriber["channel"] not in (ALL_CHANGES, message["channel"]):
                    continue
                timestamp = int(time.time())
                key = base64.b64decode(subscriber["secret"].removeprefix("whsec_") + "==")
                digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
                headers = {
                    "content-type": "application/json",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": "v1," + base64.b64encode(digest).decode(),
                }
                self.notify(subscriber["url"], body, headers)

    # Certinia PSA billing ----------------------------------------------------------------------
    def generate_billing_events(self, request: Request) -> Response:
        """What PSA's billing run does: approved, billable, unbilled time, expenses and milestones
        of a project become one billing event with an item per source record."""
        body = request.json() or {}
        project_filter = body.get("project") if isinstance(body, dict) else None
        # The business day the run is for (a simulated firm runs billing in the past); default today.
        run_date = str(body.get("date") or "")[:10] if isinstance(body, dict) else ""
        created: list[str] = []
        request.params.setdefault("version", "62.0")
        with self._transaction(request) as (db, ctx):
            sources: dict[str, list[tuple[SObject, dict[str, Any], dict[str, Any]]]] = {}
            for name in ("pse__Timecard_Header__c", "pse__Expense__c", "pse__Milestone__c"):
                sobject = OBJECTS[name]
                for row in db.execute("SELECT data FROM records WHERE object = ? ORDER BY seq", (name,)).fetchall():
                    record = json.loads(row[0])
                    project = record.get("pse__Project__c")
                    if (
                        record.get("IsDeleted")
                        or record.get("pse__Billed__c")
                        or record.get("pse__Status__c") != "Approved"
                    ):
                        continue
                    if name != "pse__Milestone__c" and record.get("pse__Billable__c") is False:
                        continue
                    if not project or (project_filter and project != project_filter):
                        continue
                    sources.setdefault(project, []).append((sobject, record, self._billing_item(db, sobject, record)))
            for project, items in sources.items():
                event_id = self._create(
                    db,
                    ctx,
                    OBJECTS["pse__Billing_Event__c"],
                    {
                        "pse__Project__c": project,
                        "pse__Date__c": run_date or ctx.now.date().isoformat(),
                        "pse__Status__c": "Draft",
                        "pse__Is_Released__c": False,
                        "pse__Invoiced__c": False,
                        "pse__Summary_Amount__c": round(sum(item["pse__Amount__c"] for _, _, item in items), 2),
                    },
                )
                for sobject, record, item in items:
                    self._create(
                        db, ctx, OBJECTS["pse__Billing_Event_Item__c"], {**item, "pse__Billing_Event__c": event_id}
                    )
                    self._update(db, ctx, sobject, record["Id"], {"pse__Billed__c": True})
                created.append(event_id)
        return Response(200, {"billingEvents": created})

    def _billing_item(self, db: Db, sobject: SObject, record: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = {"pse__Project__c": record["pse__Project__c"], "pse__Object_Id__c": record["Id"]}
        if sobject.name == "pse__Timecard_Header__c":
            days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
            hours = sum(float(record.get(f"pse__{d}_Hours__c") or 0) for d in days)
            assignment = self._load(db, "pse__Assignment__c", record.get("pse__Assignment__c") or "") or {}
            rate = float(assignment.get("pse__Bill_Rate__c") or 0)
            item.update(pse__Category__c="Timecard", pse__Quantity__c=hours, pse__Unit_Price__c=rate)
            item.update(pse__Date__c=record.get("pse__End_Date__c"), pse__Amount__c=round(hours * rate, 2))
        elif sobject.name == "pse__Expense__c":
            amount = float(record.get("pse__Amount__c") or 0)
            item.update(
                pse__Category__c="Expense", pse__Quantity__c=1, pse__Unit_Price__c=amount, pse__Amount__c=amount
            )
            item.update(pse__Date__c=record.get("pse__Expense_Date__c"), pse__Expense__c=record["Id"])
            if record.get("CurrencyIsoCode"):  # an expense incurred in another currency keeps it
                item["CurrencyIsoCode"] = record["CurrencyIsoCode"]
        else:
            amount = float(record.get("pse__Milestone_Amount__c") or 0)
            item.update(
                pse__Category__c="Milestone", pse__Quantity__c=1, pse__Unit_Price__c=amount, pse__Amount__c=amount
            )
            item.update(pse__Date__c=record.get("pse__Actual_Date__c") or record.get("pse__Target_Date__c"))
            item["pse__Milestone__c"] = record["Id"]
        return item

    # Control ------------------------------------------------------------------------------------
    def _reset(self, request: Request) -> Response:
        answer = super()._reset(request)
        with self.store.transaction() as db:
            for table in ("sf_external_ids", "sf_change_events", "sf_query_locators"):
                db.execute(f"DELETE FROM {table}")  # noqa: S608  # nosec B608  # fixed table names
        with self.usage_lock:
            self.usage_day, self.usage_used = "", 0
        self.token_cache.clear()
        self.subscribers = []
        self.last_replay_id = 0
        return answer


class _RollBack(Exception):
    """allOrNone: undo the whole collection call."""


def serve(*, port: int, state_dir: Path | None, host: str = "127.0.0.1") -> None:
    base_serve(SalesforceSandbox(state_dir), port=port, host=host)
