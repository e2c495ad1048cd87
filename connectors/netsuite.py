"""Oracle NetSuite (the ERP) through SuiteTalk REST web services: OAuth 2.0 client credentials
(M2M) with a signed JWT assertion, record upsert by external id, SuiteQL reads, polled changes.

Credentials (connection.credentials()):
    {"account_id": "1234567_SB1",            # as NetSuite writes it (used in messages)
     "client_id": "<integration record's client ID>",
     "certificate_id": "<id from OAuth 2.0 Client Credentials (M2M) Setup>",
     "private_key_pem": "-----BEGIN PRIVATE KEY-----...",   # RSA (PS256) or EC P-256 (ES256)
     "algorithm": "PS256"}                   # optional; chosen from the key when missing
connection.base_url is the account's REST host, https://1234567-sb1.suitetalk.api.netsuite.com
(account id lowercased, "_" as "-"); the token endpoint and the API live under it.

Writes are idempotent by business key: every synced record carries our key as its NetSuite
external id and every write is `PUT /record/v1/{type}/eid:{key}`, which NetSuite itself turns
into create-or-update, so no lock is needed around it (the engine's per-handoff lease keeps two
workers off one handoff anyway). A write that times out or fails with 5xx raises
UnknownOutcomeError; `lookup` by the same eid then tells whether it landed.

NetSuite has no change push for REST: `poll` reads each watched record type with SuiteQL on
lastModifiedDate, keyset-paged by (lastModifiedDate, id), so records sharing a timestamp are never
skipped. Rows modified in the last `settle_seconds` by NetSuite's own clock (the Date header) are
left for the next poll: a record could still be written in that second with a lower id.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from connectors import canonical as c
from connectors import holdings as h
from connectors import http
from connectors.base import (
    Connector,
    ExchangeRate,
    InboundChange,
    InvoiceStatus,
    LedgerInvoice,
    PaymentApplied,
    Token,
    WriteResult,
)
from connectors.errors import (
    ConnectorError,
    MappingError,
    RejectedError,
    TransientError,
    UnknownOutcomeError,
    WebhookRejected,
)
from connectors.schema import (
    BOOLEAN,
    DATE,
    DATETIME,
    NUMBER,
    NUMBER_OR_TEXT,
    OBJECT,
    PICKLIST,
    REFERENCE,
    TEXT,
    TEXT_OR_NUMBER,
    DateText,
    FieldShape,
    MalformedRecord,
    PayloadShape,
    RecordShape,
    payload_check,
    records_checked,
    sent,
    shape_of,
)

# The version is the path segment after record/ and query/ (VENDOR_APIS.md 4.3): v1, pinned on
# the connection (NetSuiteConnector.record_root).
REST = "/services/rest"
RECORD = f"{REST}/record/v1"  # the default version's record root (tests and tools)
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"  # noqa: S105 - a URL path, not a secret
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# NetSuite's answers when too many requests are in flight for the account (REST, RESTlet, SOAP).
THROTTLE_CODES = {
    "CONCURRENCY_LIMIT_EXCEEDED",
    "REQUEST_LIMIT_EXCEEDED",
    "SSS_REQUEST_LIMIT_EXCEEDED",
    "WS_REQUEST_BLOCKED",
}
_EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_\-.]{1,255}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAMP = "%Y-%m-%d %H:%M:%S"
# NetSuite's currency internal ids as a standard account (and the sandbox) seeds them: the ISO
# code of each. A firm's mapping value map may name others (reconciliation reads it first).
CURRENCIES = {"1": "USD", "2": "GBP", "3": "CAD", "4": "EUR", "5": "JPY"}
# Invoice approval (Accounting Preferences > Approval Routing): approvalStatus 1 Pending Approval,
# 2 Approved, 3 Rejected. Only an approved invoice posts to the general ledger; an account without
# invoice approval sends no approvalStatus and every saved invoice posts.
APPROVAL_PENDING, APPROVAL_APPROVED, APPROVAL_REJECTED = "1", "2", "3"
# Invoice status (the record's `status`, id and refName): A Open, B Paid In Full, D Pending
# Approval, E Rejected, V Voided. A partly paid invoice stays Open with less amountRemaining.
STATUS_VOIDED = {"v", "voided"}
STATUS_PENDING = {"d", "pending approval"}
STATUS_REJECTED = {"e", "rejected"}
_STAMP_MODEL = "YYYY-MM-DD HH24:MI:SS"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_assertion(claims: dict[str, Any], *, private_key_pem: str, kid: str, algorithm: str | None = None) -> str:
    """A compact JWS of `claims`, signed with the certificate's private key (PS256 or ES256)."""
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise RejectedError(f"the private key in the NetSuite credentials cannot be read: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = algorithm or "PS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = algorithm or {256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")
    else:
        raise RejectedError("the NetSuite certificate key must be RSA or EC")
    header = {"alg": algorithm, "typ": "JWT", "kid": kid}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}".encode()
    digests: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
    digest = digests[algorithm[2:]]()
    if algorithm.startswith("PS") and isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
    elif algorithm.startswith("RS") and isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), digest)
    elif algorithm.startswith("ES") and isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        raise RejectedError(f"the algorithm {algorithm} does not fit the NetSuite certificate key")
    return f"{signing_input.decode()}.{_b64url(signature)}"


def _literal(value: Any) -> str:
    """A SuiteQL literal; strings quoted with '' escaping, so values can never break the query."""
    if isinstance(value, bool):
        return "'T'" if value else "'F'"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return f"TO_DATE('{value.astimezone(dt.UTC).strftime(_STAMP)}', '{_STAMP_MODEL}')"
    return "'" + str(value).replace("'", "''") + "'"


# The metadata catalog's JSON schema types and string formats in our terms.
CATALOG_KINDS = {"number": NUMBER, "integer": NUMBER, "boolean": BOOLEAN, "object": OBJECT, "array": OBJECT}
CATALOG_FORMATS = {"date": DATE, "date-time": DATETIME}
CATALOG_SHAPE = {"properties": ((dict,), True), "required": ((list,), False)}
CATALOG_PROPERTY_SHAPE = {"type": ((str,), False), "format": ((str,), False), "enum": ((list,), False)}

