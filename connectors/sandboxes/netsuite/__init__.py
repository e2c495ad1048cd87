"""Oracle NetSuite REST web services (SuiteTalk REST), simulated: customers, projects, invoices.

Speaks the protocol of VENDOR_APIS.md section 4 over HTTP, with its own SQLite store under
`state_dir` (so it survives a restart). It imports nothing of pscsync.

  POST /services/rest/auth/oauth2/v1/token      OAuth 2.0 client credentials (M2M) with a signed JWT
                                                client assertion, verified for real against the
                                                certificate's public key (keys.py)
  GET    /services/rest/record/v1/{type}        collection: {links, count, hasMore, items, offset,
                                                totalResults}; limit (1-1000), offset, q= filter
  POST   /services/rest/record/v1/{type}        create -> 204 + Location: .../{type}/{id}
  GET    /services/rest/record/v1/{type}/{ref}  one record; ref is an internal id or eid:<externalId>;
                                                fields=a,b; expandSubResources=true shows sublists
  PATCH  /services/rest/record/v1/{type}/{ref}  update -> 204
  PUT    /services/rest/record/v1/{type}/eid:X  upsert by external id -> 204 + Location
  DELETE /services/rest/record/v1/{type}/{ref}  -> 204; an invoice with a payment applied is refused
                                                (400: it has dependent records)
  POST   /services/rest/record/v1/salesOrder/{id}/!transform/invoice  bill a sales order
  POST   /services/rest/query/v1/suiteql        SuiteQL subset (suiteql.py), Prefer: transient
  GET    /services/rest/system/v1/governanceLimits
  GET    /services/rest/record/v1/metadata-catalog/{type}   the record's JSON schema (Accept:
                                                application/schema+json): properties with type,
                                                format, enum and nullable, and `required`

Record types (names case-insensitive): customer, job (project), projectTask, salesOrder, invoice,
customerPayment, billingSchedule; read-mostly reference data seeded on start: subsidiary,
currency, serviceItem, account. Subsidiary 3 (Acme Consulting Inc.) allows only USD and CAD, so a
JPY customer there is the finance-recognisable validation error.

Exchange rates (connectors/sandboxes/fx.py, the same market as the Business Central sandbox):
SuiteQL tables `currencyrate` (daily: basecurrency USD, transactioncurrency GBP/EUR/CAD,
exchangerate, effectivedate), `accountingperiod` (months) and `consolidatedexchangerate`
(OneWorld: Acme Consulting Ltd.'s GBP → the parent's USD per period: averagerate, currentrate,
historicalrate). POST /_sandbox/rates replaces the market with a test's table.

Errors: {"type", "title", "status", "o:errorDetails": [{"detail", "o:errorCode", "o:errorPath"?}]}.
An account-wide concurrency limit (15 requests in flight, as a shared-tier account with one
SuiteCloud Plus licence) answers 429 CONCURRENCY_LIMIT_EXCEEDED beyond it.

Invoices follow approval routing: a new invoice is Pending Approval (approvalStatus 1, status D)
unless it is written with approvalStatus 2 (Approved); PATCH approvalStatus to approve (status A
Open) or reject (E). A payment's apply lines lower amountRemaining; at zero the status is B Paid In
Full (a partly paid invoice stays Open). The due date defaults to the date + 30 days (Net 30).

Sandbox-only settings, sent as rules to /_sandbox/faults:
  {"concurrency_limit": 2}             lower (or raise) the account's concurrency limit
  {"require_prefer_transient": false}  accept SuiteQL without the Prefer: transient header
  {"invoice_approval": false}          no approval routing: every saved invoice is Open (posted)
Sandbox-only action (NetSuite's Void button; REST has none):
  POST /_sandbox/void/invoice/{id}     void an invoice: status V Voided, nothing remaining
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from connectors.sandboxes import fx
from connectors.sandboxes.base import BadRequest, FieldDef, Request, Response, Sandbox
from connectors.sandboxes.base import serve as serve_sandbox
from connectors.sandboxes.netsuite import jws, suiteql
from connectors.sandboxes.netsuite.keys import DEMO_CERTIFICATE_ID, DEMO_CLIENT_ID, DEMO_PUBLIC_KEY_PEM

REST = "/services/rest"
RECORD = f"{REST}/record/v1"
TOKEN_PATH = f"{REST}/auth/oauth2/v1/token"
SUITEQL_PATH = f"{REST}/query/v1/suiteql"
# SuiteQL tables computed from the sandbox's currency market (connectors/sandboxes/fx.py), read-only.
RATE_TABLES = ("currencyrate", "accountingperiod", "consolidatedexchangerate")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIMIT = 1000
DEFAULT_CONCURRENCY_LIMIT = 15
MAX_ASSERTION_SECONDS = 3600  # NetSuite refuses assertions valid for more than an hour
CLOCK_SKEW_SECONDS = 60
ACCESS_TOKEN_SECONDS = 3600
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_\-.]{1,255}$")
READ_ONLY = {"id", "links", "refName", "dateCreated", "lastModifiedDate", "total", "amountRemaining", "status"}
# Invoice approval routing is on (as in most firms): approvalStatus 1 Pending Approval, 2 Approved,
# 3 Rejected; only an approved invoice posts. The invoice's own status, a select field {id, refName}.
APPROVAL = {"1": "Pending Approval", "2": "Approved", "3": "Rejected"}
INVOICE_STATUS = {
    "open": {"id": "A", "refName": "Open"},
    "paid": {"id": "B", "refName": "Paid In Full"},
    "pending": {"id": "D", "refName": "Pending Approval"},
    "rejected": {"id": "E", "refName": "Rejected"},
    "voided": {"id": "V", "refName": "Voided"},
}
PAYMENT_TERMS_DAYS = 30  # Net 30, the seeded customers' terms: the due date when none is given


@dataclass(frozen=True)
class RecordType:
    """One NetSuite record type: what it refers to, what it requires, how it numbers itself."""

    name: str  # as NetSuite writes it in URLs (salesOrder)
    label: str  # as a person reads it in messages
    family: str  # internal ids are shared by entities, by transactions, else per type
    references: dict[str, str] = field(default_factory=dict)  # field -> record type
    sublists: dict[str, dict[str, str]] = field(default_factory=dict)  # sublist -> {line field -> type}
    required: tuple[str, ...] = ()
    number_field: str = ""  # entityId / tranId, generated when not given
    number_prefix: str = ""
    suiteql_type: str = ""  # the `type` column in the SuiteQL transaction table


TYPES: dict[str, RecordType] = {
    t.name.lower(): t
    for t in (
        RecordType(
            "customer",
            "customer",
            "entity",
            {"subsidiary": "subsidiary", "currency": "currency", "parent": "customer"},
            required=("subsidiary",),
            number_field="entityId",
            number_prefix="CUST",
        ),
        RecordType(
            "job",
            "project",
            "entity",
            {"parent": "customer", "subsidiary": "subsidiary", "currency": "currency"},
            required=("companyName", "parent", "subsidiary"),
            number_field="entityId",
            number_prefix="PRJ",
        ),
        RecordType("projectTask", "project task", "projecttask", {"project": "job"}, required=("title", "project")),
        RecordType(
            "salesOrder",
            "sales order",
            "transaction",
            {"entity": "customer", "subsidiary": "subsidiary", "currency": "currency", "job": "job"},
            {"item": {"item": "serviceItem"}},
            required=("entity",),
            number_field="tranId",
            number_prefix="SO",
            suiteql_type="SalesOrd",
        ),
        RecordType(
            "invoice",
            "invoice",
            "transaction",
            {"entity": "customer", "subsidiary": "subsidiary", "currency": "currency", "job": "job"},
            {"item": {"item": "serviceItem"}},
            required=("entity",),
            number_field="tranId",
            number_prefix="INV",
            suiteql_type="CustInvc",
        ),
        RecordType(
            "customerPayment",
            "customer payment",
            "transaction",
            {"customer": "customer", "currency": "currency", "account": "account", "subsidiary": "subsidiary"},
            {"apply": {"doc": "invoice"}},
            required=("customer", "payment"),
            number_field="tranId",
            number_prefix="PYMT",
            suiteql_type="CustPymt",
        ),
        RecordType("billingSchedule", "billing schedule", "billingschedule", required=("name",)),
        RecordType("subsidiary", "subsidiary", "subsidiary", {"currency": "currency"}, required=("name",)),
        RecordType("currency", "currency", "currency", required=("symbol",)),
        RecordType("serviceItem", "service item", "item", required=("itemId",)),
        RecordType("account", "account", "account", required=("acctName",)),
    )
}


def _fields(*specs: str, required: tuple[str, ...] = ()) -> tuple[FieldDef, ...]:
    """ "name:type" (JSON schema types; date = string with format date; ref = a record link)."""
    out = []
    for spec in specs:
        name, _, kind = spec.partition(":")
        out.append(FieldDef(name, kind or "string", name in required))
    return tuple(out)


# The fields the metadata catalog describes per record type (standard ones and the account's custom
# fields the demo firm's mappings write). Writes of other fields are still stored as before.
FIELDS: dict[str, tuple[FieldDef, ...]] = {
    "customer": _fields(
        "id",
        "entityId",
        "externalId",
        "companyName",
        "isPerson:boolean",
        "subsidiary:ref",
        "currency:ref",
        "parent:ref",
        "email",
        "accountNumber",
        "custentity_tax_code",
        "custentity_sf_account_id",
        "dateCreated:datetime",
        "lastModifiedDate:datetime",
        required=("subsidiary",),
    ),
    "salesorder": _fields(
        "id",
        "tranId",
        "externalId",
        "entity:ref",
        "subsidiary:ref",
        "currency:ref",
        "job:ref",
        "tranDate:date",
        "startDate:date",
        "endDate:date",
        "memo",
        "otherRefNum",
        "item:object",
        "total:number",
        "custbody_department",
        "custbody_billing_model",
        "custbody_rev_method",
        "custbody_contract_version:integer",
        "custbody_sf_opportunity",
        "lastModifiedDate:datetime",
        required=("entity",),
    ),
    "invoice": _fields(
        "id",
        "tranId",
        "externalId",
        "entity:ref",
        "subsidiary:ref",
        "currency:ref",
        "job:ref",
        "tranDate:date",
        "dueDate:date",
        "memo",
        "item:object",
        "total:number",
        "amountRemaining:number",
        "approvalStatus:ref",
        "status:ref",
        "custbody_psa_batch",
        "custbody_project_key",
        "lastModifiedDate:datetime",
        required=("entity",),
    ),
}


# Reference data every account has: the firm's subsidiaries, currencies, items and bank accounts.
SEED: list[tuple[str, str, dict[str, Any]]] = [
    ("currency", "1", {"name": "US Dollar", "symbol": "USD"}),
    ("currency", "2", {"name": "British pound", "symbol": "GBP"}),
    ("currency", "3", {"name": "Canadian Dollar", "symbol": "CAD"}),
    ("currency", "4", {"name": "Euro", "symbol": "EUR"}),
    ("currency", "5", {"name": "Japanese yen", "symbol": "JPY"}),
    ("subsidiary", "1", {"name": "Parent Company", "currency": {"id": "1"}, "currencies": ["1", "2", "3", "4", "5"]}),
    ("subsidiary", "2", {"name": "Acme Consulting Ltd.", "currency": {"id": "2"}, "currencies": ["2", "4", "1"]}),
    ("subsidiary", "3", {"name": "Acme Consulting Inc.", "currency": {"id": "1"}, "currencies": ["1", "3"]}),
    ("serviceitem", "55", {"itemId": "Consulting Services", "rate": 150.0}),
    ("serviceitem", "56", {"itemId": "Fixed Fee Milestone", "rate": 0.0}),
    ("serviceitem", "57", {"itemId": "Expense Rebill", "rate": 0.0}),
    ("account", "1", {"acctName": "Checking", "acctNumber": "1000"}),
    ("account", "2", {"acctName": "Undeposited Funds", "acctNumber": "1100"}),
]


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _label(field_name: str) -> str:
    """companyName -> Company Name, as NetSuite names fields in its messages."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", field_name).title()


