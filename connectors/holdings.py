"""What reconciliation reads from each system, in one canonical shape per kind of record
(docs/canonical.md). Each connector fills them from its vendor's records (`deals_won`,
`psa_holdings`, `erp_holdings`); reconciliation compares them without knowing the vendor.

Keys follow docs/flows.md: projects `P-<opportunity>`, NetSuite contracts `SO-<opportunity>`,
customers `C-<account>`, invoices `I-<billing event>` / `I-K<Kantata invoice>`, invoice lines
naming the PSA item they bill. A reader either returns everything the system holds or raises (a
ConnectorError when the vendor fails): a partial read would clear mismatches that still exist or
invent ones that do not."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.base import InvoiceStatus, LedgerInvoice

CENT = Decimal("0.01")
LINE_REF = re.compile(r"^\[(?P<ref>[A-Z]{2}-[^\]]+)\]")


def money(value: Any) -> Decimal:
    try:
        return Decimal(str(value if value not in (None, "") else 0)).quantize(CENT)
    except InvalidOperation:
        return Decimal("0.00")


def rate(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value)) if value not in (None, "", 0, "0") else None
    except InvalidOperation:
        return None


def day(value: Any) -> dt.date | None:
    text = str(value or "")[:10]
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def instant(value: Any) -> dt.datetime | None:
    text = str(value or "").strip()
    if not text:
        return None
    text = text.replace("Z", "+00:00")
    if re.match(r".*[+-]\d{4}$", text):  # Salesforce: 2026-11-20T15:04:00.000+0000
        text = text[:-2] + ":" + text[-2:]
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def period_of(value: dt.date | None) -> str:
    return value.strftime("%Y-%m") if value else ""


# The shapes ---------------------------------------------------------------------------------------
@dataclass
class Deal:
    id: str
    name: str
    account_id: str
    account_name: str
    tax_profile: str
    amount: Decimal
    currency: str
    version: int
    legal_entity: str
    close_date: dt.date | None
    modified_at: dt.datetime | None
    service_line: str = ""
    billing_model: str = ""  # the contract's billing terms follow from it (rules.arrears_periods)

    @property
    def project_key(self) -> str:
        return f"P-{self.id}"


@dataclass
class PsaProject:
    key: str
    id: str
    name: str
    currency: str
    budget: Decimal | None  # the contract value the PSA holds (Certinia budgets, Kantata price)
    budget_version: int | None  # the contract version of the latest budget (Certinia), None if unknown
    budget_records: list[str] = field(default_factory=list)


@dataclass
class PsaItem:
    id: str  # the PSA item an ERP line names (Certinia billing event item id, TE-/EX- for Kantata)
    kind: str
    source_id: str
    date: dt.date | None
    amount: Decimal
    currency: str
    modified_at: dt.datetime | None


@dataclass
class PsaBatch:
    """A PSA billing batch: a Certinia billing event, or a Kantata invoice."""

    id: str
    name: str
    invoice_key: str
    project_key: str
    project_name: str
    date: dt.date | None
    currency: str
    fx_rate: Decimal | None
    items: list[PsaItem] = field(default_factory=list)

    @property
    def total(self) -> Decimal:
        return sum((i.amount for i in self.items), Decimal("0.00"))


@dataclass
class ErpLine:
    ref: str  # the PSA item it bills ("" when someone keyed it in the ERP)
    amount: Decimal
    description: str


@dataclass
class ErpInvoice:
    id: str
    number: str
    key: str  # externalId / externalDocumentNumber
    batch_id: str
    project_key: str
    customer_id: str
    date: dt.date | None
    currency: str
    subsidiary: str
    tax: Decimal
    fx_rate: Decimal | None
    created_at: dt.datetime | None
    lines: list[ErpLine] = field(default_factory=list)
    # The same invoice in ledger terms (posted state, open balance, payments), as the connector
    # mapped it: reconciliation stores it in the ledger the dashboards read (pscsync.ledger).
    ledger: LedgerInvoice | None = None

    @property
    def net(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal("0.00"))

    @property
    def posted(self) -> bool:
        """The ERP has posted it to its ledger (the connector's mapping of the vendor's state):
        only a posted invoice is billed and recognised. One whose state was not read is not."""
        return self.ledger is not None and self.ledger.posted

    @property
    def state_words(self) -> str:
        """Its ledger state for people ("pending approval", "voided")."""
        if self.ledger is None:
            return "in an unknown state"
        return InvoiceStatus.LABELS.get(self.ledger.status, self.ledger.status).lower()

    @property
    def label(self) -> str:
        return f"invoice {self.number or self.id}" + (f" ({self.key})" if self.key and self.key != self.number else "")


@dataclass
class ErpContract:
    key: str
    id: str
    amount: Decimal | None  # None: the ERP keeps no contract value (Business Central projects)
    currency: str
    version: int | None
    subsidiary: str
    modified_on: dt.date | None


@dataclass
class ErpCustomer:
    key: str
    id: str
    name: str
    tax_code: str
    currency: str


@dataclass
class Assignment:
    """A person staffed on a project: the PSA's supply of hours for a role."""

    source_id: str
    role: str
    project_key: str
    starts_on: dt.date
    ends_on: dt.date
    weekly_hours: Decimal


@dataclass
class Worked:
    """Approved hours worked in the PSA by one role in one month."""

    role: str
    month: str
    hours: Decimal


@dataclass
class Unbilled:
    """Approved billable work in the PSA that no billing batch holds yet."""

    kind: str  # time | expense | milestone
    source_id: str
    description: str
    project_key: str
    project_name: str
    work_date: dt.date | None
    amount: Decimal
    currency: str


@dataclass
class PsaHoldings:
    """Everything a PSA holds that reconciliation compares."""

    projects: dict[str, PsaProject]  # by project key
    batches: list[PsaBatch]
    unbilled: list[Unbilled] = field(default_factory=list)  # approved work not in a batch yet
    assignments: list[Assignment] = field(default_factory=list)  # people staffed, hours a week
    worked: list[Worked] = field(default_factory=list)  # approved hours by role and month


@dataclass
class ErpHoldings:
    """Everything an ERP holds that reconciliation compares."""

    contracts: dict[str, ErpContract]  # by opportunity id
    invoices: list[ErpInvoice]
    customers: dict[str, ErpCustomer]  # by key C-<account>
