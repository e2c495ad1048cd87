"""Microsoft Dynamics 365 Finance (finance and operations apps) as an ERP, through its OData v4
data entities: customers, project contracts with their projects, free text invoices, the posted
invoice journal, customer payment journal lines and exchange rates of one legal entity.

Credentials (the sealed dict of the connection):
    {"tenant": "<Entra tenant id or domain>", "client_id": "<app registration id>",
     "client_secret": "<its secret>", "data_area_id": "<legal entity, e.g. demf>",
     "rate_type": "Default",                                   # optional: the exchange rate type
     "login_url": "https://login.microsoftonline.com"}          # optional, see _login_url()
The connection's base_url is the environment, https://<env>.operations.dynamics.com (or a
sandbox); data entities live under /data/<EntitySet>, the schema at /data/$metadata.

Legal entities: every company-specific entity carries `dataAreaId`. A query sees only the app
user's default company unless it says `cross-company=true`, so every call here says it and
filters (or keys) on the connection's own `dataAreaId`: one connection speaks for one legal
entity, whichever company the app user defaults to.

Keys: customers and project contracts are keyed by our key itself (CustomerAccount C-<account>,
ProjectContractID P-<deal>); a free text invoice has a number the system assigns
(InvoiceIdentifier), so our invoice key rides in its CustomerReference and the project's key in
CustomerRequisition, both copied onto the posted invoice. There is no upsert: a write reads the
record by its key, then creates it (POST) or changes what differs (PATCH on the key). Several
writes that belong together go in one `$batch` change set, which D365 applies all or nothing: an
invoice's lines, a contract and its project, a page of customers.

Ledger: a free text invoice is posted when IsPosted is Yes; the posted invoice journal
(SalesInvoiceHeadersV2) then holds its number and totals, and customer payment journal lines
settle it by naming it in MarkedInvoice. What a posted invoice still owes is its total less the
payment lines marked against it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import quote

from connectors import canonical as c
from connectors import holdings as h
from connectors.base import (
    ExchangeRate,
    InboundChange,
    InvoiceStatus,
    LedgerInvoice,
    PaymentApplied,
    WriteResult,
)
from connectors.errors import ConnectorError, RejectedError, WebhookRejected
from connectors.odata import (
    BatchAnswer,
    BatchRequest,
    ODataConnector,
    batch_decode,
    batch_encode,
    literal,
    odata_literal,
)
from connectors.schema import NUMBER_OR_TEXT, DateText, NumberText, PayloadShape, RecordShape, payload_check, sent

PUBLIC_HOST_SUFFIX = ".operations.dynamics.com"
NEVER = "2154-12-31"  # D365's "no end date"


@dataclass(frozen=True)
class EntitySet:
    """One data entity as this connector uses it: its public collection name, the field our key
    is kept in, whether that field is the entity's own key, and the words a finance person uses."""

    name: str
    key_field: str
    keyed: bool  # our key is the entity's key (address it directly) rather than a field we filter on
    noun: str
    company: bool = True  # company-specific: carries dataAreaId