# Declared shapes of what NetSuite sends (connectors/schema.py): checked before it is read, so a
# record of another shape is a MalformedRecord naming the field, not a KeyError or an amount read
# as zero. A reference is {"id", "refName"} in a REST record, a flat id in a SuiteQL row.
_REF = (dict, str, int)
SUITEQL_PAGE_SHAPE: PayloadShape = {"items": ((list,), True, {}), "hasMore": ((bool,), False)}
ROW_SHAPE = {"id": (TEXT_OR_NUMBER, True)}
POLL_ROW_SHAPE = {"id": ((int, str), True), "modified": ((str,), True), "externalid": ((str,), False)}
INVOICE_SHAPE = {
    "id": (TEXT_OR_NUMBER, True),
    "tranId": (TEXT_OR_NUMBER, False),
    "externalId": ((str,), False),
    "entity": (_REF, False),
    "currency": (_REF, False),
    "subsidiary": (_REF, False),
    "status": (_REF, False),
    "approvalStatus": (_REF, False),
    "total": (NUMBER_OR_TEXT, False),
    "amountRemaining": (NUMBER_OR_TEXT, False),
    "taxTotal": (NUMBER_OR_TEXT, False),
    "exchangeRate": (NUMBER_OR_TEXT, False),
    "tranDate": ((str,), False),
    "dueDate": ((str,), False),
    "custbody_project_key": ((str,), False),
    "custbody_psa_batch": ((str,), False),
    "item": ((dict,), False, {"items": ((list,), False, {"amount": (NUMBER_OR_TEXT, False)})}),
}
PAYMENT_SHAPE = {
    "id": (TEXT_OR_NUMBER, True),
    "tranDate": ((str,), False),
    "apply": (
        (dict,),
        False,
        {
            "items": (
                (list,),
                False,
                {"doc": (_REF, False), "amount": (NUMBER_OR_TEXT, False), "apply": ((bool,), False)},
            )
        },
    ),
}
CUSTOMER_ROW_SHAPE = {"id": (TEXT_OR_NUMBER, True), "companyname": ((str,), False), "externalid": ((str,), False)}
SALES_ORDER_ROW_SHAPE = {
    "id": (TEXT_OR_NUMBER, True),
    "externalid": ((str,), False),
    "total": (NUMBER_OR_TEXT, False),
}
# A REST record by its record type (get()); other types are checked for their id only.
RECORD_SHAPES: dict[str, PayloadShape] = {"invoice": INVOICE_SHAPE, "customerPayment": PAYMENT_SHAPE}
CURRENCY_ROW_SHAPE = {"id": (TEXT_OR_NUMBER, True), "symbol": ((str,), True)}
RATE_ROW_SHAPE = {
    "transactioncurrency": (TEXT_OR_NUMBER, True),
    "basecurrency": (TEXT_OR_NUMBER, True),
    "exchangerate": (NUMBER_OR_TEXT, True),
    "effectivedate": ((DateText,), True),
}
PERIOD_ROW_SHAPE = {"id": (TEXT_OR_NUMBER, True), "startdate": ((DateText,), True), "enddate": ((DateText,), True)}
CONSOLIDATED_ROW_SHAPE = {
    "postingperiod": (TEXT_OR_NUMBER, False),
    "averagerate": (NUMBER_OR_TEXT, False),
    "currentrate": (NUMBER_OR_TEXT, False),
}


