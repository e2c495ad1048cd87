"""Microsoft Dynamics 365 Business Central (API v2.0) as an ERP: customers, sales invoices,
projects and customer payments of one company, plus its webhook notifications.

Credentials (the sealed dict of the connection):
    {"tenant": "<Entra tenant id or domain>", "environment": "production",
     "client_id": "<app registration id>", "client_secret": "<its secret>",
     "company_id": "<BC company GUID>", "client_state": "<shared secret echoed in notifications>",
     "login_url": "https://login.microsoftonline.com"}          # optional, see _login_url()
The connection's base_url is the API host (https://api.businesscentral.dynamics.com, or a sandbox);
paths are built as /v2.0/{tenant}/{environment}/api/v2.0/companies({company_id})/...

Business Central has no upsert by external key. `upsert` looks the record up by its business key
($filter on `number` or `externalDocumentNumber`), then creates it (POST) or changes it (PATCH with
If-Match: <etag>). A process-level lock per (connection, entity, key) keeps two threads of one worker
from both creating; across worker processes the engine's per-handoff lease guarantees that only one
worker runs a given handoff step at a time, so the lookup-then-create is never raced across processes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, ClassVar

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
from connectors.odata import ODataConnector, literal, odata_literal
from connectors.schema import (
    NUMBER_OR_TEXT,
    DateText,
    MalformedRecord,
    RecordShape,
    records_checked,
    sent,
)

SCOPE = "https://api.businesscentral.dynamics.com/.default"
PUBLIC_API_HOST = "api.businesscentral.dynamics.com"

# Entity set -> the business key field we match on, and the words a finance person uses for it.
ENTITIES: dict[str, tuple[str, str]] = {
    "customers": ("number", "customer"),
    "salesInvoices": ("externalDocumentNumber", "sales invoice"),
    "projects": ("number", "project"),
    "customerPayments": ("externalDocumentNumber", "customer payment"),
}
# Declared shapes of what Business Central sends (connectors/schema.py), checked as each page and
# record arrives, so a record of another shape is a MalformedRecord naming the field instead of a
# KeyError in a flow or an amount read as zero.
RECORD_SHAPES: dict[str, dict[str, tuple[Any, ...]]] = {
    "salesInvoices": {
        "id": ((str,), True),
        "number": ((str,), False),
        "externalDocumentNumber": ((str,), False),
        "customerNumber": ((str,), False),
        "customerName": ((str,), False),
        "currencyCode": ((str,), False),
        "status": ((str,), False),
        "invoiceDate": ((DateText,), False),
        "dueDate": ((DateText,), False),
        "postingDate": ((DateText,), False),
        "totalAmountIncludingTax": (NUMBER_OR_TEXT, False),
        "totalTaxAmount": (NUMBER_OR_TEXT, False),
        "remainingAmount": (NUMBER_OR_TEXT, False),
    },
    "customerPayments": {
        "id": ((str,), True),
        "appliesToInvoiceId": ((str,), False),
        "amount": (NUMBER_OR_TEXT, False),
        "postingDate": ((DateText,), False),
        "documentNumber": ((str,), False),
    },
    "customers": {"id": ((str,), True), "number": ((str,), False), "displayName": ((str,), False)},
    "projects": {"id": ((str,), True), "number": ((str,), False)},
    "salesInvoiceLines": {"documentId": ((str,), False), "amountExcludingTax": (NUMBER_OR_TEXT, False)},
    "currencyExchangeRates": {
        "currencyCode": ((str,), True),
        "startingDate": ((DateText,), True),
        "exchangeRateAmount": (NUMBER_OR_TEXT, False),
        "relationalExchangeRateAmount": (NUMBER_OR_TEXT, False),
        "relationalCurrencyCode": ((str,), False),
    },
    "companyInformation": {"currencyCode": ((str,), False)},
}
COLLECTION_NOUNS = {
    "salesInvoiceLines": "sales invoice line",
    "currencyExchangeRates": "currency exchange rate",
    "companyInformation": "company information",
}
# A change notification item (the webhook body's `value`).
NOTIFICATION_SHAPE = {
    "subscriptionId": ((str,), True),
    "clientState": ((str,), False),
    "resource": ((str,), True),
    "changeType": ((str,), True),
    "lastModifiedDateTime": ((DateText,), True),
}
ALIASES = {"customer": "customers", "invoice": "salesInvoices", "project": "projects", "payment": "customerPayments"}
# What BC computes itself: never sent back on a PATCH, never compared when deciding whether to write.
READ_ONLY = {
    "id",
    "@odata.etag",
    "@odata.context",
    "lastModifiedDateTime",
    "status",
    "customerName",
    "totalAmountExcludingTax",
    "totalTaxAmount",
    "totalAmountIncludingTax",
    "remainingAmount",
    "balanceDue",
    "journalDisplayName",
}
# salesInvoices.status in ledger words. A draft has no number from the posted series; In Review
# is waiting in an approval workflow; Open is posted; Canceled was reversed by a corrective credit
# memo; Corrective is an invoice that a credit memo corrected.
INVOICE_STATES = {
    "Draft": InvoiceStatus.DRAFT,
    "In Review": InvoiceStatus.PENDING_APPROVAL,
    "Open": InvoiceStatus.POSTED,
    "Paid": InvoiceStatus.PAID,
    "Canceled": InvoiceStatus.VOIDED,
    "Corrective": InvoiceStatus.CREDITED,
}
NO_INVOICE = "00000000-0000-0000-0000-000000000000"  # appliesToInvoiceId of an unapplied payment

_key_locks: dict[tuple[Any, ...], threading.Lock] = {}
_key_locks_guard = threading.Lock()


def _key_lock(*key: Any) -> threading.Lock:
    with _key_locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


def _instant(value: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise WebhookRejected(400, f"lastModifiedDateTime {value!r} is not an ISO 8601 date-time") from None


_amount = h.money  # an amount to the cent; blank or unreadable: 0.00


def _date(value: Any) -> dt.date | None:
    day = h.day(value)
    return None if day is None or day.year <= 1 else day  # BC writes 0001-01-01 for "no date"


def payment_application(row: dict[str, Any]) -> PaymentApplied | None:
    """A customerPayments journal line applied to an invoice; BC enters receipts as negative
    amounts, so what it took off the invoice is the amount's opposite."""
    invoice_id = str(row.get("appliesToInvoiceId") or "")
    if not invoice_id or invoice_id == NO_INVOICE:
        return None
    return PaymentApplied(
        payment_id=str(row.get("id") or ""),
        invoice_id=invoice_id,
        amount=-_amount(row.get("amount")),
        applied_on=_date(row.get("postingDate")),
        reference=str(row.get("documentNumber") or row.get("externalDocumentNumber") or ""),
    )


