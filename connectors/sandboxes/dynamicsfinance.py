"""A simulator of Microsoft Dynamics 365 Finance's OData v4 data entities (finance and operations
apps) and of the Entra ID token endpoint in front of it.

It speaks the protocol a real environment (https://<env>.operations.dynamics.com) speaks, so the
connector works unchanged when a connection is pointed at one (docs/sandboxes/dynamicsfinance.md):

  POST /{tenant}/oauth2/v2.0/token      Entra client credentials; scope <this origin>/.default
  GET  /data/                           the service document (entity sets)
  GET  /data/$metadata                  the EDMX schema of every entity set served here
  GET  /data/<EntitySet>                $filter (eq ne gt ge lt le, and, or, not, parentheses),
                                        $select, $top, $skip, $count; @odata.nextLink paging,
                                        `Prefer: odata.maxpagesize=N` (10,000 at most)
  POST /data/<EntitySet>                create
  GET | PATCH | DELETE /data/<EntitySet>(dataAreaId='demf',CustomerAccount='C-1')   by key
  POST /data/$batch                     multipart/mixed; each change set all or nothing

Entity sets (real public collection names): CustomersV3, ProjectContracts, Projects,
FreeTextInvoiceHeaders, FreeTextInvoiceLines, SalesInvoiceHeadersV2 (the posted invoice journal,
read-only), CustomerPaymentJournalHeaders, CustomerPaymentJournalLines, ExchangeRates (shared by
all legal entities, computed from the sandboxes' currency market, connectors/sandboxes/fx.py).

Legal entities: usmf (USD, the app user's default company), demf (EUR), gbsi (GBP). A query sees
the default company only, unless it says `cross-company=true`; an entity of another company is
not found by its key without it.

Errors are D365's envelope: {"error": {"code": "", "message": "An error has occurred.",
"innererror": {"message": "<infolog>", "type": "...", "stacktrace": "..."}}}. Throttling
(the shared fault API's rate_limit_per_minute, or an injected 429) answers 429 with Retry-After.

Control API beyond the shared one (connectors/sandboxes/base.py):
  POST /_sandbox/post-invoice {"dataAreaId": "demf", "InvoiceIdentifier": 5637144577}
       posts a free text invoice as an accountant would in D365 (OData has no action for it):
       IsPosted Yes, and a row in the posted invoice journal with its number and totals
  POST | DELETE /_sandbox/rates          the currency market (fx.py)
  POST | GET | DELETE /_sandbox/schema   as on every sandbox, with the entity set as the record:
       {"record": "CustomersV3", "field": "CustomerGroupId", "change": "drop"}; /data/$metadata
       shows the change and writes (lone or in a $batch) are checked against it
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

from connectors.sandboxes import fx
from connectors.sandboxes.base import BadRequest, FieldDef, Request, Response
from connectors.sandboxes.base import serve as base_serve
from connectors.sandboxes.odata import TENANT, EntraSandbox, Filter, origin, server_page

NAMESPACE = "Microsoft.Dynamics.DataEntities"
COMPANIES = {"usmf": "USD", "demf": "EUR", "gbsi": "GBP"}
DEFAULT_COMPANY = "usmf"  # the company of the user the app registration is mapped to
MAX_PAGE_SIZE = 10000
CURRENCIES = ("USD", "EUR", "GBP", "CAD")
CUSTOMER_GROUPS = ("10", "20", "30", "40", "80", "90")
# Sales tax groups and their rate (the sandbox's simplification of tax groups x item tax groups).
TAX_GROUPS = {"": Decimal("0"), "EXEMPT": Decimal("0"), "DE-VAT19": Decimal("0.19"), "GB-VAT20": Decimal("0.20")}
TAX_GROUPS |= {"US-STD": Decimal("0"), "DE-EXEMPT": Decimal("0")}
ENUMS = {
    "NoYes": ("No", "Yes"),
    "DirPartyType": ("Organization", "Person"),
    "ProjType": ("TimeMaterial", "FixedPrice", "Investment", "Cost", "Internal", "Time"),
    "ExchangeRateDisplayFactor": ("One", "Ten", "Hundred", "Thousand", "TenThousand"),
}
EDM = {"str": "Edm.String", "num": "Edm.Decimal", "int": "Edm.Int64", "datetime": "Edm.DateTimeOffset"}
FIRST_RECID = 5637144576  # record ids in D365 start here
REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
REASONS |= {
    405: "Method Not Allowed",
    412: "Precondition Failed",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
WRITE_EXCEPTION = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"


@dataclass(frozen=True)
class Entity:
    """One data entity: its public collection name (the entity set), its public entity name, its
    key, its fields (str:<max> | num | int | datetime | enum:<EnumType>), what clients may not
    write, what they must, and whether it is company-specific (carries dataAreaId)."""

    name: str
    single: str
    table: str  # the staging/entity class named in infolog messages
    keys: tuple[str, ...]
    fields: dict[str, str]
    readonly: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    company: bool = True
    writable: bool = True

    def filter_entity(self) -> FilterFields:
        """The same fields in the $filter parser's notation."""
        fields = {
            k: ("enum:" + "|".join(ENUMS[v.split(":", 1)[1]]) if v.startswith("enum:") else v)
            for k, v in self.fields.items()
        }
        return FilterFields(self.single, fields)


@dataclass(frozen=True)
class FilterFields:
    """An entity's type name and fields as $filter reads them (connectors/sandboxes/odata.py)."""

    type_name: str
    fields: dict[str, str]