ENTITIES: dict[str, EntitySet] = {
    e.name: e
    for e in (
        EntitySet("CustomersV3", "CustomerAccount", True, "customer"),
        EntitySet("ProjectContracts", "ProjectContractID", True, "project contract"),
        EntitySet("Projects", "ProjectID", True, "project"),
        EntitySet("FreeTextInvoiceHeaders", "CustomerReference", False, "free text invoice"),
        EntitySet("FreeTextInvoiceLines", "ParentRecId", False, "free text invoice line"),
        EntitySet("SalesInvoiceHeadersV2", "CustomersOrderReference", False, "posted invoice"),
        EntitySet("CustomerPaymentJournalLines", "JournalBatchNumber", False, "customer payment"),
        EntitySet("ExchangeRates", "RateTypeName", False, "exchange rate", company=False),
    )
}
ALIASES = {
    "customer": "CustomersV3",
    "contract": "ProjectContracts",
    "project": "Projects",
    "invoice": "FreeTextInvoiceHeaders",
    "payment": "CustomerPaymentJournalLines",
}
# Declared shapes of what Dynamics 365 Finance sends (connectors/schema.py), per entity set:
# checked as each page arrives, so a record of another shape is a MalformedRecord naming the
# field instead of a KeyError in a flow or an amount read as zero.
_TEXT, _NUM, _DAY = ((str,), False), (NUMBER_OR_TEXT, False), ((DateText,), False)
RECORD_SHAPES: dict[str, PayloadShape] = {
    "CustomersV3": {"CustomerAccount": ((str,), True), "OrganizationName": _TEXT, "SalesCurrencyCode": _TEXT},
    "ProjectContracts": {"ProjectContractID": ((str,), True)},
    "Projects": {"ProjectID": ((str,), True)},
    "FreeTextInvoiceHeaders": {
        "InvoiceIdentifier": ((int, NumberText), True),
        "CustomerReference": _TEXT,
        "CustomerRequisition": _TEXT,
        "CustomerAccount": _TEXT,
        "CurrencyCode": _TEXT,
        "InvoiceDate": _DAY,
        "DueDate": _DAY,
        "TotalInvoiceAmount": _NUM,
        "TotalTaxAmount": _NUM,
        "IsPosted": ((str, bool), False),
    },
    "FreeTextInvoiceLines": {
        "ParentRecId": ((int, NumberText), True),
        "Quantity": _NUM,
        "UnitPrice": _NUM,
        "SalesTaxAmount": _NUM,
    },
    "SalesInvoiceHeadersV2": {
        "InvoiceNumber": ((str,), True),
        "CustomersOrderReference": _TEXT,
        "InvoiceDate": _DAY,
        "TotalInvoiceAmount": _NUM,
        "SalesTaxAmount": _NUM,
    },
    "CustomerPaymentJournalLines": {
        "JournalBatchNumber": ((str,), True),
        "LineNumber": ((int, float, NumberText), True),
        "MarkedInvoice": _TEXT,
        "CreditAmount": _NUM,
        "DebitAmount": _NUM,
        "TransactionDate": _DAY,
    },
    "ExchangeRates": {
        "FromCurrency": ((str,), True),
        "ToCurrency": ((str,), True),
        "Rate": (NUMBER_OR_TEXT, True),
        "StartDate": ((DateText,), True),
        "ConversionFactor": _TEXT,
    },
}
# What D365 computes or assigns itself: never sent back on a PATCH, never compared.
READ_ONLY = {"@odata.etag", "@odata.context", "dataAreaId", "InvoiceIdentifier", "IsPosted"}
LINES = "FreeTextInvoiceLines"  # the pseudo-field an invoice's lines ride in until written
# ExchangeRates.ConversionFactor: how many units of the from-currency Rate is quoted for.
FACTORS = {"One": 1, "Ten": 10, "Hundred": 100, "Thousand": 1000, "TenThousand": 10000}
# batch_encode and batch_decode are OData's (connectors/odata.py); named here for D365's readers.
__all__ = ["BatchAnswer", "BatchRequest", "DynamicsFinanceConnector", "batch_decode", "batch_encode"]


_amount = h.money  # an amount to the cent; blank or unreadable: 0.00


def _date(value: Any) -> dt.date | None:
    day = h.day(value)
    return None if day is None or day.year <= 1900 else day  # D365 writes 1900-01-01 for "no date"


def _yes(value: Any) -> bool:
    return str(value) == "Yes"


def payment_application(row: dict[str, Any], *, invoice_ids: dict[str, str]) -> PaymentApplied | None:
    """A customer payment journal line settled against an invoice (MarkedInvoice: the posted
    invoice's number). A receipt is a credit to the customer, so what it took off is credit less debit.
    `invoice_ids`: posted invoice number -> the free text invoice's InvoiceIdentifier."""
    marked = str(row.get("MarkedInvoice") or "")
    if not marked or marked not in invoice_ids:
        return None
    return PaymentApplied(
        payment_id=f"{row.get('JournalBatchNumber')}:{row.get('LineNumber')}",
        invoice_id=invoice_ids[marked],
        amount=_amount(row.get("CreditAmount")) - _amount(row.get("DebitAmount")),
        applied_on=_date(row.get("TransactionDate")),
        reference=str(row.get("PaymentReference") or row.get("Voucher") or ""),
    )


def ledger_invoice(
    header: dict[str, Any],
    *,
    posted: dict[str, Any] | None,
    lines: Iterable[dict[str, Any]] = (),
    payments: Iterable[PaymentApplied] = (),
    currency: str = "",
) -> LedgerInvoice:
    """A free text invoice as a canonical invoice. Unposted, its figures are its lines'; posted,
    they are the posted invoice journal's (`posted`), less the payments settled against it."""
    invoice_id = str(header["InvoiceIdentifier"])
    applied = tuple(p for p in payments if p.invoice_id == invoice_id)
    is_posted = _yes(header.get("IsPosted")) and posted is not None
    if is_posted and posted is not None:
        total = _amount(posted.get("TotalInvoiceAmount"))
        tax = _amount(posted.get("TotalTaxAmount"))
        paid = sum((p.amount for p in applied), Decimal("0.00"))
        remaining = max(total - paid, Decimal("0.00"))
        status = (
            InvoiceStatus.PAID
            if remaining <= 0 and total > 0
            else InvoiceStatus.PARTLY_PAID
            if paid > 0
            else InvoiceStatus.POSTED
        )
        number = str(posted.get("InvoiceNumber") or "")
        invoice_date = _date(posted.get("InvoiceDate")) or _date(header.get("InvoiceDate"))
        source = "Posted"
    else:
        tax = sum((_amount(line.get("SalesTaxAmount")) for line in lines), Decimal("0.00"))
        net = sum(
            (
                _amount(Decimal(str(line.get("Quantity") or 0)) * Decimal(str(line.get("UnitPrice") or 0)))
                for line in lines
            ),
            Decimal("0.00"),
        )
        total, remaining, status, number = net + tax, Decimal("0.00"), InvoiceStatus.DRAFT, ""
        invoice_date = _date(header.get("InvoiceDate"))
        source = "Not posted"
    key = str(header.get("CustomerReference") or "")
    return LedgerInvoice(
        id=invoice_id,
        number=number,
        key=key,
        project_key=str(header.get("CustomerRequisition") or ""),
        batch_key=key.removeprefix("I-K") if key.startswith("I-K") else "",
        customer_id=str(header.get("CustomerAccount") or ""),
        customer_name=str(header.get("InvoiceName") or ""),
        currency=(str(header.get("CurrencyCode") or "") or currency).upper(),
        total=total,
        tax=tax,
        open_balance=remaining,
        status=status,
        source_status=source,
        invoice_date=invoice_date,
        due_date=_date(header.get("DueDate")) or invoice_date,
        posting_date=invoice_date if is_posted else None,
        payments=applied,
    )