def ledger_invoice(
    record: dict[str, Any], *, payments: Iterable[PaymentApplied] = (), currency: str = ""
) -> LedgerInvoice:
    """A salesInvoices record as a canonical invoice. `currency`: the company's local currency,
    which BC leaves blank on invoices in it."""
    source = str(record.get("status") or "")
    status = INVOICE_STATES.get(source, InvoiceStatus.DRAFT)
    total = _amount(record.get("totalAmountIncludingTax"))
    remaining = _amount(record.get("remainingAmount"))
    if status == InvoiceStatus.POSTED and remaining <= 0 and total > 0:
        status = InvoiceStatus.PAID
    elif status == InvoiceStatus.POSTED and remaining < total:
        status = InvoiceStatus.PARTLY_PAID
    posted = status in InvoiceStatus.POSTED_STATES | InvoiceStatus.REVERSED_STATES
    invoice_date = _date(record.get("invoiceDate"))
    key = str(record.get("externalDocumentNumber") or "")
    return LedgerInvoice(
        id=str(record["id"]),
        number=str(record.get("number") or ""),
        key=key,
        project_key=str(record.get("customerPurchaseOrderReference") or ""),
        batch_key=key.removeprefix("I-K") if key.startswith("I-K") else "",
        customer_id=str(record.get("customerNumber") or record.get("customerId") or ""),
        customer_name=str(record.get("customerName") or ""),
        currency=(str(record.get("currencyCode") or "") or currency).upper(),
        total=total,
        tax=_amount(record.get("totalTaxAmount")),
        # A draft has no balance in BC's ledger; its remainingAmount is what it would be.
        open_balance=remaining if posted and status not in InvoiceStatus.REVERSED_STATES else Decimal("0.00"),
        status=status,
        source_status=source,
        invoice_date=invoice_date,
        due_date=_date(record.get("dueDate")) or invoice_date,
        posting_date=(_date(record.get("postingDate")) or invoice_date) if posted else None,
        payments=tuple(p for p in payments if p.invoice_id == str(record["id"])),
    )


