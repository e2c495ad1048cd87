"""What each system holds, read through the connectors (real HTTP), in one shape per kind of
record. Keys follow docs/flows.md: projects `P-<opportunity>`, NetSuite contracts `SO-<opportunity>`,
customers `C-<account>`, invoices `I-<billing event>` / `I-K<Kantata invoice>`, invoice lines
naming the PSA item they bill.

A reader either returns everything the system holds or raises (a ConnectorError when the vendor
fails): a partial read would clear mismatches that still exist or invent ones that do not."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.base import LedgerInvoice
from connectors.businesscentral import BusinessCentralConnector
from connectors.models import Connection
from connectors.netsuite import NetSuiteConnector
from connectors.registry import connector_for, connector_of
from connectors.salesforce import SalesforceConnector
from pscsync.mappings import mapping_in_force
from pscsync.models import LegalEntity

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
class Holdings:
    """Everything one legal entity's three systems hold that reconciliation compares."""

    deals: dict[str, Deal]  # by opportunity id
    projects: dict[str, PsaProject]  # by project key
    batches: list[PsaBatch]
    contracts: dict[str, ErpContract]  # by opportunity id
    invoices: list[ErpInvoice]
    customers: dict[str, ErpCustomer]  # by key C-<account>
    expected_subsidiary: str  # the ERP subsidiary the entity books in ("" when the ERP has none)
    tax_codes: dict[str, str]  # CRM tax profile -> the ERP tax code the mapping writes
    erp_has_contract_value: bool
    unbilled: list[Unbilled] = field(default_factory=list)  # approved work not in a batch yet
    assignments: list[Assignment] = field(default_factory=list)  # people staffed, hours a week
    worked: list[Worked] = field(default_factory=list)  # approved hours by role and month


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


# Mapping tables ------------------------------------------------------------------------------------
def values_of(connection: Connection, entity: str, table: str) -> dict[str, str]:
    try:
        return {
            str(k): str(v)
            for k, v in (mapping_in_force(connection=connection, entity=entity).value_maps or {}).get(table, {}).items()
        }
    except Exception:  # no published mapping: the firm runs without one for this entity
        return {}


# CRM -------------------------------------------------------------------------------------------------
DEAL_FIELDS = (
    "Id",
    "Name",
    "AccountId",
    "Amount",
    "CurrencyIsoCode",
    "CloseDate",
    "Contract_Version__c",
    "Legal_Entity__c",
    "LastModifiedDate",
    "Account.Name",
    "Account.Tax_Profile__c",
    "Service_Line__c",
    "Billing_Model__c",
)


def crm_deals(crm: Connection, entity: LegalEntity) -> dict[str, Deal]:
    connector = connector_for(crm)
    rows = connector.read("opportunity", where={"StageName": "Closed Won"}, fields=list(DEAL_FIELDS))
    deals = {}
    for row in rows:
        if str(row.get("Legal_Entity__c") or "").strip().lower() != entity.code.lower():
            continue
        account = row.get("Account") or {}
        try:
            version = int(float(row.get("Contract_Version__c") or 1))
        except (TypeError, ValueError):
            version = 1
        deals[row["Id"]] = Deal(
            id=row["Id"],
            name=row.get("Name") or row["Id"],
            account_id=row.get("AccountId") or "",
            account_name=account.get("Name") or "",
            tax_profile=account.get("Tax_Profile__c") or "",
            amount=money(row.get("Amount")),
            currency=(row.get("CurrencyIsoCode") or entity.currency).upper(),
            version=version,
            legal_entity=entity.code,
            close_date=day(row.get("CloseDate")),
            modified_at=instant(row.get("LastModifiedDate")),
            service_line=str(row.get("Service_Line__c") or ""),
            billing_model=str(row.get("Billing_Model__c") or ""),
        )
    return deals


