"""A simulator of Microsoft Dynamics 365 Business Central API v2.0 (and the Entra ID token endpoint).

It speaks the protocol a real BC online tenant speaks, so the connector works unchanged when a
connection is pointed at api.businesscentral.dynamics.com (see docs/sandboxes/businesscentral.md):

  POST /{tenant}/oauth2/v2.0/token                           Entra client-credentials token (form post)
  GET  /{tenant}/v2.0/.well-known/openid-configuration       Entra tenant discovery (for MSAL)
  /v2.0/{tenant}/{environment}/api/v2.0/companies            the companies of the environment
  .../companies({id})/customers | salesInvoices | salesInvoiceLines | projects
                     | customerPaymentJournals | customerPayments        OData v4 collections
  .../salesInvoices({id})/salesInvoiceLines                  lines of one invoice (navigation)
  .../customerPaymentJournals({id})/customerPayments         lines of one payment journal
  .../salesInvoices({id})/Microsoft.NAV.post                 post a draft invoice (204)
  .../salesInvoices({id})/Microsoft.NAV.cancel               cancel a posted unpaid invoice (204): Canceled
  .../currencyExchangeRates | companyInformation             read-only; rates of the sandboxes' market
                                                             (fx.py) against the company's currency
  /v2.0/{tenant}/{environment}/api/v2.0/subscriptions        webhook subscriptions
  /v2.0/{tenant}/{environment}/api/v2.0/$metadata            the OData CSDL (EDMX XML) of every entity
                                                             set: properties, types, enums, nullability

OData: @odata.context, @odata.etag, value arrays, @odata.nextLink paging with
`Prefer: odata.maxpagesize=N`, $filter (eq ne gt ge lt le, and, or, not, parentheses), $top,
$skip, $select, $expand=salesInvoiceLines. PATCH and DELETE need If-Match (an etag or *).
Errors are {"error": {"code", "message"}} with BC's codes; messages end with a correlation id.

Sandbox-only settings ride on the shared fault API as inert rules (they never fire as faults):
  {"notification_delay_seconds": 30}   BC waits 30 s to coalesce changes; the sandbox 0.5 s
  {"collection_threshold": 1000}       more changes than this in one window: one `collection` item
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from connectors.sandboxes import fx
from connectors.sandboxes.base import BadRequest, FieldDef, Request, Response
from connectors.sandboxes.base import serve as base_serve
from connectors.sandboxes.odata import EDM, TENANT, EntraSandbox, Filter, origin, parse_instant, server_page

ENVIRONMENTS = ("production",)
RESOURCE = "https://api.businesscentral.dynamics.com"  # tokens are asked for RESOURCE/.default
CURRENCIES = ("GBP", "USD", "EUR", "CAD", "AUD")
MAX_PAGE_SIZE = 20000  # BC online's server-driven page size
SUBSCRIPTION_DAYS = 3
COMPANIES = (
    {"id": "5d2f7c8e-0000-4a1b-9c00-000000000001", "name": "CRONUS UK Ltd.", "currency": "GBP"},
    {"id": "5d2f7c8e-0000-4a1b-9c00-000000000002", "name": "CRONUS USA, Inc.", "currency": "USD"},
)
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
API = r"/v2\.0/(?P<tenant>[^/]+)/(?P<env>[^/]+)/api/v2\.0"
COMPANY = API + r"/companies\((?P<cid>[^)]*)\)"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class EntitySet:
    """One OData entity set: its fields (name -> type), what clients may not write, its business key."""

    name: str
    type_name: str  # Microsoft.NAV.<type_name>, as BC names it in messages
    table: str  # the BC table, as BC names it in messages
    fields: dict[str, str]  # str:<max length> | num | int | bool | date | datetime | guid | enum:A|B
    readonly: frozenset[str]
    key_field: str  # the business key the journal counts writes by
    webhooks: bool = False


ENTITY_SETS: dict[str, EntitySet] = {
    s.name: s
    for s in (
        EntitySet(
            "customers",
            "customer",
            "Customer",
            {
                "id": "guid",
                "number": "str:20",
                "displayName": "str:100",
                "type": "enum:Company|Person",
                "addressLine1": "str:100",
                "addressLine2": "str:50",
                "city": "str:30",
                "state": "str:30",
                "country": "str:10",
                "postalCode": "str:20",
                "phoneNumber": "str:30",
                "email": "str:80",
                "website": "str:80",
                "salespersonCode": "str:20",
                "balanceDue": "num",
                "creditLimit": "num",
                "taxLiable": "bool",
                "taxRegistrationNumber": "str:20",
                "currencyCode": "str:10",
                "paymentTermsId": "guid",
                "blocked": "enum: |Ship|Invoice|All",
                "lastModifiedDateTime": "datetime",
            },
            frozenset({"id", "balanceDue", "lastModifiedDateTime"}),
            "number",
            webhooks=True,
        ),
        EntitySet(
            "salesInvoices",
            "salesInvoice",
            "Sales Header",
            {
                "id": "guid",
                "number": "str:20",
                "externalDocumentNumber": "str:35",
                "invoiceDate": "date",
                "postingDate": "date",
                "dueDate": "date",
                "customerPurchaseOrderReference": "str:35",
                "customerId": "guid",
                "customerNumber": "str:20",
                "customerName": "str:100",
                "currencyCode": "str:10",
                "pricesIncludeTax": "bool",
                "salesperson": "str:20",
                "discountAmount": "num",
                "totalAmountExcludingTax": "num",
                "totalTaxAmount": "num",
                "totalAmountIncludingTax": "num",
                "remainingAmount": "num",
                "status": "enum:Draft|In Review|Open|Paid|Canceled|Corrective",
                "lastModifiedDateTime": "datetime",
            },
            frozenset(
                {
                    "id",
                    "number",
                    "customerName",
                    "totalAmountExcludingTax",
                    "totalTaxAmount",
                    "totalAmountIncludingTax",
                    "remainingAmount",
                    "status",
                    "lastModifiedDateTime",
                }
            ),
            "externalDocumentNumber",
            webhooks=True,
        ),
        EntitySet(
            "salesInvoiceLines",
            "salesInvoiceLine",
            "Sales Line",
            {
                "id": "guid",
                "documentId": "guid",
                "sequence": "int",
                "itemId": "guid",
                "accountId": "guid",
                "lineType": "enum:Comment|Account|Item|Resource|Fixed Asset|Charge",
                "lineObjectNumber": "str:20",
                "description": "str:100",
                "unitOfMeasureCode": "str:10",
                "quantity": "num",
                "unitPrice": "num",
                "discountAmount": "num",
                "discountPercent": "num",
                "amountExcludingTax": "num",
                "totalTaxAmount": "num",
                "amountIncludingTax": "num",
                "netAmount": "num",
            },
            frozenset({"id", "amountExcludingTax", "totalTaxAmount", "amountIncludingTax", "netAmount"}),
            "sequence",
        ),
        EntitySet(
            "projects",
            "project",
            "Job",
            {"id": "guid", "number": "str:20", "displayName": "str:100"},
            frozenset({"id"}),
            "number",
        ),
        EntitySet(
            "customerPaymentJournals",
            "customerPaymentJournal",
            "Gen. Journal Batch",
            {
                "id": "guid",
                "code": "str:10",
                "displayName": "str:100",
                "balancingAccountNumber": "str:20",
                "lastModifiedDateTime": "datetime",
            },
            frozenset({"id", "lastModifiedDateTime"}),
            "code",
            webhooks=True,
        ),
        EntitySet(
            "customerPayments",
            "customerPayment",
            "Gen. Journal Line",
            {
                "id": "guid",
                "journalId": "guid",
                "journalDisplayName": "str:10",
                "lineNumber": "int",
                "customerId": "guid",
                "customerNumber": "str:20",
                "postingDate": "date",
                "documentNumber": "str:20",
                "externalDocumentNumber": "str:35",
                "amount": "num",
                "appliesToInvoiceId": "guid",
                "appliesToInvoiceNumber": "str:20",
                "description": "str:100",
                "comment": "str:250",
                "lastModifiedDateTime": "datetime",
            },
            frozenset({"id", "journalDisplayName", "lastModifiedDateTime"}),
            "externalDocumentNumber",
        ),
        EntitySet(
            "currencyExchangeRates",
            "currencyExchangeRate",
            "Currency Exchange Rate",
            {
                "id": "guid",
                "currencyCode": "str:10",
                "startingDate": "date",
                "exchangeRateAmount": "num",
                "relationalCurrencyCode": "str:10",
                "relationalExchangeRateAmount": "num",
                "lastModifiedDateTime": "datetime",
            },
            frozenset(
                {
                    "id",
                    "currencyCode",
                    "startingDate",
                    "exchangeRateAmount",
                    "relationalCurrencyCode",
                    "relationalExchangeRateAmount",
                    "lastModifiedDateTime",
                }
            ),
            "id",
        ),
        EntitySet(
            "companyInformation",
            "companyInformation",
            "Company Information",
            {
                "id": "guid",
                "displayName": "str:100",
                "currencyCode": "str:10",
                "currentFiscalYearStartDate": "date",
                "lastModifiedDateTime": "datetime",
            },
            frozenset({"id", "displayName", "currencyCode", "currentFiscalYearStartDate", "lastModifiedDateTime"}),
            "id",
        ),
    )
}
# Read-only sets computed on each request rather than stored: the company's information and the
# exchange rates of the sandboxes' currency market (connectors/sandboxes/fx.py).
COMPUTED = ("currencyExchangeRates", "companyInformation")
# Navigation properties: parent set -> (child set, the child's field that points at the parent).
CHILDREN = {
    "salesInvoices": ("salesInvoiceLines", "documentId"),
    "customerPaymentJournals": ("customerPayments", "journalId"),
}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_etag() -> str:
    """BC's weak etags wrap a base64 row version; clients must treat them as opaque."""
    version = str(secrets.randbits(60))
    return 'W/"' + base64.b64encode(f"'{len(version)};{version};00;'".encode()).decode() + '"'


