"""The connector contract: the canonical records flows and reconciliation speak, and what each
vendor module declares it can do with them (docs/canonical.md describes the records once).

A vendor module says, per canonical record (its *purpose*, the name mappings are published
under), which of its own entities holds it, what the connector can do with it (read one, read
changed since, upsert by key, find by key, update by the vendor's id, the reconciliation reads),
the format of the key pscsync writes it under, and where the vendor keeps it when it keeps it on
another record (Kantata holds a budget as the project's price). Flows ask for a capability and
never for a vendor: `capability(connection, "contract").key(deal=...)` is `SO-006…` on NetSuite and
`P-006…` on Business Central without the flow knowing either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from connectors.errors import ValidationError

if TYPE_CHECKING:
    from connectors.models import Connection

# The canonical records (DOMAIN.md). Write-back purposes are facets of one of them: deal_status,
# deal_billing and deal_amendment are the deal; billing_status is the billing batch.
CUSTOMER = "customer"
DEAL = "deal"
PROJECT = "project"
MILESTONE = "milestone"
BUDGET = "budget"
CONTRACT = "contract"  # the ERP's contract / billing setup (sales order, job)
RESOURCE_REQUEST = "resource_request"
BILLING_BATCH = "billing_batch"  # what a PSA bills at once (Certinia billing event, Kantata invoice)
INVOICE = "invoice"
PAYMENT = "payment"
TIME = "time"
EXPENSE = "expense"
RATE = "rate"
RECORDS = (
    CUSTOMER,
    DEAL,
    PROJECT,
    MILESTONE,
    BUDGET,
    CONTRACT,
    RESOURCE_REQUEST,
    BILLING_BATCH,
    INVOICE,
    PAYMENT,
    TIME,
    EXPENSE,
    RATE,
)

# What a connector can do with a record.
READ_ONE = "read_one"  # one record by its id or key, in canonical terms
READ_CHANGED = "read_changed"  # changes since a cursor (webhook or poll), routed by ChangeSubject
UPSERT = "upsert"  # create or update under a key of ours (idempotent by key)
FIND = "find"  # look a record up by our key (after an unknown outcome)
UPDATE = "update"  # change a record a person made, by the vendor's own id
RECONCILE = "reconcile"  # the reconciliation reads everything of it
OPERATIONS = frozenset({READ_ONE, READ_CHANGED, UPSERT, FIND, UPDATE, RECONCILE})

# Where a record lives when the vendor has no record of its own for it.
OWN_RECORD = ""
ON_PROJECT = "project"  # e.g. Kantata: the budget is the workspace's price
ON_BILLING_BATCH = "billing_batch"  # e.g. Kantata: project billing figures are the invoice's status


class KeyFormat:
    """A key pscsync writes a record under, e.g. "SO-{deal}": built from parts, read back into
    them (so nothing decodes key prefixes by hand)."""

    def __init__(self, template: str) -> None:
        self.template = template
        parts = re.split(r"\{(\w+)\}", template)
        pattern = "".join(
            re.escape(text) if i % 2 == 0 else f"(?P<{text}>.+?)" for i, text in enumerate(parts) if text or i % 2
        )
        self._pattern = re.compile(f"^{pattern}$")

    def __call__(self, **parts: object) -> str:
        return self.template.format(**parts)

    def parse(self, key: str) -> dict[str, str] | None:
        match = self._pattern.match(key or "")
        return match.groupdict() if match else None

    def __repr__(self) -> str:
        return f"KeyFormat({self.template!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyFormat) and other.template == self.template

    def __hash__(self) -> int:
        return hash(self.template)


# Our keys (docs/flows.md). A vendor overrides one only where its record is a different thing
# (the ERP contract is a sales order on NetSuite, a project on Business Central).
KEYS: dict[str, KeyFormat] = {
    CUSTOMER: KeyFormat("C-{account}"),
    DEAL: KeyFormat("{deal}"),
    PROJECT: KeyFormat("P-{deal}"),
    MILESTONE: KeyFormat("M-{deal}-{number}"),
    BUDGET: KeyFormat("B-{deal}-v{version}"),
    CONTRACT: KeyFormat("P-{deal}"),
    RESOURCE_REQUEST: KeyFormat("RR-{deal}-{number}"),
    BILLING_BATCH: KeyFormat("{batch}"),
    INVOICE: KeyFormat("I-{batch}"),
}
VENDOR_ID = KeyFormat("{id}")


def keys_behind(key: str) -> set[str]:
    """The key and the keys it is built from, read by our key formats ("P-006A" -> {"P-006A",
    "006A"}): the handoffs about a project are the deal's, whose business key is the deal id."""
    found = {key}
    for fmt in KEYS.values():
        parts = fmt.parse(key) or {}
        found.update(value for name, value in parts.items() if name in ("deal", "account", "batch") and value)
    return found