# Certinia ------------------------------------------------------------------------------------------
def certinia_holdings(psa: Connection) -> tuple[dict[str, PsaProject], list[PsaBatch]]:
    connector = connector_of(psa, SalesforceConnector)  # Certinia is Salesforce's
    projects_by_id: dict[str, PsaProject] = {}
    for row in connector.query("SELECT Id, Name, pscsync_Key__c, pse__Currency__c, CurrencyIsoCode FROM pse__Proj__c"):
        key = row.get("pscsync_Key__c") or ""
        if not key.startswith("P-"):
            continue
        currency = (row.get("pse__Currency__c") or row.get("CurrencyIsoCode") or "").upper()
        projects_by_id[row["Id"]] = PsaProject(
            key=key, id=row["Id"], name=row.get("Name") or key, currency=currency, budget=None, budget_version=None
        )
    for row in connector.query(
        "SELECT Id, Name, pscsync_Key__c, pse__Project__c, pse__Amount__c, pse__Status__c FROM pse__Budget__c"
    ):
        project = projects_by_id.get(row.get("pse__Project__c") or "")
        if project is None or (row.get("pse__Status__c") or "Approved") != "Approved":
            continue
        project.budget = (project.budget or Decimal("0.00")) + money(row.get("pse__Amount__c"))
        project.budget_records.append(f"{row.get('Name') or row['Id']} ({money(row.get('pse__Amount__c'))})")
        match = re.search(r"-v(\d+)$", row.get("pscsync_Key__c") or "")
        if match:
            project.budget_version = max(project.budget_version or 0, int(match.group(1)))
    events: dict[str, PsaBatch] = {}
    for row in connector.query(
        "SELECT Id, Name, pse__Project__c, pse__Date__c, CurrencyIsoCode, pscsync_Exchange_Rate__c "
        "FROM pse__Billing_Event__c"
    ):
        project = projects_by_id.get(row.get("pse__Project__c") or "")
        events[row["Id"]] = PsaBatch(
            id=row["Id"],
            name=row.get("Name") or row["Id"],
            invoice_key=f"I-{row['Id']}",
            project_key=project.key if project else f"project:{row.get('pse__Project__c')}",
            project_name=project.name if project else "",
            date=day(row.get("pse__Date__c")),
            currency=(row.get("CurrencyIsoCode") or (project.currency if project else "")).upper(),
            fx_rate=rate(row.get("pscsync_Exchange_Rate__c")),
        )
    for row in connector.query(
        "SELECT Id, Name, pse__Billing_Event__c, pse__Category__c, pse__Object_Id__c, pse__Amount__c, "
        "pse__Date__c, CurrencyIsoCode, LastModifiedDate FROM pse__Billing_Event_Item__c"
    ):
        batch = events.get(row.get("pse__Billing_Event__c") or "")
        if batch is None:
            continue
        category = row.get("pse__Category__c") or "Time"
        kind = {"Timecard": "Time"}.get(category, category)
        batch.items.append(
            PsaItem(
                id=row["Id"],
                kind=kind,
                source_id=row.get("pse__Object_Id__c") or row["Id"],
                date=day(row.get("pse__Date__c")),
                amount=money(row.get("pse__Amount__c")),
                currency=(row.get("CurrencyIsoCode") or batch.currency).upper(),
                modified_at=instant(row.get("LastModifiedDate")),
            )
        )
    return {p.key: p for p in projects_by_id.values()}, [b for b in events.values() if b.items]


WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def certinia_unbilled(psa: Connection, projects: dict[str, PsaProject]) -> list[Unbilled]:
    """Approved, billable timecards and expenses and approved milestones the PSA has not put in a
    billing event (`pse__Billed__c` is what Certinia's billing run sets), priced as the billing run
    prices them: timecard hours x the assignment's bill rate."""
    connector = connector_of(psa, SalesforceConnector)  # Certinia is Salesforce's
    by_id = {p.id: p for p in projects.values()}
    found: list[Unbilled] = []

    def add(kind: str, row: dict[str, Any], amount: Decimal, work_date: Any, currency: str = "") -> None:
        project = by_id.get(row.get("pse__Project__c") or "")
        if project is None or row.get("pse__Billed__c"):
            return  # a project pscsync did not create is not ours to report
        found.append(
            Unbilled(
                kind=kind,
                source_id=row["Id"],
                description=str(row.get("Name") or row["Id"]),
                project_key=project.key,
                project_name=project.name,
                work_date=day(work_date),
                amount=amount,
                currency=(currency or project.currency).upper(),
            )
        )

    rates = {
        row["Id"]: money(row.get("pse__Bill_Rate__c"))
        for row in connector.query("SELECT Id, pse__Bill_Rate__c FROM pse__Assignment__c")
    }
    hour_fields = ", ".join(f"pse__{d}_Hours__c" for d in WEEKDAYS)
    for row in connector.query(
        f"SELECT Id, Name, pse__Project__c, pse__Assignment__c, pse__End_Date__c, pse__Billable__c, "  # noqa: S608  # nosec B608  # fixed field names
        f"pse__Billed__c, {hour_fields} FROM pse__Timecard_Header__c WHERE pse__Status__c = 'Approved'"
    ):
        if row.get("pse__Billable__c") is False:
            continue
        hours = sum((Decimal(str(row.get(f"pse__{d}_Hours__c") or 0)) for d in WEEKDAYS), Decimal("0"))
        amount = money(hours * rates.get(row.get("pse__Assignment__c") or "", Decimal("0")))
        add("time", row, amount, row.get("pse__End_Date__c"))
    for row in connector.query(
        "SELECT Id, Name, pse__Project__c, pse__Expense_Date__c, pse__Amount__c, pse__Billable__c, "
        "pse__Billed__c, CurrencyIsoCode FROM pse__Expense__c WHERE pse__Status__c = 'Approved'"
    ):
        if row.get("pse__Billable__c") is False:
            continue
        add(
            "expense",
            row,
            money(row.get("pse__Amount__c")),
            row.get("pse__Expense_Date__c"),
            row.get("CurrencyIsoCode") or "",
        )
    for row in connector.query(
        "SELECT Id, Name, pse__Project__c, pse__Actual_Date__c, pse__Target_Date__c, pse__Milestone_Amount__c, "
        "pse__Billed__c FROM pse__Milestone__c WHERE pse__Status__c = 'Approved'"
    ):
        completed = row.get("pse__Actual_Date__c") or row.get("pse__Target_Date__c")
        add("milestone", row, money(row.get("pse__Milestone_Amount__c")), completed)
    return found


