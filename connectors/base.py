"""The one connector interface the engine and the flows use. One subclass per vendor."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from connectors import http, limiter
from connectors.canonical import INVOICE, KEYS, Capability, ChangeSubject, KeyFormat, Limits
from connectors.egress import check_destination
from connectors.errors import ConnectorError, RejectedError
from connectors.models import Connection
from connectors.schema import RecordShape
from connectors.signatures import active_webhook_secrets, standard_webhook_verify
from ops.logs import bound as log_bound
from ops.metrics import vendor_call_observed


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
    # When the change was made in the source, for the sync clock (source change -> targets
    # updated). `occurred_at` is the change's business time and source order; most sources
    # stamp a modification time there, and this stays None. A source that records only a
    # business date (a posting date) declares `polled_changes_dated_only` on its connector, and the
    # engine stamps this with the moment of the poll (the business clock, which the connectors do
    # not read), so the sync clock measures the integration rather than the days between posting
    # and our poll.
    changed_at: dt.datetime | None = None


@dataclass(frozen=True)
class WriteResult:
    """What a write (or a lookup) in a target system found: its id there, and what was exchanged."""

    external_id: str
    request: dict[str, Any] = field(default_factory=dict)
    response: Any = None
    http_status: int | None = None
    created: bool | None = None
    # What a flow step keeps for later steps (ids of several records, a document read); stored on
    # the step, so a resumed handoff has it without asking the system again.
    output: dict[str, Any] = field(default_factory=dict)
    mapping_version_id: int | None = None


class InvoiceStatus:
    """An ERP invoice's state in the ledger's words, whichever ERP holds it. Each ERP connector
    maps its own states onto these (`ledger_invoice`); nothing outside the connector reads the
    vendor's status. Posted = the ERP has posted it to its general ledger."""

    DRAFT = "draft"
    PENDING_APPROVAL = "pending_approval"
    POSTED = "posted"
    PARTLY_PAID = "partly_paid"
    PAID = "paid"
    VOIDED = "voided"
    CREDITED = "credited"

    POSTED_STATES = frozenset({POSTED, PARTLY_PAID, PAID})
    UNPOSTED_STATES = frozenset({DRAFT, PENDING_APPROVAL})
    REVERSED_STATES = frozenset({VOIDED, CREDITED})
    LABELS: ClassVar[dict[str, str]] = {
        DRAFT: "Draft",
        PENDING_APPROVAL: "Pending approval",
        POSTED: "Posted",
        PARTLY_PAID: "Partly paid",
        PAID: "Paid",
        VOIDED: "Voided",
        CREDITED: "Credited",
    }


@dataclass(frozen=True)
class PaymentApplied:
    """One customer payment applied to one invoice, as the ERP applied it (DOMAIN.md §1.9)."""

    payment_id: str
    invoice_id: str
    amount: Decimal  # positive: what this payment took off the invoice
    applied_on: dt.date | None  # the application's date (the payment's posting date)
    reference: str = ""  # the payment's number, for people


@dataclass(frozen=True)
class LedgerInvoice:
    """An ERP invoice in canonical terms: what the connector read, vendor words already mapped."""

    id: str  # the ERP's own id
    number: str
    key: str  # our business key on it (externalId / externalDocumentNumber), "" if keyed in the ERP
    project_key: str
    batch_key: str  # the PSA billing batch it bills ("" when unknown)
    customer_id: str
    customer_name: str
    currency: str  # ISO 4217
    total: Decimal  # including tax
    tax: Decimal
    open_balance: Decimal  # the ERP's amount remaining
    status: str  # an InvoiceStatus value
    source_status: str  # the ERP's own words, kept for people and audits
    invoice_date: dt.date | None
    due_date: dt.date | None
    posting_date: dt.date | None  # the date it posts to the ledger (None while not posted)
    payments: tuple[PaymentApplied, ...] = ()

    @property
    def posted(self) -> bool:
        return self.status in InvoiceStatus.POSTED_STATES

    @property
    def paid_amount(self) -> Decimal:
        return sum((p.amount for p in self.payments), Decimal("0.00"))