@dataclass(frozen=True)
class Capability:
    """What one connector does with one canonical record (or write-back purpose)."""

    record: str  # the canonical record (one of RECORDS)
    entity: str  # the connector's own name for it: what read/upsert/lookup/update take
    operations: frozenset[str]
    key: KeyFormat | None = None  # the key we write it under (None: the canonical default)
    held_on: str = OWN_RECORD  # where it lives when the vendor keeps it on another record
    # Written only once the invoice it reflects is fully paid (Kantata records payment only).
    when_paid_only: bool = False
    # The record needs a project to exist before it (Kantata keeps demand on an estimate project).
    needs_project: bool = False
    # What people search the record by in the workbench (an identifier's name), where it differs
    # from the canonical record's name.
    identifier: str = ""

    def can(self, operation: str) -> bool:
        return operation in self.operations

    @property
    def key_format(self) -> KeyFormat:
        # Records pscsync only reads (time, expenses, payments, rates) go by the vendor's own id.
        return self.key or KEYS.get(self.record, VENDOR_ID)


def can(*operations: str) -> frozenset[str]:
    unknown = set(operations) - OPERATIONS
    if unknown:
        raise ValueError(f"unknown connector operations: {sorted(unknown)}")
    return frozenset(operations)


@dataclass(frozen=True)
class Limits:
    """A vendor's documented limits the connector works within."""

    page_size: int  # records per page it asks for
    bulk_size: int = 1  # records per write where it has a bulk API
    max_concurrency: int = 0  # concurrent requests the vendor allows per user/integration (0: not documented)


@dataclass(frozen=True)
class ChangeSubject:
    """A change in a source system in canonical terms, as its connector read the payload: what
    record it is about, what happened, the business key the flows use, which canonical fields
    changed. Triggers route on this alone (pscsync.flows.triggers)."""

    record: str = ""  # a canonical record; "" for a change no flow is about
    action: str = ""  # created | updated | changed (a poll that cannot tell)
    key: str = ""  # the business key the flow runs under ("" keeps the change's own)
    changed: frozenset[str] = field(default_factory=frozenset)  # canonical deal fields
    won: bool = False  # a deal: it is Closed Won
    own_write: bool = False  # pscsync's own write coming back: acting on it would loop


# Canonical deal fields a change may name (ChangeSubject.changed).
DEAL_STAGE, DEAL_PROBABILITY, DEAL_AMOUNT, DEAL_CLOSE_DATE = "stage", "probability", "amount", "close_date"
DEAL_CONTRACT_VERSION, DEAL_CONTRACT_END = "contract_version", "contract_end"
PIPELINE_FIELDS = frozenset({DEAL_STAGE, DEAL_PROBABILITY, DEAL_AMOUNT, DEAL_CLOSE_DATE})
AMENDMENT_FIELDS = frozenset({DEAL_CONTRACT_VERSION, DEAL_CONTRACT_END})


def capability(connection: Connection, purpose: str) -> Capability:
    """What `connection`'s connector does with `purpose`, or a ValidationError naming the gap."""
    from connectors.registry import connector_class

    found = connector_class(connection.vendor).capabilities.get(purpose)
    if found is None:
        raise ValidationError(f"{connection.name} ({connection.vendor}) cannot hold a {purpose}")
    return found


def capability_or_none(connection: Connection, purpose: str) -> Capability | None:
    from connectors.registry import connector_class

    return connector_class(connection.vendor).capabilities.get(purpose)