def certinia_assignments(psa: Connection, projects: dict[str, PsaProject]) -> list[Assignment]:
    """Every assignment with its schedule's dates and weekday hours (all projects: a person staffed
    on an internal project is not free for a client's)."""
    connector = connector_of(psa, SalesforceConnector)  # Certinia is Salesforce's
    keys = {p.id: p.key for p in projects.values()}
    hour_fields = ", ".join(f"pse__{d}_Hours__c" for d in WEEKDAYS)
    schedules = {
        row["Id"]: row
        for row in connector.query(
            f"SELECT Id, pse__Start_Date__c, pse__End_Date__c, {hour_fields} FROM pse__Schedule__c"  # noqa: S608  # nosec B608  # fixed field names
        )
    }
    found = []
    for row in connector.query("SELECT Id, pse__Project__c, pse__Schedule__c, pse__Role__c FROM pse__Assignment__c"):
        schedule = schedules.get(row.get("pse__Schedule__c") or "") or {}
        starts, ends = day(schedule.get("pse__Start_Date__c")), day(schedule.get("pse__End_Date__c"))
        if starts is None or ends is None or ends < starts:
            continue
        weekly = sum((Decimal(str(schedule.get(f"pse__{d}_Hours__c") or 0)) for d in WEEKDAYS), Decimal("0"))
        found.append(
            Assignment(
                source_id=row["Id"],
                role=str(row.get("pse__Role__c") or ""),
                project_key=keys.get(row.get("pse__Project__c") or "", ""),
                starts_on=starts,
                ends_on=ends,
                weekly_hours=weekly,
            )
        )
    return found


def certinia_worked(psa: Connection) -> list[Worked]:
    """Approved hours worked per role (the assignment's) and month, each weekday's hours dated
    from the timecard's start date (a week across a month end splits between the two months)."""
    connector = connector_of(psa, SalesforceConnector)  # Certinia is Salesforce's
    roles = {
        row["Id"]: str(row.get("pse__Role__c") or "")
        for row in connector.query("SELECT Id, pse__Role__c FROM pse__Assignment__c")
    }
    hour_fields = ", ".join(f"pse__{d}_Hours__c" for d in WEEKDAYS)
    found: dict[tuple[str, str], Decimal] = {}
    for row in connector.query(
        f"SELECT Id, pse__Assignment__c, pse__Start_Date__c, pse__End_Date__c, {hour_fields} "  # noqa: S608  # nosec B608  # fixed field names
        "FROM pse__Timecard_Header__c WHERE pse__Status__c = 'Approved'"
    ):
        starts, ends = day(row.get("pse__Start_Date__c")), day(row.get("pse__End_Date__c"))
        if starts is None:
            continue
        role = roles.get(row.get("pse__Assignment__c") or "", "")
        for offset in range(7):
            date = starts + dt.timedelta(days=offset)
            if ends is not None and date > ends:
                break
            hours = Decimal(str(row.get(f"pse__{WEEKDAYS[date.weekday()]}_Hours__c") or 0))
            if hours:
                key = (role, period_of(date))
                found[key] = found.get(key, Decimal("0")) + hours
    return [Worked(role=role, month=month, hours=hours) for (role, month), hours in sorted(found.items())]