def _entities() -> dict[str, Entity]:
    area = {"dataAreaId": "str:4"}
    found = (
        Entity(
            "CustomersV3",
            "CustomerV3",
            "CustCustomerV3Entity",
            ("dataAreaId", "CustomerAccount"),
            area
            | {
                "CustomerAccount": "str:20",
                "OrganizationName": "str:100",
                "PartyType": "enum:DirPartyType",
                "CustomerGroupId": "str:10",
                "SalesCurrencyCode": "str:3",
                "AddressCountryRegionId": "str:10",
                "SalesTaxGroup": "str:10",
                "PaymentTerms": "str:10",
                "CreditLimit": "num",
            },
            required=frozenset({"CustomerAccount", "OrganizationName", "CustomerGroupId", "SalesCurrencyCode"}),
        ),
        Entity(
            "ProjectContracts",
            "ProjectContract",
            "ProjFundingSourceContractEntity",
            ("dataAreaId", "ProjectContractID"),
            area
            | {"ProjectContractID": "str:20", "Name": "str:60", "SalesCurrency": "str:3", "ContractDate": "datetime"},
            required=frozenset({"ProjectContractID", "Name"}),
        ),
        Entity(
            "Projects",
            "Project",
            "ProjProjectEntity",
            ("dataAreaId", "ProjectID"),
            area
            | {
                "ProjectID": "str:20",
                "ProjectName": "str:60",
                "ProjectContractID": "str:20",
                "CustomerAccount": "str:20",
                "ProjectType": "enum:ProjType",
            },
            required=frozenset({"ProjectID", "ProjectName"}),
        ),
        Entity(
            "FreeTextInvoiceHeaders",
            "FreeTextInvoiceHeader",
            "CustFreeTextInvoiceHeaderEntity",
            ("dataAreaId", "InvoiceIdentifier"),
            area
            | {
                "InvoiceIdentifier": "int",
                "CustomerAccount": "str:20",
                "InvoiceAccount": "str:20",
                "InvoiceName": "str:100",
                "CustomerReference": "str:60",
                "CustomerRequisition": "str:60",
                "CurrencyCode": "str:3",
                "InvoiceDate": "datetime",
                "DueDate": "datetime",
                "FreeTextNumber": "str:20",
                "IsPosted": "enum:NoYes",
            },
            readonly=frozenset({"InvoiceIdentifier", "InvoiceName", "FreeTextNumber", "IsPosted"}),
            required=frozenset({"CustomerAccount"}),
        ),
        Entity(
            "FreeTextInvoiceLines",
            "FreeTextInvoiceLine",
            "CustFreeTextInvoiceLineEntity",
            ("dataAreaId", "ParentRecId", "LineNumber"),
            area
            | {
                "ParentRecId": "int",
                "LineNumber": "num",
                "Description": "str:60",
                "MainAccountDisplayValue": "str:30",
                "Quantity": "num",
                "UnitPrice": "num",
                "TransactionCurrencyAmount": "num",
                "SalesTaxAmount": "num",
                "CurrencyCode": "str:3",
            },
            readonly=frozenset({"TransactionCurrencyAmount", "SalesTaxAmount", "CurrencyCode"}),
            required=frozenset({"ParentRecId", "MainAccountDisplayValue"}),
        ),
        Entity(
            "SalesInvoiceHeadersV2",
            "SalesInvoiceHeaderV2",
            "SalesInvoiceHeaderV2Entity",
            ("dataAreaId", "InvoiceNumber"),
            area
            | {
                "InvoiceNumber": "str:20",
                "InvoiceDate": "datetime",
                "InvoiceCustomerAccountNumber": "str:20",
                "CurrencyCode": "str:3",
                "TotalInvoiceAmount": "num",
                "TotalTaxAmount": "num",
                "CustomersOrderReference": "str:60",
                "CustomerRequisitionNumber": "str:60",
                "LedgerVoucher": "str:20",
                "SalesOrderNumber": "str:20",
            },
            writable=False,
        ),
        Entity(
            "CustomerPaymentJournalHeaders",
            "CustomerPaymentJournalHeader",
            "LedgerJournalTableCustPaymEntity",
            ("dataAreaId", "JournalBatchNumber"),
            area
            | {
                "JournalBatchNumber": "str:10",
                "JournalName": "str:10",
                "Description": "str:60",
                "IsPosted": "enum:NoYes",
            },
            readonly=frozenset({"JournalBatchNumber", "IsPosted"}),
            required=frozenset({"JournalName"}),
        ),
        Entity(
            "CustomerPaymentJournalLines",
            "CustomerPaymentJournalLine",
            "CustPaymJournalLineEntity",
            ("dataAreaId", "JournalBatchNumber", "LineNumber"),
            area
            | {
                "JournalBatchNumber": "str:10",
                "LineNumber": "num",
                "AccountDisplayValue": "str:30",
                "CreditAmount": "num",
                "DebitAmount": "num",
                "CurrencyCode": "str:3",
                "TransactionDate": "datetime",
                "MarkedInvoice": "str:20",
                "PaymentReference": "str:60",
                "Voucher": "str:20",
            },
            readonly=frozenset({"Voucher"}),
            required=frozenset({"JournalBatchNumber", "AccountDisplayValue"}),
        ),
        Entity(
            "ExchangeRates",
            "ExchangeRate",
            "ExchangeRateEntity",
            ("RateTypeName", "FromCurrency", "ToCurrency", "StartDate"),
            {
                "RateTypeName": "str:20",
                "RateTypeDescription": "str:60",
                "FromCurrency": "str:3",
                "ToCurrency": "str:3",
                "StartDate": "datetime",
                "EndDate": "datetime",
                "Rate": "num",
                "ConversionFactor": "enum:ExchangeRateDisplayFactor",
            },
            company=False,
            writable=False,
        ),
    )
    return {e.name: e for e in found}