class BusinessCentralConnector(ODataConnector):
    record_id_field = "id"
    default_api_version = "v2.0"
    vendor = "businesscentral"
    product = "Business Central"
    api_hosts = (PUBLIC_API_HOST, "login.microsoftonline.com")
    conflict_codes = frozenset({"Request_EntityChanged"})
    page_size = 1000  # Prefer: odata.maxpagesize; BC allows up to 20,000
    capabilities: ClassVar[dict[str, c.Capability]] = {
        c.CUSTOMER: c.Capability(c.CUSTOMER, "customers", c.can(c.READ_ONE, c.UPSERT, c.FIND, c.RECONCILE)),
        # The contract is a BC project (jobs): it bills, and keeps no contract value.
        c.CONTRACT: c.Capability(c.CONTRACT, "projects", c.can(c.UPSERT, c.FIND, c.RECONCILE)),
        c.INVOICE: c.Capability(
            c.INVOICE, "salesInvoices", c.can(c.READ_ONE, c.READ_CHANGED, c.UPSERT, c.FIND, c.RECONCILE)
        ),
        c.PAYMENT: c.Capability(c.PAYMENT, "customerPayments", c.can(c.READ_ONE, c.READ_CHANGED, c.RECONCILE)),
        c.RATE: c.Capability(c.RATE, "currencyExchangeRates", c.can(c.RECONCILE)),
    }
    limits: ClassVar[c.Limits] = c.Limits(page_size=1000, max_concurrency=5)
    reconcile_value_maps: ClassVar[dict[str, tuple[str, str]]] = {"tax_codes": ("customer", "tax_liable")}
    # The contract mapping checks the service line against its table; nothing is stored (shape()).
    shaped_targets: ClassVar[dict[str, frozenset[str]]] = {c.CONTRACT: frozenset({"service_line_check"})}

    # Addresses -----------------------------------------------------------------------------------
    def api_root(self) -> str:
        creds = self.credentials
        environment = creds.get("environment") or "production"
        return f"/v2.0/{creds['tenant']}/{environment}/api/{self.pinned_api_version}"

    def company_path(self) -> str:
        return f"{self.api_root()}/companies({self.credentials['company_id']})"

    def _entity(self, entity: str) -> tuple[str, str, str]:
        """(entity set, business key field, finance word) for an entity name or alias."""
        name = ALIASES.get(entity, entity)
        if name not in ENTITIES:
            raise RejectedError(f"Business Central has no entity {entity!r} here (known: {', '.join(ENTITIES)})")
        return name, *ENTITIES[name]

    def public_api_host(self, host: str) -> bool:
        return host == PUBLIC_API_HOST

    # Auth -----------------------------------------------------------------------------------------
    def token_scope(self) -> str:
        return SCOPE

    def ping(self) -> None:
        self.send("GET", self.company_path())

    # Errors ---------------------------------------------------------------------------------------
    def describe_refusal(self, error: ConnectorError, code: str, message: str, noun: str) -> str | None:
        status = error.http_status
        if status == 401:
            return (
                "Business Central refused our access token (401). Check the app registration's client id and "
                "secret, and that the app is added on BC's 'Microsoft Entra Applications' page."
            )
        if status == 403:
            reason = f": {message}" if message else ""
            return (
                f"Business Central does not allow this app to change the {noun} (403{reason}). "
                "Grant the app a permission set in Business Central."
            )
        if code == "Internal_CompanyNotFound":
            return f"The Business Central company {self.credentials.get('company_id')} does not exist: {message}"
        return None

    # Reading --------------------------------------------------------------------------------------
    def read(
        self,
        entity: str,
        *,
        since: dt.datetime | None = None,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,  # whole records come back: they hold these fields too
    ) -> Iterator[dict[str, Any]]:
        name, _, noun = self._entity(entity)
        clauses = []
        if since is not None:
            stamp = since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            clauses.append(f"lastModifiedDateTime gt {stamp}")
        for field, value in (where or {}).items():
            clauses.append(f"{field} eq {literal(value)}")
        params = {"$filter": " and ".join(clauses)} if clauses else None
        self._context.noun = noun
        yield from self.pages(
            f"{self.company_path()}/{name}", params, shape=RECORD_SHAPES.get(name), what=self._sent(name)
        )

    @staticmethod
    def _sent(name: str) -> str:
        """ "Business Central sent a sales invoice": for the message when a record has another shape."""
        return sent("Business Central", ENTITIES.get(name, ("", COLLECTION_NOUNS.get(name, name)))[1])

    # Exchange rates ------------------------------------------------------------------------------
    reads_exchange_rates = True

    def exchange_rates(self, *, since: dt.date) -> list[ExchangeRate]:
        """The company's currencyExchangeRates from `since` on (plus the row in effect on that
        day): `exchangeRateAmount` units of `currencyCode` = `relationalExchangeRateAmount` units of
        the relational currency, which is the company's local currency (LCY) when empty. BC keeps
        only these dated rates; period averages and closings are derived by dashboards.fx."""
        local = self._local_currency()
        self._context.noun = "currency exchange rates"
        rows = list(self._collection("currencyExchangeRates", {"$filter": f"startingDate ge {since.isoformat()}"}))
        # The rate in effect on `since` may have started earlier: the latest row of the month before.
        window = (
            f"startingDate lt {since.isoformat()} and startingDate ge {(since - dt.timedelta(days=31)).isoformat()}"
        )
        earlier: dict[str, dict[str, Any]] = {}
        for row in self._collection("currencyExchangeRates", {"$filter": window}):
            code = str(row.get("currencyCode"))
            if code not in earlier or str(row.get("startingDate")) > str(earlier[code].get("startingDate")):
                earlier[code] = row
        out = []
        for row in [*earlier.values(), *rows]:
            amount = Decimal(str(row.get("exchangeRateAmount") or 0))
            relational = Decimal(str(row.get("relationalExchangeRateAmount") or 0))
            code = str(row.get("currencyCode") or "")
            to_currency = str(row.get("relationalCurrencyCode") or local)
            if not amount or not relational or not code or code == to_currency:
                continue
            out.append(
                ExchangeRate(
                    from_currency=code,
                    to_currency=to_currency,
                    rate_type="daily",
                    effective_date=dt.date.fromisoformat(str(row["startingDate"])[:10]),
                    rate=(relational / amount).quantize(Decimal("0.00000001")),
                )
            )
        return out

    def _local_currency(self) -> str:
        """The company's local currency (LCY), from companyInformation."""
        self._context.noun = "company information"
        for row in self._collection("companyInformation", None):
            if row.get("currencyCode"):
                return str(row["currencyCode"])
        raise RejectedError("Business Central did not say the company's local currency (companyInformation)")

    def _collection(self, name: str, params: dict[str, str] | None) -> Iterator[dict[str, Any]]:
        """Every row of one of the company's collections."""
        yield from self.pages(
            f"{self.company_path()}/{name}", params, shape=RECORD_SHAPES.get(name), what=self._sent(name)
        )

    def lookup(self, *, entity: str, key: str) -> WriteResult | None:
        name, key_field, noun = self._entity(entity)
        self._context.noun = noun
        url = self.url(f"{self.company_path()}/{name}")
        params = {"$filter": f"{key_field} eq {odata_literal(key)}", "$top": "2"}
        result = self.send("GET", url, params=params)
        found = result.body.get("value", [])
        if not found:
            return None
        return WriteResult(
            external_id=str(found[0]["id"]),
            request={"method": "GET", "url": url, "params": params},
            response=found[0],
            http_status=result.status,
            created=False,
        )

    # Writing --------------------------------------------------------------------------------------
    def upsert(self, *, entity: str, key: str, fields: dict[str, Any]) -> WriteResult:
        name, key_field, noun = self._entity(entity)
        body = {**fields, key_field: key}
        with _key_lock(self.connection.pk, name, key):
            self._context.noun = noun
            for attempt in (1, 2):
                existing = self.lookup(entity=name, key=key)
                if existing is None:
                    return self._create(name, body)
                try:
                    return self._update(name, noun, existing.response, body)
                except ConnectorError as exc:
                    # Someone changed it between our read and our write: read again, apply ours once more.
                    if exc.http_status in (409, 412) and attempt == 1:
                        continue
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(self, name: str, body: dict[str, Any]) -> WriteResult:
        url = self.url(f"{self.company_path()}/{name}")
        result = self.send("POST", url, json=body)
        return WriteResult(
            external_id=str(result.body["id"]),
            request={"method": "POST", "url": url, "json": body},
            response=result.body,
            http_status=result.status,
            created=True,
        )

    def _update(self, name: str, noun: str, current: dict[str, Any], body: dict[str, Any]) -> WriteResult:
        url = self.url(f"{self.company_path()}/{name}({current['id']})")
        # Lines are written with the invoice only when it is created (deep insert); BC takes no deep update.
        changes = {
            k: v for k, v in body.items() if k not in READ_ONLY and k != "salesInvoiceLines" and current.get(k) != v
        }
        if not changes:  # already as wanted: writing again would only bump its version
            return WriteResult(
                external_id=str(current["id"]),
                request={"method": "GET", "url": url, "note": "no change needed"},
                response=current,
                http_status=200,
                created=False,
            )
        if name == "salesInvoices" and current.get("status") not in (None, "Draft"):
            raise RejectedError(
                f"Business Central rejected the {noun}: invoice {current.get('number')} is already posted "
                f"({current.get('status')}) and cannot be changed (fields {', '.join(sorted(changes))} differ)",
                http_status=400,
                response=current,
            )
        headers = {"If-Match": current["@odata.etag"]}
        result = self.send("PATCH", url, json=changes, headers=headers)
        return WriteResult(
            external_id=str(result.body["id"]),
            request={"method": "PATCH", "url": url, "json": changes, "headers": headers},
            response=result.body,
            http_status=result.status,
            created=False,
        )

    def post_invoice(self, invoice_id: str, *, etag: str | None = None) -> WriteResult:
        """Post a draft sales invoice (Microsoft.NAV.post). Safe to repeat: an invoice already posted
        is reported as it is, not posted twice."""
        self._context.noun = "sales invoice"
        invoice_url = self.url(f"{self.company_path()}/salesInvoices({invoice_id})")
        current = self.send("GET", invoice_url).body
        if current.get("status") != "Draft":
            return WriteResult(str(current["id"]), {"method": "GET", "url": invoice_url}, current, 200, False)
        url = f"{invoice_url}/Microsoft.NAV.post"
        headers = {"If-Match": etag or current["@odata.etag"]}
        result = self.send("POST", url, headers=headers)
        posted = self.send("GET", invoice_url).body
        return WriteResult(
            external_id=str(posted["id"]),
            request={"method": "POST", "url": url, "headers": headers},
            response=posted,
            http_status=result.status,
            created=False,
        )

    def withdraw(self, *, entity: str, record_id: str) -> WriteResult:
        """DELETE a record (with its etag). Business Central deletes a draft sales invoice and
        refuses a posted one: that is cancelled in BC, which makes a corrective credit memo."""
        name, _, noun = self._entity(entity)
        self._context.noun = noun
        url = self.url(f"{self.company_path()}/{name}({record_id})")
        found = self.send("GET", url, accept_statuses=(404,))
        if found.status == 404:
            return WriteResult(str(record_id), {"method": "GET", "url": url}, None, 404, output={"already_gone": True})
        current = found.body
        headers = {"If-Match": current["@odata.etag"]}
        try:
            result = self.send("DELETE", url, headers=headers, accept_statuses=(404,))
        except RejectedError as exc:
            if name == "salesInvoices" and current.get("status") != "Draft":
                exc.message = (
                    f"Business Central refused to delete sales invoice {current.get('number')}: it is posted "
                    f"({current.get('status')}). Cancel it in Business Central (a corrective credit memo) "
                    "instead; nothing was changed"
                )
                exc.args = (exc.message,)
            raise
        kept = ("id", "number", "externalDocumentNumber", "status", "totalAmountIncludingTax", "customerNumber")
        return WriteResult(
            external_id=str(record_id),
            request={"method": "DELETE", "url": url, "headers": headers},
            response={k: current[k] for k in kept if k in current},
            http_status=result.status,
            output={"already_gone": result.status == 404},
        )

    # The ledger -------------------------------------------------------------------------------------
    def ledger_locate(self, *, key: str) -> tuple[list[str], dt.date | None]:
        if key.startswith("bc-payment:"):
            rows = list(self.read("customerPayments", where={"id": key.removeprefix("bc-payment:")}))
            applied = payment_application(rows[0]) if rows else None
            if applied is None:
                return [], None  # a payment applied to nothing (yet): nothing to reflect
            return [applied.invoice_id], applied.applied_on  # a BC payment line applies to one invoice
        if key.startswith("bc-invoice:"):
            return [key.removeprefix("bc-invoice:")], None
        found = self.lookup(entity="salesInvoices", key=key)
        return ([found.external_id] if found else []), None

    def ledger_invoices(self, *, project_key: str = "", invoice_id: str = "") -> list[LedgerInvoice]:
        if invoice_id:
            where: dict[str, Any] | None = {"id": invoice_id}
        else:
            where = {"customerPurchaseOrderReference": project_key} if project_key else None
        return self.ledger_build(
            list(self.read("salesInvoices", where=where)), every_payment=not (project_key or invoice_id)
        )

    def ledger_build(self, records: list[dict[str, Any]], *, every_payment: bool = True) -> list[LedgerInvoice]:
        """salesInvoices records already read as canonical invoices, with the customer payments
        applied to them: the company's every payment line (`every_payment`, a full read, one
        paged call) or those applied to these invoices (one call each)."""
        if not records:
            return []
        if every_payment:
            rows = list(self.read("customerPayments"))
        else:
            rows = [
                r for inv in records for r in self.read("customerPayments", where={"appliesToInvoiceId": inv["id"]})
            ]
        payments = [p for p in (payment_application(r) for r in rows) if p is not None]
        # An invoice in the company's local currency has a blank currencyCode: the ledger takes
        # the legal entity's functional currency for it.
        return [ledger_invoice(r, payments=payments) for r in records]

    # Webhooks ---------------------------------------------------------------------------------------
    def handshake(self, *, method: str, query: dict[str, str], body: bytes) -> tuple[int, str, bytes] | None:
        """BC validates a subscription (and every renewal) by calling us with ?validationToken=...;
        only the token echoed as plain text creates the subscription."""
        token = query.get("validationToken")
        if token is None:
            return None
        return 200, "text/plain", token.encode()

    def _items(self, body: bytes) -> list[dict[str, Any]]:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookRejected(400, f"the body is not valid JSON: {exc}") from None
        items = payload.get("value") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            raise WebhookRejected(400, "a Business Central notification has a non-empty 'value' list of objects")
        try:
            list(records_checked(items, NOTIFICATION_SHAPE, what="Business Central sent a notification"))
        except MalformedRecord as exc:
            raise WebhookRejected(400, exc.message) from None
        missing = [f for item in items for f in NOTIFICATION_SHAPE if f != "clientState" and not item.get(f)]
        if missing:
            raise WebhookRejected(400, f"a notification item lacks {', '.join(dict.fromkeys(missing))}")
        return items

    @staticmethod
    def _item_id(item: dict[str, Any]) -> str:
        event_id = f"{item['subscriptionId']}:{item['resource']}:{item['lastModifiedDateTime']}"
        if len(event_id) <= 200:
            return event_id
        return f"{item['subscriptionId']}:{hashlib.sha256(event_id.encode()).hexdigest()}"

    def verify_webhook(self, *, headers: dict[str, str], body: bytes, now: dt.datetime) -> str:
        """BC signs nothing: the clientState we chose at subscription time, in every item, is the proof."""
        expected = str(self.credentials.get("client_state") or "")
        if not expected:
            raise WebhookRejected(401, "this connection has no client_state configured; set one and resubscribe")
        items = self._items(body)
        for item in items:
            if not hmac.compare_digest(str(item.get("clientState") or "").encode(), expected.encode()):
                raise WebhookRejected(401, "clientState does not match")
        if len(items) == 1:
            return self._item_id(items[0])
        joined = "\n".join(self._item_id(item) for item in items)
        return "batch:" + hashlib.sha256(joined.encode()).hexdigest()

    def change_subject(self, change: InboundChange) -> c.ChangeSubject:
        """A sales invoice or a customer payment changed; keyed so ledger_locate reads it back."""
        entity = change.event_type.split(".", 1)[0]
        if entity == "salesInvoices":
            return c.ChangeSubject(record=c.INVOICE, action="changed", key=f"bc-invoice:{change.business_key}")
        if entity == "customerPayments":
            return c.ChangeSubject(record=c.PAYMENT, action="changed", key=f"bc-payment:{change.business_key}")
        return c.ChangeSubject()

    # Canonical records --------------------------------------------------------------------------------
    def references(self, purpose: str, **links: Any) -> dict[str, Any]:
        if purpose == c.INVOICE:
            return {"customerNumber": links["customer_key"], "salesInvoiceLines": links["lines"]}
        return {}

    # Schema governance --------------------------------------------------------------------------
    def describe_record(self, entity: str) -> RecordShape:
        """The entity set's type in the API's OData `$metadata`."""
        name, _, _ = self._entity(entity)
        return self.metadata_shape(f"{self.api_root()}/$metadata", name)

    def shape(self, purpose: str, fields: dict[str, Any]) -> dict[str, Any]:
        if purpose == c.CONTRACT:
            fields.pop("service_line_check", None)  # checked by the mapping, not stored on the project
        return fields

    def customers_named(self, name: str) -> list[dict[str, str]]:
        rows = self.read("customers", where={"displayName": name})
        return [{"id": str(r.get("id")), "key": r.get("number") or ""} for r in rows]

    def invoice_lines(
        self, items: list[dict[str, Any]], *, batch_date: str, value_maps: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """One account line per item, on the G/L account the invoice mapping's `gl_account` table
        names for its kind; the description (100 characters at most) names the PSA item."""
        return [
            {
                "lineType": "Account",
                "lineObjectNumber": str(value_maps.get("gl_account", {}).get(item["kind"], "40100")),
                "description": item["label"][:100],
                "quantity": float(item["quantity"]),
                "unitPrice": float(item["unit_price"]),
            }
            for item in items
        ]

    # Reconciliation ----------------------------------------------------------------------------------
    def erp_holdings(self, *, currency: str, value_maps: dict[str, dict[str, str]]) -> h.ErpHoldings:
        """Customers, projects (contracts, without a value) and sales invoices with their lines."""
        customers: dict[str, h.ErpCustomer] = {}
        for row in self.read("customers"):
            key = row.get("number") or f"customer:{row['id']}"
            customers[key] = h.ErpCustomer(
                key=key,
                id=str(row["id"]),
                name=row.get("displayName") or "",
                tax_code="yes" if row.get("taxLiable") else "no",
                currency=(row.get("currencyCode") or currency).upper(),
            )
        contracts = {}
        for row in self.read("projects"):
            key = row.get("number") or ""
            if key.startswith("P-"):
                contracts[key.removeprefix("P-")] = h.ErpContract(
                    key=key, id=str(row["id"]), amount=None, currency="", version=None, subsidiary="", modified_on=None
                )
        lines: dict[str, list[h.ErpLine]] = {}
        for line in self._collection("salesInvoiceLines", None):
            description = str(line.get("description") or "")
            match = h.LINE_REF.match(description)
            lines.setdefault(str(line.get("documentId")), []).append(
                h.ErpLine(
                    ref=match.group("ref") if match else "",
                    amount=h.money(line.get("amountExcludingTax", line.get("netAmount"))),
                    description=description,
                )
            )
        invoices = []
        rows = list(self.read("salesInvoices"))
        ledgers = self.ledger_build(rows)
        for row, ledger in zip(rows, ledgers, strict=True):
            key = row.get("externalDocumentNumber") or ""
            invoices.append(
                h.ErpInvoice(
                    id=str(row["id"]),
                    number=str(row.get("number") or ""),
                    key=key,
                    batch_id=key.removeprefix("I-K") if key.startswith("I-K") else "",
                    project_key=str(row.get("customerPurchaseOrderReference") or ""),
                    customer_id=str(row.get("customerNumber") or ""),
                    date=h.day(row.get("invoiceDate")),
                    currency=(row.get("currencyCode") or currency).upper(),
                    subsidiary="",
                    tax=h.money(row.get("totalTaxAmount")),
                    fx_rate=None,
                    created_at=h.instant(row.get("lastModifiedDateTime")),
                    lines=lines.get(str(row["id"]), []),
                    ledger=ledger,
                )
            )
        return h.ErpHoldings(contracts=contracts, invoices=invoices, customers=customers)

    def parse_webhook(self, *, event_id: str, body: bytes) -> list[InboundChange]:
        changes = []
        for item in self._items(body):
            resource = str(item["resource"])
            match = re.search(r"/(\w+)\(([^)]*)\)$", resource)
            entity, record_id = (match.group(1), match.group(2)) if match else (resource, resource)
            if not match:  # a `collection` item: many changes, re-read the filtered resource
                entity = re.sub(r"\?.*$", "", resource).rsplit("/", 1)[-1]
            changes.append(
                InboundChange(
                    source_event_id=self._item_id(item),
                    event_type=f"{entity}.{item['changeType']}",
                    flow="",
                    business_key=record_id[:200],
                    occurred_at=_instant(str(item["lastModifiedDateTime"])),
                    payload=dict(item),
                )
            )
        return changes

    # Subscriptions (how a connection starts receiving notifications) --------------------------------
    def subscribe(self, *, entity: str, notification_url: str) -> dict[str, Any]:
        """Register a webhook subscription for one entity set of our company (BC calls back to validate)."""
        name = ALIASES.get(entity, entity)
        self._context.noun = "webhook subscription"
        body = {
            "notificationUrl": notification_url,
            "resource": f"/api/{self.pinned_api_version}/companies({self.credentials['company_id']})/{name}",
            "clientState": self.credentials.get("client_state", ""),
        }
        return self.send("POST", f"{self.api_root()}/subscriptions", json=body).body

    def renew_subscription(self, subscription: dict[str, Any]) -> dict[str, Any]:
        """Subscriptions expire after 3 days; a PATCH renews them (and BC repeats the handshake)."""
        self._context.noun = "webhook subscription"
        url = f"{self.api_root()}/subscriptions('{subscription['subscriptionId']}')"
        headers = {"If-Match": subscription.get("@odata.etag", "*")}
        return self.send("PATCH", url, json={}, headers=headers).body