# Kantata -------------------------------------------------------------------------------------------
def _kantata_references(connector: Any, model: str) -> dict[str, str]:
    """Kantata id -> our key, from the external references we wrote."""
    from connectors.kantata import API

    found: dict[str, str] = {}
    page = 1
    while True:
        params = {"service_name": "pscsync", "service_model": model, "per_page": 200, "page": page}
        body = connector.send("GET", f"{API}/external_references", params=params).body or {}
        for ref in (body.get("external_references") or {}).values():
            found[str(ref.get("subject_id"))] = str(ref.get("service_model_ref") or "")
        if page >= int((body.get("meta") or {}).get("page_count") or 0):
            return found
        page += 1


def kantata_holdings(psa: Connection) -> tuple[dict[str, PsaProject], list[PsaBatch]]:
    connector = connector_for(psa)
    keys = _kantata_references(connector, "workspace")
    workspaces: dict[str, PsaProject] = {}
    for row in connector.read("workspaces", where={"include_archived": "true"}):
        key = keys.get(str(row["id"]), "")
        if not key.startswith("P-"):
            continue
        price = row.get("price")
        workspaces[str(row["id"])] = PsaProject(
            key=key,
            id=str(row["id"]),
            name=row.get("title") or key,
            currency=(row.get("currency") or "").upper(),
            budget=(money(Decimal(price) / 100) if price is not None else None),
            budget_version=None,
            budget_records=[f"project price {money(Decimal(price) / 100)}" if price is not None else "no price"],
        )
    entries = {str(r["id"]): r for r in connector.read("time_entries")}
    expenses = {str(r["id"]): r for r in connector.read("expenses")}
    batches = []
    for invoice in connector.read("invoices"):
        if (invoice.get("status") or "") == "cancelled":
            continue
        project = workspaces.get(str(invoice.get("workspace_id")))
        currency = project.currency if project else ""
        batch = PsaBatch(
            id=str(invoice["id"]),
            name=invoice.get("title") or f"Kantata invoice {invoice['id']}",
            invoice_key=f"I-K{invoice['id']}",
            project_key=project.key if project else f"workspace:{invoice.get('workspace_id')}",
            project_name=project.name if project else "",
            date=day(invoice.get("invoice_date")),
            currency=currency,
            fx_rate=None,
        )
        for entry_id in invoice.get("time_entry_ids") or []:
            entry = entries.get(str(entry_id)) or {}
            hours = Decimal(entry.get("time_in_minutes") or 0) / 60
            amount = money(hours * Decimal(entry.get("rate_in_cents") or 0) / 100)
            batch.items.append(
                PsaItem(
                    id=f"TE-{entry_id}",
                    kind="Time",
                    source_id=f"time_entry:{entry_id}",
                    date=day(entry.get("date_performed")),
                    amount=amount,
                    currency=currency,
                    modified_at=instant(entry.get("updated_at")),
                )
            )
        for expense_id in invoice.get("expense_ids") or []:
            expense = expenses.get(str(expense_id)) or {}
            batch.items.append(
                PsaItem(
                    id=f"EX-{expense_id}",
                    kind="Expense",
                    source_id=f"expense:{expense_id}",
                    date=day(expense.get("date")),
                    amount=money(Decimal(expense.get("amount_in_cents") or 0) / 100),
                    currency=(expense.get("currency") or currency).upper(),
                    modified_at=instant(expense.get("updated_at")),
                )
            )
        if batch.items:
            batches.append(batch)
    return {p.key: p for p in workspaces.values()}, batches