class NetSuiteConnector(Connector):
    default_api_version = "v1"
    vendor = "netsuite"
    api_hosts = ("*.suitetalk.api.netsuite.com", "*.netsuite.com")
    capabilities: ClassVar[dict[str, c.Capability]] = {
        c.CUSTOMER: c.Capability(c.CUSTOMER, "customer", c.can(c.READ_ONE, c.UPSERT, c.FIND, c.RECONCILE)),
        # The contract and its billing setup: a sales order with one line of the service item.
        c.CONTRACT: c.Capability(
            c.CONTRACT, "sales_order", c.can(c.UPSERT, c.FIND, c.RECONCILE), key=c.KeyFormat("SO-{deal}")
        ),
        c.INVOICE: c.Capability(c.INVOICE, "invoice", c.can(c.READ_ONE, c.READ_CHANGED, c.UPSERT, c.FIND, c.RECONCILE)),
        c.PAYMENT: c.Capability(c.PAYMENT, "payment", c.can(c.READ_ONE, c.READ_CHANGED, c.RECONCILE)),
        c.RATE: c.Capability(c.RATE, "currencyRate", c.can(c.RECONCILE)),
    }
    limits: ClassVar[c.Limits] = c.Limits(page_size=1000, max_concurrency=5)
    reconcile_value_maps: ClassVar[dict[str, tuple[str, str]]] = {
        "currency": ("contract", "currency"),
        "subsidiary": ("contract", "subsidiary"),
        "tax_codes": ("customer", "tax_code"),
    }
    keeps_contract_value: ClassVar[bool] = True
    # The contract mapping's service item and amount become the sales order's item line (shape()).
    shaped_targets: ClassVar[dict[str, frozenset[str]]] = {
        c.CONTRACT: frozenset({"service_item", "contract_amount", "service_line_check"})
    }
    page_size: ClassVar[int] = 1000  # SuiteQL's maximum
    assertion_seconds: ClassVar[int] = 300  # the JWT assertion only has to live until the token call
    settle_seconds: ClassVar[int] = 2
    max_poll_rows: ClassVar[int] = 5000  # per record type and poll; the cursor carries the rest
    # The names flows use -> NetSuite record types.
    record_types: ClassVar[dict[str, str]] = {
        "customer": "customer",
        "project": "job",
        "job": "job",
        "project_task": "projectTask",
        "projecttask": "projectTask",
        "sales_order": "salesOrder",
        "salesorder": "salesOrder",
        "invoice": "invoice",
        "payment": "customerPayment",
        "customer_payment": "customerPayment",
        "customerpayment": "customerPayment",
        "billing_schedule": "billingSchedule",
        "billingschedule": "billingSchedule",
    }
    labels: ClassVar[dict[str, str]] = {
        "customer": "customer",
        "job": "project",
        "projectTask": "project task",
        "salesOrder": "sales order",
        "invoice": "invoice",
        "customerPayment": "customer payment",
        "billingSchedule": "billing schedule",
    }
    # Where SuiteQL finds each record type: transactions share one table, told apart by `type`.
    suiteql_sources: ClassVar[dict[str, tuple[str, str]]] = {
        "customer": ("customer", ""),
        "job": ("job", ""),
        "projectTask": ("projecttask", ""),
        "salesOrder": ("transaction", "SalesOrd"),
        "invoice": ("transaction", "CustInvc"),
        "customerPayment": ("transaction", "CustPymt"),
        "billingSchedule": ("billingschedule", ""),
    }
    # What `poll` watches: what the ERP owns and the other systems need to hear about.
    watched: ClassVar[tuple[str, ...]] = ("customer", "job", "invoice", "customerPayment")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subject = threading.local()  # what the current call is about, for error messages

    # Auth ---------------------------------------------------------------------------------------
    def fetch_token(self) -> Token:
        credentials = self.connection.credentials()
        missing = [k for k in ("client_id", "certificate_id", "private_key_pem") if not credentials.get(k)]
        if missing:
            raise RejectedError(f"the NetSuite connection lacks credentials: {', '.join(missing)}")
        url = self.url(TOKEN_PATH)
        now = int(time.time())
        claims = {
            "iss": credentials["client_id"],
            "scope": ["rest_webservices"],
            "aud": url,
            "iat": now,
            "exp": now + self.assertion_seconds,
        }
        assertion = sign_assertion(
            claims,
            private_key_pem=credentials["private_key_pem"],
            kid=credentials["certificate_id"],
            algorithm=credentials.get("algorithm") or None,
        )
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        try:
            result = self.call("POST", url, data=form, headers={"Accept": "application/json"})
        except UnknownOutcomeError as exc:
            # Asking for a token changes nothing at NetSuite, so it is always safe to ask again.
            raise TransientError(
                f"NetSuite's sign-in did not answer properly: {exc.message}", http_status=exc.http_status
            ) from exc
        except RejectedError as exc:
            body = exc.response
            reason = (body.get("error_description") or body.get("error")) if isinstance(body, dict) else body
            exc.message = (
                f"NetSuite refused the sign-in of client {credentials['client_id']} with certificate "
                f"{credentials['certificate_id']}: {reason or exc.http_status}"
            )
            raise
        body = result.body
        if not isinstance(body, dict) or "access_token" not in body:
            raise RejectedError(f"NetSuite's sign-in answered without a token: {body!r:.200}", response=body)
        try:
            lifetime = float(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        return Token(value=body["access_token"], expires_at=time.time() + lifetime)

    # Errors -------------------------------------------------------------------------------------
    def send(self, method: str, path: str, **kwargs: Any) -> http.HttpResult:
        try:
            return super().send(method, path, **kwargs)
        except RejectedError as exc:
            # RESTlets answer a concurrency breach with 400 SSS_REQUEST_LIMIT_EXCEEDED: retry it.
            if _error_code(exc.response) in THROTTLE_CODES:
                raise TransientError(exc.message, http_status=exc.http_status, response=exc.response) from exc
            raise

    def describe_error(self, error: ConnectorError) -> None:
        body = error.response
        if not isinstance(body, dict) or not isinstance(body.get("o:errorDetails"), list):
            return
        subject = getattr(self._subject, "label", "") or "request"
        details = []
        for item in body["o:errorDetails"]:
            if not isinstance(item, dict):
                continue
            detail = str(item.get("detail", "")).removeprefix("Error while accessing a resource. ").strip().rstrip(".")
            if detail[:1].isupper() and detail[1:2].islower():
                detail = detail[0].lower() + detail[1:]
            path = item.get("o:errorPath")
            if path and str(path).split(".")[0].lower() not in detail.lower():
                detail += f" (field {path})"
            details.append(detail)
        text = "; ".join(d for d in details if d) or str(body.get("title", ""))
        status = error.http_status or 0
        code = _error_code(body)
        if code in THROTTLE_CODES or status == 429:
            error.message = f"NetSuite is busy and asked us to wait: {text}"
        elif status == 401:
            error.message = (
                f"NetSuite refused our sign-in ({code or 401}): check the integration's client ID, certificate "
                "and role in the connection"
            )
        elif status == 403:
            error.message = f"NetSuite's integration role may not do this to the {subject}: {text}"
        elif status == 404:
            error.message = f"NetSuite has no such {subject}: {text}"
        elif status >= 500:
            error.message = f"NetSuite failed ({status}) while handling the {subject}: {text}"
        else:
            error.message = f"NetSuite rejected the {subject}: {text}"

    def _about(self, record_type: str) -> None:
        self._subject.label = self.labels.get(record_type, record_type)

    def record_type(self, entity: str) -> str:
        record_type = self.record_types.get(entity.lower()) or self.record_types.get(entity)
        if record_type is None:
            known = ", ".join(sorted(set(self.record_types)))
            raise MappingError(f"NetSuite has no record type for {entity!r}; known: {known}")
        return record_type

    # Calls --------------------------------------------------------------------------------------
    @property
    def record_root(self) -> str:
        return f"{REST}/record/{self.pinned_api_version}"

    @property
    def suiteql_path(self) -> str:
        return f"{REST}/query/{self.pinned_api_version}/suiteql"

    def ping(self) -> None:
        self._about("customer")
        self.send("GET", f"{self.record_root}/customer", params={"limit": 1})

    def upsert(self, *, entity: str, key: str, fields: dict[str, Any]) -> WriteResult:
        record_type = self.record_type(entity)
        self._about(record_type)
        if not _EXTERNAL_ID.match(key):
            raise MappingError(
                f"the key {key!r} cannot be a NetSuite external ID (letters, digits, '_', '-' and '.' only)"
            )
        url = self.url(f"{self.record_root}/{record_type}/eid:{quote(key, safe='')}")
        body = {k: v for k, v in fields.items() if k != "externalId"}
        result = self.send("PUT", url, json=body)
        location = result.headers.get("location", "")
        internal_id = location.rstrip("/").rsplit("/", 1)[-1] if location else ""
        if not internal_id.isdigit():
            # NetSuite answers an upsert with 204 and the record's address in Location; without
            # it we do not know which record was written. Treated as an unknown outcome, the
            # engine looks the key up before writing anything again.
            raise UnknownOutcomeError(
                f"NetSuite answered {result.status} to the {record_type} upsert without the address"
                " of the record it wrote (no Location header); it is looked up by its external ID",
                http_status=result.status,
            )
        return WriteResult(
            external_id=internal_id,
            request={"method": "PUT", "url": url, "json": body},
            response={"status": result.status, "location": location},
            http_status=result.status,
            created=None,  # NetSuite answers 204 whether it created or updated
        )

    def lookup(self, *, entity: str, key: str) -> WriteResult | None:
        record_type = self.record_type(entity)
        self._about(record_type)
        if not _EXTERNAL_ID.match(key):
            return None  # such a key was never written (upsert refuses it)
        url = self.url(f"{self.record_root}/{record_type}/eid:{quote(key, safe='')}")
        result = self.send("GET", url, params={"expandSubResources": "true"}, accept_statuses=(404,))
        if result.status == 404:
            if _error_code(result.body) not in {"", "NONEXISTENT_ID"}:
                error = RejectedError("NetSuite refused the lookup", http_status=404, response=result.body)
                self.describe_error(error)
                raise error
            return None
        return WriteResult(
            external_id=str(result.body["id"]),
            request={"method": "GET", "url": url},
            response=result.body,
            http_status=result.status,
        )

    def get(self, *, entity: str, record_id: str) -> dict[str, Any] | None:
        """One record by its internal id, with its sublists (e.g. a payment's applied invoices)."""
        record_type = self.record_type(entity)
        self._about(record_type)
        if not str(record_id).isdigit():
            return None
        url = self.url(f"{self.record_root}/{record_type}/{record_id}")
        result = self.send("GET", url, params={"expandSubResources": "true"}, accept_statuses=(404,))
        if result.status == 404:
            return None
        shape = RECORD_SHAPES.get(record_type, ROW_SHAPE)
        label = self.labels.get(record_type, record_type)
        return payload_check(result.body, shape, what=f"{sent('NetSuite', label)} ({record_id})")

    def withdraw(self, *, entity: str, record_id: str) -> WriteResult:
        """DELETE the record. NetSuite's REST API has no void; an invoice nobody has paid may be
        deleted, one with a payment applied is refused by NetSuite (it has dependent records)."""
        record_type = self.record_type(entity)
        current = self.get(entity=entity, record_id=record_id)
        url = self.url(f"{self.record_root}/{record_type}/{record_id}")
        if current is None:
            return WriteResult(str(record_id), {"method": "GET", "url": url}, None, 404, output={"already_gone": True})
        self._about(record_type)
        try:
            result = self.send("DELETE", url, accept_statuses=(404,))
        except RejectedError as exc:
            if _error_code(exc.response) == "THIS_RECORD_CANNOT_BE_DELETED_BECAUSE_IT_HAS_DEPENDENT_RECORDS":
                exc.message = (
                    f"NetSuite refused to delete {self.labels.get(record_type, record_type)} "
                    f"{current.get('tranId') or record_id}: a payment or another record is applied to it. "
                    "Credit it in NetSuite (credit memo) instead; nothing was changed"
                )
            raise
        kept = ("id", "externalId", "tranId", "status", "total", "amountRemaining", "tranDate", "entity")
        return WriteResult(
            external_id=str(record_id),
            request={"method": "DELETE", "url": url},
            response={k: current[k] for k in kept if k in current},
            http_status=result.status,
            output={"already_gone": result.status == 404},
        )

    def _query(self, url: str, query: str, params: dict[str, Any] | None) -> http.HttpResult:
        """One SuiteQL page. It is a POST but only reads, so a 5xx or timeout is safe to retry."""
        try:
            return self.send("POST", url, json={"q": query}, params=params, headers={"Prefer": "transient"})
        except UnknownOutcomeError as exc:
            raise TransientError(exc.message, http_status=exc.http_status, response=exc.response) from exc

    def suiteql(self, query: str) -> Iterator[tuple[dict[str, Any], http.HttpResult]]:
        """Every row of a SuiteQL query, following NetSuite's `next` links page by page."""
        url: str | None = self.url(self.suiteql_path)
        params: dict[str, Any] | None = {"limit": self.page_size, "offset": 0}
        while url:
            result = self._query(url, query, params)
            page = payload_check(result.body, SUITEQL_PAGE_SHAPE, what="NetSuite sent a SuiteQL page")
            for row in page["items"]:
                yield {k: v for k, v in row.items() if k != "links"}, result
            url = _link(page, "next") if page.get("hasMore") else None
            params = None  # the next link carries limit and offset

    def read(
        self,
        entity: str,
        *,
        since: dt.datetime | None = None,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,  # whole records come back: they hold these fields too
    ) -> Iterator[dict[str, Any]]:
        record_type = self.record_type(entity)
        self._about(record_type)
        table, kind = self.suiteql_sources[record_type]
        conditions = [f"type = {_literal(kind)}"] if kind else []
        if since is not None:
            # NetSuite compares in the account's time zone; the sandbox keeps UTC (docs/sandboxes/netsuite.md).
            conditions.append(f"lastmodifieddate >= {_literal(since)}")
        for column, value in (where or {}).items():
            if not _COLUMN.match(column):
                raise MappingError(f"{column!r} is not a NetSuite field name")
            if value is None:
                conditions.append(f"{column} IS NULL")
            elif isinstance(value, list | tuple | set):
                conditions.append(f"{column} IN ({', '.join(_literal(v) for v in value)})")
            else:
                conditions.append(f"{column} = {_literal(value)}")
        # Columns are checked names, values escaped literals, the table comes from suiteql_sources.
        query = f"SELECT * FROM {table}"  # noqa: S608  # nosec B608  # identifiers are fixed or checked names, values are bound or escaped literals
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += " ORDER BY id"
        for row, _ in self.suiteql(query):
            yield row

    # Exchange rates ----------------------------------------------------------------------------
    reads_exchange_rates = True

    def exchange_rates(self, *, since: dt.date) -> list[ExchangeRate]:
        """The currency rate table (daily: 1 transaction currency = `exchangerate` base currency,
        effective from `effectivedate`) and, in OneWorld accounts, the consolidated exchange rates
        of each accounting period (average and current, child subsidiary's currency → parent's)."""
        symbols = {
            str(row["id"]): str(row["symbol"])
            for row in records_checked(
                (row for row, _ in self.suiteql("SELECT id, symbol FROM currency")),
                CURRENCY_ROW_SHAPE,
                what="NetSuite sent a currency",
                id_field="id",
            )
        }
        day = _literal(dt.datetime.combine(since, dt.time(), tzinfo=dt.UTC))
        query = f"SELECT id, basecurrency, transactioncurrency, exchangerate, TO_CHAR(effectivedate, 'YYYY-MM-DD') AS effectivedate FROM currencyrate WHERE effectivedate >= {day} ORDER BY effectivedate, id"  # noqa: S608, E501  # nosec B608  # a formatted date literal
        rates = [
            ExchangeRate(
                from_currency=symbols[str(row["transactioncurrency"])],
                to_currency=symbols[str(row["basecurrency"])],
                rate_type="daily",
                effective_date=dt.date.fromisoformat(row["effectivedate"][:10]),
                rate=Decimal(str(row["exchangerate"])),
            )
            for row in records_checked(
                (row for row, _ in self.suiteql(query)),
                RATE_ROW_SHAPE,
                what="NetSuite sent an exchange rate",
                id_field="id",
            )
            if str(row["transactioncurrency"]) in symbols and str(row["basecurrency"]) in symbols
        ]
        return rates + self._consolidated_rates(since, symbols)

    def _consolidated_rates(self, since: dt.date, symbols: dict[str, str]) -> list[ExchangeRate]:
        """Average and current rates per accounting period (months only), where the account has them."""
        day = _literal(dt.datetime.combine(since.replace(day=1), dt.time(), tzinfo=dt.UTC))
        periods_query = f"SELECT id, TO_CHAR(startdate, 'YYYY-MM-DD') AS startdate, TO_CHAR(enddate, 'YYYY-MM-DD') AS enddate FROM accountingperiod WHERE isquarter = 'F' AND isyear = 'F' AND startdate >= {day}"  # noqa: S608, E501  # nosec B608  # a formatted date literal
        try:
            periods = {
                str(row["id"]): (
                    dt.date.fromisoformat(row["startdate"][:10]),
                    dt.date.fromisoformat(row["enddate"][:10]),
                )
                for row in records_checked(
                    (row for row, _ in self.suiteql(periods_query)),
                    PERIOD_ROW_SHAPE,
                    what="NetSuite sent an accounting period",
                    id_field="id",
                )
            }
            rows = list(
                records_checked(
                    (
                        row
                        for row, _ in self.suiteql(
                            "SELECT id, postingperiod, fromcurrency, tocurrency, averagerate, currentrate "
                            "FROM consolidatedexchangerate ORDER BY id"
                        )
                    ),
                    CONSOLIDATED_ROW_SHAPE,
                    what="NetSuite sent a consolidated exchange rate",
                    id_field="id",
                )
            )
        except RejectedError:
            return []  # not a OneWorld account (no consolidated rates): the daily table is all there is
        out = []
        for row in rows:
            period = periods.get(str(row["postingperiod"]))
            pair = symbols.get(str(row["fromcurrency"])), symbols.get(str(row["tocurrency"]))
            if period is None or None in pair or pair[0] == pair[1]:
                continue
            for rate_type, column in (("average", "averagerate"), ("closing", "currentrate")):
                if row.get(column) not in (None, ""):
                    out.append(
                        ExchangeRate(
                            from_currency=str(pair[0]),
                            to_currency=str(pair[1]),
                            rate_type=rate_type,
                            effective_date=period[0],
                            period_end=period[1],
                            rate=Decimal(str(row[column])),
                        )
                    )
        return out

    # The ledger -------------------------------------------------------------------------------
    def ledger_locate(self, *, key: str) -> tuple[list[str], dt.date | None]:
        if key.startswith("payment:"):
            payment = self.get(entity="payment", record_id=key.removeprefix("payment:"))
            applied = payment_applications(payment or {})
            if not applied:
                return [], None  # a payment applied to nothing (yet): nothing to reflect
            return list(dict.fromkeys(p.invoice_id for p in applied)), applied[0].applied_on
        if key.startswith("invoice:"):
            return [key.removeprefix("invoice:")], None
        found = self.lookup(entity="invoice", key=key)
        return ([found.external_id] if found else []), None

    def ledger_invoices(self, *, project_key: str = "", invoice_id: str = "") -> list[LedgerInvoice]:
        if invoice_id:
            record = self.get(entity="invoice", record_id=invoice_id)
            records = [record] if record else []
        else:
            where = {"custbody_project_key": project_key} if project_key else None
            records = [
                r
                for r in (
                    self.get(entity="invoice", record_id=str(row["id"]))
                    for row in records_checked(
                        self.read("invoice", where=where), ROW_SHAPE, what="NetSuite sent an invoice row"
                    )
                )
                if r
            ]
        return self.ledger_build(records, every_payment=not (project_key or invoice_id))

    def ledger_build(
        self, records: list[dict[str, Any]], *, names: dict[str, str] | None = None, every_payment: bool = True
    ) -> list[LedgerInvoice]:
        """Invoice records already read (REST, with sublists) as canonical invoices, with the
        payments applied to them: all the account's payments (`every_payment`, a full read) or
        those of these invoices' customers. `names`: customer names the caller has read."""
        if not records:
            return []
        customers = sorted({_ref(r.get("entity"))[0] for r in records} - {""})
        # The invoice record does not list what was applied to it; the payments' apply lines do.
        payments = self._applications(None if every_payment else customers)
        names = names if names is not None else self._customer_names(customers)
        return [
            ledger_invoice(r, payments=payments, customer_name=names.get(_ref(r.get("entity"))[0], "")) for r in records
        ]

    def _applications(self, customers: list[str] | None) -> list[PaymentApplied]:
        where = {"entity": customers} if customers is not None else None
        if customers == []:
            return []
        out: list[PaymentApplied] = []
        for row in records_checked(self.read("payment", where=where), ROW_SHAPE, what="NetSuite sent a payment row"):
            payment = self.get(entity="payment", record_id=str(row["id"]))
            out.extend(payment_applications(payment or {}))
        return out

    def _customer_names(self, customers: list[str]) -> dict[str, str]:
        if not customers:
            return {}
        return {
            str(row["id"]): str(row.get("companyname") or row.get("entityid") or "")
            for row in records_checked(
                self.read("customer", where={"id": customers}),
                CUSTOMER_ROW_SHAPE,
                what="NetSuite sent a customer",
                id_field="id",
            )
        }

    # Inbound: NetSuite polls -------------------------------------------------------------------
    def verify_webhook(self, *, headers: dict[str, str], body: bytes, now: dt.datetime) -> str:
        raise WebhookRejected(404, "NetSuite does not push changes; this connection polls")

    def parse_webhook(self, *, event_id: str, body: bytes) -> list[InboundChange]:
        raise WebhookRejected(404, "NetSuite does not push changes; this connection polls")

    def poll(self, *, cursor: str) -> tuple[list[InboundChange], str]:
        """Changes since `cursor`: a JSON object of record type -> [last lastModifiedDate, last id]."""
        try:
            positions: dict[str, list[Any]] = json.loads(cursor) if cursor else {}
        except ValueError:
            positions = {}
        if not isinstance(positions, dict):
            positions = {}
        changes: list[InboundChange] = []
        for record_type in self.watched:
            found, positions[record_type] = self._poll_type(record_type, positions.get(record_type))
            changes.extend(found)
        return changes, json.dumps(positions, sort_keys=True)

    def _poll_type(self, record_type: str, position: list[Any] | None) -> tuple[list[InboundChange], list[Any]]:
        self._about(record_type)
        table, kind = self.suiteql_sources[record_type]
        stamp, last_id = (position or ["1970-01-01 00:00:00", 0])[:2]
        changes: list[InboundChange] = []
        while len(changes) < self.max_poll_rows:
            # Keyset paging: each page starts after the last row seen, so a record modified while we
            # page moves behind the cursor instead of shifting an offset and hiding another one.
            after = f"TO_DATE({_literal(stamp)}, '{_STAMP_MODEL}')"
            conditions = [
                f"(lastmodifieddate > {after} OR (lastmodifieddate = {after} AND id > {int(last_id)}))",
            ]
            if kind:
                conditions.insert(0, f"type = {_literal(kind)}")
            # The table comes from suiteql_sources and every value is an escaped literal.
            columns = f"id, externalid, subsidiary, TO_CHAR(lastmodifieddate, '{_STAMP_MODEL}') AS modified"
            where = " AND ".join(conditions)
            query = f"SELECT {columns} FROM {table} WHERE {where} ORDER BY lastmodifieddate, id"  # noqa: S608  # nosec B608  # identifiers are fixed or checked names, values are bound or escaped literals
            result = self._query(
                self.url(self.suiteql_path), query, {"limit": min(self.page_size, self.max_poll_rows), "offset": 0}
            )
            settled_before = _server_time(result.headers) - self.settle_seconds
            page = payload_check(result.body, SUITEQL_PAGE_SHAPE, what="NetSuite sent a page of changes")
            for row in records_checked(
                page["items"],
                POLL_ROW_SHAPE,
                what=sent("NetSuite", f"{self.labels.get(record_type, record_type)} change"),
                id_field="id",
            ):
                try:
                    modified = dt.datetime.strptime(row["modified"], _STAMP).replace(tzinfo=dt.UTC)
                    int(row["id"])
                except ValueError:
                    label = self.labels.get(record_type, record_type)
                    raise MalformedRecord(
                        f"{sent('NetSuite', label + ' change')} ({row['id']}) we cannot read: "
                        f"modified {row['modified']!r:.40} is not a date and time, or id is not a number"
                    ) from None
                if modified.timestamp() > settled_before:
                    return changes, [stamp, last_id]  # still settling: the next poll takes it
                changes.append(self._change(record_type, row, modified))
                stamp, last_id = row["modified"], int(row["id"])
            if not page.get("hasMore"):
                break
        return changes, [stamp, last_id]

    def change_subject(self, change: InboundChange) -> c.ChangeSubject:
        """An invoice or a customer payment changed in the ledger. The key is the invoice's (ours,
        else its internal id) or the payment's: ledger_locate reads them back."""
        record_type = change.payload.get("record_type")
        if record_type == "invoice":
            key = change.payload.get("external_id") or f"invoice:{change.payload.get('id')}"
            return c.ChangeSubject(record=c.INVOICE, action="changed", key=key)
        if record_type == "customerPayment":
            return c.ChangeSubject(record=c.PAYMENT, action="changed", key=f"payment:{change.payload.get('id')}")
        return c.ChangeSubject()

    # Canonical records -------------------------------------------------------------------------
    def references(self, purpose: str, **links: Any) -> dict[str, Any]:
        if purpose == c.CONTRACT:
            return {"entity": {"id": links["customer_id"]}}
        if purpose == c.INVOICE:
            return {"entity": {"id": links["customer_id"]}, "item": {"items": links["lines"]}}
        return {}

    # Schema governance -------------------------------------------------------------------------
    def describe_record(self, entity: str) -> RecordShape:
        """The metadata catalog's JSON schema of the record type (`GET record/v1/metadata-catalog/
        {type}` with Accept: application/schema+json): a property's JSON type and format, its
        enum, and the schema's `required` list."""
        record_type = self.record_type(entity)
        body = self.send(
            "GET",
            f"{self.record_root}/metadata-catalog/{record_type}",
            headers={"Accept": "application/schema+json"},
        ).body
        schema = payload_check(body, CATALOG_SHAPE, what=f"NetSuite's metadata catalog for {record_type}")
        required = {str(name) for name in schema.get("required") or []}
        fields = []
        for name, prop in schema["properties"].items():
            prop = payload_check(prop, CATALOG_PROPERTY_SHAPE, what=f"NetSuite's schema of {record_type}.{name}")
            json_type, fmt = str(prop.get("type") or "string"), str(prop.get("format") or "")
            values = tuple(str(v) for v in prop.get("enum") or [])
            if values:
                kind = PICKLIST
            elif json_type == "object" and "id" in (prop.get("properties") or {}):
                kind = REFERENCE
            elif json_type == "string" and fmt in CATALOG_FORMATS:
                kind = CATALOG_FORMATS[fmt]
            else:
                kind = CATALOG_KINDS.get(json_type, TEXT)
            vendor_type = f"{json_type} ({fmt})" if fmt else json_type
            fields.append(FieldShape(str(name), kind, vendor_type, name in required, values))
        return shape_of(record_type, fields)

    def shape(self, purpose: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The contract value goes on one line of the service item the mapping chose."""
        if purpose != c.CONTRACT:
            return fields
        fields.pop("service_line_check", None)  # a check some mappings make, never stored
        item_id = fields.pop("service_item", None)
        amount = fields.pop("contract_amount", None)
        if item_id is not None and amount is not None:
            fields["item"] = {
                "items": [
                    {
                        "item": {"id": str(item_id)},
                        "quantity": 1,
                        "rate": float(Decimal(amount)),
                        "amount": float(Decimal(amount)),
                    }
                ]
            }
        return fields

    def record_url(self, record: str, external_id: str) -> str:
        base = self.connection.base_url.rstrip("/")
        if record == c.CUSTOMER:
            return f"{base}/app/common/entity/custjob.nl?id={external_id}"
        return f"{base}/app/accounting/transactions/transaction.nl?id={external_id}"

    def customers_named(self, name: str) -> list[dict[str, str]]:
        rows = self.read("customer", where={"companyname": name})
        return [{"id": str(r.get("id")), "key": r.get("externalid") or ""} for r in rows]

    def invoice_lines(
        self, items: list[dict[str, Any]], *, batch_date: str, value_maps: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """One line per item, on the service item the invoice mapping's `line_item` table names
        for its kind, carrying the PSA item it bills and its revenue dates."""
        return [
            {
                "item": {"id": str(value_maps.get("line_item", {}).get(item["kind"], "55"))},
                "quantity": float(item["quantity"]),
                "rate": float(item["unit_price"]),
                "amount": float(item["amount"]),
                "description": item["label"],
                "custcol_source_ref": item["id"],
                "custcol_source_record": item["source_id"],
                "revRecStartDate": item["date"] or batch_date,
                "revRecEndDate": item["date"] or batch_date,
            }
            for item in items
        ]

    # Reconciliation -------------------------------------------------------------------------
    def erp_holdings(self, *, currency: str, value_maps: dict[str, dict[str, str]]) -> h.ErpHoldings:
        """Customers, sales orders (contracts) and invoices with their lines and ledger state."""
        # The firm's mapping value maps are read first; NetSuite's standard ids only fill gaps.
        currencies = {v: k for k, v in value_maps.get("currency", {}).items()}
        currencies = {**CURRENCIES, **currencies}
        customers: dict[str, h.ErpCustomer] = {}
        customer_keys: dict[str, str] = {}
        for row in records_checked(
            self.read("customer"), CUSTOMER_ROW_SHAPE, what="NetSuite sent a customer", id_field="id"
        ):
            key = row.get("externalid") or f"customer:{row['id']}"
            customer_keys[str(row["id"])] = key
            customers[key] = h.ErpCustomer(
                key=key,
                id=str(row["id"]),
                name=row.get("companyname") or "",
                tax_code=row.get("custentity_tax_code") or "",
                currency=currencies.get(str(row.get("currency") or ""), ""),
            )
        contracts = {}
        for row in records_checked(
            self.read("sales_order"), SALES_ORDER_ROW_SHAPE, what="NetSuite sent a sales order", id_field="id"
        ):
            key = row.get("externalid") or ""
            if not key.startswith("SO-"):
                continue
            version = row.get("custbody_contract_version")
            contracts[key.removeprefix("SO-")] = h.ErpContract(
                key=key,
                id=str(row["id"]),
                amount=h.money(row.get("total")),
                currency=currencies.get(str(row.get("currency") or ""), ""),
                version=int(str(version)) if str(version or "").isdigit() else None,
                subsidiary=str(row.get("subsidiary") or ""),
                modified_on=_us_date(row.get("lastmodifieddate")),
            )
        invoices = []
        bodies = []
        for row in records_checked(self.read("invoice"), ROW_SHAPE, what="NetSuite sent an invoice row"):
            body = payload_check(
                self.send("GET", f"{self.record_root}/invoice/{row['id']}", params={"expandSubResources": "true"}).body,
                INVOICE_SHAPE,
                what=f"NetSuite sent an invoice ({row['id']})",
            )
            bodies.append(body)
            lines = [
                h.ErpLine(
                    ref=str(line.get("custcol_source_ref") or ""),
                    amount=h.money(line.get("amount")),
                    description=str(line.get("description") or ""),
                )
                for line in ((body.get("item") or {}).get("items") or [])
            ]
            invoices.append(
                h.ErpInvoice(
                    id=str(body.get("id")),
                    number=str(body.get("tranId") or ""),
                    key=str(body.get("externalId") or ""),
                    batch_id=str(body.get("custbody_psa_batch") or ""),
                    project_key=str(body.get("custbody_project_key") or ""),
                    customer_id=customer_keys.get(
                        str(_ref_id(body.get("entity"))), f"customer:{_ref_id(body.get('entity'))}"
                    ),
                    date=h.day(body.get("tranDate")),
                    currency=currencies.get(str(_ref_id(body.get("currency")) or ""), ""),
                    subsidiary=str(_ref_id(body.get("subsidiary")) or ""),
                    tax=h.money(body.get("taxTotal")),
                    fx_rate=h.rate(body.get("exchangeRate")),
                    created_at=h.instant(body.get("dateCreated")),
                    lines=lines,
                )
            )
        names = {c.id: c.name for c in customers.values()}
        for invoice, ledger in zip(invoices, self.ledger_build(bodies, names=names), strict=True):
            invoice.ledger = ledger
        return h.ErpHoldings(contracts=contracts, invoices=invoices, customers=customers)

    def _change(self, record_type: str, row: dict[str, Any], modified: dt.datetime) -> InboundChange:
        external_id = row.get("externalid") or ""
        return InboundChange(
            source_event_id=f"{record_type}:{row['id']}:{row['modified']}",
            event_type=f"netsuite.{record_type}.changed",
            flow="",
            business_key=external_id or f"{record_type}:{row['id']}",
            occurred_at=modified,
            payload={
                "record_type": record_type,
                "id": str(row["id"]),
                "external_id": external_id,
                "subsidiary": row.get("subsidiary"),
                "last_modified": modified.isoformat(),
            },
            sequence=int(modified.timestamp()),
        )


def _ref_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


def _us_date(value: Any) -> dt.date | None:
    try:
        month, day_, year = (int(part) for part in str(value).split("/"))
        return dt.date(year, month, day_)
    except ValueError:
        return h.day(value)


def _ref(value: Any) -> tuple[str, str]:
    """(id, refName) of a NetSuite reference or select field, as the REST record writes it
    ({"id", "refName"}) or as a flat value (SuiteQL rows, older payloads)."""
    if isinstance(value, dict):
        return str(value.get("id") or ""), str(value.get("refName") or "")
    return ("", "") if value in (None, "") else (str(value), str(value))


def _amount(value: Any) -> Decimal:
    try:
        return Decimal(str(value if value not in (None, "") else 0)).quantize(Decimal("0.01"))
    except InvalidOperation:
        return Decimal("0.00")


def _date(value: Any) -> dt.date | None:
    text = str(value or "").strip()
    try:
        if "/" in text:  # the account's date format in SuiteQL rows: M/D/YYYY
            month, day, year = (int(part) for part in text.split("/"))
            return dt.date(year, month, day)
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        return None


def invoice_status(record: dict[str, Any]) -> str:
    """NetSuite's invoice state in ledger words: voided first, then the approval (only an
    approved invoice is posted), then paid or partly paid from the amount remaining."""
    status_id, status_name = _ref(record.get("status"))
    words = {status_id.lower(), status_name.lower()}
    if words & STATUS_VOIDED or record.get("voided") is True:
        return InvoiceStatus.VOIDED
    approval_id, approval_name = _ref(record.get("approvalStatus"))
    if approval_id or approval_name:
        if approval_id == APPROVAL_REJECTED or approval_name.lower() == "rejected":
            return InvoiceStatus.DRAFT  # sent back to whoever raised it: not posted, not pending
        if approval_id != APPROVAL_APPROVED and approval_name.lower() != "approved":
            return InvoiceStatus.PENDING_APPROVAL
    elif words & STATUS_PENDING:
        return InvoiceStatus.PENDING_APPROVAL
    elif words & STATUS_REJECTED:
        return InvoiceStatus.DRAFT
    total = _amount(record.get("total"))
    remaining = _amount(record.get("amountRemaining", record.get("total")))
    if total > 0 and remaining <= 0:
        return InvoiceStatus.PAID
    if remaining < total:
        return InvoiceStatus.PARTLY_PAID
    return InvoiceStatus.POSTED


def payment_applications(payment: dict[str, Any]) -> list[PaymentApplied]:
    """A customerPayment's `apply` lines that are applied, each as one application dated on the
    payment's date (NetSuite applies a payment on its transaction date; the line's applyDate is
    the invoice's date, not the application's)."""
    out = []
    on = _date(payment.get("tranDate") or payment.get("trandate"))
    for line in (payment.get("apply") or {}).get("items", []) or []:
        if not isinstance(line, dict) or line.get("apply") is False:
            continue
        doc, _ = _ref(line.get("doc"))
        amount = _amount(line.get("amount"))
        if doc and amount:
            out.append(
                PaymentApplied(
                    payment_id=str(payment.get("id") or ""),
                    invoice_id=doc,
                    amount=amount,
                    applied_on=on,
                    reference=str(payment.get("tranId") or payment.get("id") or ""),
                )
            )
    return out


def ledger_invoice(
    record: dict[str, Any], *, payments: Iterable[PaymentApplied] = (), customer_name: str = ""
) -> LedgerInvoice:
    """A NetSuite invoice record (REST, with sublists) as a canonical invoice."""
    currency_id, currency_name = _ref(record.get("currency"))
    status = invoice_status(record)
    status_id, status_name = _ref(record.get("status"))
    approval = _ref(record.get("approvalStatus"))[1]
    total = _amount(record.get("total"))
    tran_date = _date(record.get("tranDate") or record.get("trandate"))
    customer_id, customer_ref = _ref(record.get("entity"))
    return LedgerInvoice(
        id=str(record["id"]),
        number=str(record.get("tranId") or record["id"]),
        key=str(record.get("externalId") or ""),
        project_key=str(record.get("custbody_project_key") or ""),
        batch_key=str(record.get("custbody_psa_batch") or ""),
        customer_id=customer_id,
        customer_name=customer_name or (customer_ref if customer_ref != customer_id else ""),
        currency=CURRENCIES.get(currency_id, currency_name if len(currency_name) == 3 else ""),
        total=total,
        tax=_amount(record.get("taxTotal")),
        # Only a posted invoice is owed: a pending one is not in receivables, a voided one is reversed.
        open_balance=_amount(record.get("amountRemaining", record.get("total")))
        if status in InvoiceStatus.POSTED_STATES
        else Decimal("0.00"),
        status=status,
        source_status=" · ".join(w for w in (status_name or status_id, approval) if w),
        invoice_date=tran_date,
        due_date=_date(record.get("dueDate")) or tran_date,
        # NetSuite posts an approved invoice on its transaction date (its posting period follows it).
        posting_date=tran_date if status in InvoiceStatus.POSTED_STATES | InvoiceStatus.REVERSED_STATES else None,
        payments=tuple(p for p in payments if p.invoice_id == str(record["id"])),
    )


def _error_code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("o:errorDetails"), list) and body["o:errorDetails"]:
        first = body["o:errorDetails"][0]
        if isinstance(first, dict):
            return str(first.get("o:errorCode", ""))
    return ""


def _link(body: dict[str, Any], rel: str) -> str | None:
    for link in body.get("links", []):
        if isinstance(link, dict) and link.get("rel") == rel:
            return link.get("href")
    return None


def _server_time(headers: dict[str, str]) -> float:
    """NetSuite's clock from the Date header (ours if it is missing), for the settle window."""
    value = headers.get("date") or headers.get("Date")
    if value:
        try:
            return email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()