# The sandbox ------------------------------------------------------------------------------------
class BusinessCentralSandbox(EntraSandbox):
    name = "businesscentral"

    def __init__(self, state_dir: Path | None) -> None:
        # One writer at a time: BC's tables enforce unique numbers, so check-then-insert must be atomic.
        self.write_lock = threading.RLock()
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.pending_lock = threading.Lock()
        super().__init__(state_dir)
        with self.store.lock:
            for field_name in ("number", "externalDocumentNumber"):
                index = f"bc_{field_name}"
                expression = f"json_extract(data, '$.{field_name}')"
                self.store.db.execute(f"CREATE INDEX IF NOT EXISTS {index} ON records (object, {expression})")
        self.seed()

    # Errors in BC's shape ----------------------------------------------------------------------
    DEFAULT_CODES = {
        400: "BadRequest",
        401: "Authentication_InvalidCredentials",
        403: "Authorization_InsufficientPermissions",
        404: "BadRequest_NotFound",
        405: "BadRequest_MethodNotAllowed",
        409: "Request_EntityChanged",
        412: "Request_EntityChanged",
        429: "Application_TooManyRequests",
    }
    GENERIC_CODES = {"METHOD_NOT_ALLOWED": "BadRequest_MethodNotAllowed", "NOT_FOUND": "BadRequest_NotFound"}

    def error(self, status: int, message: str, *, code: str = "", field_name: str = "") -> Response:
        code = self.GENERIC_CODES.get(code, code) or self.DEFAULT_CODES.get(status, "Internal_ServerError")
        if code == "BadRequest_NotFound" and message.startswith("the requested resource does not exist"):
            message = f"No HTTP resource was found that matches the request URI '{message.rsplit(': ', 1)[-1]}'."
        text = f"{message}  CorrelationId:  {uuid.uuid4()}."
        return Response(status, {"error": {"code": code, "message": text}})

    def unauthorised(self) -> Response:
        response = self.error(401, "The credentials provided are incorrect", code="Authentication_InvalidCredentials")
        response.headers["WWW-Authenticate"] = (
            f'Bearer authorization_uri="https://login.microsoftonline.com/{TENANT}/oauth2/authorize", '
            'resource_id="https://api.businesscentral.dynamics.com"'
        )
        return response

    def rate_limited(self, retry_after: int) -> Response:
        response = self.error(429, "Too many requests reached.", code="Application_TooManyRequests")
        response.headers["Retry-After"] = str(retry_after)
        return response

    # Routes ------------------------------------------------------------------------------------
    def setup_routes(self) -> None:
        super().setup_routes()  # the Entra ID token endpoint
        self.route("GET", API + r"/\$metadata", self.metadata)
        self.route("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", self.discovery, auth=False)
        self.route("GET", API + r"/companies", self.companies)
        self.route("GET", COMPANY, self.company)
        self.route("GET", API + r"/subscriptions", self.subscriptions_list)
        self.route("POST", API + r"/subscriptions", self.subscription_create)
        sub = API + r"/subscriptions\((?P<sid>[^)]*)\)"
        self.route("GET", sub, self.subscription_get)
        self.route("PATCH", sub, self.subscription_renew)
        self.route("DELETE", sub, self.subscription_delete)
        self.route("POST", COMPANY + r"/salesInvoices\((?P<id>[^)]*)\)/Microsoft\.NAV\.post", self.invoice_post)
        self.route("POST", r"/_sandbox/rates", lambda request: fx.rates_set(self.store, request), auth=False)
        self.route("DELETE", r"/_sandbox/rates", lambda request: fx.rates_clear(self.store, request), auth=False)
        self.route("POST", COMPANY + r"/salesInvoices\((?P<id>[^)]*)\)/Microsoft\.NAV\.cancel", self.invoice_cancel)
        one = COMPANY + r"/(?P<set>[A-Za-z]+)\((?P<id>[^)]*)\)"
        self.route("GET", one + r"/(?P<sub>[A-Za-z]+)", self.collection_get)
        self.route("POST", one + r"/(?P<sub>[A-Za-z]+)", self.collection_post)
        self.route("GET", one + r"/(?P<sub>[A-Za-z]+)\((?P<subid>[^)]*)\)", self.entity_get)
        self.route("PATCH", one + r"/(?P<sub>[A-Za-z]+)\((?P<subid>[^)]*)\)", self.entity_patch)
        self.route("DELETE", one + r"/(?P<sub>[A-Za-z]+)\((?P<subid>[^)]*)\)", self.entity_delete)
        self.route("GET", one, self.entity_get)
        self.route("PATCH", one, self.entity_patch)
        self.route("DELETE", one, self.entity_delete)
        self.route("GET", COMPANY + r"/(?P<set>[A-Za-z]+)", self.collection_get)
        self.route("POST", COMPANY + r"/(?P<set>[A-Za-z]+)", self.collection_post)

    def entity_fields(self, entity: EntitySet) -> list[FieldDef]:
        """An entity set's properties as $metadata declares them, with /_sandbox/schema changes."""
        declared = []
        for name, field_type in entity.fields.items():
            base, _, arg = field_type.partition(":")
            values = tuple(arg.split("|")) if base == "enum" else ()
            declared.append(FieldDef(name, EDM[base], name == "id", values))
        return self.schema_fields(entity.name, declared)

    def metadata(self, request: Request) -> Response:
        """OData CSDL (EDMX 4.0) for the API: one EntityType per entity set, enums as EnumTypes
        whose member names encode spaces as _x0020_ (as BC does), Nullable="false" where required."""
        types, enums, sets = [], [], []
        for entity in ENTITY_SETS.values():
            props = []
            for f in self.entity_fields(entity):
                edm_type = f.type
                if f.values:
                    enum_name = f"{entity.type_name}_{f.name}"
                    members = "".join(
                        f'<Member Name="{_xml(v.replace(" ", "_x0020_") or "_x0020_")}" Value="{i}"/>'
                        for i, v in enumerate(f.values)
                    )
                    enums.append(f'<EnumType Name="{enum_name}">{members}</EnumType>')
                    edm_type = f"Microsoft.NAV.{enum_name}"
                nullable = "" if not f.required else ' Nullable="false"'
                props.append(f'<Property Name="{_xml(f.name)}" Type="{_xml(edm_type)}"{nullable}/>')
            key = '<Key><PropertyRef Name="id"/></Key>'
            types.append(f'<EntityType Name="{entity.type_name}">{key}{"".join(props)}</EntityType>')
            sets.append(f'<EntitySet Name="{entity.name}" EntityType="Microsoft.NAV.{entity.type_name}"/>')
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
            '<edmx:DataServices><Schema Namespace="Microsoft.NAV" xmlns="http://docs.oasis-open.org/odata/ns/edm">'
            + "".join(enums)
            + "".join(types)
            + '<EntityContainer Name="NAV">'
            + "".join(sets)
            + "</EntityContainer></Schema></edmx:DataServices></edmx:Edmx>"
        )
        return Response(200, raw=xml.encode(), headers={"Content-Type": "application/xml"})

    def handle(self, request: Request) -> Response | None:
        # Tenant and environment are checked before anything else, as BC's front door does.
        match = re.match(API, request.path)
        if match and match["tenant"] != TENANT:
            return self.unauthorised()
        if match and match["env"] not in ENVIRONMENTS:
            return self.error(
                404, f"Environment '{match['env']}' does not exist for tenant '{TENANT}'.", code="BadRequest_NotFound"
            )
        return super().handle(request)

    def _reset(self, request: Request) -> Response:
        response = super()._reset(request)
        with self.pending_lock:
            self.pending.clear()
        self.seed()
        return response

    def seed(self) -> None:
        """Two companies (a UK one in GBP, a US one in USD), each with a cash receipts journal."""
        with self.write_lock:
            for company in COMPANIES:
                if self.store.get("companies", company["id"]) is not None:
                    continue
                stamp = now_iso()
                self.store.put(
                    "companies",
                    company["id"],
                    {
                        "id": company["id"],
                        "systemVersion": "24.0.16410.18040",
                        "name": company["name"],
                        "displayName": company["name"],
                        "businessProfileId": "",
                        "systemCreatedAt": stamp,
                        "systemCreatedBy": "00000000-0000-0000-0000-000000000001",
                        "systemModifiedAt": stamp,
                        "systemModifiedBy": "00000000-0000-0000-0000-000000000001",
                        "_currency": company["currency"],
                        "_etag": new_etag(),
                    },
                )
                journal = {"code": "CASHRCPT", "displayName": "Cash receipts", "balancingAccountNumber": "2910"}
                self._insert(company["id"], ENTITY_SETS["customerPaymentJournals"], journal)

    # Auth: the Entra ID token endpoint (connectors/sandboxes/odata.py) ----------------------------
    token_roles = ("API.ReadWrite.All", "Automation.ReadWrite.All")

    def token_resource(self, request: Request) -> str:
        return RESOURCE

    def discovery(self, request: Request) -> Response:
        base = f"{origin(request)}/{request.params['tenant']}"
        return Response(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "tenant_region_scope": "EU",
            },
        )

    # Helpers -------------------------------------------------------------------------------------
    def _api_root(self, request: Request) -> str:
        return f"{origin(request)}/v2.0/{request.params['tenant']}/{request.params['env']}/api/v2.0"

    def _company(self, request: Request) -> dict[str, Any]:
        cid = request.params["cid"].strip("'").lower()
        if not GUID.match(cid):
            raise BadRequest(f"Invalid GUID '{cid}'.", code="Application_InvalidGUID")
        company = self.store.get("companies", cid)
        if company is None:
            raise BadRequest(f"Cannot process the request because the company '{cid}' does not exist.", status=404,
                             code="Internal_CompanyNotFound")  # fmt: skip
        return company

    @staticmethod
    def _entity_set(name: str) -> EntitySet:
        entity = ENTITY_SETS.get(name)
        if entity is None:
            raise BadRequest(
                f"Resource not found for the segment '{name}'.", status=404, code="BadRequest_ResourceNotFound"
            )
        return entity

    @staticmethod
    def _object(cid: str, entity: EntitySet) -> str:
        return f"{entity.name}|{cid}"

    @staticmethod
    def _key(raw: str) -> str:
        key = raw.strip("'").lower()
        if not GUID.match(key):
            raise BadRequest(f"Invalid GUID '{raw}'.", code="Application_InvalidGUID")
        return key

    def _find(self, cid: str, entity: EntitySet, record_id: str) -> dict[str, Any]:
        record = self.store.get(self._object(cid, entity), self._key(record_id))
        if record is None:
            raise BadRequest(
                f"The {entity.table} does not exist. Identification fields and values: Id='{record_id.strip(chr(39))}'",
                status=404,
                code="Internal_RecordNotFound",
            )
        return record

    def _by_field(self, cid: str, entity: EntitySet, field_name: str, value: Any) -> list[dict[str, Any]]:
        if field_name in {"number", "externalDocumentNumber"}:
            with self.store.lock:
                rows = self.store.db.execute(
                    f"SELECT data FROM records WHERE object = ? AND json_extract(data, '$.{field_name}') = ?",  # noqa: S608  # nosec B608  # fixed names
                    (self._object(cid, entity), value),
                ).fetchall()
            found = [json.loads(r[0]) for r in rows]
        else:
            found = self.store.find(self._object(cid, entity), field_name, value)
        return sorted(found, key=lambda r: r["_n"])

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError as exc:
            raise BadRequest(f"The request body is not valid JSON: {exc}.", code="BadRequest") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object with the entity's properties.", code="BadRequest")
        return body

    def _coerce(
        self, entity: EntitySet, body: dict[str, Any], *, allow: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Check every property a client sent against the entity's type; read-only ones are ignored."""
        clean: dict[str, Any] = {}
        problem = self.schema_problem(entity.name, body, creating=False)
        if problem is not None:
            name, kind, message = problem
            if kind == "dropped":
                raise BadRequest(
                    f"The property '{name}' does not exist on type 'Microsoft.NAV.{entity.type_name}'. "
                    "Make sure to only use property names that are defined by the type.",
                    code="BadRequest",
                )
            raise BadRequest(f"{message} ({entity.table})", code="BadRequest")
        for name, value in body.items():
            if name.startswith("@odata.") or name in allow:
                continue
            field_type = entity.fields.get(name)
            if field_type is None:
                raise BadRequest(
                    f"The property '{name}' does not exist on type 'Microsoft.NAV.{entity.type_name}'. "
                    "Make sure to only use property names that are defined by the type.",
                    code="BadRequest",
                )
            if name in entity.readonly:
                continue
            clean[name] = self._check_value(entity, name, field_type, value)
        return clean

    @staticmethod
    def _check_value(entity: EntitySet, name: str, field_type: str, value: Any) -> Any:
        base, _, arg = field_type.partition(":")

        def wrong() -> BadRequest:
            return BadRequest(
                f"Cannot convert the literal '{value}' to the expected type '{EDM[base]}' of property '{name}'.",
                code="BadRequest",
            )

        if value is None:
            return "" if base in {"str", "enum", "date"} else None
        if base == "str":
            if not isinstance(value, str):
                raise wrong()
            if len(value) > int(arg):
                raise BadRequest(
                    f"The length of the string is {len(value)}, but it must be less than or equal to {arg} "
                    f"characters. Value: {value}",
                    code="Application_StringExceededLength",
                )
            return value
        if base == "enum":
            if value not in arg.split("|"):
                raise BadRequest(
                    f'The value "{value}" is not valid for {name} on {entity.table}. Valid values: '
                    + ", ".join(repr(v) for v in arg.split("|")),
                    code="BadRequest",
                )
            return value
        if base in {"num", "int"}:
            if isinstance(value, bool) or not isinstance(value, int | float) or (base == "int" and value != int(value)):
                raise wrong()
            return int(value) if base == "int" else value
        if base == "bool":
            if not isinstance(value, bool):
                raise wrong()
            return value
        if base == "date":
            if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d\d-\d\d", value):
                raise wrong()
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise wrong() from None
            return value
        if base == "guid":
            if not isinstance(value, str) or not GUID.match(value):
                raise BadRequest(f"Invalid GUID '{value}' for property '{name}'.", code="Application_InvalidGUID")
            return value.lower()
        raise wrong()

    @staticmethod
    def _check_if_match(request: Request, record: dict[str, Any]) -> None:
        wanted = request.header("if-match")
        if not wanted:
            raise BadRequest(
                "Could not validate the client concurrency token required by the service. "
                "Please provide a valid token in the client request.",
                code="BadRequest_InvalidToken",
            )
        if wanted.strip() == "*":
            return
        if wanted.strip() != record["_etag"]:
            raise BadRequest("Another user has already changed the record.", status=412, code="Request_EntityChanged")

    def _public(self, record: dict[str, Any], select: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": record["_etag"]}
        for name, value in record.items():
            if name.startswith("_") or (select is not None and name not in select):
                continue
            out[name] = value
        return out

    def _select(self, request: Request, entity: EntitySet) -> list[str] | None:
        raw = request.arg("$select")
        if not raw:
            return None
        names = [n.strip() for n in raw.split(",") if n.strip()]
        for name in names:
            if name not in entity.fields:
                raise BadRequest(
                    f"Could not find a property named '{name}' on type 'Microsoft.NAV.{entity.type_name}'.",
                    code="BadRequest",
                )
        return names

    # Companies -------------------------------------------------------------------------------------
    def companies(self, request: Request) -> Response:
        rows = sorted(self.store.all("companies"), key=lambda c: c["name"])
        context = f"{self._api_root(request)}/$metadata#companies"
        return Response(200, {"@odata.context": context, "value": [self._public(c) for c in rows]})

    def company(self, request: Request) -> Response:
        company = self._company(request)
        context = f"{self._api_root(request)}/$metadata#companies/$entity"
        return Response(200, {"@odata.context": context, **self._public(company)})

    # Collections -----------------------------------------------------------------------------------
    def _scope(self, request: Request) -> tuple[dict[str, Any], EntitySet, tuple[str, str] | None, str]:
        """The company, the entity set addressed, the parent constraint (field, id) and the context path."""
        company = self._company(request)
        cid = company["id"]
        if "sub" in request.params:
            parent_set = self._entity_set(request.params["set"])
            child = CHILDREN.get(parent_set.name)
            if child is None or child[0] != request.params["sub"]:
                raise BadRequest(
                    f"Resource not found for the segment '{request.params['sub']}'.",
                    status=404,
                    code="BadRequest_ResourceNotFound",
                )
            parent = self._find(cid, parent_set, request.params["id"])
            entity = ENTITY_SETS[child[0]]
            path = f"companies({cid})/{parent_set.name}({parent['id']})/{entity.name}"
            return company, entity, (child[1], parent["id"]), path
        entity = self._entity_set(request.params["set"])
        return company, entity, None, f"companies({cid})/{entity.name}"

    def collection_get(self, request: Request) -> Response:
        company, entity, parent, path = self._scope(request)
        select = self._select(request, entity)
        where = Filter(request.arg("$filter") or "", entity) if request.arg("$filter") else None
        simple = where.simple_equality() if where else None
        if entity.name in COMPUTED:
            records = self._computed(company, entity.name)
        elif simple and simple[0] in {"number", "externalDocumentNumber"}:
            records = self._by_field(company["id"], entity, simple[0], simple[1])
        else:
            records = sorted(self.store.all(self._object(company["id"], entity)), key=lambda r: r["_n"])
        if parent is not None:
            records = [r for r in records if r.get(parent[0]) == parent[1]]
        if where is not None:
            records = [r for r in records if where.test(r)]
        page, next_link, headers = server_page(request, records, max_page_size=MAX_PAGE_SIZE)
        expand = "salesInvoiceLines" in (request.arg("$expand") or "") and entity.name == "salesInvoices"
        values = [self._with_lines(company["id"], r, select) if expand else self._public(r, select) for r in page]
        body: dict[str, Any] = {"@odata.context": f"{self._api_root(request)}/$metadata#{path}", "value": values}
        if next_link:
            body["@odata.nextLink"] = next_link
        return Response(200, body, headers)

    def _with_lines(self, cid: str, invoice: dict[str, Any], select: list[str] | None = None) -> dict[str, Any]:
        lines = self.store.find(self._object(cid, ENTITY_SETS["salesInvoiceLines"]), "documentId", invoice["id"])
        out = self._public(invoice, select)
        out["salesInvoiceLines"] = [self._public(line) for line in sorted(lines, key=lambda r: r["sequence"])]
        return out

    def _computed(self, company: dict[str, Any], name: str) -> list[dict[str, Any]]:
        local = company.get("_currency", "")
        if name == "companyInformation":
            return [
                {
                    "id": company["id"],
                    "displayName": company["name"],
                    "currencyCode": local,
                    "currentFiscalYearStartDate": f"{dt.datetime.now(dt.UTC).year}-01-01",
                    "lastModifiedDateTime": company["systemModifiedAt"],
                    "_etag": company["_etag"],
                    "_n": 1,
                }
            ]
        # BC's rates: `exchangeRateAmount` (100) units of the currency = `relationalExchangeRateAmount`
        # units of the local currency (relationalCurrencyCode empty), from startingDate on.
        rows = []
        for day, usd_per in fx.by_day(self.store):
            for code in ("USD", *sorted(usd_per)):
                rate = fx.cross(usd_per, code, local) if code != local else None
                if rate is None:
                    continue
                rows.append(
                    {
                        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{company['id']}/{code}/{day}")),
                        "currencyCode": code,
                        "startingDate": day.isoformat(),
                        "exchangeRateAmount": 100.0,
                        "relationalCurrencyCode": "",
                        "relationalExchangeRateAmount": float(rate * 100),
                        "lastModifiedDateTime": f"{day.isoformat()}T06:00:00Z",
                        "_etag": 'W/"JzE7MDsn"',
                        "_n": len(rows) + 1,
                    }
                )
        return rows

    def collection_post(self, request: Request) -> Response:
        company, entity, parent, path = self._scope(request)
        if entity.name in COMPUTED:
            raise BadRequest(
                f"'POST' requests for '{entity.name}' are not allowed.", status=405, code="BadRequest_MethodNotAllowed"
            )
        body = self._body(request)
        lines = body.pop("salesInvoiceLines", None) if entity.name == "salesInvoices" else None
        fields = self._coerce(entity, body)
        if parent is not None:
            fields[parent[0]] = parent[1]
        with self.write_lock:
            record = self._insert(company["id"], entity, fields, lines=lines)
        key = str(record.get(entity.key_field) or record["id"])
        self.journal_write(request, 201, f"{entity.name}/{key}", True)
        self._changed(company["id"], entity, record, "created")
        expand = lines is not None or "salesInvoiceLines" in (request.arg("$expand") or "")
        out = (
            self._with_lines(company["id"], record)
            if entity.name == "salesInvoices" and expand
            else self._public(record)
        )
        return Response(
            201,
            {"@odata.context": f"{self._api_root(request)}/$metadata#{path}/$entity", **out},
            {"Location": f"{self._api_root(request)}/{path}({record['id']})", "ETag": record["_etag"]},
        )

    def entity_get(self, request: Request) -> Response:
        company, entity, record, path = self._addressed(request)
        select = self._select(request, entity)
        expand = entity.name == "salesInvoices" and "salesInvoiceLines" in (request.arg("$expand") or "")
        out = self._with_lines(company["id"], record, select) if expand else self._public(record, select)
        context = f"{self._api_root(request)}/$metadata#{path}/$entity"
        return Response(200, {"@odata.context": context, **out}, {"ETag": record["_etag"]})

    def entity_patch(self, request: Request) -> Response:
        company, entity, record, path = self._addressed(request)
        body = self._body(request)
        fields = self._coerce(entity, body)
        with self.write_lock:
            record = self._find(company["id"], entity, record["id"])
            self._check_if_match(request, record)
            record = self._update(company["id"], entity, record, fields)
        key = str(record.get(entity.key_field) or record["id"])
        self.journal_write(request, 200, f"{entity.name}/{key}", False)
        self._changed(company["id"], entity, record, "updated")
        context = f"{self._api_root(request)}/$metadata#{path}/$entity"
        return Response(200, {"@odata.context": context, **self._public(record)}, {"ETag": record["_etag"]})

    def entity_delete(self, request: Request) -> Response:
        company, entity, record, _ = self._addressed(request)
        with self.write_lock:
            record = self._find(company["id"], entity, record["id"])
            self._check_if_match(request, record)
            self._remove(company["id"], entity, record)
        key = str(record.get(entity.key_field) or record["id"])
        self.journal_write(request, 204, f"{entity.name}/{key}", False)
        self._changed(company["id"], entity, record, "deleted")
        return Response(204)

    def _addressed(self, request: Request) -> tuple[dict[str, Any], EntitySet, dict[str, Any], str]:
        if "subid" in request.params:
            company, entity, parent, path = self._scope(request)
            record = self._find(company["id"], entity, request.params["subid"])
            if parent is not None and record.get(parent[0]) != parent[1]:
                raise BadRequest(f"The {entity.table} does not exist.", status=404, code="Internal_RecordNotFound")
            return company, entity, record, path
        company = self._company(request)
        entity = self._entity_set(request.params["set"])
        record = self._find(company["id"], entity, request.params["id"])
        return company, entity, record, f"companies({company['id']})/{entity.name}"

    # Business rules per entity (what BC's tables check) ----------------------------------------
    def _insert(self, cid: str, entity: EntitySet, fields: dict[str, Any], *, lines: Any = None) -> dict[str, Any]:
        record: dict[str, Any] = {name: self._default(type_) for name, type_ in entity.fields.items()}
        record.update(fields)
        record["id"] = str(uuid.uuid4())
        company = self.store.get("companies", cid) or {}
        rule = getattr(self, f"_before_{entity.name}", None)
        if rule is not None:
            rule(cid, company, record, None)
        line_records: list[dict[str, Any]] = []
        if lines is not None:
            if not isinstance(lines, list):
                raise BadRequest("salesInvoiceLines must be an array of lines.", code="BadRequest")
            line_set = ENTITY_SETS["salesInvoiceLines"]
            for position, line in enumerate(lines, start=1):
                if not isinstance(line, dict):
                    raise BadRequest("Each sales invoice line must be a JSON object.", code="BadRequest")
                values = {name: self._default(type_) for name, type_ in line_set.fields.items()}
                values |= self._coerce(line_set, line) | {"id": str(uuid.uuid4()), "documentId": record["id"]}
                values["sequence"] = values["sequence"] or position * 10000
                self._line_rules(values, None)
                line_records.append(values)
        self._stamp(record)
        record["_n"] = self.store.next_seq()
        self.store.put(self._object(cid, entity), record["id"], record)
        for line in line_records:
            self._stamp(line)
            line["_n"] = self.store.next_seq()
            self.store.put(self._object(cid, ENTITY_SETS["salesInvoiceLines"]), line["id"], line)
        if line_records:
            record = self._retotal(cid, record["id"])
        if entity.name == "customerPayments":
            self._settle(cid, record.get("appliesToInvoiceId"))
        return record

    def _settle(self, cid: str, invoice_id: str | None) -> None:
        """A payment applied to a posted invoice lowers its remaining amount; at zero it is Paid.
        (BC does this when the payment journal is posted; the sandbox treats journal lines as
        posted when written, so the demo's cash arrives without a separate posting step.)"""
        if not invoice_id or invoice_id.startswith("00000000"):
            return
        invoice_set = ENTITY_SETS["salesInvoices"]
        invoice = self.store.get(self._object(cid, invoice_set), invoice_id)
        if invoice is None or invoice["status"] == "Draft":
            return
        payments = self.store.find(self._object(cid, ENTITY_SETS["customerPayments"]), "appliesToInvoiceId", invoice_id)
        received = -sum(float(p.get("amount") or 0) for p in payments)
        remaining = round(float(invoice["totalAmountIncludingTax"]) - received, 2)
        invoice.update(remainingAmount=max(remaining, 0.0), status="Paid" if remaining <= 0 else "Open")
        self._stamp(invoice)
        self.store.put(self._object(cid, invoice_set), invoice_id, invoice)
        self._changed(cid, invoice_set, invoice, "updated")

    def _update(self, cid: str, entity: EntitySet, record: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        before = dict(record)
        record = {**record, **fields}
        company = self.store.get("companies", cid) or {}
        rule = getattr(self, f"_before_{entity.name}", None)
        if rule is not None:
            rule(cid, company, record, before)
        self._stamp(record)
        self.store.put(self._object(cid, entity), record["id"], record)
        if entity.name == "salesInvoiceLines":
            self._retotal(cid, record["documentId"])
        if entity.name == "customerPayments":
            self._settle(cid, before.get("appliesToInvoiceId"))
            self._settle(cid, record.get("appliesToInvoiceId"))
        return record

    def _remove(self, cid: str, entity: EntitySet, record: dict[str, Any]) -> None:
        if entity.name == "salesInvoices" and record["status"] != "Draft":
            raise BadRequest(
                f"You cannot delete posted sales invoice {record['number']}.", code="Application_DialogException"
            )
        if entity.name == "salesInvoiceLines":
            self._draft_invoice(cid, record["documentId"])
        self.store.delete(self._object(cid, entity), record["id"])
        if entity.name == "salesInvoices":
            line_set = ENTITY_SETS["salesInvoiceLines"]
            for line in self.store.find(self._object(cid, line_set), "documentId", record["id"]):
                self.store.delete(self._object(cid, line_set), line["id"])
        if entity.name == "salesInvoiceLines":
            self._retotal(cid, record["documentId"])

    @staticmethod
    def _default(field_type: str) -> Any:
        base = field_type.split(":", 1)[0]
        if base in {"num", "int"}:
            return 0
        if base == "bool":
            return False
        if base == "guid":
            return "00000000-0000-0000-0000-000000000000"
        if base == "date":
            return "0001-01-01"
        if field_type == "enum: |Ship|Invoice|All":
            return " "
        if base == "enum":
            return field_type.split(":", 1)[1].split("|")[0]
        return ""

    @staticmethod
    def _stamp(record: dict[str, Any]) -> None:
        if "lastModifiedDateTime" in record:
            record["lastModifiedDateTime"] = now_iso()
        record["_etag"] = new_etag()

    def _next_number(self, cid: str, series: str, prefix: str, width: int, start: int) -> str:
        counter = int(self.store.kv_get(f"series|{cid}|{series}", start))
        self.store.kv_set(f"series|{cid}|{series}", counter + 1)
        return f"{prefix}{counter:0{width}d}"

    def _unique_number(
        self, cid: str, entity: EntitySet, record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        if before is not None and before["number"] == record["number"]:
            return
        if any(r["id"] != record["id"] for r in self._by_field(cid, entity, "number", record["number"])):
            raise BadRequest(
                f"The record in table {entity.table} already exists. Identification fields and values: "
                f"No.='{record['number']}'",
                code="Internal_EntityWithSameKeyExists",
            )

    def _check_currency(self, company: dict[str, Any], record: dict[str, Any], table: str) -> None:
        code = record.get("currencyCode") or ""
        if code and code not in CURRENCIES:
            raise BadRequest(
                f"The field Currency Code of table {table} contains a value ({code}) that cannot be found in the "
                f"related table (Currency).",
                code="Application_FieldValidationException",
            )
        if not code:
            record["currencyCode"] = company.get("_currency", "")

    def _before_customers(
        self, cid: str, company: dict[str, Any], record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        entity = ENTITY_SETS["customers"]
        if not record["number"]:
            while True:  # a No. Series skips numbers someone entered by hand
                record["number"] = self._next_number(cid, "customers", "C", 5, 10)
                if not self._by_field(cid, entity, "number", record["number"]):
                    break
        self._unique_number(cid, entity, record, before)
        self._check_currency(company, record, "Customer")

    def _before_projects(
        self, cid: str, company: dict[str, Any], record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        entity = ENTITY_SETS["projects"]
        if not record["number"]:
            record["number"] = self._next_number(cid, "projects", "PR", 5, 10)
        self._unique_number(cid, entity, record, before)

    def _customer(self, cid: str, record: dict[str, Any], table: str) -> dict[str, Any]:
        customers = ENTITY_SETS["customers"]
        empty = "00000000-0000-0000-0000-000000000000"
        if record.get("customerId") and record["customerId"] != empty:
            customer = self.store.get(self._object(cid, customers), record["customerId"])
            missing = f"Id='{record['customerId']}'"
        elif record.get("customerNumber"):
            found = self._by_field(cid, customers, "number", record["customerNumber"])
            customer = found[0] if found else None
            missing = f"No.='{record['customerNumber']}'"
        else:
            raise BadRequest(
                f"Customer No. must have a value in {table}. It cannot be zero or empty.",
                code="Application_FieldValidationException",
            )
        if customer is None:
            raise BadRequest(
                f"The Customer does not exist. Identification fields and values: {missing}",
                code="Internal_RecordNotFound",
            )
        record["customerId"], record["customerNumber"] = customer["id"], customer["number"]
        return customer

    def _before_salesInvoices(  # named after BC's entity set
        self, cid: str, company: dict[str, Any], record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        if before is not None and before["status"] != "Draft":
            raise BadRequest(
                f"The sales invoice {before['number']} is posted ({before['status']}) and can no longer be changed.",
                code="Application_DialogException",
            )
        customer = self._customer(cid, record, "Sales Header")
        if customer["blocked"] == "All":
            raise BadRequest(
                f"You cannot create this type of document when Customer {customer['number']} is blocked with type All",
                code="Application_DialogException",
            )
        record["customerName"] = customer["displayName"]
        if not record.get("currencyCode"):
            record["currencyCode"] = customer.get("currencyCode") or company.get("_currency", "")
        self._check_currency(company, record, "Sales Header")
        if before is None:
            record["number"] = self._next_number(cid, "salesInvoices", "S-INV", 6, 100001)
            record["status"] = "Draft"
        if record["invoiceDate"] in {"", "0001-01-01"}:
            record["invoiceDate"] = dt.datetime.now(dt.UTC).date().isoformat()
        if record["postingDate"] in {"", "0001-01-01"}:
            record["postingDate"] = record["invoiceDate"]
        if record["dueDate"] in {"", "0001-01-01"}:
            record["dueDate"] = (dt.date.fromisoformat(record["invoiceDate"]) + dt.timedelta(days=30)).isoformat()

    def _draft_invoice(self, cid: str, invoice_id: str) -> dict[str, Any]:
        invoice = self.store.get(self._object(cid, ENTITY_SETS["salesInvoices"]), invoice_id)
        if invoice is None:
            raise BadRequest(
                f"The Sales Header does not exist. Identification fields and values: Id='{invoice_id}'",
                code="Internal_RecordNotFound",
            )
        if invoice["status"] != "Draft":
            raise BadRequest(
                f"The sales invoice {invoice['number']} is posted ({invoice['status']}) and can no longer be changed.",
                code="Application_DialogException",
            )
        return invoice

    def _before_salesInvoiceLines(  # named after BC's entity set
        self, cid: str, company: dict[str, Any], record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        self._draft_invoice(cid, record["documentId"])
        self._line_rules(record, before)

    @staticmethod
    def _line_rules(record: dict[str, Any], before: dict[str, Any] | None) -> None:
        if record["lineType"] != "Comment" and not record["lineObjectNumber"] and before is None:
            raise BadRequest(
                f"No. must have a value in Sales Line: Type={record['lineType']}. It cannot be zero or empty.",
                code="Application_FieldValidationException",
            )
        if record["sequence"] == 0:
            record["sequence"] = 10000
        gross = round(float(record["quantity"]) * float(record["unitPrice"]), 2)
        discount = record["discountAmount"] or round(gross * float(record["discountPercent"]) / 100, 2)
        amount = round(gross - discount, 2)
        record.update(amountExcludingTax=amount, netAmount=amount, totalTaxAmount=0, amountIncludingTax=amount)

    def _retotal(self, cid: str, invoice_id: str) -> dict[str, Any]:
        invoice_set = ENTITY_SETS["salesInvoices"]
        invoice = self.store.get(self._object(cid, invoice_set), invoice_id)
        if invoice is None:
            return {}
        lines = self.store.find(self._object(cid, ENTITY_SETS["salesInvoiceLines"]), "documentId", invoice_id)
        total = round(sum(float(line["amountExcludingTax"]) for line in lines) - float(invoice["discountAmount"]), 2)
        invoice.update(totalAmountExcludingTax=total, totalTaxAmount=0, totalAmountIncludingTax=total)
        self._stamp(invoice)
        self.store.put(self._object(cid, invoice_set), invoice_id, invoice)
        return invoice

    def _before_customerPayments(  # named after BC's entity set
        self, cid: str, company: dict[str, Any], record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        journals = ENTITY_SETS["customerPaymentJournals"]
        empty = "00000000-0000-0000-0000-000000000000"
        if record["journalId"] == empty:  # top-level customerPayments: BC's default cash receipts journal
            found = self._by_field(cid, journals, "code", "CASHRCPT") or self.store.all(self._object(cid, journals))
            record["journalId"] = found[0]["id"] if found else empty
        journal = self.store.get(self._object(cid, journals), record["journalId"])
        if journal is None:
            raise BadRequest("The customer payment journal does not exist.", status=404, code="Internal_RecordNotFound")
        record["journalDisplayName"] = journal["code"]
        self._customer(cid, record, "Gen. Journal Line")
        if float(record["amount"]) >= 0:
            raise BadRequest("The amount should be a negative number.", code="Application_FieldValidationException")
        if record["postingDate"] in {"", "0001-01-01"}:
            record["postingDate"] = dt.datetime.now(dt.UTC).date().isoformat()
        if before is None:
            lines = self.store.find(self._object(cid, ENTITY_SETS["customerPayments"]), "journalId", journal["id"])
            record["lineNumber"] = record["lineNumber"] or 10000 * (len(lines) + 1)
        invoices = ENTITY_SETS["salesInvoices"]
        if record.get("appliesToInvoiceNumber"):
            found = self._by_field(cid, invoices, "number", record["appliesToInvoiceNumber"])
            if not found or found[0]["status"] == "Draft":
                raise BadRequest(
                    f"The posted sales invoice {record['appliesToInvoiceNumber']} does not exist.",
                    code="Internal_RecordNotFound",
                )
            record["appliesToInvoiceId"] = found[0]["id"]

    # The post action ---------------------------------------------------------------------------
    def invoice_post(self, request: Request) -> Response:
        company = self._company(request)
        cid = company["id"]
        invoice_set = ENTITY_SETS["salesInvoices"]
        with self.write_lock:
            invoice = self._find(cid, invoice_set, request.params["id"])
            if request.header("if-match"):
                self._check_if_match(request, invoice)
            if invoice["status"] != "Draft":
                raise BadRequest(
                    f"The sales invoice {invoice['number']} has already been posted.",
                    code="Application_DialogException",
                )
            lines = self.store.find(self._object(cid, ENTITY_SETS["salesInvoiceLines"]), "documentId", invoice["id"])
            if not [line for line in lines if line["lineType"] != "Comment"]:
                raise BadRequest("There is nothing to post.", code="Application_DialogException")
            customer = self.store.get(self._object(cid, ENTITY_SETS["customers"]), invoice["customerId"]) or {}
            if customer.get("blocked") in {"Invoice", "All"}:
                raise BadRequest(
                    f"You cannot post this type of document when Customer {customer['number']} is blocked with type "
                    f"{customer['blocked']}",
                    code="Application_DialogException",
                )
            invoice.update(
                status="Open",
                number=self._next_number(cid, "postedSalesInvoices", "", 6, 103001),
                remainingAmount=invoice["totalAmountIncludingTax"],
            )
            self._stamp(invoice)
            self.store.put(self._object(cid, invoice_set), invoice["id"], invoice)
        self.journal_write(request, 204, f"salesInvoices/{invoice['externalDocumentNumber'] or invoice['id']}", False)
        self._changed(cid, invoice_set, invoice, "updated")
        return Response(204)

    def invoice_cancel(self, request: Request) -> Response:
        """Cancel a posted, unpaid sales invoice: BC posts a corrective credit memo for it and the
        invoice becomes Canceled, owing nothing. A draft is deleted instead; a paid one refused."""
        company = self._company(request)
        cid = company["id"]
        invoice_set = ENTITY_SETS["salesInvoices"]
        with self.write_lock:
            invoice = self._find(cid, invoice_set, request.params["id"])
            if invoice["status"] == "Draft":
                raise BadRequest(
                    "A draft sales invoice cannot be canceled; delete it.", code="Application_DialogException"
                )
            paid = self.store.find(
                self._object(cid, ENTITY_SETS["customerPayments"]), "appliesToInvoiceId", invoice["id"]
            )
            if invoice["status"] != "Open" or paid:
                raise BadRequest(
                    f"You cannot cancel the posted sales invoice {invoice['number']} because it is fully or "
                    "partially paid.",
                    code="Application_DialogException",
                )
            invoice.update(status="Canceled", remainingAmount=0.0)
            self._stamp(invoice)
            self.store.put(self._object(cid, invoice_set), invoice["id"], invoice)
        self.journal_write(request, 204, f"salesInvoices/{invoice['externalDocumentNumber'] or invoice['id']}", False)
        self._changed(cid, invoice_set, invoice, "updated")
        return Response(204)

    # Webhook subscriptions ---------------------------------------------------------------------
    def _subscription(self, request: Request) -> dict[str, Any]:
        sid = request.params["sid"].strip("'")
        subscription = self.store.get("subscriptions", sid)
        if subscription is None:
            raise BadRequest(
                f"The Webhook Subscription does not exist. Identification fields and values: Subscription Id='{sid}'",
                status=404,
                code="Internal_RecordNotFound",
            )
        return subscription

    def _subscription_out(self, request: Request, subscription: dict[str, Any], *, entity: bool) -> dict[str, Any]:
        context = f"{self._api_root(request)}/$metadata#subscriptions" + ("/$entity" if entity else "")
        out = self._public(subscription)
        return {"@odata.context": context, **out} if entity else out

    def subscriptions_list(self, request: Request) -> Response:
        rows = [s for s in self.store.all("subscriptions") if parse_instant(s["expirationDateTime"]) > self._now()]
        context = f"{self._api_root(request)}/$metadata#subscriptions"
        return Response(200, {"@odata.context": context, "value": [self._public(s) for s in rows]})

    def subscription_get(self, request: Request) -> Response:
        return Response(200, self._subscription_out(request, self._subscription(request), entity=True))

    @staticmethod
    def _now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def _resource(self, resource: Any) -> tuple[str, str]:
        """(company id, entity set) of a subscription's resource, which may be a full URL or a path."""
        if not isinstance(resource, str) or not resource:
            raise BadRequest("resource must have a value.", code="BadRequest_RequiredParamNotProvided")
        path = urlsplit(resource).path if "://" in resource else resource
        path = re.sub(r"^/?(?:v2\.0/[^/]+/[^/]+/)?", "", path)
        match = re.fullmatch(r"api/v2\.0/companies\(([^)]+)\)/([A-Za-z]+)", path)
        if not match:
            raise BadRequest(
                f"The resource '{resource}' is not valid. Use /api/v2.0/companies({{id}})/{{entity set}}.",
                code="BadRequest_ResourceNotFound",
            )
        cid, name = match.group(1).strip("'").lower(), match.group(2)
        if self.store.get("companies", cid) is None:
            raise BadRequest(f"The company '{cid}' does not exist.", status=404, code="Internal_CompanyNotFound")
        entity = ENTITY_SETS.get(name)
        if entity is None or not entity.webhooks:
            supported = ", ".join(s.name for s in ENTITY_SETS.values() if s.webhooks)
            raise BadRequest(
                f"The entity '{name}' does not support webhooks. Supported: {supported}.",
                code="BadRequest_ResourceNotFound",
            )
        return cid, name

    def _validate_endpoint(self, url: str) -> None:
        """BC's handshake: POST ?validationToken=...; only a 200 echoing the token creates or renews."""
        token = secrets.token_urlsafe(24)
        joiner = "&" if urlsplit(url).query else "?"
        request = urllib.request.Request(  # noqa: S310 - http(s) checked by the caller
            f"{url}{joiner}validationToken={quote(token)}", data=b"", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310  # nosec B310  # sandbox callback URL set by the test or demo, http(s) only
                status, text = answer.status, answer.read(4096).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status, text = exc.code, ""
        except (OSError, ValueError) as exc:
            raise BadRequest(
                f"The subscription could not be validated: the notification URL could not be reached ({exc}).",
                code="Application_DialogException",
            ) from None
        if status != 200 or text != token:
            raise BadRequest(
                f"The subscription could not be validated: the notification URL answered {status} without the "
                "validation token.",
                code="Application_DialogException",
            )

    def subscription_create(self, request: Request) -> Response:
        body = self._body(request)
        unknown = set(body) - {"notificationUrl", "resource", "clientState"}
        if unknown:
            raise BadRequest(
                f"The property '{sorted(unknown)[0]}' does not exist on type 'Microsoft.NAV.subscriptions'.",
                code="BadRequest",
            )
        url = body.get("notificationUrl")
        if not isinstance(url, str) or urlsplit(url).scheme not in {"http", "https"}:
            raise BadRequest("notificationUrl must be an http(s) URL.", code="BadRequest_RequiredParamNotProvided")
        client_state = body.get("clientState", "")
        if not isinstance(client_state, str) or len(client_state) > 2048:
            raise BadRequest(
                "clientState must be text of at most 2048 characters.", code="Application_StringExceededLength"
            )
        self._resource(body.get("resource"))
        self._validate_endpoint(url)  # outside every lock: the subscriber may be slow
        stamp = now_iso()
        subscription = {
            "subscriptionId": uuid.uuid4().hex,
            "notificationUrl": url,
            "resource": body["resource"],
            "userId": "00000000-0000-0000-0000-000000000001",
            "lastModifiedDateTime": stamp,
            "clientState": client_state,
            "expirationDateTime": self._expiry(),
            "systemCreatedAt": stamp,
            "systemCreatedBy": "00000000-0000-0000-0000-000000000001",
            "systemModifiedAt": stamp,
            "systemModifiedBy": "00000000-0000-0000-0000-000000000001",
            "_etag": new_etag(),
        }
        self.store.put("subscriptions", subscription["subscriptionId"], subscription)
        self.journal_write(request, 201, f"subscriptions/{subscription['subscriptionId']}", True)
        return Response(201, self._subscription_out(request, subscription, entity=True))

    def _expiry(self) -> str:
        return (self._now() + dt.timedelta(days=SUBSCRIPTION_DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def subscription_renew(self, request: Request) -> Response:
        subscription = self._subscription(request)
        self._check_if_match(request, subscription)
        body = self._body(request)
        for name in ("notificationUrl", "clientState"):
            if isinstance(body.get(name), str):
                subscription[name] = body[name]
        self._validate_endpoint(subscription["notificationUrl"])  # renewal repeats the handshake
        stamp = now_iso()
        subscription.update(expirationDateTime=self._expiry(), lastModifiedDateTime=stamp, systemModifiedAt=stamp)
        subscription["_etag"] = new_etag()
        self.store.put("subscriptions", subscription["subscriptionId"], subscription)
        self.journal_write(request, 200, f"subscriptions/{subscription['subscriptionId']}", False)
        return Response(200, self._subscription_out(request, subscription, entity=True))

    def subscription_delete(self, request: Request) -> Response:
        subscription = self._subscription(request)
        self._check_if_match(request, subscription)
        self.store.delete("subscriptions", subscription["subscriptionId"])
        self.journal_write(request, 204, f"subscriptions/{subscription['subscriptionId']}", False)
        return Response(204)

    # Notifications -----------------------------------------------------------------------------
    def _changed(self, cid: str, entity: EntitySet, record: dict[str, Any], change_type: str) -> None:
        """Queue a notification for every live subscription to this collection (lines notify their header)."""
        if entity.name == "salesInvoiceLines":
            header = self.store.get(self._object(cid, ENTITY_SETS["salesInvoices"]), record["documentId"])
            if header is None:
                return
            entity, record, change_type = ENTITY_SETS["salesInvoices"], header, "updated"
        if entity.name == "customerPayments":
            journal = self.store.get(self._object(cid, ENTITY_SETS["customerPaymentJournals"]), record["journalId"])
            if journal is None:
                return
            entity, record, change_type = ENTITY_SETS["customerPaymentJournals"], journal, "updated"
        if not entity.webhooks:
            return
        now = self._now()
        for subscription in self.store.all("subscriptions"):
            if parse_instant(subscription["expirationDateTime"]) <= now:
                continue
            try:
                if self._resource(subscription["resource"]) != (cid, entity.name):
                    continue
            except BadRequest:
                continue
            item = {
                "subscriptionId": subscription["subscriptionId"],
                "clientState": subscription["clientState"],
                "expirationDateTime": subscription["expirationDateTime"],
                "resource": f"api/v2.0/companies({cid})/{entity.name}({record['id']})",
                "changeType": change_type,
                "lastModifiedDateTime": record.get("lastModifiedDateTime") or now_iso(),
            }
            with self.pending_lock:
                queue = self.pending.setdefault(subscription["subscriptionId"], [])
                queue.append(item)
                first = len(queue) == 1
            if first:  # the first change opens the coalescing window
                delay = float(self.faults.setting("notification_delay_seconds") or 0.5)
                timer = threading.Timer(delay, self._flush, args=(subscription["subscriptionId"],))
                timer.daemon = True
                timer.start()

    def _flush(self, subscription_id: str) -> None:
        with self.pending_lock:
            items = self.pending.pop(subscription_id, [])
        subscription = self.store.get("subscriptions", subscription_id)
        if not items or subscription is None:
            return
        threshold = int(self.faults.setting("collection_threshold") or 1000)
        if len(items) > threshold:
            since = min(item["lastModifiedDateTime"] for item in items)
            base = items[0]["resource"].rsplit("(", 1)[0]
            items = [
                {
                    **items[0],
                    "resource": f"{base}?$filter=lastModifiedDateTime%20gt%20{since}",
                    "changeType": "collection",
                    "lastModifiedDateTime": max(item["lastModifiedDateTime"] for item in items),
                }
            ]
        else:  # several changes of one record in the window: its latest per change type
            latest: dict[tuple[str, str], dict[str, Any]] = {}
            for item in items:
                latest[(item["resource"], item["changeType"])] = item
            items = list(latest.values())
        body = json.dumps({"value": items}).encode()
        self.store.event_add("notifications", {"subscriptionId": subscription_id, "value": items})
        self.notify(
            subscription["notificationUrl"],
            body,
            {"Content-Type": "application/json"},
            subscription_id=subscription_id,
        )

    def notify(self, url: str, body: bytes, headers: dict[str, str], *, subscription_id: str = "") -> None:
        """BC's delivery rule: retry only after 408, 429, 5xx or no answer; any other error status
        deletes the subscription. (BC retries over 36 hours; the sandbox after 1, 5 and 15 seconds.)"""

        def send() -> None:
            for delay in (0, 1, 5, 15):
                time.sleep(delay)
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310  # nosec B310  # sandbox callback URL set by the test or demo, http(s) only
                        if 200 <= answer.status < 300:
                            return
                except urllib.error.HTTPError as exc:
                    if exc.code in {408, 429} or exc.code >= 500:
                        continue
                    if subscription_id:
                        self.store.delete("subscriptions", subscription_id)
                    return
                except OSError:
                    continue

        threading.Thread(target=send, daemon=True).start()


def serve(*, port: int, state_dir: Path | None, host: str = "127.0.0.1") -> None:
    base_serve(BusinessCentralSandbox(state_dir), port=port, host=host)