# NetSuite ------------------------------------------------------------------------------------------
def netsuite_holdings(
    erp: Connection,
) -> tuple[dict[str, ErpContract], list[ErpInvoice], dict[str, ErpCustomer]]:
    from connectors.netsuite import CURRENCIES, RECORD

    connector = connector_of(erp, NetSuiteConnector)
    # The firm's mapping value maps are read first; NetSuite's standard ids only fill gaps.
    currencies = {v: k for k, v in values_of(erp, "contract", "currency").items()}
    currencies = {**CURRENCIES, **currencies}
    customers: dict[str, ErpCustomer] = {}
    customer_keys: dict[str, str] = {}
    for row in connector.read("customer"):
        key = row.get("externalid") or f"customer:{row['id']}"
        customer_keys[str(row["id"])] = key
        customers[key] = ErpCustomer(
            key=key,
            id=str(row["id"]),
            name=row.get("companyname") or "",
            tax_code=row.get("custentity_tax_code") or "",
            currency=currencies.get(str(row.get("currency") or ""), ""),
        )
    contracts = {}
    for row in connector.read("sales_order"):
        key = row.get("externalid") or ""
        if not key.startswith("SO-"):
            continue
        version = row.get("custbody_contract_version")
        contracts[key.removeprefix("SO-")] = ErpContract(
            key=key,
            id=str(row["id"]),
            amount=money(row.get("total")),
            currency=currencies.get(str(row.get("currency") or ""), ""),
            version=int(str(version)) if str(version or "").isdigit() else None,
            subsidiary=str(row.get("subsidiary") or ""),
            modified_on=_us_date(row.get("lastmodifieddate")),
        )
    invoices = []
    bodies = []
    for row in connector.read("invoice"):
        body = connector.send("GET", f"{RECORD}/invoice/{row['id']}", params={"expandSubResources": "true"}).body
        bodies.append(body)
        lines = [
            ErpLine(
                ref=str(line.get("custcol_source_ref") or ""),
                amount=money(line.get("amount")),
                description=str(line.get("description") or ""),
            )
            for line in ((body.get("item") or {}).get("items") or [])
        ]
        invoices.append(
            ErpInvoice(
                id=str(body.get("id")),
                number=str(body.get("tranId") or ""),
                key=str(body.get("externalId") or ""),
                batch_id=str(body.get("custbody_psa_batch") or ""),
                project_key=str(body.get("custbody_project_key") or ""),
                customer_id=customer_keys.get(
                    str(_ref_id(body.get("entity"))), f"customer:{_ref_id(body.get('entity'))}"
                ),
                date=day(body.get("tranDate")),
                currency=currencies.get(str(_ref_id(body.get("currency")) or ""), ""),
                subsidiary=str(_ref_id(body.get("subsidiary")) or ""),
                tax=money(body.get("taxTotal")),
                fx_rate=rate(body.get("exchangeRate")),
                created_at=instant(body.get("dateCreated")),
                lines=lines,
            )
        )
    names = {c.id: c.name for c in customers.values()}
    for invoice, ledger in zip(invoices, connector.ledger_build(bodies, names=names), strict=True):
        invoice.ledger = ledger
    return contracts, invoices, customers


def _ref_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


def _us_date(value: Any) -> dt.date | None:
    try:
        month, day_, year = (int(part) for part in str(value).split("/"))
        return dt.date(year, month, day_)
    except ValueError:
        return day(value)


# Business Central -----------------------------------------------------------------------------------
def businesscentral_holdings(
    erp: Connection, entity: LegalEntity
) -> tuple[dict[str, ErpContract], list[ErpInvoice], dict[str, ErpCustomer]]:
    connector = connector_of(erp, BusinessCentralConnector)
    customers: dict[str, ErpCustomer] = {}
    for row in connector.read("customers"):
        key = row.get("number") or f"customer:{row['id']}"
        customers[key] = ErpCustomer(
            key=key,
            id=str(row["id"]),
            name=row.get("displayName") or "",
            tax_code="yes" if row.get("taxLiable") else "no",
            currency=(row.get("currencyCode") or entity.currency).upper(),
        )
    contracts = {}
    for row in connector.read("projects"):
        key = row.get("number") or ""
        if key.startswith("P-"):
            contracts[key.removeprefix("P-")] = ErpContract(
                key=key, id=str(row["id"]), amount=None, currency="", version=None, subsidiary="", modified_on=None
            )
    lines: dict[str, list[ErpLine]] = {}
    url: str | None = f"{connector.company_path()}/salesInvoiceLines"
    while url:
        body = connector.send("GET", url, headers={"Prefer": f"odata.maxpagesize={connector.page_size}"}).body
        for line in body.get("value", []):
            description = str(line.get("description") or "")
            match = LINE_REF.match(description)
            lines.setdefault(str(line.get("documentId")), []).append(
                ErpLine(
                    ref=match.group("ref") if match else "",
                    amount=money(line.get("amountExcludingTax", line.get("netAmount"))),
                    description=description,
                )
            )
        url = body.get("@odata.nextLink")
    invoices = []
    rows = list(connector.read("salesInvoices"))
    ledgers = connector.ledger_build(rows)
    for row, ledger in zip(rows, ledgers, strict=True):
        key = row.get("externalDocumentNumber") or ""
        invoices.append(
            ErpInvoice(
                id=str(row["id"]),
                number=str(row.get("number") or ""),
                key=key,
                batch_id=key.removeprefix("I-K") if key.startswith("I-K") else "",
                project_key=str(row.get("customerPurchaseOrderReference") or ""),
                customer_id=str(row.get("customerNumber") or ""),
                date=day(row.get("invoiceDate")),
                currency=(row.get("currencyCode") or entity.currency).upper(),
                subsidiary="",
                tax=money(row.get("totalTaxAmount")),
                fx_rate=None,
                created_at=instant(row.get("lastModifiedDateTime")),
                lines=lines.get(str(row["id"]), []),
                ledger=ledger,
            )
        )
    return contracts, invoices, customers