class NetSuiteSandbox(Sandbox):
    name = "netsuite"
    client_id = DEMO_CLIENT_ID

    def __init__(self, state_dir: Path | None) -> None:
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        # Certificates mapped in "OAuth 2.0 Client Credentials (M2M) Setup": id -> (client id, public key).
        self.certificates = {DEMO_CERTIFICATE_ID: (DEMO_CLIENT_ID, DEMO_PUBLIC_KEY_PEM)}
        super().__init__(state_dir)
        self._seed()

    def setup_routes(self) -> None:
        # Before the record routes: metadata-catalog/{type} would otherwise read as a record.
        self.route("GET", rf"{RECORD}/metadata-catalog/(?P<type>[^/]+)", self.metadata_catalog)
        self.route("POST", TOKEN_PATH, self.token, auth=False)
        self.route("POST", SUITEQL_PATH, self.suiteql)
        self.route("GET", f"{REST}/system/v1/governanceLimits", self.governance_limits)
        self.route("POST", r"/_sandbox/rates", lambda request: fx.rates_set(self.store, request), auth=False)
        self.route("DELETE", r"/_sandbox/rates", lambda request: fx.rates_clear(self.store, request), auth=False)
        self.route("POST", rf"{RECORD}/(?P<type>[^/!]+)/(?P<ref>[^/]+)/!transform/(?P<target>[^/]+)", self.transform)
        self.route("GET", rf"{RECORD}/(?P<type>[^/]+)", self.list_records)
        self.route("POST", rf"{RECORD}/(?P<type>[^/]+)", self.create)
        self.route("GET", rf"{RECORD}/(?P<type>[^/]+)/(?P<ref>[^/]+)", self.get_record)
        self.route("PATCH", rf"{RECORD}/(?P<type>[^/]+)/(?P<ref>[^/]+)", self.update)
        self.route("PUT", rf"{RECORD}/(?P<type>[^/]+)/(?P<ref>[^/]+)", self.upsert)
        self.route("DELETE", rf"{RECORD}/(?P<type>[^/]+)/(?P<ref>[^/]+)", self.delete)
        self.route("POST", r"/_sandbox/void/invoice/(?P<ref>\d+)", self.void_invoice, auth=False)

    # The vendor's error shape ------------------------------------------------------------------
    def error(self, status: int, message: str, *, code: str = "", field_name: str = "") -> Response:
        defaults = {400: "USER_ERROR", 401: "INVALID_LOGIN", 403: "INSUFFICIENT_PERMISSION", 404: "NONEXISTENT_ID"}
        code = {"NOT_FOUND": "NONEXISTENT_ID"}.get(code, code)
        code = code or defaults.get(status) or ("UNEXPECTED_ERROR" if status >= 500 else "USER_ERROR")
        section = {400: "15.5.1", 401: "15.5.2", 403: "15.5.4", 404: "15.5.5", 405: "15.5.6", 429: ""}.get(status)
        detail: dict[str, Any] = {"detail": message, "o:errorCode": code}
        if field_name:
            detail["o:errorPath"] = field_name
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        if section is None:
            section = "15.6.1" if status >= 500 else "15.5.1"
        kind = (
            f"https://www.rfc-editor.org/rfc/rfc9110.html#section-{section}"
            if section
            else "https://www.rfc-editor.org/rfc/rfc6585.html#section-4"
        )
        return Response(status, {"type": kind, "title": title, "status": status, "o:errorDetails": [detail]})

    def unauthorised(self) -> Response:
        response = self.error(
            401,
            "Invalid login attempt. For more details, see the Login Audit Trail in the NetSuite UI at "
            "Setup > Users/Roles > User Management > View Login Audit Trail.",
            code="INVALID_LOGIN",
        )
        response.headers["WWW-Authenticate"] = (
            'Bearer realm="1234567_SB1", error="invalid_token", error_description="Invalid login attempt."'
        )
        return response

    def rate_limited(self, retry_after: int) -> Response:
        response = self.error(
            429,
            "The request could not be processed because the request limit for this account has been exceeded. "
            "Wait and retry the request.",
            code="REQUEST_LIMIT_EXCEEDED",
        )
        response.headers["Retry-After"] = str(retry_after)
        return response

    def concurrency_exceeded(self, limit: int) -> Response:
        response = self.error(
            429,
            f"Concurrent request limit exceeded: this account allows {limit} requests at a time. "
            "Retry the request when others have finished.",
            code="CONCURRENCY_LIMIT_EXCEEDED",
        )
        response.headers["Retry-After"] = "1"
        return response

    # Dispatch with the account's concurrency limit ---------------------------------------------
    def handle(self, request: Request) -> Response | None:
        if request.path.startswith("/_sandbox") or request.path == TOKEN_PATH:
            return super().handle(request)
        limit = int(self.faults.setting("concurrency_limit") or DEFAULT_CONCURRENCY_LIMIT)
        with self._in_flight_lock:
            if self._in_flight >= limit:
                return self.concurrency_exceeded(limit)
            self._in_flight += 1
        try:
            return super().handle(request)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _reset(self, request: Request) -> Response:
        response = super()._reset(request)
        self._seed()
        return response

    def _seed(self) -> None:
        with self.store.lock:
            if self.store.kv_get("seeded"):
                return
            for type_key, record_id, data in SEED:
                self.store.put(
                    type_key,
                    record_id,
                    {"id": record_id, **data, "dateCreated": "2024-01-01T00:00:00Z", "lastModifiedDate": _now()},
                )
            self.store.kv_set("seeded", True)

    # OAuth 2.0 client credentials with a JWT client assertion ----------------------------------
    def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            return _oauth_error(400, "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form["client_assertion"]
        try:
            header = jws.unverified_header(assertion)
        except jws.JWSError as exc:
            return _oauth_error(400, "invalid_request", f"the client assertion is not a JWT: {exc}")
        certificate = self.certificates.get(str(header.get("kid", "")))
        if certificate is None:
            return _oauth_error(401, "invalid_client", "no certificate is mapped with the kid in the JWT header")
        client_id, public_key = certificate
        try:
            claims = jws.verify(assertion, public_key_pem=public_key)
        except jws.JWSError as exc:
            return _oauth_error(401, "invalid_client", f"the client assertion is not valid: {exc}")
        if claims.get("iss") != client_id:
            return _oauth_error(401, "invalid_client", "iss must be the client ID the certificate is mapped to")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        expected = {f"{scheme}://{request.header('host')}{TOKEN_PATH}" for scheme in ("http", "https")}
        if not expected.intersection(a for a in audiences if isinstance(a, str)):
            return _oauth_error(400, "invalid_grant", "aud must be the token endpoint URL")
        scope = claims.get("scope")
        scopes = scope if isinstance(scope, list) else str(scope or "").replace(",", " ").split()
        if "rest_webservices" not in scopes:
            return _oauth_error(400, "invalid_scope", "scope must include rest_webservices")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            return _oauth_error(400, "invalid_grant", "iat and exp are required")
        if exp <= now - CLOCK_SKEW_SECONDS:
            return _oauth_error(400, "invalid_grant", "the client assertion has expired")
        if iat > now + CLOCK_SKEW_SECONDS or exp - iat > MAX_ASSERTION_SECONDS:
            return _oauth_error(400, "invalid_grant", "iat is in the future or the assertion lives over an hour")
        token, lifetime = self.issue_token(client_id)
        return Response(200, {"access_token": token, "expires_in": str(int(lifetime)), "token_type": "bearer"})

    # Records -----------------------------------------------------------------------------------
    def record_type(self, request: Request) -> RecordType:
        name = unquote(request.params["type"])
        record_type = TYPES.get(name.lower())
        if record_type is None:
            raise BadRequest(f"Record type '{name}' does not exist.", status=404, code="INVALID_RCRD_TYPE")
        return record_type

    def find_id(self, record_type: RecordType, ref: str) -> str | None:
        ref = unquote(ref)
        if ref.startswith("eid:"):
            return self.store.kv_get(f"eid:{record_type.name.lower()}:{ref[4:]}")
        return ref if self.store.get(record_type.name.lower(), ref) is not None else None

    def must_find(self, record_type: RecordType, ref: str) -> dict[str, Any]:
        record_id = self.find_id(record_type, ref)
        record = self.store.get(record_type.name.lower(), record_id) if record_id else None
        if record is None:
            raise BadRequest(
                "The record instance does not exist. Provide a valid record instance ID.",
                status=404,
                code="NONEXISTENT_ID",
            )
        return record

    def get_record(self, request: Request) -> Response:
        record_type = self.record_type(request)
        record = self.must_find(record_type, request.params["ref"])
        fields = [f for f in (request.arg("fields") or "").split(",") if f]
        expand = (request.arg("expandSubResources") or "").lower() == "true"
        return Response(200, self.render(request, record_type, record, fields=fields, expand=expand))

    def list_records(self, request: Request) -> Response:
        record_type = self.record_type(request)
        limit, offset = _paging(request)
        records = self.store.all(record_type.name.lower())
        query = request.arg("q")
        if query:
            predicate = _collection_filter(query)
            records = [r for r in records if predicate(r)]
        records.sort(key=lambda r: suiteql.sort_key(r["id"]))
        page = records[offset : offset + limit]
        base = f"{_origin(request)}{RECORD}/{record_type.name}"
        items = [{"links": [{"rel": "self", "href": f"{base}/{r['id']}"}], "id": r["id"]} for r in page]
        return Response(200, _collection(base, request, items, offset=offset, limit=limit, total=len(records)))

    def create(self, request: Request) -> Response:
        record_type = self.record_type(request)
        body = _body(request)
        with self.store.lock:
            external_id = body.get("externalId")
            if external_id is not None:
                _check_external_id(external_id)
                if self.find_id(record_type, f"eid:{external_id}"):
                    raise BadRequest(
                        f"Error while accessing a resource. A {record_type.label} with external ID "
                        f"{external_id} already exists.",
                        code="DUP_RCRD",
                        field_name="externalId",
                    )
            record = self.write(record_type, None, body)
        key = f"{record_type.name}/{record.get('externalId') or record['id']}"
        self.journal_write(request, 204, key, True)
        return Response(204, None, {"Location": f"{_origin(request)}{RECORD}/{record_type.name}/{record['id']}"})

    def update(self, request: Request) -> Response:
        record_type = self.record_type(request)
        body = _body(request)
        with self.store.lock:
            existing = self.must_find(record_type, request.params["ref"])
            if "externalId" in body and body["externalId"] != existing.get("externalId"):
                _check_external_id(body["externalId"])
                if self.find_id(record_type, f"eid:{body['externalId']}"):
                    raise BadRequest(
                        f"Error while accessing a resource. External ID {body['externalId']} is already in use.",
                        code="DUP_RCRD",
                        field_name="externalId",
                    )
            record = self.write(record_type, existing, body)
        self.journal_write(request, 204, f"{record_type.name}/{record.get('externalId') or record['id']}", False)
        return Response(204, None)

    def upsert(self, request: Request) -> Response:
        record_type = self.record_type(request)
        ref = unquote(request.params["ref"])
        if not ref.startswith("eid:"):
            raise BadRequest(
                "PUT is supported only for upsert by external ID: use .../eid:<externalId>.",
                status=405,
                code="METHOD_NOT_ALLOWED",
            )
        external_id = ref[4:]
        _check_external_id(external_id)
        body = _body(request)
        if body.get("externalId", external_id) != external_id:
            raise BadRequest(
                "The external ID in the body does not match the external ID in the URL.",
                code="INVALID_CONTENT",
                field_name="externalId",
            )
        body["externalId"] = external_id
        # Lookup and create under one lock: two upserts of one key never make two records.
        with self.store.lock:
            record_id = self.find_id(record_type, ref)
            existing = self.store.get(record_type.name.lower(), record_id) if record_id else None
            record = self.write(record_type, existing, body)
        self.journal_write(request, 204, f"{record_type.name}/{external_id}", existing is None)
        return Response(204, None, {"Location": f"{_origin(request)}{RECORD}/{record_type.name}/{record['id']}"})

    def delete(self, request: Request) -> Response:
        record_type = self.record_type(request)
        with self.store.lock:
            record = self.must_find(record_type, request.params["ref"])
            self._check_no_dependents(record_type, record)
            self.store.delete(record_type.name.lower(), record["id"])
            if record.get("externalId"):
                self.store.db.execute(
                    "DELETE FROM kv WHERE name = ?", (f"eid:{record_type.name.lower()}:{record['externalId']}",)
                )
        self.journal_write(request, 204, f"{record_type.name}/{record.get('externalId') or record['id']}", False)
        return Response(204, None)

    def _check_no_dependents(self, record_type: RecordType, record: dict[str, Any]) -> None:
        """NetSuite refuses to delete a transaction others point at: an invoice with a payment
        applied to it must be credited (credit memo), not deleted."""
        if record_type.name != "invoice":
            return
        for payment in self.store.all("customerpayment"):
            for line in (payment.get("apply") or {}).get("items", []):
                if str((line.get("doc") or {}).get("id")) == record["id"] and line.get("apply", True):
                    raise BadRequest(
                        "This record cannot be deleted because it has dependent records.",
                        code="THIS_RECORD_CANNOT_BE_DELETED_BECAUSE_IT_HAS_DEPENDENT_RECORDS",
                    )

    def transform(self, request: Request) -> Response:
        source_type = self.record_type(request)
        target = TYPES.get(unquote(request.params["target"]).lower())
        if source_type.name != "salesOrder" or target is None or target.name != "invoice":
            raise BadRequest(
                f"Transformation from {source_type.name} to {request.params['target']} is not supported.",
                code="INVALID_TRANSFORM",
            )
        body = _body(request)
        with self.store.lock:
            order = self.must_find(source_type, request.params["ref"])
            copied = {k: order[k] for k in ("entity", "subsidiary", "currency", "job", "item", "memo") if k in order}
            copied["createdFrom"] = {"id": order["id"]}
            if body.get("externalId") and self.find_id(target, f"eid:{body['externalId']}"):
                raise BadRequest(
                    f"Error while accessing a resource. An invoice with external ID {body['externalId']} already "
                    "exists.",
                    code="DUP_RCRD",
                    field_name="externalId",
                )
            record = self.write(target, None, {**copied, **body})
        key = f"invoice/{record.get('externalId') or record['id']}"
        self.journal_write(request, 204, key, True)
        return Response(204, None, {"Location": f"{_origin(request)}{RECORD}/invoice/{record['id']}"})

    def metadata_catalog(self, request: Request) -> Response:
        """The record's JSON schema, with any change made through /_sandbox/schema."""
        record_type = TYPES.get(request.params["type"].lower())
        if record_type is None or record_type.name.lower() not in FIELDS:
            raise BadRequest(
                f"Record type '{request.params['type']}' does not exist.", status=404, code="NONEXISTENT_ID"
            )
        properties: dict[str, Any] = {}
        required = []
        for f in self.schema_fields(record_type.name, list(FIELDS[record_type.name.lower()])):
            prop: dict[str, Any] = {"title": _label(f.name), "nullable": not f.required}
            if f.type == "ref":
                prop.update(type="object", properties={"id": {"type": "string"}, "refName": {"type": "string"}})
            elif f.type in {"date", "datetime"}:
                prop.update(type="string", format="date" if f.type == "date" else "date-time")
            else:
                prop["type"] = f.type
            if f.values:
                prop["enum"] = list(f.values)
            if f.name.startswith(("custentity", "custbody", "custcol")):
                prop["x-ns-custom-field"] = True
            properties[f.name] = prop
            if f.required:
                required.append(f.name)
        schema = {
            "type": "object",
            "properties": properties,
            "required": required,
            "x-ns-filterable": sorted(properties),
        }
        return Response(200, schema, {"Content-Type": "application/schema+json"})

    def write(self, record_type: RecordType, existing: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
        """Validate `body` against the type's rules and store it; the caller holds the store lock."""
        type_key = record_type.name.lower()
        problem = self.schema_problem(record_type.name, body, creating=existing is None)
        if problem is not None:
            name, kind, message = problem
            if kind == "dropped":
                raise BadRequest(f"Invalid field name '{name}'.", code="INVALID_CONTENT", field_name=name)
            if kind == "required":
                raise BadRequest(
                    f"Error while accessing a resource. Please enter value(s) for: {_label(name)}.",
                    code="USER_ERROR",
                    field_name=name,
                )
            raise BadRequest(
                f"Invalid value for {_label(name)}: {body.get(name)!r}.", code="INVALID_FLD_VALUE", field_name=name
            )
        record = dict(existing or {})
        for name, value in body.items():
            if not isinstance(name, str) or not _FIELD.match(name):
                raise BadRequest(f"Invalid field name '{name}'.", code="INVALID_CONTENT", field_name=str(name))
            if name in READ_ONLY:
                continue
            if name in record_type.references:
                record[name] = self.reference(record_type.references[name], name, value)
            elif name in record_type.sublists:
                record[name] = self.sublist(record_type.sublists[name], name, value)
            else:
                record[name] = value
        if existing is None:
            record.setdefault("subsidiary", self._default_subsidiary(record_type, record))
            if record["subsidiary"] is None:
                del record["subsidiary"]
        missing = [f for f in record_type.required if record.get(f) in (None, "", [])]
        if record_type.name == "customer" and not record.get("isPerson") and not record.get("companyName"):
            missing.insert(0, "companyName")
        if missing:
            raise BadRequest(
                "Error while accessing a resource. Please enter value(s) for: "
                + ", ".join(_label(m) for m in missing)
                + ".",
                code="USER_ERROR",
                field_name=missing[0],
            )
        self._business_rules(record_type, record)
        if record_type.sublists.get("item") is not None and isinstance(record.get("item"), dict):
            record["total"] = round(sum(float(line.get("amount") or 0) for line in record["item"]["items"]), 2)
        now = _now()
        if existing is None:
            record["id"] = self._next_id(record_type)
            record["dateCreated"] = now
            if record_type.number_field and not record.get(record_type.number_field):
                record[record_type.number_field] = f"{record_type.number_prefix}{record['id']}"
        record["lastModifiedDate"] = now
        self.store.put(type_key, record["id"], record)
        if existing and existing.get("externalId") and existing["externalId"] != record.get("externalId"):
            self.store.db.execute("DELETE FROM kv WHERE name = ?", (f"eid:{type_key}:{existing['externalId']}",))
        if record.get("externalId"):
            self.store.kv_set(f"eid:{type_key}:{record['externalId']}", record["id"])
        if record_type.name == "invoice":
            self._invoice_state(record, new=existing is None)
            self.store.put(type_key, record["id"], record)
        if record_type.name == "customerPayment":
            self._apply_payment(existing, record)
        return record

    def _apply_payment(self, before: dict[str, Any] | None, payment: dict[str, Any]) -> None:
        """What NetSuite does when a payment is applied: each invoice it touches gets its amount
        remaining recomputed from every payment applied to it, and "Paid In Full" at zero."""
        touched = set()
        for record in (before or {}, payment):
            for line in (record.get("apply") or {}).get("items", []):
                if (line.get("doc") or {}).get("id"):
                    touched.add(str(line["doc"]["id"]))
        payments = [p for p in self.store.all("customerpayment") if p["id"] != payment["id"]] + [payment]
        for invoice_id in touched:
            invoice = self.store.get("invoice", invoice_id)
            if invoice is None:
                continue
            applied = sum(
                float(line.get("amount") or 0)
                for p in payments
                for line in (p.get("apply") or {}).get("items", [])
                if str((line.get("doc") or {}).get("id")) == invoice_id and line.get("apply", True)
            )
            invoice["amountRemaining"] = max(round(float(invoice.get("total") or 0) - applied, 2), 0.0)
            self._invoice_state(invoice, new=False)
            invoice["lastModifiedDate"] = payment["lastModifiedDate"]
            self.store.put("invoice", invoice_id, invoice)

    def _invoice_state(self, invoice: dict[str, Any], *, new: bool) -> None:
        """approvalStatus, status, amountRemaining and dueDate as NetSuite keeps them."""
        if (invoice.get("status") or {}).get("id") == "V":
            return  # voided stays voided
        approval = invoice.get("approvalStatus")
        approval_id = str(approval.get("id") if isinstance(approval, dict) else approval or "")
        if self.faults.setting("invoice_approval") is False:
            approval_id = approval_id or "2"
        approval_id = approval_id if approval_id in APPROVAL else "1"
        invoice["approvalStatus"] = {"id": approval_id, "refName": APPROVAL[approval_id]}
        if new or "amountRemaining" not in invoice:
            invoice["amountRemaining"] = invoice.get("total", 0)
        if approval_id == "1":
            invoice["status"] = dict(INVOICE_STATUS["pending"])
        elif approval_id == "3":
            invoice["status"] = dict(INVOICE_STATUS["rejected"])
        elif float(invoice.get("total") or 0) > 0 and float(invoice.get("amountRemaining") or 0) <= 0:
            invoice["status"] = dict(INVOICE_STATUS["paid"])
        else:
            invoice["status"] = dict(INVOICE_STATUS["open"])
        if not invoice.get("dueDate"):
            dated = str(invoice.get("tranDate") or _now())[:10]
            invoice["dueDate"] = (dt.date.fromisoformat(dated) + dt.timedelta(days=PAYMENT_TERMS_DAYS)).isoformat()

    def void_invoice(self, request: Request) -> Response:
        """What a NetSuite user's Void does (without reversing journals): the invoice stays, with
        status Voided and nothing remaining. An invoice with a payment applied cannot be voided."""
        with self.store.lock:
            invoice = self.must_find(TYPES["invoice"], request.params["ref"])
            self._check_no_dependents(TYPES["invoice"], invoice)
            invoice.update(status=dict(INVOICE_STATUS["voided"]), amountRemaining=0.0, lastModifiedDate=_now())
            self.store.put("invoice", invoice["id"], invoice)
        return Response(204, None)

    def reference(self, target: str, name: str, value: Any) -> dict[str, str] | None:
        if value is None:
            return None
        if not isinstance(value, dict) or not ({"id", "externalId"} & value.keys()):
            raise BadRequest(
                f"Invalid value for the resource or sub-resource field '{name}'. Provide a valid value.",
                code="INVALID_CONTENT",
                field_name=name,
            )
        target_type = TYPES[target.lower()]
        ref = str(value["id"]) if "id" in value else f"eid:{value['externalId']}"
        record_id = self.find_id(target_type, ref)
        if record_id is None:
            shown = value.get("id", value.get("externalId"))
            raise BadRequest(
                "Error while accessing a resource. You have entered an Invalid Field Value "
                f"{shown} for the following field: {name}",
                code="USER_ERROR",
                field_name=name,
            )
        return {"id": record_id}

    def sublist(self, lines: dict[str, str], name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not isinstance(value.get("items"), list):
            raise BadRequest(
                f"Invalid value for the sublist '{name}': expected {{\"items\": [...]}}.",
                code="INVALID_CONTENT",
                field_name=name,
            )
        out = []
        for index, line in enumerate(value["items"]):
            if not isinstance(line, dict):
                raise BadRequest(
                    f"Invalid line {index + 1} of the sublist '{name}'.",
                    code="INVALID_CONTENT",
                    field_name=f"{name}.items[{index}]",
                )
            line = dict(line)
            for line_field, target in lines.items():
                if line_field in line:
                    line[line_field] = self.reference(target, f"{name}.items[{index}].{line_field}", line[line_field])
            for number in ("quantity", "rate", "amount"):
                if number in line and not isinstance(line[number], int | float):
                    raise BadRequest(
                        f"Invalid value for the field '{number}' on line {index + 1}: a number is expected.",
                        code="INVALID_CONTENT",
                        field_name=f"{name}.items[{index}].{number}",
                    )
            if "amount" not in line and "quantity" in line and "rate" in line:
                line["amount"] = round(line["quantity"] * line["rate"], 2)
            out.append(line)
        return {"items": out}

    def _default_subsidiary(self, record_type: RecordType, record: dict[str, Any]) -> dict[str, str] | None:
        """Transactions take the subsidiary of their customer when none is given."""
        party = record.get("entity") or record.get("customer")
        if record_type.family == "transaction" and party:
            customer = self.store.get("customer", party["id"])
            if customer and customer.get("subsidiary"):
                return customer["subsidiary"]
        return record.get("subsidiary")

    def _business_rules(self, record_type: RecordType, record: dict[str, Any]) -> None:
        if record_type.name in {"customer", "invoice", "salesOrder"} and record.get("currency"):
            subsidiary = self.store.get("subsidiary", (record.get("subsidiary") or {}).get("id", ""))
            currency = self.store.get("currency", record["currency"]["id"]) or {}
            if subsidiary and record["currency"]["id"] not in subsidiary.get("currencies", []):
                raise BadRequest(
                    f"Error while accessing a resource. Subsidiary {subsidiary['id']} ({subsidiary['name']}) "
                    f"does not allow currency {currency.get('symbol', record['currency']['id'])}.",
                    code="USER_ERROR",
                    field_name="currency",
                )

    def _next_id(self, record_type: RecordType) -> str:
        name = f"next_id:{record_type.family}"
        value = int(self.store.kv_get(name, 100)) + 1
        self.store.kv_set(name, value)
        return str(value)

    def render(
        self,
        request: Request,
        record_type: RecordType,
        record: dict[str, Any],
        *,
        fields: list[str] | None = None,
        expand: bool = False,
    ) -> dict[str, Any]:
        origin = _origin(request)
        self_href = f"{origin}{RECORD}/{record_type.name}/{record['id']}"
        out: dict[str, Any] = {"links": [{"rel": "self", "href": self_href}]}
        for name, value in record.items():
            if fields and name not in fields and name != "id":
                continue
            if name in record_type.references and isinstance(value, dict):
                out[name] = self.render_reference(origin, record_type.references[name], value["id"])
            elif name in record_type.sublists and isinstance(value, dict):
                link = {"links": [{"rel": "self", "href": f"{self_href}/{name}"}]}
                if expand:
                    targets = record_type.sublists[name]
                    link["items"] = [
                        {
                            k: self.render_reference(origin, targets[k], v["id"])
                            if k in targets and isinstance(v, dict)
                            else v
                            for k, v in line.items()
                        }
                        for line in value["items"]
                    ]
                    link["count"] = len(value["items"])
                out[name] = link
            else:
                out[name] = value
        return out

    def render_reference(self, origin: str, target: str, record_id: str) -> dict[str, Any]:
        target_type = TYPES[target.lower()]
        found = self.store.get(target.lower(), record_id) or {}
        name = next(
            (found[k] for k in ("companyName", "name", "itemId", "acctName", "tranId", "entityId") if found.get(k)),
            record_id,
        )
        return {
            "links": [{"rel": "self", "href": f"{origin}{RECORD}/{target_type.name}/{record_id}"}],
            "id": record_id,
            "refName": name,
        }

    # SuiteQL -----------------------------------------------------------------------------------
    def suiteql(self, request: Request) -> Response:
        require = self.faults.setting("require_prefer_transient")
        if require is not False and "transient" not in request.header("prefer").lower():
            raise BadRequest("The request must carry the header 'Prefer: transient'.", code="INVALID_HEADER")
        body = _body(request)
        text = body.get("q")
        if not isinstance(text, str):
            raise BadRequest('The request body must be {"q": "<SuiteQL query>"}.', code="INVALID_CONTENT")
        limit, offset = _paging(request)
        try:
            query = suiteql.parse(text)
            rows = self.suiteql_rows(query.table)
            result = suiteql.run(query, rows)
        except suiteql.SuiteQLError as exc:
            raise BadRequest(
                f"Invalid search query. Detailed unprocessed description follows. Search error occurred: {exc}",
                code="INVALID_PARAMETER",
                field_name="q",
            ) from None
        items = [{"links": [], **row} for row in result[offset : offset + limit]]
        base = f"{_origin(request)}{SUITEQL_PATH}"
        return Response(200, _collection(base, request, items, offset=offset, limit=limit, total=len(result)))

    def suiteql_rows(self, table: str) -> list[dict[str, Any]]:
        if table in RATE_TABLES:
            return getattr(self, f"_rows_{table}")()
        if table == "transaction":
            kinds = [t for t in TYPES.values() if t.suiteql_type]
        elif table in TYPES:
            kinds = [TYPES[table]]
        else:
            raise suiteql.SuiteQLError(f"Record '{table}' was not found.")
        rows = []
        for kind in kinds:
            for record in self.store.all(kind.name.lower()):
                row: dict[str, Any] = {}
                for name, value in record.items():
                    if name in kind.sublists:
                        continue
                    if isinstance(value, dict) and "id" in value:
                        value = value["id"]
                    elif name in {"dateCreated", "lastModifiedDate"}:
                        value = suiteql.parse_date(value)
                    row[name.lower()] = value
                if kind.suiteql_type:
                    row["type"] = kind.suiteql_type
                if kind.name == "customerPayment" and "customer" in row:
                    row["entity"] = row["customer"]  # SuiteQL's transaction.entity: the paying customer
                rows.append(row)
        return rows

    # Exchange rates: the currency rate table and OneWorld's consolidated rates, from sandboxes/fx.py
    def _currency_ids(self) -> dict[str, str]:
        return {str(c["symbol"]): str(c["id"]) for c in self.store.all("currency")}

    def _rows_currencyrate(self) -> list[dict[str, Any]]:
        """One row per business day and foreign currency: 1 transaction currency = exchangerate
        base currency (the root subsidiary's, USD), effective from effectivedate."""
        ids = self._currency_ids()
        rows = []
        for day, usd_per in fx.by_day(self.store):
            for currency, rate in sorted(usd_per.items()):
                if currency in ids:
                    rows.append(
                        {
                            "id": str(len(rows) + 1),
                            "basecurrency": ids["USD"],
                            "transactioncurrency": ids[currency],
                            "exchangerate": float(rate),
                            "effectivedate": dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC),
                        }
                    )
        return rows

    def _periods(self) -> list[tuple[str, dt.date, dt.date]]:
        days = fx.by_day(self.store)
        if not days:
            return []
        out, start = [], days[0][0].replace(day=1)
        today = dt.datetime.now(dt.UTC).date()
        while start <= max(today, days[-1][0]):
            nxt = (start + dt.timedelta(days=32)).replace(day=1)
            out.append((str(100 + len(out)), start, nxt - dt.timedelta(days=1)))
            start = nxt
        return out

    def _rows_accountingperiod(self) -> list[dict[str, Any]]:
        today = dt.datetime.now(dt.UTC).date()
        return [
            {
                "id": pid,
                "periodname": start.strftime("%b %Y"),
                "startdate": dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC),
                "enddate": dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC),
                "isquarter": "F",
                "isyear": "F",
                "isadjust": "F",
                "closed": "T" if end < today else "F",
            }
            for pid, start, end in self._periods()
        ]

    def _rows_consolidatedexchangerate(self) -> list[dict[str, Any]]:
        """Per month, each subsidiary whose currency is not the root's → the root: the average of
        the month's daily rates, and the current (and historical) rate in effect at its end."""
        ids = self._currency_ids()
        symbols = {v: k for k, v in ids.items()}
        root = self.store.get("subsidiary", "1") or {}
        root_currency = symbols.get(str((root.get("currency") or {}).get("id")), "USD")
        days = fx.by_day(self.store)
        rows = []
        for sub in sorted(self.store.all("subsidiary"), key=lambda r: int(r["id"])):
            currency = symbols.get(str((sub.get("currency") or {}).get("id")))
            if sub["id"] == "1" or currency is None or currency == root_currency:
                continue
            for pid, start, end in self._periods():
                month = [fx.cross(rates, currency, root_currency) for day, rates in days if start <= day <= end]
                month = [r for r in month if r is not None]
                held = [fx.cross(rates, currency, root_currency) for day, rates in days if day <= end]
                held = [r for r in held if r is not None]
                if not held:
                    continue
                average = (sum(month, Decimal("0")) / len(month)).quantize(Decimal("0.000001")) if month else held[-1]
                rows.append(
                    {
                        "id": str(len(rows) + 1),
                        "postingperiod": pid,
                        "fromsubsidiary": sub["id"],
                        "tosubsidiary": "1",
                        "fromcurrency": ids[currency],
                        "tocurrency": ids[root_currency],
                        "accountingbook": "1",
                        "averagerate": float(average),
                        "currentrate": float(held[-1]),
                        "historicalrate": float(held[-1]),
                    }
                )
        return rows

    def governance_limits(self, request: Request) -> Response:
        limit = int(self.faults.setting("concurrency_limit") or DEFAULT_CONCURRENCY_LIMIT)
        return Response(
            200,
            {
                "accountConcurrencyLimit": limit,
                "accountUnallocatedConcurrencyLimit": limit,
                "integrationConcurrencyLimit": limit,
                "concurrencyLimitType": "ACCOUNT",
            },
        )