ENTITIES = _entities()
KEY_PART = re.compile(r"\s*(\w+)\s*=\s*('(?:[^']|'')*'|[-\d.]+|\d{4}-\d\d-\d\dT[0-9:.]+Z)\s*(?:,|$)")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DynamicsFinanceSandbox(EntraSandbox):
    name = "dynamicsfinance"

    def __init__(self, state_dir: Path | None) -> None:
        # One writer at a time: keys are unique and a change set must apply all or nothing.
        self.write_lock = threading.RLock()
        super().__init__(state_dir)

    # Errors in D365's shape ----------------------------------------------------------------------
    def error(self, status: int, message: str, *, code: str = "", field_name: str = "") -> Response:
        """D365 answers most failures with a generic outer message and the infolog inside."""
        if status in (400, 409, 412) or code == "infolog":
            inner = {
                "message": message,
                "type": WRITE_EXCEPTION,
                "stacktrace": "   at Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataDelegatingHandler"
                ".SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)",
            }
            return Response(status, {"error": {"code": "", "message": "An error has occurred.", "innererror": inner}})
        return Response(status, {"error": {"code": "" if code in ("", "NOT_FOUND") else code, "message": message}})

    def unauthorised(self) -> Response:
        response = Response(401, None)
        response.headers["WWW-Authenticate"] = (
            f'Bearer authorization_uri="https://login.microsoftonline.com/{TENANT}/oauth2/authorize"'
        )
        return response

    def rate_limited(self, retry_after: int) -> Response:
        response = self.error(429, f"The request was throttled. Retry after {retry_after} seconds.")
        response.headers["Retry-After"] = str(retry_after)
        return response

    # Routes ------------------------------------------------------------------------------------
    def setup_routes(self) -> None:
        super().setup_routes()  # the Entra ID token endpoint
        self.route("POST", r"/_sandbox/post-invoice", self.post_invoice, auth=False)
        self.route("POST", r"/_sandbox/rates", lambda request: fx.rates_set(self.store, request), auth=False)
        self.route("DELETE", r"/_sandbox/rates", lambda request: fx.rates_clear(self.store, request), auth=False)
        self.route("GET", r"/data/?", self.service_document)
        self.route("GET", r"/data/\$metadata", self.metadata)
        self.route("POST", r"/data/\$batch", self.batch)
        one = r"/data/(?P<set>[A-Za-z0-9]+)\((?P<key>.*)\)"
        self.route("GET", one, self.entity_get)
        self.route("PATCH", one, self.entity_patch)
        self.route("DELETE", one, self.entity_delete)
        self.route("GET", r"/data/(?P<set>[A-Za-z0-9]+)", self.collection_get)
        self.route("POST", r"/data/(?P<set>[A-Za-z0-9]+)", self.collection_post)

    # Auth: the Entra ID token endpoint (connectors/sandboxes/odata.py) ----------------------------
    def token_resource(self, request: Request) -> str:
        """The environment itself: https://<env>.operations.dynamics.com, here this origin."""
        return origin(request)

    # Helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _entity(name: str) -> Entity:
        entity = ENTITIES.get(name)
        if entity is None:
            raise BadRequest(f"Resource not found for the segment '{name}'.", status=404, code="NOT_FOUND")
        return entity

    @staticmethod
    def _cross_company(request: Request) -> bool:
        return (request.arg("cross-company") or "").lower() == "true"

    @staticmethod
    def _record_id(entity: Entity, values: dict[str, Any]) -> str:
        return "|".join(
            str(values.get(k, "")).lower() if k == "dataAreaId" else str(values.get(k, "")) for k in entity.keys
        )

    def _key(self, entity: Entity, raw: str) -> dict[str, Any]:
        """Parse (dataAreaId='demf',CustomerAccount='C-1'): every key field, each of its type."""
        raw = unquote(raw)
        values: dict[str, Any] = {}
        position = 0
        while position < len(raw):
            match = KEY_PART.match(raw, position)
            if not match or match.end() == position:
                raise BadRequest(f"The key value '({raw})' is not valid for entity set '{entity.name}'.", status=400)
            name, literal = match.group(1), match.group(2)
            values[name] = literal[1:-1].replace("''", "'") if literal.startswith("'") else literal
            position = match.end()
        if set(values) != set(entity.keys):
            raise BadRequest(
                f"The number of keys specified in the URI does not match number of key properties for the resource "
                f"'{NAMESPACE}.{entity.single}'.",
                status=400,
            )
        for name in entity.keys:
            kind = entity.fields[name]
            if kind == "int":
                values[name] = int(values[name])
            elif kind == "num":
                values[name] = float(values[name])
        return values

    def _find(self, request: Request, entity: Entity) -> dict[str, Any]:
        key = self._key(entity, request.params["key"])
        record = self.store.get(entity.name, self._record_id(entity, key))
        hidden = (
            record is not None
            and entity.company
            and record["dataAreaId"] != DEFAULT_COMPANY
            and not self._cross_company(request)
        )
        if record is None or hidden:
            raise BadRequest(f"No resource found for key ({request.params['key']}) in '{entity.name}'.", status=404)
        return record

    def _check(self, entity: Entity, body: Any, *, current: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every property a client sent checked against the entity's type; read-only ones refused."""
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object with the entity's properties.")
        problem = self.schema_problem(entity.name, body, creating=current is None)
        if problem is not None:  # an admin changed the entity (the control API's /_sandbox/schema)
            name, kind, message = problem
            if kind == "dropped":
                raise BadRequest(
                    f"The property '{name}' does not exist on type '{NAMESPACE}.{entity.single}'. Make sure to only "
                    "use property names that are defined by the type."
                )
            raise BadRequest(f"Write failed for table row of type '{entity.table}'. Infolog: Error: {message}.")
        clean: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata."):
                continue
            kind = entity.fields.get(name)
            if kind is None:
                raise BadRequest(
                    f"The property '{name}' does not exist on type '{NAMESPACE}.{entity.single}'. Make sure to only "
                    "use property names that are defined by the type."
                )
            if name in entity.readonly:
                continue
            if current is not None and name in entity.keys:
                if name == "dataAreaId" or value == current.get(name):
                    continue
                raise self._infolog(entity, f"The key field {name} cannot be changed.")
            clean[name] = self._value(entity, name, kind, value)
        return clean

    @staticmethod
    def _value(entity: Entity, name: str, kind: str, value: Any) -> Any:
        base, _, arg = kind.partition(":")
        expected = EDM.get(base, f"{NAMESPACE}.{arg}")
        wrong = BadRequest(
            f"Cannot convert the literal '{value}' to the expected type '{expected}' of property '{name}'."
        )
        if value is None:
            return "" if base in {"str", "enum"} else None
        if base == "str":
            if not isinstance(value, str):
                raise wrong
            if len(value) > int(arg):
                raise BadRequest(
                    f"Write failed for table row of type '{entity.table}'. Infolog: Error: The value '{value}' of "
                    f"field {name} is too long: {len(value)} characters, at most {arg}."
                )
            return value
        if base == "enum":
            if value not in ENUMS[arg]:
                raise BadRequest(f"The value '{value}' is not a valid member of enum type '{NAMESPACE}.{arg}'.")
            return value
        if base in {"num", "int"}:
            if isinstance(value, bool) or not isinstance(value, int | float) or (base == "int" and value != int(value)):
                raise wrong
            return int(value) if base == "int" else float(value)
        if base == "datetime":
            if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]+(Z|[+-]\d\d:\d\d)", value):
                raise wrong
            try:
                dt.date.fromisoformat(value[:10])
            except ValueError:
                raise wrong from None
            return value
        raise wrong

    @staticmethod
    def _public(record: dict[str, Any], select: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": record["_etag"]}
        for name, value in record.items():
            if not name.startswith("_") and (select is None or name in select):
                out[name] = value
        return out

    # Service document and metadata -------------------------------------------------------------
    def service_document(self, request: Request) -> Response:
        sets = [{"name": e.name, "kind": "EntitySet", "url": e.name} for e in ENTITIES.values()]
        return Response(200, {"@odata.context": f"{origin(request)}/data/$metadata", "value": sets})

    def entity_fields(self, entity: Entity) -> list[FieldDef]:
        """An entity's properties as $metadata declares them (type: the EDM type, or the enum
        type's full name), with the changes made through /_sandbox/schema."""
        declared = []
        for name, kind in entity.fields.items():
            base, _, arg = kind.partition(":")
            edm = f"{NAMESPACE}.{arg}" if base == "enum" else EDM[base]
            required = name in entity.keys or name in entity.required
            declared.append(FieldDef(name, edm, required, ENUMS[arg] if base == "enum" else ()))
        return self.schema_fields(entity.name, declared)

    def metadata(self, request: Request) -> Response:
        """The EDMX of every entity served here, as D365 describes its data entities. An enum
        property that lost a member (a schema change) gets an enum type of its own with the rest."""
        out = [
            '<?xml version="1.0" encoding="utf-8"?>',
            '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
            "<edmx:DataServices>",
            f'<Schema Namespace="{NAMESPACE}" xmlns="http://docs.oasis-open.org/odata/ns/edm">',
        ]
        enums = {f"{NAMESPACE}.{name}": members for name, members in ENUMS.items()}
        for entity in ENTITIES.values():
            out.append(f'<EntityType Name="{entity.single}">')
            out.append("<Key>" + "".join(f'<PropertyRef Name="{k}" />' for k in entity.keys) + "</Key>")
            for f in self.entity_fields(entity):
                edm = f.type
                if edm in enums and f.values != enums[edm]:
                    edm = f"{NAMESPACE}.{entity.single}_{f.name}"
                    enums[edm] = f.values
                base, _, arg = entity.fields[f.name].partition(":")
                unchanged = f.type == (EDM.get(base) or f"{NAMESPACE}.{arg}")
                facets = (
                    (f' MaxLength="{arg}"' if base == "str" else ' Precision="32" Scale="6"' if base == "num" else "")
                    if unchanged
                    else ""
                )
                nullable = "false" if f.required else "true"
                out.append(f'<Property Name="{escape(f.name)}" Type="{escape(edm)}" Nullable="{nullable}"{facets} />')
            out.append("</EntityType>")
        for full_name, members in enums.items():
            out.append(f'<EnumType Name="{full_name.removeprefix(NAMESPACE + ".")}">')
            out += [f'<Member Name="{escape(m)}" Value="{i}" />' for i, m in enumerate(members)]
            out.append("</EnumType>")
        out.append('<EntityContainer Name="Resources">')
        out += [f'<EntitySet Name="{e.name}" EntityType="{NAMESPACE}.{e.single}" />' for e in ENTITIES.values()]
        out += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
        return Response(
            200, raw="\n".join(out).encode(), headers={"Content-Type": "application/xml", "OData-Version": "4.0"}
        )

    # Collections -------------------------------------------------------------------------------
    def _rows(self, request: Request, entity: Entity) -> list[dict[str, Any]]:
        if entity.name == "ExchangeRates":
            return self._rates()
        rows = sorted(self.store.all(entity.name), key=lambda r: r["_n"])
        if entity.company and not self._cross_company(request):
            rows = [r for r in rows if r["dataAreaId"] == DEFAULT_COMPANY]
        return rows

    def collection_get(self, request: Request) -> Response:
        entity = self._entity(request.params["set"])
        select = [s.strip() for s in (request.arg("$select") or "").split(",") if s.strip()] or None
        for name in select or []:
            if name not in entity.fields:
                raise BadRequest(f"Could not find a property named '{name}' on type '{NAMESPACE}.{entity.single}'.")
        records = self._rows(request, entity)
        text = request.arg("$filter")
        if text:
            where = Filter(text, entity.filter_entity(), namespace=NAMESPACE)
            records = [r for r in records if where.test(r)]
        order = [part.split() for part in (request.arg("$orderby") or "").split(",") if part.strip()]
        for term in reversed(order):  # the last key first: Python's sort is stable
            name, descending = term[0], len(term) > 1 and term[1].lower() == "desc"
            if name not in entity.fields:
                raise BadRequest(f"Could not find a property named '{name}' on type '{NAMESPACE}.{entity.single}'.")
            records = sorted(records, key=lambda r, n=name: (r.get(n) is None, r.get(n)), reverse=descending)
        if order:  # server-driven paging follows the order: the skip token is a position in it
            for position, record in enumerate(records, start=1):
                record["_n"] = position
        count = len(records)
        page, next_link, paging = server_page(request, records, max_page_size=MAX_PAGE_SIZE)
        headers = {"OData-Version": "4.0", **paging}
        body: dict[str, Any] = {"@odata.context": f"{origin(request)}/data/$metadata#{entity.name}"}
        if (request.arg("$count") or "").lower() == "true":
            body["@odata.count"] = count
        body["value"] = [self._public(r, select) for r in page]
        if next_link:
            body["@odata.nextLink"] = next_link
        return Response(200, body, headers)

    def collection_post(self, request: Request) -> Response:
        entity = self._entity(request.params["set"])
        with self.write_lock:
            record = self._create(entity, request.json(), request)
        self.journal_write(request, 201, f"{entity.name}/{self._record_id(entity, record)}", True)
        return self._entity_answer(request, entity, record, 201)

    def entity_get(self, request: Request) -> Response:
        entity = self._entity(request.params["set"])
        return self._entity_answer(request, entity, self._find(request, entity), 200)

    def entity_patch(self, request: Request) -> Response:
        entity = self._entity(request.params["set"])
        with self.write_lock:
            record = self._update(entity, self._find(request, entity), request.json(), request)
        self.journal_write(request, 204, f"{entity.name}/{self._record_id(entity, record)}", False)
        return Response(204, None, {"ETag": record["_etag"]})

    def entity_delete(self, request: Request) -> Response:
        entity = self._entity(request.params["set"])
        with self.write_lock:
            record = self._find(request, entity)
            self._remove(entity, record)
        self.journal_write(request, 204, f"{entity.name}/{self._record_id(entity, record)}", False)
        return Response(204)

    def _entity_answer(self, request: Request, entity: Entity, record: dict[str, Any], status: int) -> Response:
        context = f"{origin(request)}/data/$metadata#{entity.name}/$entity"
        return Response(status, {"@odata.context": context, **self._public(record)}, {"ETag": record["_etag"]})

    # Business rules (what D365's tables and entities check) ------------------------------------
    def _infolog(self, entity: Entity, message: str) -> BadRequest:
        return BadRequest(f"Write failed for table row of type '{entity.table}'. Infolog: Error: {message}")

    def _create(self, entity: Entity, body: Any, request: Request) -> dict[str, Any]:
        if not entity.writable:
            raise BadRequest(f"The entity set '{entity.name}' is read-only.", status=405, code="NOT_ALLOWED")
        fields = self._check(entity, body)
        record: dict[str, Any] = {n: ("" if k.startswith(("str", "enum")) else 0) for n, k in entity.fields.items()}
        for name, kind in entity.fields.items():
            if kind.startswith("enum:"):
                record[name] = ENUMS[kind.split(":", 1)[1]][0]
            elif kind == "datetime":
                record[name] = "1900-01-01T12:00:00Z"
        record.update(fields)
        if entity.company:
            area = str(record.get("dataAreaId") or DEFAULT_COMPANY).lower()
            if area not in COMPANIES:
                raise self._infolog(entity, f"Company {area} does not exist.")
            record["dataAreaId"] = area
        rule = getattr(self, f"_before_{entity.name}", None)
        if rule is not None:
            rule(entity, record, None)
        missing = [n for n in sorted(entity.required) if record.get(n) in (None, "")]
        if missing:
            raise self._infolog(entity, f"Field '{missing[0]}' must be filled in.")
        record_id = self._record_id(entity, record)
        if self.store.get(entity.name, record_id) is not None:
            raise self._infolog(
                entity, f"The record already exists ({', '.join(f'{k}={record[k]}' for k in entity.keys)})."
            )
        record["_etag"] = f'W/"{secrets.randbits(40)}"'
        record["_n"] = self.store.next_seq()
        self.store.put(entity.name, record_id, record)
        return record

    def _update(self, entity: Entity, record: dict[str, Any], body: Any, request: Request) -> dict[str, Any]:
        if not entity.writable:
            raise BadRequest(f"The entity set '{entity.name}' is read-only.", status=405, code="NOT_ALLOWED")
        wanted = request.header("if-match").strip()
        if wanted and wanted != "*" and wanted != record["_etag"]:
            raise BadRequest("The record has been changed by another user since it was read.", status=412)
        fields = self._check(entity, body, current=record)
        before = dict(record)
        record = {**record, **fields}
        rule = getattr(self, f"_before_{entity.name}", None)
        if rule is not None:
            rule(entity, record, before)
        record["_etag"] = f'W/"{secrets.randbits(40)}"'
        self.store.put(entity.name, self._record_id(entity, record), record)
        return record

    def _remove(self, entity: Entity, record: dict[str, Any]) -> None:
        if not entity.writable:
            raise BadRequest(f"The entity set '{entity.name}' is read-only.", status=405, code="NOT_ALLOWED")
        if entity.name == "FreeTextInvoiceHeaders" and record["IsPosted"] == "Yes":
            raise self._infolog(
                entity, f"Free text invoice {record['FreeTextNumber']} is posted and cannot be deleted."
            )
        if entity.name == "FreeTextInvoiceLines":
            self._unposted(record["dataAreaId"], record["ParentRecId"], ENTITIES["FreeTextInvoiceLines"])
        self.store.delete(entity.name, self._record_id(entity, record))
        if entity.name == "FreeTextInvoiceHeaders":
            for line in self.store.find("FreeTextInvoiceLines", "ParentRecId", record["InvoiceIdentifier"]):
                if line["dataAreaId"] == record["dataAreaId"]:
                    self.store.delete("FreeTextInvoiceLines", self._record_id(ENTITIES["FreeTextInvoiceLines"], line))

    def _customer(self, entity: Entity, area: str, account: str) -> dict[str, Any]:
        found = self.store.get("CustomersV3", f"{area}|{account}")
        if found is None:
            raise self._infolog(entity, f"Customer account {account} does not exist in company {area}.")
        return found

    def _before_CustomersV3(
        self, entity: Entity, record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:  # named after D365's entity set
        if record["CustomerGroupId"] and record["CustomerGroupId"] not in CUSTOMER_GROUPS:
            raise self._infolog(entity, f"Customer group {record['CustomerGroupId']} does not exist.")
        if record["SalesCurrencyCode"] and record["SalesCurrencyCode"] not in CURRENCIES:
            raise self._infolog(entity, f"Currency {record['SalesCurrencyCode']} does not exist.")
        if record["SalesTaxGroup"] not in TAX_GROUPS:
            raise self._infolog(entity, f"Sales tax group {record['SalesTaxGroup']} does not exist.")
        if before is None and not record["PartyType"]:
            record["PartyType"] = "Organization"

    def _before_Projects(
        self, entity: Entity, record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:  # named after D365's entity set
        area = record["dataAreaId"]
        if (
            record["ProjectContractID"]
            and self.store.get("ProjectContracts", f"{area}|{record['ProjectContractID']}") is None
        ):
            raise self._infolog(entity, f"Project contract {record['ProjectContractID']} does not exist.")
        if record["CustomerAccount"]:
            self._customer(entity, area, record["CustomerAccount"])

    def _before_FreeTextInvoiceHeaders(  # named after D365's entity set
        self, entity: Entity, record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        if before is not None and before["IsPosted"] == "Yes":
            raise self._infolog(
                entity, f"Free text invoice {before['FreeTextNumber']} is posted and cannot be changed."
            )
        customer = self._customer(entity, record["dataAreaId"], record["CustomerAccount"])
        record["InvoiceAccount"] = record["InvoiceAccount"] or customer["CustomerAccount"]
        record["InvoiceName"] = customer["OrganizationName"]
        record["CurrencyCode"] = record["CurrencyCode"] or customer["SalesCurrencyCode"]
        if record["CurrencyCode"] not in CURRENCIES:
            raise self._infolog(entity, f"Currency {record['CurrencyCode']} does not exist.")
        if before is None:
            counter = int(self.store.kv_get("recid", FIRST_RECID)) + 1
            self.store.kv_set("recid", counter)
            record["InvoiceIdentifier"] = counter
            if record["InvoiceDate"].startswith("1900"):
                record["InvoiceDate"] = now_iso()[:10] + "T12:00:00Z"
            if record["DueDate"].startswith("1900"):
                due = dt.date.fromisoformat(record["InvoiceDate"][:10]) + dt.timedelta(days=30)
                record["DueDate"] = f"{due.isoformat()}T12:00:00Z"

    def _unposted(self, area: str, parent: int, entity: Entity) -> dict[str, Any]:
        header = self.store.get("FreeTextInvoiceHeaders", f"{area}|{parent}")
        if header is None:
            raise self._infolog(entity, f"Free text invoice {parent} does not exist.")
        if header["IsPosted"] == "Yes":
            raise self._infolog(
                entity, f"Free text invoice {header['FreeTextNumber']} is posted; its lines cannot be changed."
            )
        return header

    def _before_FreeTextInvoiceLines(  # named after D365's entity set
        self, entity: Entity, record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        header = self._unposted(record["dataAreaId"], record["ParentRecId"], entity)
        if record["MainAccountDisplayValue"] and not re.fullmatch(r"\d{6}", record["MainAccountDisplayValue"]):
            raise self._infolog(entity, f"Main account {record['MainAccountDisplayValue']} does not exist.")
        customer = self._customer(entity, record["dataAreaId"], header["CustomerAccount"])
        net = (Decimal(str(record["Quantity"])) * Decimal(str(record["UnitPrice"]))).quantize(Decimal("0.01"))
        record["TransactionCurrencyAmount"] = float(net)
        record["SalesTaxAmount"] = float(
            (net * TAX_GROUPS.get(customer["SalesTaxGroup"], Decimal(0))).quantize(Decimal("0.01"))
        )
        record["CurrencyCode"] = header["CurrencyCode"]

    def _before_CustomerPaymentJournalHeaders(  # named after D365's entity set
        self, entity: Entity, record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        if before is None:
            counter = int(self.store.kv_get(f"journal|{record['dataAreaId']}", 0)) + 1
            self.store.kv_set(f"journal|{record['dataAreaId']}", counter)
            record["JournalBatchNumber"] = f"{record['dataAreaId'].upper()}-{counter:05d}"

    def _before_CustomerPaymentJournalLines(  # named after D365's entity set
        self, entity: Entity, record: dict[str, Any], before: dict[str, Any] | None
    ) -> None:
        area = record["dataAreaId"]
        if self.store.get("CustomerPaymentJournalHeaders", f"{area}|{record['JournalBatchNumber']}") is None:
            raise self._infolog(entity, f"Journal batch number {record['JournalBatchNumber']} does not exist.")
        customer = self._customer(entity, area, record["AccountDisplayValue"])
        record["CurrencyCode"] = record["CurrencyCode"] or customer["SalesCurrencyCode"]
        if record["MarkedInvoice"]:
            posted = self.store.get("SalesInvoiceHeadersV2", f"{area}|{record['MarkedInvoice']}")
            if posted is None or posted["InvoiceCustomerAccountNumber"] != customer["CustomerAccount"]:
                raise self._infolog(
                    entity,
                    f"Invoice {record['MarkedInvoice']} is not an open transaction of customer "
                    f"{customer['CustomerAccount']}.",
                )
        if before is None:
            if not record["LineNumber"]:
                lines = [r for r in self.store.find(entity.name, "JournalBatchNumber", record["JournalBatchNumber"])
                         if r["dataAreaId"] == area]  # fmt: skip
                record["LineNumber"] = float(len(lines) + 1)
            record["Voucher"] = f"CPV-{int(self.store.kv_get('voucher', 0)) + 1:06d}"
            self.store.kv_set("voucher", int(self.store.kv_get("voucher", 0)) + 1)

    def post_invoice(self, request: Request) -> Response:
        """Control API: post a free text invoice, as an accountant does in D365 (safe to repeat)."""
        body = request.json() or {}
        area = str(body.get("dataAreaId") or DEFAULT_COMPANY).lower()
        entity = ENTITIES["FreeTextInvoiceHeaders"]
        with self.write_lock:
            header = self.store.get(entity.name, f"{area}|{body.get('InvoiceIdentifier')}")
            if header is None:
                raise BadRequest(
                    f"Free text invoice {body.get('InvoiceIdentifier')} does not exist in {area}.", status=404
                )
            if header["IsPosted"] == "Yes":
                return Response(200, self._public(header))
            lines = [r for r in self.store.find("FreeTextInvoiceLines", "ParentRecId", header["InvoiceIdentifier"])
                     if r["dataAreaId"] == area]  # fmt: skip
            if not lines:
                raise self._infolog(entity, "The invoice has no lines and cannot be posted.")
            net = sum(Decimal(str(r["TransactionCurrencyAmount"])) for r in lines)
            tax = sum(Decimal(str(r["SalesTaxAmount"])) for r in lines)
            counter = int(self.store.kv_get(f"fti|{area}", 0)) + 1
            self.store.kv_set(f"fti|{area}", counter)
            number = f"FTI-{counter:06d}"
            header = {**header, "IsPosted": "Yes", "FreeTextNumber": number, "_etag": f'W/"{secrets.randbits(40)}"'}
            self.store.put(entity.name, self._record_id(entity, header), header)
            posted = {
                "dataAreaId": area,
                "InvoiceNumber": number,
                "InvoiceDate": header["InvoiceDate"],
                "InvoiceCustomerAccountNumber": header["InvoiceAccount"],
                "CurrencyCode": header["CurrencyCode"],
                "TotalInvoiceAmount": float(net + tax),
                "TotalTaxAmount": float(tax),
                "CustomersOrderReference": header["CustomerReference"],
                "CustomerRequisitionNumber": header["CustomerRequisition"],
                "LedgerVoucher": f"ARI-{counter:06d}",
                "SalesOrderNumber": "",
                "_etag": f'W/"{secrets.randbits(40)}"',
                "_n": self.store.next_seq(),
            }
            self.store.put("SalesInvoiceHeadersV2", f"{area}|{number}", posted)
        return Response(200, self._public(header))

    # Exchange rates ------------------------------------------------------------------------------
    def _rates(self) -> list[dict[str, Any]]:
        """Rate type Default: every pair of the market's currencies, quoted per 100 units, each
        valid from its day until the day before the next (the last one until 2154-12-31)."""
        days = fx.by_day(self.store)
        rows = []
        for index, (day, usd_per) in enumerate(days):
            end = days[index + 1][0] - dt.timedelta(days=1) if index + 1 < len(days) else dt.date(2154, 12, 31)
            for source in ("USD", *sorted(usd_per)):
                for target in ("USD", *sorted(usd_per)):
                    rate = fx.cross(usd_per, source, target) if source != target else None
                    if rate is None:
                        continue
                    rows.append(
                        {
                            "RateTypeName": "Default",
                            "RateTypeDescription": "Default exchange rate type",
                            "FromCurrency": source,
                            "ToCurrency": target,
                            "StartDate": f"{day.isoformat()}T12:00:00Z",
                            "EndDate": f"{end.isoformat()}T12:00:00Z",
                            "Rate": float(rate * 100),
                            "ConversionFactor": "Hundred",
                            "_etag": 'W/"1"',
                            "_n": len(rows) + 1,
                        }
                    )
        return rows

    # $batch ----------------------------------------------------------------------------------------
    def batch(self, request: Request) -> Response:
        """multipart/mixed: requests outside change sets run one by one; a change set runs all or
        nothing (one failure undoes the others and is its only answer)."""
        boundary = _boundary(request.header("content-type"))
        parts = _split(request.body.decode("utf-8", "replace"), boundary)
        out_boundary = f"batchresponse_{uuid.uuid4()}"
        chunks: list[str] = []
        for headers, body in parts:
            kind = headers.get("content-type", "")
            if kind.startswith("multipart/mixed"):
                inner = [(h.get("content-id", ""), _request_of(b)) for h, b in _split(body, _boundary(kind))]
                chunks.append(self._changeset(request, inner))
            else:
                answer = self._one(request, _request_of(body))
                chunks.append("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n" + answer)
        text = "".join(f"--{out_boundary}\r\n{chunk}\r\n" for chunk in chunks) + f"--{out_boundary}--\r\n"
        return Response(200, raw=text.encode(), headers={"Content-Type": f"multipart/mixed; boundary={out_boundary}"})

    def _changeset(self, outer: Request, requests: list[tuple[str, tuple[str, str, dict[str, str], bytes]]]) -> str:
        """Run a change set in one store transaction: the first failure rolls every write back."""
        answers = []
        with self.write_lock:
            snapshot = self.store.db.execute(
                "SELECT object, id, data, created_at, updated_at, seq FROM records"
            ).fetchall()
            kv = self.store.db.execute("SELECT name, value FROM kv").fetchall()
            for content_id, (method, url, headers, body) in requests:
                status, text = self._dispatch_inner(outer, method, url, headers, body)
                if status >= 400:
                    with self.store.transaction() as db:
                        db.execute("DELETE FROM records")
                        db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", snapshot)
                        db.execute("DELETE FROM kv")
                        db.executemany("INSERT INTO kv VALUES (?, ?)", kv)
                    return "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n" + text
                answers.append((content_id, text))
        boundary = f"changesetresponse_{uuid.uuid4()}"
        inner = "".join(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {cid}\r\n\r\n{text}\r\n"
            for cid, text in answers
        )
        return f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n{inner}--{boundary}--"

    def _one(self, outer: Request, parsed: tuple[str, str, dict[str, str], bytes]) -> str:
        return self._dispatch_inner(outer, *parsed)[1]

    def _dispatch_inner(
        self, outer: Request, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str]:
        """One request of a batch through the same routes (and faults) as a lone call."""
        from urllib.parse import urlparse

        parsed = urlparse(url)
        path = parsed.path if parsed.path.startswith("/") else "/data/" + parsed.path
        inner = Request(
            method=method,
            path=path,
            query=parse_qs(parsed.query, keep_blank_values=True),
            headers={**{k: v for k, v in outer.headers.items() if k in ("authorization", "host")}, **headers},
            body=body,
        )
        if path.startswith("/data/$batch") or path.startswith("/_sandbox"):
            response: Response | None = self.error(400, "A batch may not contain a batch or a control call.")
        else:
            response = self.handle(inner)
        if response is None:
            response = self.error(504, "The request timed out.")
        if "_journalled" not in inner.params and method in {"POST", "PATCH", "DELETE"}:
            self.store.journal_add(method, path, response.status, None, False)
        reason = REASONS.get(response.status, "Error")
        payload = (
            response.raw.decode()
            if response.raw is not None
            else json.dumps(response.body)
            if response.body is not None
            else ""
        )
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        if payload:
            lines.append("Content-Type: application/json; odata.metadata=minimal")
        lines += [f"{k}: {v}" for k, v in response.headers.items() if k.lower() != "content-type"]
        return response.status, "\r\n".join(lines) + "\r\n\r\n" + payload


def _boundary(content_type: str) -> str:
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not match:
        raise BadRequest("The batch request must have a multipart/mixed Content-Type with a boundary.")
    return match.group(1)


def _split(text: str, boundary: str) -> list[tuple[dict[str, str], str]]:
    parts = []
    for chunk in re.split(rf"--{re.escape(boundary)}(?:--)?", text)[1:]:
        chunk = chunk.lstrip("\r\n")
        if not chunk.strip():
            continue
        match = re.search(r"\r?\n\r?\n", chunk)
        head, body = (chunk[: match.start()], chunk[match.end() :]) if match else (chunk, "")
        headers = {}
        for line in head.splitlines():
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, body))
    return parts


def _request_of(text: str) -> tuple[str, str, dict[str, str], bytes]:
    """An application/http part: request line, headers, body."""
    text = text.lstrip("\r\n")
    match = re.search(r"\r?\n\r?\n", text)
    head, body = (text[: match.start()], text[match.end() :]) if match else (text, "")
    lines = head.splitlines()
    request_line = re.match(r"(GET|POST|PATCH|PUT|DELETE) (\S+) HTTP/1\.1", lines[0] if lines else "")
    if not request_line:
        raise BadRequest(f"The batch part does not start with a request line: {(lines[0] if lines else '')[:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return request_line.group(1), request_line.group(2), headers, body.strip().encode()


def serve(*, port: int, state_dir: Path | None, host: str = "127.0.0.1") -> None:
    base_serve(DynamicsFinanceSandbox(state_dir), port=port, host=host)