def kantata_unbilled(psa: Connection, projects: dict[str, PsaProject]) -> list[Unbilled]:
    """Approved, billable time entries and expenses no Kantata invoice holds yet (`is_invoiced`),
    time priced at the entry's own rate. Kantata bills fixed fees on the workspace price, not on
    milestones pscsync could read, so there are no milestone rows here."""
    connector = connector_for(psa)
    by_id = {p.id: p for p in projects.values()}
    found: list[Unbilled] = []
    for collection, kind in (("time_entries", "time"), ("expenses", "expense")):
        for row in connector.read(collection, where={"approved": "true", "is_invoiced": "false"}):
            project = by_id.get(str(row.get("workspace_id")))
            if project is None or row.get("billable") is False or row.get("is_invoiced"):
                continue
            if kind == "time":
                hours = Decimal(row.get("time_in_minutes") or 0) / 60
                amount = money(hours * Decimal(row.get("rate_in_cents") or 0) / 100)
                work_date, currency = row.get("date_performed"), project.currency
                description = str(row.get("notes") or f"time entry {row['id']}")
            else:
                amount = money(Decimal(row.get("amount_in_cents") or 0) / 100)
                work_date, currency = row.get("date"), (row.get("currency") or project.currency)
                description = str(row.get("category") or f"expense {row['id']}")
            found.append(
                Unbilled(
                    kind=kind,
                    source_id=f"{collection[:-1]}:{row['id']}",
                    description=description[:200],
                    project_key=project.key,
                    project_name=project.name,
                    work_date=day(work_date),
                    amount=amount,
                    currency=currency.upper(),
                )
            )
    return found


# All of one entity ------------------------------------------------------------------------------------
def holdings_read(*, entity: LegalEntity, crm: Connection, psa: Connection, erp: Connection) -> Holdings:
    deals = crm_deals(crm, entity)
    if psa.vendor == "certinia":
        projects, batches = certinia_holdings(psa)
        unbilled = certinia_unbilled(psa, projects)
        assignments = certinia_assignments(psa, projects)
        worked = certinia_worked(psa)
    elif psa.vendor == "kantata":
        projects, batches = kantata_holdings(psa)
        unbilled = kantata_unbilled(psa, projects)
        assignments = []  # Kantata's API (VENDOR_APIS.md) exposes no scheduled hours per person
        worked = []  # nor a role on a time entry: worked hours by role are not measured there
    else:
        raise LookupError(f"reconciliation cannot read a {psa.vendor} PSA")
    if erp.vendor == "netsuite":
        contracts, invoices, customers = netsuite_holdings(erp)
        subsidiary = values_of(erp, "contract", "subsidiary").get(entity.code, "")
        tax_codes = values_of(erp, "customer", "tax_code")
    elif erp.vendor == "businesscentral":
        contracts, invoices, customers = businesscentral_holdings(erp, entity)
        subsidiary = ""
        tax_codes = values_of(erp, "customer", "tax_liable")
    else:
        raise LookupError(f"reconciliation cannot read a {erp.vendor} ERP")
    return Holdings(
        deals=deals,
        projects=projects,
        batches=batches,
        contracts=contracts,
        invoices=invoices,
        customers=customers,
        expected_subsidiary=subsidiary,
        tax_codes=tax_codes,
        erp_has_contract_value=erp.vendor == "netsuite",
        unbilled=unbilled,
        assignments=assignments,
        worked=worked,
    )