class DynamicsFinanceConnector(ODataConnector):
    vendor = "dynamicsfinance"
    product = "Dynamics 365 Finance"
    api_hosts = ("*" + PUBLIC_HOST_SUFFIX, "login.microsoftonline.com")
    # The data entities' path carries no API version (entity versions are in the set names, such
    # as CustomersV3): what a connection pins is the OData protocol version, sent as
    # OData-MaxVersion so the service never answers in a newer one.
    default_api_version = "4.0"
    page_size = 1000  # Prefer: odata.maxpagesize; the service pages at 10,000 at most
    capabilities: ClassVar[dict[str, c.Capability]] = {
        c.CUSTOMER: c.Capability(c.CUSTOMER, "CustomersV3", c.can(c.READ_ONE, c.UPSERT, c.FIND, c.RECONCILE)),
        # The contract is a project contract with one project of the same id: it bills, and keeps
        # no contract value (funding limits are not written).
        c.CONTRACT: c.Capability(c.CONTRACT, "ProjectContracts", c.can(c.UPSERT, c.FIND, c.RECONCILE)),
        c.INVOICE: c.Capability(
            c.INVOICE, "FreeTextInvoiceHeaders", c.can(c.READ_ONE, c.READ_CHANGED, c.UPSERT, c.FIND, c.RECONCILE)
        ),
        c.PAYMENT: c.Capability(
            c.PAYMENT, "CustomerPaymentJournalLines", c.can(c.READ_ONE, c.READ_CHANGED, c.RECONCILE)
        ),
        c.RATE: c.Capability(c.RATE, "ExchangeRates", c.can(c.RECONCILE)),
    }
    # Service protection: user-based limits of the order of 6,000 requests per 5 minutes and 52
    # concurrent requests per user (optional since 10.0.35); resource-based throttling answers 429
    # with Retry-After whenever the environment is busy, by the priority set for the app.
    limits: ClassVar[c.Limits] = c.Limits(page_size=1000, bulk_size=100, max_concurrency=52)
    reconcile_value_maps: ClassVar[dict[str, tuple[str, str]]] = {"tax_codes": ("customer", "sales_tax_group")}
    reads_exchange_rates = True
    # The contract mapping checks the service line against its table; nothing is stored (shape()).
    shaped_targets: ClassVar[dict[str, frozenset[str]]] = {c.CONTRACT: frozenset({"service_line_check"})}

    # Addresses -----------------------------------------------------------------------------------
    @property
    def company(self) -> str:
        return str(self.credentials["data_area_id"]).lower()

    def data_url(self, path: str = "") -> str:
        return self.url(f"/data/{path}")

    def batch_url(self) -> str:
        return self.data_url("$batch")

    def _entity(self, entity: str) -> EntitySet:
        name = ALIASES.get(entity, entity)
        if name not in ENTITIES:
            raise RejectedError(f"Dynamics 365 Finance has no entity {entity!r} here (known: {', '.join(ENTITIES)})")
        return ENTITIES[name]

    def key_path(self, entity: EntitySet, key: str | int) -> str:
        """The entity addressed by its key, of which the legal entity is part:
        CustomersV3(dataAreaId='demf',CustomerAccount='C-1')."""
        # A key is part of the path: what is not safe there is percent-encoded (D365 decodes it).
        value = str(key) if isinstance(key, int) else quote(odata_literal(key), safe="'")
        field = "InvoiceIdentifier" if entity.name == "FreeTextInvoiceHeaders" else entity.key_field
        return f"{entity.name}(dataAreaId={odata_literal(self.company)},{field}={value})"

    def public_api_host(self, host: str) -> bool:
        return host.endswith(PUBLIC_HOST_SUFFIX)

    # Auth -----------------------------------------------------------------------------------------
    def token_scope(self) -> str:
        # The resource is the environment itself: https://<env>.operations.dynamics.com/.default
        return self.connection.base_url.rstrip("/") + "/.default"

    def auth_headers(self) -> dict[str, str]:
        return {**super().auth_headers(), "OData-MaxVersion": self.pinned_api_version}

    def ping(self) -> None:
        self._context.noun = "legal entity"
        self.send("GET", self.data_url("CustomersV3"), params=self._params(top=1))

    # Errors ---------------------------------------------------------------------------------------
    def describe_refusal(self, error: ConnectorError, code: str, message: str, noun: str) -> str | None:
        """D365's envelope: {"error": {"code", "message", "innererror": {"message", "type",
        "stacktrace"}}}; the outer message is often only "An error has occurred.", the infolog
        (what a person can act on) is in the inner one (odata_error reads it)."""
        status = error.http_status
        if status == 401:
            return (
                "Dynamics 365 Finance refused our access token (401). Check the app registration's client id "
                "and secret, and that the app is listed on the environment's 'Microsoft Entra applications' page."
            )
        if status == 403:
            return (
                f"Dynamics 365 Finance does not allow this app to change the {noun} "
                f"(403{': ' + message if message else ''}). "
                "Give the user the app is mapped to a role that may."
            )
        if status == 404:
            return f"Dynamics 365 Finance has no such {noun} in legal entity {self.company}" + (
                f": {message}" if message else ""
            )
        return None

    # Reading --------------------------------------------------------------------------------------
    def _params(
        self, *, where: dict[str, Any] | None = None, top: int | None = None, company: bool = True
    ) -> dict[str, str]:
        clauses = [f"dataAreaId eq {odata_literal(self.company)}"] if company else []
        clauses += [f"{name} eq {literal(value)}" for name, value in (where or {}).items()]
        params = {"cross-company": "true"} if company else {}
        if clauses:
            params["$filter"] = " and ".join(clauses)
        if top is not None:
            params["$top"] = str(top)
        return params

    def read(
        self,
        entity: str,
        *,
        since: dt.datetime | None = None,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        spec = self._entity(entity)
        if since is not None:
            raise RejectedError(
                f"Dynamics 365 Finance keeps no change date on {spec.name}: changes come as business events, not a read"
            )
        params = self._params(where=where, company=spec.company)
        if fields:
            params["$select"] = ",".join(dict.fromkeys([*fields, *(["dataAreaId"] if spec.company else [])]))
        yield from self._collection(spec, params)

    def _collection(self, spec: EntitySet, params: dict[str, str] | None) -> Iterator[dict[str, Any]]:
        """Every row of a query, following @odata.nextLink."""
        self._context.noun = spec.noun
        yield from self.pages(
            self.data_url(spec.name), params, shape=RECORD_SHAPES.get(spec.name), what=sent(self.product, spec.noun)
        )

    def lookup(self, *, entity: str, key: str) -> WriteResult | None:
        spec = self._entity(entity)
        self._context.noun = spec.noun
        if spec.keyed:
            url = self.data_url(self.key_path(spec, key))
            result = self.send("GET", url, params={"cross-company": "true"}, accept_statuses=(404,))
            if result.status == 404:
                return None
            record = payload_check(
                result.body, RECORD_SHAPES.get(spec.name, {}), what=f"{sent(self.product, spec.noun)} ({key})"
            )
        else:
            url = self.data_url(spec.name)
            params = self._params(where={spec.key_field: key}, top=2)
            result = self.send("GET", url, params=params)
            shape = RECORD_SHAPES.get(spec.name)
            rows = self.page_checked(result.body, shape, what=sent(self.product, spec.noun))["value"]
            if not rows:
                return None
            record = rows[0]
        return WriteResult(
            external_id=self._id(spec, record),
            request={"method": "GET", "url": url},
            response=record,
            http_status=result.status,
            created=False,
        )

    @staticmethod
    def _id(spec: EntitySet, record: dict[str, Any]) -> str:
        if spec.name == "FreeTextInvoiceHeaders":
            return str(record["InvoiceIdentifier"])
        if spec.name == "CustomerPaymentJournalLines":
            return f"{record['JournalBatchNumber']}:{record['LineNumber']}"
        return str(record.get(spec.key_field) or "")

    # Writing --------------------------------------------------------------------------------------
    def _write_request(
        self, spec: EntitySet, key: str, body: dict[str, Any], existing: dict[str, Any] | None
    ) -> BatchRequest | None:
        """The POST or PATCH that makes the record as wanted; None when it already is."""
        if existing is None:
            return BatchRequest(
                "POST", self.data_url(f"{spec.name}?cross-company=true"), {"dataAreaId": self.company, **body}
            )
        changes = {k: v for k, v in body.items() if k not in READ_ONLY and existing.get(k) != v}
        if not changes:
            return None
        if spec.name == "FreeTextInvoiceHeaders" and _yes(existing.get("IsPosted")):
            raise RejectedError(
                f"Dynamics 365 Finance rejected the {spec.noun}: invoice {existing.get('InvoiceIdentifier')} is posted "
                f"and cannot be changed (fields {', '.join(sorted(changes))} differ)",
                http_status=400,
                response=existing,
            )
        address = self.key_path(spec, int(existing["InvoiceIdentifier"]) if not spec.keyed else key)
        return BatchRequest("PATCH", self.data_url(f"{address}?cross-company=true"), changes, (("If-Match", "*"),))

    def upsert(self, *, entity: str, key: str, fields: dict[str, Any]) -> WriteResult:
        spec = self._entity(entity)
        self._context.noun = spec.noun
        body = dict(fields)
        lines = body.pop(LINES, None)
        project = body.pop("_project", None)
        body[spec.key_field] = key
        existing = self.lookup(entity=spec.name, key=key)
        request = self._write_request(spec, key, body, existing.response if existing else None)
        if spec.name == "FreeTextInvoiceHeaders":
            return self._invoice(key, body, lines or [], existing, request)
        changeset = [request] if request else []
        if project is not None:  # a project contract is written with its project, all or nothing
            project = {**project, "ProjectID": key, "ProjectContractID": key}
            found = self.lookup(entity="Projects", key=key)
            project_request = self._write_request(ENTITIES["Projects"], key, project, found.response if found else None)
            changeset += [project_request] if project_request else []
        if not changeset:
            assert existing is not None
            return WriteResult(existing.external_id, {"note": "no change needed"}, existing.response, 200, False)
        answers = self.batch([changeset])[0]
        for answer in answers:
            self.raise_for_answer(answer)
        record = answers[0].body if request and isinstance(answers[0].body, dict) and answers[0].body else {**body}
        return WriteResult(
            external_id=key,
            request={"batch": [{"method": r.method, "url": r.url, "json": r.body} for r in changeset]},
            response=record,
            http_status=answers[0].status,
            created=existing is None,
        )

    def _invoice(
        self,
        key: str,
        body: dict[str, Any],
        lines: list[dict[str, Any]],
        existing: WriteResult | None,
        request: BatchRequest | None,
    ) -> WriteResult:
        """A free text invoice: the header first (D365 assigns its InvoiceIdentifier), then its
        lines in one change set that points at it (ParentRecId). Lines are written only when the
        header is new or has none yet: a resumed write completes it, a repeat changes nothing."""
        if request is not None and request.method == "POST":
            created = self.send("POST", request.url, json=request.body)
            header = created.body
        elif request is not None:
            self.send("PATCH", request.url, json=request.body, headers=dict(request.headers))
            header = {**(existing.response if existing else {}), **(request.body or {})}
        else:
            assert existing is not None
            header = existing.response
        invoice_id = int(header["InvoiceIdentifier"])
        have = list(self._collection(ENTITIES[LINES], self._params(where={"ParentRecId": invoice_id})))
        if lines and not have:
            changeset = [
                BatchRequest(
                    "POST",
                    self.data_url(f"{LINES}?cross-company=true"),
                    {"dataAreaId": self.company, "ParentRecId": invoice_id, "LineNumber": float(n), **line},
                )
                for n, line in enumerate(lines, start=1)
            ]
            self._context.noun = "free text invoice line"
            for answer in self.batch([changeset])[0]:
                self.raise_for_answer(answer)
        return WriteResult(
            external_id=str(invoice_id),
            request={"header": request.body if request else None, "lines": len(lines) if not have else 0},
            response=header,
            http_status=201 if existing is None else 200,
            created=existing is None,
        )

    def upsert_many(self, *, entity: str, records: list[tuple[str, dict[str, Any]]]) -> list[WriteResult]:
        """Records keyed by the entity's own key (customers) in one $batch per `bulk_size`, each
        record its own change set: one bad record fails alone and is raised after the rest landed."""
        spec = self._entity(entity)
        composite = any("_project" in fields or LINES in fields for _, fields in records)
        if not spec.keyed or composite or len(records) < 2:  # a record of several entities writes alone
            return super().upsert_many(entity=entity, records=records)
        self._context.noun = spec.noun
        out: list[WriteResult] = []
        for start in range(0, len(records), self.limits.bulk_size):
            chunk = records[start : start + self.limits.bulk_size]
            existing = self._existing(spec, [key for key, _ in chunk])
            planned = []
            for key, fields in chunk:
                body = {**fields, spec.key_field: key}
                planned.append((key, body, self._write_request(spec, key, body, existing.get(key))))
            changesets = [[r] for _, _, r in planned if r is not None]
            answers = iter(self.batch(changesets) if changesets else [])
            failure: BatchAnswer | None = None
            for key, body, request in planned:
                if request is None:
                    out.append(WriteResult(key, {"note": "no change needed"}, existing[key], 200, False))
                    continue
                answer = next(answers)[0]
                if not 200 <= answer.status < 300:
                    failure = failure or answer
                    continue
                out.append(WriteResult(key, {"method": request.method, "url": request.url, "json": request.body},
                                       answer.body or body, answer.status, key not in existing))  # fmt: skip
            if failure is not None:
                self.raise_for_answer(failure)
        return out

    def _existing(self, spec: EntitySet, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The records of these keys that exist, by key: one query per 20 keys (URL length)."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 20):
            anyof = " or ".join(f"{spec.key_field} eq {odata_literal(k)}" for k in keys[start : start + 20])
            params = self._params()
            params["$filter"] += f" and ({anyof})"
            for row in self._collection(spec, params):
                found[str(row[spec.key_field])] = row
        return found

    def withdraw(self, *, entity: str, record_id: str) -> WriteResult:
        """DELETE a free text invoice that is not posted; D365 refuses a posted one (it is
        reversed with a credit note there)."""
        spec = self._entity(entity)
        self._context.noun = spec.noun
        url = self.data_url(self.key_path(spec, int(record_id) if spec.name == "FreeTextInvoiceHeaders" else record_id))
        found = self.send("GET", url, params={"cross-company": "true"}, accept_statuses=(404,))
        if found.status == 404:
            return WriteResult(str(record_id), {"method": "GET", "url": url}, None, 404, output={"already_gone": True})
        current = found.body
        if spec.name == "FreeTextInvoiceHeaders" and _yes(current.get("IsPosted")):
            raise RejectedError(
                f"Dynamics 365 Finance will not delete free text invoice {record_id}: it is posted. Reverse it with "
                "a credit note in Dynamics 365 Finance instead; nothing was changed",
                http_status=400,
                response=current,
            )
        result = self.send("DELETE", url, params={"cross-company": "true"}, accept_statuses=(404,))
        return WriteResult(
            external_id=str(record_id),
            request={"method": "DELETE", "url": url},
            response=current,
            http_status=result.status,
            output={"already_gone": result.status == 404},
        )

    # Canonical records ----------------------------------------------------------------------------
    def references(self, purpose: str, **links: Any) -> dict[str, Any]:
        if purpose == c.INVOICE:
            return {"CustomerAccount": links["customer_key"], LINES: links["lines"]}
        if purpose == c.CONTRACT and links.get("customer_id"):
            return {"_customer": links["customer_id"]}
        return {}

    # Schema governance ----------------------------------------------------------------------------
    def describe_record(self, entity: str) -> RecordShape:
        """The data entity's type in /data/$metadata (D365 describes every public entity there)."""
        spec = self._entity(entity)
        self._context.noun = "schema"
        return self.metadata_shape(self.data_url("$metadata"), spec.name)

    def shape(self, purpose: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Dates become the DateTimeOffset D365 keeps them as (noon UTC, so no time zone moves
        the day); a contract's mapped fields become the project contract and its project (same id)."""
        for name in ("InvoiceDate", "DueDate", "ContractDate"):
            value = fields.get(name)
            if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\d", value):
                fields[name] = f"{value}T12:00:00Z"
        if purpose != c.CONTRACT:
            return fields
        customer = fields.pop("_customer", None)
        fields.pop("service_line_check", None)  # checked by the mapping, not stored
        project = {"ProjectName": fields.get("Name", ""), "ProjectType": "TimeMaterial"}
        if customer:
            project["CustomerAccount"] = customer
        return {**fields, "_project": project}

    def customers_named(self, name: str) -> list[dict[str, str]]:
        rows = self.read("CustomersV3", where={"OrganizationName": name})
        return [{"id": str(r.get("CustomerAccount")), "key": str(r.get("CustomerAccount") or "")} for r in rows]

    def invoice_lines(
        self, items: list[dict[str, Any]], *, batch_date: str, value_maps: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """One line per item on the main account the invoice mapping's `main_account` table names
        for its kind; the description (60 characters at most) names the PSA item."""
        return [
            {
                "MainAccountDisplayValue": str(value_maps.get("main_account", {}).get(item["kind"], "401100")),
                "Description": item["label"][:60],
                "Quantity": float(item["quantity"]),
                "UnitPrice": float(item["unit_price"]),
            }
            for item in items
        ]

    # The ledger -----------------------------------------------------------------------------------
    def ledger_locate(self, *, key: str) -> tuple[list[str], dt.date | None]:
        if key.startswith("d365-invoice:"):
            return [key.removeprefix("d365-invoice:")], None
        if key.startswith("d365-payment:"):
            batch, _, line = key.removeprefix("d365-payment:").rpartition(":")
            rows = list(
                self.read("CustomerPaymentJournalLines", where={"JournalBatchNumber": batch, "LineNumber": float(line)})
            )
            marked = str(rows[0].get("MarkedInvoice") or "") if rows else ""
            posted = list(self.read("SalesInvoiceHeadersV2", where={"InvoiceNumber": marked})) if marked else []
            found = (
                self.lookup(entity="FreeTextInvoiceHeaders", key=str(posted[0].get("CustomersOrderReference")))
                if posted
                else None
            )
            return ([found.external_id] if found else []), (_date(rows[0].get("TransactionDate")) if rows else None)
        found = self.lookup(entity="FreeTextInvoiceHeaders", key=key)
        return ([found.external_id] if found else []), None

    def ledger_invoices(self, *, project_key: str = "", invoice_id: str = "") -> list[LedgerInvoice]:
        if invoice_id and not str(invoice_id).isdigit():
            return []  # not a free text invoice's identifier (a record id D365 never gave)
        if invoice_id:
            where: dict[str, Any] | None = {"InvoiceIdentifier": int(invoice_id)}
        else:
            where = {"CustomerRequisition": project_key} if project_key else None
        headers = list(self.read("FreeTextInvoiceHeaders", where=where))
        return self.ledger_build(headers, every=not (project_key or invoice_id))

    def ledger_build(self, headers: list[dict[str, Any]], *, every: bool = True) -> list[LedgerInvoice]:
        """Free text invoices already read, with their lines, posted journal rows and the payment
        lines settled against them: the legal entity's every row (`every`, one paged read each)
        or those of these invoices."""
        if not headers:
            return []
        if every:
            lines = list(self.read(LINES))
            posted = list(self.read("SalesInvoiceHeadersV2"))
            payments_rows = list(self.read("CustomerPaymentJournalLines"))
        else:
            lines = [r for hd in headers for r in self.read(LINES, where={"ParentRecId": int(hd["InvoiceIdentifier"])})]
            keys = [str(hd.get("CustomerReference") or "") for hd in headers]
            posted = [
                r for k in keys if k for r in self.read("SalesInvoiceHeadersV2", where={"CustomersOrderReference": k})
            ]
            payments_rows = [
                r
                for p in posted
                for r in self.read("CustomerPaymentJournalLines", where={"MarkedInvoice": p["InvoiceNumber"]})
            ]
        by_key = {str(p.get("CustomersOrderReference") or ""): p for p in posted}
        ids = {str(p["InvoiceNumber"]): "" for p in posted}
        for hd in headers:
            row = by_key.get(str(hd.get("CustomerReference") or ""))
            if row is not None:
                ids[str(row["InvoiceNumber"])] = str(hd["InvoiceIdentifier"])
        applied = [p for p in (payment_application(r, invoice_ids=ids) for r in payments_rows) if p is not None]
        by_parent: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            by_parent.setdefault(str(line.get("ParentRecId")), []).append(line)
        return [
            ledger_invoice(
                hd,
                posted=by_key.get(str(hd.get("CustomerReference") or "")) if hd.get("CustomerReference") else None,
                lines=by_parent.get(str(hd["InvoiceIdentifier"]), []),
                payments=applied,
            )
            for hd in headers
        ]

    # Changes (polled) ------------------------------------------------------------------------------
    def verify_webhook(self, *, headers: dict[str, str], body: bytes, now: dt.datetime) -> str:
        raise WebhookRejected(404, "Dynamics 365 Finance changes are polled here; business events are not wired")

    def parse_webhook(self, *, event_id: str, body: bytes) -> list[InboundChange]:
        raise WebhookRejected(404, "Dynamics 365 Finance changes are polled here; business events are not wired")

    def poll(self, *, cursor: str) -> tuple[list[InboundChange], str]:
        """What reached the ledger since `cursor`: invoices posted (rows of the posted invoice
        journal, after the last invoice number seen) and customer payment lines (after the last
        journal batch and line seen). These data entities carry no change date, so the cursor is
        keyset on their numbers, which number sequences hand out in order. Business events would
        push the same; they are not wired here."""
        try:
            position: dict[str, Any] = json.loads(cursor) if cursor else {}
        except ValueError:
            position = {}
        position = position if isinstance(position, dict) else {}
        changes: list[InboundChange] = []
        params = self._params()
        last_number = str(position.get("posted") or "")
        if last_number:
            params["$filter"] += f" and InvoiceNumber gt {odata_literal(last_number)}"
        params["$orderby"] = "InvoiceNumber"
        for row in self._collection(ENTITIES["SalesInvoiceHeadersV2"], params):
            number, key = str(row["InvoiceNumber"]), str(row.get("CustomersOrderReference") or "")
            changes.append(
                self._change(
                    "SalesInvoiceHeadersV2",
                    f"posted:{self.company}:{number}",
                    key or f"d365-posted:{number}",
                    row,
                    "InvoiceDate",
                )
            )
            last_number = number
        params = self._params()
        batch, line = (position.get("payments") or ["", 0])[:2]
        if batch:
            params["$filter"] += (
                f" and (JournalBatchNumber gt {odata_literal(batch)} or "
                f"(JournalBatchNumber eq {odata_literal(batch)} and LineNumber gt {float(line)}))"
            )
        params["$orderby"] = "JournalBatchNumber,LineNumber"
        for row in self._collection(ENTITIES["CustomerPaymentJournalLines"], params):
            batch, line = str(row["JournalBatchNumber"]), float(row["LineNumber"])
            changes.append(
                self._change(
                    "CustomerPaymentJournalLines",
                    f"payment:{self.company}:{batch}:{line}",
                    f"d365-payment:{batch}:{line}",
                    row,
                    "TransactionDate",
                )
            )

        return changes, json.dumps({"posted": last_number, "payments": [batch, line]}, sort_keys=True)

    @staticmethod
    def _change(entity: str, event_id: str, key: str, row: dict[str, Any], date_field: str) -> InboundChange:
        day = _date(row.get(date_field))
        return InboundChange(
            source_event_id=event_id,
            event_type=f"{entity}.created",
            flow="",
            business_key=key[:200],
            occurred_at=dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC) if day else dt.datetime.now(dt.UTC),
            payload={k: v for k, v in row.items() if not k.startswith("@odata.")},
        )

    def change_subject(self, change: InboundChange) -> c.ChangeSubject:
        """A posted invoice (keyed by our invoice key) or a payment line (ledger_locate reads it)."""
        entity = change.event_type.split(".", 1)[0]
        if entity == "SalesInvoiceHeadersV2":
            return c.ChangeSubject(record=c.INVOICE, action="changed", key=change.business_key)
        if entity == "CustomerPaymentJournalLines":
            return c.ChangeSubject(record=c.PAYMENT, action="changed", key=change.business_key)
        return c.ChangeSubject()

    # Exchange rates -------------------------------------------------------------------------------
    def exchange_rates(self, *, since: dt.date) -> list[ExchangeRate]:
        """The rates of the connection's rate type (credentials' rate_type, "Default" when unset)
        in effect on or after `since`, into the legal entity's accounting currency (what its
        ledger converts with). ExchangeRates is shared by all legal entities; Rate is quoted per
        ConversionFactor units of FromCurrency, each row valid StartDate..EndDate."""
        rate_type = str(self.credentials.get("rate_type") or "Default")
        clauses = [f"RateTypeName eq {odata_literal(rate_type)}", f"EndDate ge {literal(since)}"]
        accounting = self._accounting_currencies()
        if accounting:
            clauses.append("(" + " or ".join(f"ToCurrency eq {odata_literal(cur)}" for cur in accounting) + ")")
        params = {"$filter": " and ".join(clauses)}
        out = []
        for row in self._collection(ENTITIES["ExchangeRates"], params):
            factor = FACTORS.get(str(row.get("ConversionFactor") or "One"), 1)
            rate = Decimal(str(row.get("Rate") or 0))
            start = _date(row.get("StartDate"))
            if not rate or start is None or row.get("FromCurrency") == row.get("ToCurrency"):
                continue
            out.append(
                ExchangeRate(
                    from_currency=str(row["FromCurrency"]).upper(),
                    to_currency=str(row["ToCurrency"]).upper(),
                    rate_type="daily",
                    effective_date=start,
                    rate=(rate / factor).quantize(Decimal("0.00000001")),
                )
            )
        return out

    def _accounting_currencies(self) -> list[str]:
        """The accounting currency (credentials' accounting_currency), else the currencies of the
        legal entities the connection serves; none known: every rate."""
        configured = str(self.credentials.get("accounting_currency") or "")
        if configured:
            return [configured.upper()]
        if self.connection.pk is None:
            return []
        return sorted({str(cur).upper() for cur in self.connection.legal_entities.values_list("currency", flat=True)})

    # Reconciliation -------------------------------------------------------------------------------
    def erp_holdings(self, *, currency: str, value_maps: dict[str, dict[str, str]]) -> h.ErpHoldings:
        """Customers, project contracts (without a value) and free text invoices with their lines."""
        customers: dict[str, h.ErpCustomer] = {}
        for row in self.read("CustomersV3"):
            key = str(row.get("CustomerAccount") or "")
            customers[key] = h.ErpCustomer(
                key=key,
                id=key,
                name=str(row.get("OrganizationName") or ""),
                tax_code=str(row.get("SalesTaxGroup") or ""),
                currency=(str(row.get("SalesCurrencyCode") or "") or currency).upper(),
            )
        contracts = {}
        for row in self.read("ProjectContracts"):
            key = str(row.get("ProjectContractID") or "")
            parts = c.KEYS[c.CONTRACT].parse(key)
            if parts:
                contracts[parts["deal"]] = h.ErpContract(
                    key=key, id=key, amount=None, currency="", version=None, subsidiary="", modified_on=None
                )
        headers = list(self.read("FreeTextInvoiceHeaders"))
        lines: dict[str, list[h.ErpLine]] = {}
        for line in self.read(LINES):
            description = str(line.get("Description") or "")
            match = h.LINE_REF.match(description)
            amount = Decimal(str(line.get("Quantity") or 0)) * Decimal(str(line.get("UnitPrice") or 0))
            lines.setdefault(str(line.get("ParentRecId")), []).append(
                h.ErpLine(ref=match.group("ref") if match else "", amount=h.money(amount), description=description)
            )
        invoices = []
        for row, ledger in zip(headers, self.ledger_build(headers), strict=True):
            key = str(row.get("CustomerReference") or "")
            invoices.append(
                h.ErpInvoice(
                    id=ledger.id,
                    number=ledger.number,
                    key=key,
                    batch_id=ledger.batch_key,
                    project_key=ledger.project_key,
                    customer_id=ledger.customer_id,
                    date=h.day(row.get("InvoiceDate")),
                    currency=ledger.currency or currency.upper(),
                    subsidiary="",
                    tax=ledger.tax,
                    fx_rate=None,
                    created_at=None,
                    lines=lines.get(ledger.id, []),
                    ledger=ledger,
                )
            )
        return h.ErpHoldings(contracts=contracts, invoices=invoices, customers=customers)