def _oauth_error(status: int, error: str, description: str) -> Response:
    return Response(status, {"error": error, "error_description": description})


def _origin(request: Request) -> str:
    scheme = request.header("x-forwarded-proto", "http")
    return f"{scheme}://{request.header('host', '127.0.0.1')}"


def _body(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except BadRequest as exc:
        raise BadRequest(f"Invalid content in the request body: {exc.message}.", code="INVALID_CONTENT") from None
    if not isinstance(body, dict):
        raise BadRequest("Invalid content in the request body: a JSON object is expected.", code="INVALID_CONTENT")
    return body


def _check_external_id(value: Any) -> None:
    if not isinstance(value, str) or not _EXTERNAL_ID.match(value):
        raise BadRequest(
            f"Invalid external ID '{value}': use letters, digits, '_', '-' and '.' only.",
            code="INVALID_CONTENT",
            field_name="externalId",
        )


def _paging(request: Request) -> tuple[int, int]:
    try:
        limit = int(request.arg("limit") or MAX_LIMIT)
        offset = int(request.arg("offset") or 0)
    except ValueError:
        raise BadRequest(
            "The limit and offset query parameters must be whole numbers.", code="INVALID_PARAMETER"
        ) from None
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise BadRequest(
            f"The limit must be between 1 and {MAX_LIMIT} and the offset must not be negative.",
            code="INVALID_PARAMETER",
        )
    return limit, offset


def _collection(
    base: str, request: Request, items: list[dict[str, Any]], *, offset: int, limit: int, total: int
) -> dict[str, Any]:
    def link(rel: str, at: int) -> dict[str, str]:
        extra = "".join(f"&{k}={quote(v[0])}" for k, v in request.query.items() if k not in {"limit", "offset"})
        return {"rel": rel, "href": f"{base}?limit={limit}&offset={at}{extra}"}

    has_more = offset + len(items) < total
    links = [link("self", offset)]
    if offset > 0:
        links.append(link("previous", max(0, offset - limit)))
    if has_more:
        links.append(link("next", offset + limit))
    links.append(link("first", 0))
    links.append(link("last", max(0, (total - 1) // limit * limit)))
    return {
        "links": links,
        "count": len(items),
        "hasMore": has_more,
        "items": items,
        "offset": offset,
        "totalResults": total,
    }


_CONDITION = re.compile(
    r'\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<op>[A-Z_]+)\s+(?P<value>"[^"]*"|[^\s"]+)\s*(?P<join>AND|OR)?',
)


def _collection_filter(text: str) -> Any:
    """Record collection filtering: `field OPERATOR "value"` joined with AND / OR (left to right)."""
    conditions: list[tuple[str, str, str, str]] = []
    pos = 0
    while pos < len(text):
        match = _CONDITION.match(text, pos)
        if not match:
            raise BadRequest(f"Invalid query parameter q: cannot read '{text[pos:]}'.", code="INVALID_PARAMETER")
        value = match["value"].strip('"')
        conditions.append((match["field"], match["op"], value, match["join"] or ""))
        pos = match.end()

    def test(record: dict[str, Any], field_name: str, op: str, value: str) -> bool:
        actual = record.get(field_name)
        if isinstance(actual, dict):
            actual = actual.get("id")
        if op in {"IS", "EQUAL"}:
            return suiteql._compare(actual, value) == 0  # one comparison for both query styles
        if op in {"IS_NOT", "NOT_EQUAL"}:
            return suiteql._compare(actual, value) != 0
        if op in {"CONTAIN", "START_WITH"}:
            text_value = str(actual or "").lower()
            return value.lower() in text_value if op == "CONTAIN" else text_value.startswith(value.lower())
        if op in {"AFTER", "ON_OR_AFTER", "BEFORE", "ON_OR_BEFORE", "GREATER", "LESS"}:
            if actual is None:
                return False
            if field_name in {"dateCreated", "lastModifiedDate"}:
                left: Any = suiteql.parse_date(actual)
                right: Any = suiteql.parse_date(value)
            else:
                left, right = actual, value
            result = suiteql._compare(left, right)
            return (
                result is not None
                and {
                    "AFTER": result > 0,
                    "GREATER": result > 0,
                    "ON_OR_AFTER": result >= 0,
                    "BEFORE": result < 0,
                    "LESS": result < 0,
                    "ON_OR_BEFORE": result <= 0,
                }[op]
            )
        raise BadRequest(f"Invalid query parameter q: unknown operator {op}.", code="INVALID_PARAMETER")

    def predicate(record: dict[str, Any]) -> bool:
        result = None
        join = ""
        for field_name, op, value, next_join in conditions:
            current = test(record, field_name, op, value)
            result = current if result is None else (result and current if join == "AND" else result or current)
            join = next_join
        return bool(result)

    return predicate


def serve(*, port: int, state_dir: Path | None, host: str = "127.0.0.1") -> None:
    serve_sandbox(NetSuiteSandbox(state_dir), port=port, host=host)