@dataclass(frozen=True)
class ExchangeRate:
    """A rate as an ERP keeps it, in our terms: 1 `from_currency` = `rate` `to_currency`.

    rate_type "daily": in effect from `effective_date` until the next one; "average" / "closing":
    the ERP's own rate for the period from `effective_date` to `period_end` (NetSuite's
    consolidated average and current rates)."""

    from_currency: str
    to_currency: str
    rate_type: str
    effective_date: dt.date
    rate: Decimal
    period_end: dt.date | None = None


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # time.time() seconds


@dataclass(frozen=True)
class CheckResult:
    """The answer to "Test connection": could we authenticate and make one cheap call?"""

    ok: bool
    latency_ms: int
    message: str


# Tokens per process, per connection and credentials: a worker authenticates once, not per step.
_tokens: dict[tuple[int | None, str], Token] = {}
_tokens_lock = threading.Lock()
TOKEN_MARGIN_SECONDS = 60


class Connector:
    """One vendor's API behind the interface flows use. Subclasses implement the vendor parts:
    `fetch_token`, `read`, `upsert`, `lookup`, `describe_error`, and intake where the vendor has it.
    All HTTP goes through `send`, which adds auth, refreshes an expired token once on 401, and
    rewrites vendor errors into words a finance person understands."""

    vendor: ClassVar[str]
    # The vendor's documented API hosts (fnmatch patterns, token endpoints included): the only
    # public hosts a connection of this vendor may call (connectors/egress.py). None: sandbox only.
    api_hosts: ClassVar[tuple[str, ...]] = ()
    reads_exchange_rates: ClassVar[bool] = False  # implements exchange_rates()
    # The contract (connectors/canonical.py): per canonical record or write-back purpose, the
    # vendor's entity for it, what this connector can do with it, and the key it is written under.
    capabilities: ClassVar[dict[str, Capability]] = {}
    limits: ClassVar[Limits] = Limits(page_size=200)
    # A PSA: the key of the ERP invoice that bills one of its billing batches.
    invoice_key: ClassVar[KeyFormat] = KEYS[INVOICE]
    # The vendor API version a new connection is pinned to (Connection.api_version keeps the
    # pinned one, so a newer default in a later release never moves a working connection).
    default_api_version: ClassVar[str] = ""
    # True where polled records carry only a business date and no time of change (InboundChange).
    polled_changes_dated_only: ClassVar[bool] = False
    # Mapping targets the connector consumes itself to build structure (shape()), per purpose:
    # not fields of the vendor's record, so the schema check does not look for them there.
    shaped_targets: ClassVar[dict[str, frozenset[str]]] = {}

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # Auth -------------------------------------------------------------------------------------
    def fetch_token(self) -> Token:
        """Ask the vendor's token endpoint for a new access token."""
        raise NotImplementedError

    def _token_key(self) -> tuple[int | None, str]:
        fingerprint = hashlib.sha256(bytes(self.connection.credentials_sealed or b"")).hexdigest()
        return (self.connection.pk, fingerprint)

    def token(self, *, refresh: bool = False) -> str:
        key = self._token_key()
        with _tokens_lock:
            cached = _tokens.get(key)
        if cached and not refresh and cached.expires_at - TOKEN_MARGIN_SECONDS > time.time():
            return cached.value
        fresh = self.fetch_token()
        with _tokens_lock:
            _tokens[key] = fresh
        return fresh.value

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    @property
    def pinned_api_version(self) -> str:
        """The vendor API version this connection speaks: the one pinned on it, else the default."""
        return (self.connection.api_version or self.default_api_version).strip()

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.connection.base_url.rstrip("/") + "/" + path.lstrip("/")

    def call(self, method: str, url: str, **kwargs: Any) -> http.HttpResult:
        """An outbound call after the egress check (the address may have changed since it was saved).
        Every vendor call goes through here or through `send` (token requests too), so this is
        where the shared limiter (connectors/limiter.py) holds each call until the connection's
        per-minute and the vendor's at-once limits allow it, and where a Retry-After pauses the
        connection for every worker."""
        check_destination(url, vendor=self.connection.vendor, is_sandbox=self.connection.is_sandbox)
        connection = self.connection
        slug = connection.slug
        slot = limiter.acquire(
            connection_id=connection.pk,
            per_minute=connection.rate_limit_per_minute,
            max_concurrency=self.limits.max_concurrency,
            name=connection.name,
            timeout=kwargs.get("timeout"),
        )
        started, status, retry_after = time.monotonic(), "no_answer", None
        try:
            with log_bound(connection=slug):
                result = http.request(method, url, **kwargs)
            status = str(result.status)
            return result
        except ConnectorError as exc:
            status = str(exc.http_status) if exc.http_status else "no_answer"
            retry_after = exc.retry_after
            self.honour_retry_after(exc)
            raise
        finally:
            slot.release()
            limiter.record_call(connection.pk, status, counted=slot.counted)
            vendor_call_observed(
                connection=slug, status=status, seconds=time.monotonic() - started, retry_after=retry_after
            )

    def honour_retry_after(self, error: ConnectorError) -> None:
        """A vendor's "come back in N seconds" (429 or 503 with Retry-After) pauses the connection
        for every worker until then: the vendor throttles the app, not the one call. `call` does
        this for every answer; a connector calls it for a failure it finds inside an answer (a
        $batch part)."""
        if error.http_status in (429, 503) and error.retry_after:
            limiter.pause(self.connection.pk, error.retry_after)

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        accept_statuses: tuple[int, ...] = (),
        content: bytes | None = None,
    ) -> http.HttpResult:
        """One authenticated call. A 401 refreshes the token and tries once more. `content`: a
        body sent as it is, with its Content-Type in `headers` (an OData $batch)."""
        for attempt in (1, 2):
            try:
                return self.call(
                    method,
                    self.url(path),
                    json=json,
                    content=content,
                    params=params,
                    headers={**self.auth_headers(), **(headers or {})},
                    accept_statuses=accept_statuses,
                )
            except ConnectorError as exc:
                if exc.http_status == 401 and attempt == 1:
                    self.token(refresh=True)
                    continue
                self.describe_error(exc)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def describe_error(self, error: ConnectorError) -> None:
        """Rewrite `error.message` from the vendor's error body (override per vendor)."""

    def check(self) -> CheckResult:
        """Authenticate and make one cheap call; never raises."""
        started = time.monotonic()
        try:
            self.token(refresh=True)
            self.ping()
        except ConnectorError as exc:
            return CheckResult(False, int((time.monotonic() - started) * 1000), exc.message)
        except Exception as exc:  # a connection test reports, it does not crash the page
            return CheckResult(False, int((time.monotonic() - started) * 1000), f"{exc.__class__.__name__}: {exc}")
        return CheckResult(True, int((time.monotonic() - started) * 1000), "authenticated and answered")

    def ping(self) -> None:
        """One cheap authenticated call (override per vendor)."""
        raise NotImplementedError

    # Reading ----------------------------------------------------------------------------------
    def read(
        self,
        entity: str,
        *,
        since: dt.datetime | None = None,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every record of `entity` (changed since `since`, matching `where`), following the vendor's paging.

        `fields` names the fields the caller needs: a vendor that selects fields (Salesforce's SOQL)
        asks for those; the others return whole records, which hold them too. Every override takes
        it, so a flow may pass it to any connector (before, only Salesforce's did: a TypeError)."""
        raise NotImplementedError

    # Inbound ---------------------------------------------------------------------------------
    def handshake(self, *, method: str, query: dict[str, str], body: bytes) -> tuple[int, str, bytes] | None:
        """A subscription validation request (e.g. Business Central's validationToken), answered
        before any signature check: (status, content type, body). None when this is not one."""
        return None

    def verify_webhook(self, *, headers: dict[str, str], body: bytes, now: dt.datetime) -> str:
        """Check the delivery is authentic and fresh on the raw bytes, before any parsing; return
        the delivery's event id, or raise connectors.errors.WebhookRejected.

        The default is the Standard Webhooks scheme with the connection's webhook secrets (our
        sandboxes and relays sign that way); vendors with their own scheme override it.
        """
        from django.conf import settings

        secrets = active_webhook_secrets(self.connection.credentials(), now)
        return standard_webhook_verify(
            headers=headers, body=body, secrets=secrets, now=now, tolerance_seconds=settings.WEBHOOK_TOLERANCE_SECONDS
        )

    def parse_webhook(self, *, event_id: str, body: bytes) -> list[InboundChange]:
        """Turn a verified body into changes. Raises WebhookRejected(400) on a malformed body."""
        raise NotImplementedError

    def poll(self, *, cursor: str) -> tuple[list[InboundChange], str]:
        """Changes since `cursor`, and the cursor to store once they are stored."""
        raise NotImplementedError

    def change_subject(self, change: InboundChange) -> ChangeSubject:
        """What `change` is about in canonical terms, read from this vendor's payload (the only
        place that payload is read after intake); ChangeSubject() when no flow is about it."""
        return ChangeSubject()

    # Canonical records -----------------------------------------------------------------------
    def references(self, purpose: str, **links: Any) -> dict[str, Any]:
        """The vendor fields that tie a `purpose` record to others, from canonical links:
        project_id, customer_id, customer_key, opportunity_id, status, archived, lines. A link the
        vendor has no field for is left out (Certinia keeps no archived flag)."""
        return {}

    def shape(self, purpose: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Mapped fields reshaped where the vendor needs structure a flat mapping cannot express."""
        return fields

    def record_url(self, record: str, external_id: str) -> str:
        """A link to the record in the vendor's own UI, where the vendor has a stable one ("" if not)."""
        return ""

    def deal_read(self, deal_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """A deal and its account as canonical documents (docs/canonical.md), or None if gone."""
        raise RejectedError(f"{self.connection.name} keeps no deals")

    def account_exists(self, account_id: str) -> bool:
        raise RejectedError(f"{self.connection.name} keeps no accounts")

    def customers_named(self, name: str) -> list[dict[str, str]]:
        """Customers of that exact name: [{"id": their id here, "key": our key on them or ""}]."""
        raise RejectedError(f"{self.connection.name} keeps no customers")

    def billing_batch(self, key: str, *, currency: str = "") -> dict[str, Any] | None:
        """The billing batch a project-to-bill handoff is keyed by, as a canonical document
        (docs/canonical.md), or None when it no longer exists. `currency` is assumed where the
        PSA names none (the legal entity's)."""
        raise RejectedError(f"{self.connection.name} keeps no billing batches")

    def budgets(self, project_id: str) -> list[tuple[str, Decimal]]:
        """The budget records of a project: (our key on it, amount), for budgets kept as records."""
        raise RejectedError(f"{self.connection.name} keeps no budget records")

    def invoice_lines(
        self, items: list[dict[str, Any]], *, batch_date: str, value_maps: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """ERP invoice lines for canonical billing items (each with its `label`), one per item."""
        raise RejectedError(f"{self.connection.name} keeps no invoices")

    # Schema governance (pscsync/governance.py) ------------------------------------------------
    def describe_record(self, entity: str) -> RecordShape:
        """The vendor's own description of `entity` now (its describe, metadata catalog or
        $metadata) in our terms. Raises ConnectorError when the vendor cannot be read."""
        raise RejectedError(f"{self.connection.name} cannot describe its records")

    def schema_field(self, purpose: str, target: str) -> str | None:
        """The vendor field a mapping target of `purpose` writes ("subsidiary.id" writes
        subsidiary), or None when the connector consumes the target itself (shaped_targets)."""
        if target in self.shaped_targets.get(purpose, frozenset()):
            return None
        return target.split(".", 1)[0]

    # Reconciliation reads (connectors/holdings.py) ---------------------------------------------
    # The mapping value maps an ERP's reconciliation needs, by the name erp_holdings takes them
    # under: name -> (mapping purpose, value map). `subsidiary` is read by the legal entity's code,
    # `tax_codes` maps a CRM tax profile to the ERP tax code the customer mapping writes.
    reconcile_value_maps: ClassVar[dict[str, tuple[str, str]]] = {}
    keeps_contract_value: ClassVar[bool] = False  # the ERP contract carries the deal's value

    def deals_won(self, *, entity_code: str, currency: str) -> dict[str, Any]:
        """A CRM: the legal entity's won deals (holdings.Deal), by deal id; all of them or raise."""
        raise LookupError(f"reconciliation cannot read a {self.vendor} CRM")

    def psa_holdings(self) -> Any:
        """A PSA: its projects, billing batches, unbilled work, assignments and worked hours
        (holdings.PsaHoldings); everything or raise."""
        raise LookupError(f"reconciliation cannot read a {self.vendor} PSA")

    def erp_holdings(self, *, currency: str, value_maps: dict[str, dict[str, str]]) -> Any:
        """An ERP: its contracts, invoices (with ledger state) and customers (holdings.ErpHoldings);
        everything or raise. `currency`: the legal entity's, for records in the local currency."""
        raise LookupError(f"reconciliation cannot read a {self.vendor} ERP")

    # Outbound --------------------------------------------------------------------------------
    def exchange_rates(self, *, since: dt.date) -> list[ExchangeRate]:
        """The ERP's exchange rates in effect on or after `since` (daily, and the ERP's own period
        rates where it keeps them). Only ERP connectors that read rates implement it."""
        raise RejectedError(f"{self.vendor} connections do not provide exchange rates")

    def upsert_many(self, *, entity: str, records: list[tuple[str, dict[str, Any]]]) -> list[WriteResult]:
        """Upsert several records of one entity, each by its key. Vendors with a bulk API
        override this to write them in fewer calls; the default writes one at a time."""
        return [self.upsert(entity=entity, key=key, fields=fields) for key, fields in records]

    def upsert(self, *, entity: str, key: str, fields: dict[str, Any]) -> WriteResult:
        """Create or update the `entity` whose external key is `key`. Idempotent by key."""
        raise NotImplementedError

    def lookup(self, *, entity: str, key: str) -> WriteResult | None:
        """Find the `entity` written under `key`, or None."""
        raise NotImplementedError

    def update(self, *, entity: str, record_id: str, fields: dict[str, Any]) -> WriteResult:
        """Change a record a person made (it carries no key of ours) by the vendor's own id."""
        raise RejectedError(f"pscsync does not change {entity} records in {self.connection.name} by their id")

    # The ledger (ERPs) ----------------------------------------------------------------------
    def ledger_locate(self, *, key: str) -> tuple[list[str], dt.date | None]:
        """The ERP ids of the invoices a change is about (an invoice key; or every invoice a
        payment is applied to, the first one first), and the payment's date when the change is a
        payment. ([], None): nothing to read."""
        raise RejectedError(f"{self.connection.name} keeps no invoices")

    def ledger_invoices(self, *, project_key: str = "", invoice_id: str = "") -> list[LedgerInvoice]:
        """Invoices in canonical terms with the payments applied to each: one invoice
        (`invoice_id`), a project's (`project_key`), or all of them. Reads everything or raises."""
        raise RejectedError(f"{self.connection.name} keeps no invoices")

    def withdraw(self, *, entity: str, record_id: str) -> WriteResult:
        """Remove a record pscsync wrote that nobody has built on yet (an unpaid or draft invoice),
        where the vendor allows it. The vendor decides: a refusal is a RejectedError in its words
        and changes nothing. Safe to repeat: a record already gone is reported in
        `output["already_gone"]`, not an error. `response` is the record as it was."""
        raise RejectedError(f"pscsync cannot remove {entity} records from {self.connection.name}")
