"""Certinia PSA (formerly FinancialForce PSA). Certinia lives inside a Salesforce org: its records
are the managed package's `pse__` custom objects, read and written through the same Salesforce
REST API, tokens, SOQL paging, errors, limits and change events. So this connector is the
Salesforce connector with Certinia's objects, field lists and words.

Entity names are the objects' API names (pse__Proj__c, pse__Milestone__c, ...); the friendly
names below (project, milestone, ...) are accepted too. Credentials and base URL: as for
Salesforce (connectors/salesforce.py).
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any, ClassVar

from connectors import canonical as c
from connectors import holdings as h
from connectors.base import InboundChange
from connectors.salesforce import OWN_CLIENT, SalesforceConnector, change_event_parts
from connectors.schema import NUMBER_OR_TEXT, DateText, PayloadShape

PROJECT = "pse__Proj__c"
# The billing event and its items as a canonical billing batch reads them.
BILLING_EVENT_FIELDS = (
    "Id",
    "Name",
    "pse__Project__c",
    "pse__Date__c",
    "pse__Summary_Amount__c",
    "pse__Project__r.Name",
    "pse__Project__r.pscsync_Key__c",
    "pse__Project__r.pse__Account__c",
    "pse__Project__r.pse__Currency__c",
)
BILLING_ITEM_FIELDS = (
    "Id",
    "pse__Category__c",
    "pse__Object_Id__c",
    "pse__Quantity__c",
    "pse__Unit_Price__c",
    "pse__Amount__c",
    "pse__Date__c",
    "CurrencyIsoCode",
)

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Declared shapes of the PSE records pscsync reads (connectors/schema.py; checked by query() on
# every record): amounts and hours numbers, dates ISO dates, links ids, so a record of another
# shape is a MalformedRecord naming the field instead of a crash in a flow or a wrong figure.
# Amounts as numbers, or as text that reads as one (what a write as text leaves in the field).
_ID, _LINK, _NUM, _DAY = ((str,), True), ((str,), False), (NUMBER_OR_TEXT, False), ((DateText,), False)
_HOURS = {f"pse__{d}_Hours__c": _NUM for d in WEEKDAYS}
RECORD_SHAPES: dict[str, PayloadShape] = {
    "pse__Proj__c": {"Id": _ID, "Name": _LINK, "pscsync_Key__c": _LINK, "pse__Currency__c": _LINK},
    "pse__Budget__c": {"Id": _ID, "pse__Project__c": _LINK, "pse__Amount__c": _NUM, "pscsync_Key__c": _LINK},
    "pse__Billing_Event__c": {
        "Id": _ID,
        "Name": _LINK,
        "pse__Project__c": _LINK,
        "pse__Date__c": _DAY,
        "pscsync_Exchange_Rate__c": (NUMBER_OR_TEXT, False),
        "pse__Project__r": (
            (dict,),
            False,
            {"Name": _LINK, "pscsync_Key__c": _LINK, "pse__Account__c": _LINK, "pse__Currency__c": _LINK},
        ),
    },
    "pse__Billing_Event_Item__c": {
        "Id": _ID,
        "pse__Billing_Event__c": _LINK,
        "pse__Category__c": _LINK,
        "pse__Object_Id__c": _LINK,
        "pse__Quantity__c": _NUM,
        "pse__Unit_Price__c": _NUM,
        "pse__Amount__c": _NUM,
        "pse__Date__c": _DAY,
        "CurrencyIsoCode": _LINK,
    },
    "pse__Timecard_Header__c": {
        "Id": _ID,
        "pse__Project__c": _LINK,
        "pse__Assignment__c": _LINK,
        "pse__Start_Date__c": _DAY,
        "pse__End_Date__c": _DAY,
        "pse__Approval_Date__c": _DAY,
        "pse__Billable__c": ((bool,), False),
        "pse__Billed__c": ((bool,), False),
        **_HOURS,
    },
    "pse__Expense__c": {"Id": _ID, "pse__Project__c": _LINK, "pse__Amount__c": _NUM, "pse__Expense_Date__c": _DAY},
    "pse__Milestone__c": {
        "Id": _ID,
        "pse__Project__c": _LINK,
        "pse__Milestone_Amount__c": _NUM,
        "pse__Actual_Date__c": _DAY,
        "pse__Target_Date__c": _DAY,
    },
    "pse__Assignment__c": {
        "Id": _ID,
        "pse__Project__c": _LINK,
        "pse__Schedule__c": _LINK,
        "pse__Role__c": _LINK,
        "pse__Bill_Rate__c": _NUM,
    },
    "pse__Schedule__c": {"Id": _ID, "pse__Start_Date__c": _DAY, "pse__End_Date__c": _DAY, **_HOURS},
}


def _item_kind(row: dict[str, Any]) -> str:
    """A billing event item's kind in canonical words (Time, Expense, Milestone)."""
    category = str(row.get("pse__Category__c") or "")
    return {"Timecard": "Time"}.get(category, category or "Time")


def _money(value: Any) -> str:
    return str(Decimal(str(value or 0)).quantize(Decimal("0.01")))


class CertiniaConnector(SalesforceConnector):
    vendor = "certinia"
    capabilities: ClassVar[dict[str, c.Capability]] = {
        c.PROJECT: c.Capability(c.PROJECT, "project", c.can(c.UPSERT, c.FIND, c.RECONCILE)),
        c.MILESTONE: c.Capability(c.MILESTONE, "milestone", c.can(c.UPSERT, c.FIND, c.RECONCILE)),
        # One budget record per contract version, holding that version's change in value.
        c.BUDGET: c.Capability(c.BUDGET, "budget", c.can(c.READ_ONE, c.UPSERT, c.FIND, c.RECONCILE)),
        c.RESOURCE_REQUEST: c.Capability(c.RESOURCE_REQUEST, "resource_request", c.can(c.UPSERT, c.FIND)),
        c.BILLING_BATCH: c.Capability(
            c.BILLING_BATCH,
            "billing_event",
            c.can(c.READ_ONE, c.READ_CHANGED, c.UPDATE, c.RECONCILE),
            identifier="billing_event",
        ),
        # The ERP invoice number and date on the billing event a person released.
        "billing_status": c.Capability(c.BILLING_BATCH, "billing_event", c.can(c.UPDATE)),
        # The project carries its billing figures (billed and paid to date), upserted by our key.
        "project_billing": c.Capability(c.PROJECT, "project", c.can(c.UPSERT, c.FIND)),
        c.TIME: c.Capability(c.TIME, "timecard", c.can(c.RECONCILE)),
        c.EXPENSE: c.Capability(c.EXPENSE, "expense", c.can(c.RECONCILE)),
    }
    entity_aliases: ClassVar[dict[str, str]] = {
        **SalesforceConnector.entity_aliases,
        "project": PROJECT,
        "milestone": "pse__Milestone__c",
        "assignment": "pse__Assignment__c",
        "schedule": "pse__Schedule__c",
        "timecard": "pse__Timecard_Header__c",
        "timecard_split": "pse__Timecard__c",
        "expense": "pse__Expense__c",
        "expense_report": "pse__Expense_Report__c",
        "resource_request": "pse__Resource_Request__c",
        "budget": "pse__Budget__c",
        "billing_event": "pse__Billing_Event__c",
        "billing_event_item": "pse__Billing_Event_Item__c",
        "resource": "Contact",
    }
    record_shapes: ClassVar[dict[str, PayloadShape]] = {**SalesforceConnector.record_shapes, **RECORD_SHAPES}
    entity_labels: ClassVar[dict[str, str]] = {
        **SalesforceConnector.entity_labels,
        PROJECT: "project",
        "pse__Milestone__c": "milestone",
        "pse__Assignment__c": "assignment",
        "pse__Schedule__c": "schedule",
        "pse__Timecard_Header__c": "timecard",
        "pse__Timecard__c": "timecard split",
        "pse__Expense__c": "expense",
        "pse__Expense_Report__c": "expense report",
        "pse__Resource_Request__c": "resource request",
        "pse__Budget__c": "budget",
        "pse__Billing_Event__c": "billing event",
        "pse__Billing_Event_Item__c": "billing event item",
    }
    default_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        **SalesforceConnector.default_fields,
        PROJECT: (
            "Id",
            "Name",
            "pse__Account__c",
            "pse__Opportunity__c",
            "pse__Project_Manager__c",
            "pse__Start_Date__c",
            "pse__End_Date__c",
            "pse__Stage__c",
            "pse__Billing_Type__c",
            "pse__Is_Active__c",
            "pse__Is_Billable__c",
            "pse__Bookings__c",
            "CurrencyIsoCode",
        ),
        "pse__Milestone__c": (
            "Id",
            "Name",
            "pse__Project__c",
            "pse__Target_Date__c",
            "pse__Actual_Date__c",
            "pse__Milestone_Amount__c",
            "pse__Status__c",
            "pse__Billed__c",
        ),
        "pse__Timecard_Header__c": (
            "Id",
            "Name",
            "pse__Resource__c",
            "pse__Project__c",
            "pse__Assignment__c",
            "pse__Start_Date__c",
            "pse__End_Date__c",
            "pse__Status__c",
            "pse__Billable__c",
            "pse__Total_Hours__c",
            *(f"pse__{day}_Hours__c" for day in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")),
            "pse__Saturday_Hours__c",
            "pse__Sunday_Hours__c",
        ),
        "pse__Expense__c": (
            "Id",
            "Name",
            "pse__Project__c",
            "pse__Resource__c",
            "pse__Expense_Date__c",
            "pse__Type__c",
            "pse__Amount__c",
            "pse__Billable__c",
            "pse__Status__c",
            "CurrencyIsoCode",
        ),
        "pse__Resource_Request__c": (
            "Id",
            "Name",
            "pse__Project__c",
            "pse__Opportunity__c",
            "pse__Resource_Role__c",
            "pse__Status__c",
            "pse__Start_Date__c",
            "pse__End_Date__c",
            "pse__SOW_Hours__c",
            "pse__Percent_Allocated__c",
        ),
        "pse__Budget__c": (
            "Id",
            "Name",
            "pse__Project__c",
            "pse__Amount__c",
            "pse__Type__c",
            "pse__Status__c",
            "pse__Effective_Date__c",
        ),
        "pse__Billing_Event__c": (
            "Id",
            "Name",
            "pse__Project__c",
            "pse__Date__c",
            "pse__Status__c",
            "pse__Is_Released__c",
            "pse__Invoiced__c",
            "pse__Invoice_Number__c",
            "pse__Invoice_Date__c",
            "pse__Summary_Amount__c",
            "CurrencyIsoCode",
        ),
        "pse__Billing_Event_Item__c": (
            "Id",
            "Name",
            "pse__Billing_Event__c",
            "pse__Project__c",
            "pse__Category__c",
            "pse__Object_Id__c",
            "pse__Quantity__c",
            "pse__Unit_Price__c",
            "pse__Amount__c",
        ),
    }

    # Canonical records -------------------------------------------------------------------------
    def change_subject(self, change: InboundChange) -> c.ChangeSubject:
        """A billing event created in the PSA (the billing run released it) is a billing batch."""
        _, header = change_event_parts(change.payload)
        if OWN_CLIENT in str(header.get("changeOrigin", "")):
            return c.ChangeSubject(own_write=True)
        if header.get("entityName") == "pse__Billing_Event__c" and header.get("changeType") == "CREATE":
            return c.ChangeSubject(record=c.BILLING_BATCH, action="created")
        return c.ChangeSubject()

    def references(self, purpose: str, **links: Any) -> dict[str, Any]:
        refs: dict[str, Any] = {}
        if purpose == c.RESOURCE_REQUEST:
            refs = {"pse__Opportunity__c": links["opportunity_id"], "pse__Status__c": links["status"]}
        if links.get("project_id") and purpose in (c.MILESTONE, c.BUDGET, c.RESOURCE_REQUEST):
            refs["pse__Project__c"] = links["project_id"]
        return refs

    def budgets(self, project_id: str) -> list[tuple[str, Decimal]]:
        rows = self.read("budget", where={"pse__Project__c": project_id}, fields=["pscsync_Key__c", "pse__Amount__c"])
        return [(r.get("pscsync_Key__c") or "", Decimal(str(r.get("pse__Amount__c") or 0))) for r in rows]

    def billing_batch(self, key: str, *, currency: str = "") -> dict[str, Any] | None:
        """A billing event and its items. The project carries our key and its account, so the
        batch knows whom it bills; each item's approval date is its timecard's (an expense or a
        milestone item: its own date)."""
        events = list(self.read("billing_event", where={"Id": key}, fields=list(BILLING_EVENT_FIELDS)))
        if not events:
            return None
        event = events[0]
        project = event.get("pse__Project__r") or {}
        currency = (project.get("pse__Currency__c") or currency or "").upper()
        rows = list(
            self.read("billing_event_item", where={"pse__Billing_Event__c": key}, fields=list(BILLING_ITEM_FIELDS))
        )
        approved_on = self._approval_dates(rows)
        items = []
        for row in rows:
            kind = _item_kind(row)
            items.append(
                {
                    "id": row["Id"],
                    "kind": kind,
                    "source_id": row.get("pse__Object_Id__c") or row["Id"],
                    "date": (row.get("pse__Date__c") or "")[:10],
                    "quantity": _money(row.get("pse__Quantity__c")),
                    "unit_price": _money(row.get("pse__Unit_Price__c")),
                    "amount": _money(row.get("pse__Amount__c")),
                    "currency": (row.get("CurrencyIsoCode") or currency).upper(),
                    "approved": approved_on.get(
                        row.get("pse__Object_Id__c") or "", (row.get("pse__Date__c") or "")[:10]
                    ),
                }
            )
        account = project.get("pse__Account__c") or ""
        return {
            "id": key,
            "invoice_key": c.KEYS[c.INVOICE](batch=key),
            "name": event.get("Name") or key,
            "project_id": event.get("pse__Project__c"),
            "project_key": project.get("pscsync_Key__c") or "",
            "project_name": project.get("Name") or "",
            "date": (event.get("pse__Date__c") or "")[:10],
            "currency": currency,
            "customer_key": c.KEYS[c.CUSTOMER](account=account) if account else "",
            "items": items,
        }

    def _approval_dates(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """Timecard id -> its approval date (`pse__Approval_Date__c`), for the batch's time items."""
        ids = sorted(
            {
                r["pse__Object_Id__c"]
                for r in rows
                if r.get("pse__Category__c") == "Timecard" and r.get("pse__Object_Id__c")
            }
        )
        if not ids:
            return {}
        found = self.read("timecard", where={"Id": ids}, fields=["Id", "pse__Approval_Date__c"])
        return {t["Id"]: (t.get("pse__Approval_Date__c") or "")[:10] for t in found if t.get("pse__Approval_Date__c")}

    # Reconciliation -------------------------------------------------------------------------
    def psa_holdings(self) -> h.PsaHoldings:
        projects, batches = self._projects_and_batches()
        return h.PsaHoldings(
            projects=projects,
            batches=batches,
            unbilled=self._unbilled(projects),
            assignments=self._assignments(projects),
            worked=self._worked(),
        )

    def _projects_and_batches(self) -> tuple[dict[str, h.PsaProject], list[h.PsaBatch]]:
        projects_by_id: dict[str, h.PsaProject] = {}
        for row in self.query("SELECT Id, Name, pscsync_Key__c, pse__Currency__c, CurrencyIsoCode FROM pse__Proj__c"):
            key = row.get("pscsync_Key__c") or ""
            if not key.startswith("P-"):
                continue
            currency = (row.get("pse__Currency__c") or row.get("CurrencyIsoCode") or "").upper()
            projects_by_id[row["Id"]] = h.PsaProject(
                key=key, id=row["Id"], name=row.get("Name") or key, currency=currency, budget=None, budget_version=None
            )
        for row in self.query(
            "SELECT Id, Name, pscsync_Key__c, pse__Project__c, pse__Amount__c, pse__Status__c FROM pse__Budget__c"
        ):
            project = projects_by_id.get(row.get("pse__Project__c") or "")
            if project is None or (row.get("pse__Status__c") or "Approved") != "Approved":
                continue
            project.budget = (project.budget or Decimal("0.00")) + h.money(row.get("pse__Amount__c"))
            project.budget_records.append(f"{row.get('Name') or row['Id']} ({h.money(row.get('pse__Amount__c'))})")
            match = re.search(r"-v(\d+)$", row.get("pscsync_Key__c") or "")
            if match:
                project.budget_version = max(project.budget_version or 0, int(match.group(1)))
        events: dict[str, h.PsaBatch] = {}
        for row in self.query(
            "SELECT Id, Name, pse__Project__c, pse__Date__c, CurrencyIsoCode, pscsync_Exchange_Rate__c "
            "FROM pse__Billing_Event__c"
        ):
            project = projects_by_id.get(row.get("pse__Project__c") or "")
            events[row["Id"]] = h.PsaBatch(
                id=row["Id"],
                name=row.get("Name") or row["Id"],
                invoice_key=f"I-{row['Id']}",
                project_key=project.key if project else f"project:{row.get('pse__Project__c')}",
                project_name=project.name if project else "",
                date=h.day(row.get("pse__Date__c")),
                currency=(row.get("CurrencyIsoCode") or (project.currency if project else "")).upper(),
                fx_rate=h.rate(row.get("pscsync_Exchange_Rate__c")),
            )
        for row in self.query(
            "SELECT Id, Name, pse__Billing_Event__c, pse__Category__c, pse__Object_Id__c, pse__Amount__c, "
            "pse__Date__c, CurrencyIsoCode, LastModifiedDate FROM pse__Billing_Event_Item__c"
        ):
            batch = events.get(row.get("pse__Billing_Event__c") or "")
            if batch is None:
                continue
            kind = _item_kind(row)
            batch.items.append(
                h.PsaItem(
                    id=row["Id"],
                    kind=kind,
                    source_id=row.get("pse__Object_Id__c") or row["Id"],
                    date=h.day(row.get("pse__Date__c")),
                    amount=h.money(row.get("pse__Amount__c")),
                    currency=(row.get("CurrencyIsoCode") or batch.currency).upper(),
                    modified_at=h.instant(row.get("LastModifiedDate")),
                )
            )
        return {p.key: p for p in projects_by_id.values()}, [b for b in events.values() if b.items]

    WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

    def _unbilled(self, projects: dict[str, h.PsaProject]) -> list[h.Unbilled]:
        """Approved, billable timecards and expenses and approved milestones the PSA has not put in a
        billing event (`pse__Billed__c` is what Certinia's billing run sets), priced as the billing run
        prices them: timecard hours x the assignment's bill h.rate."""
        by_id = {p.id: p for p in projects.values()}
        found: list[h.Unbilled] = []

        def add(kind: str, row: dict[str, Any], amount: Decimal, work_date: Any, currency: str = "") -> None:
            project = by_id.get(row.get("pse__Project__c") or "")
            if project is None or row.get("pse__Billed__c"):
                return  # a project pscsync did not create is not ours to report
            found.append(
                h.Unbilled(
                    kind=kind,
                    source_id=row["Id"],
                    description=str(row.get("Name") or row["Id"]),
                    project_key=project.key,
                    project_name=project.name,
                    work_date=h.day(work_date),
                    amount=amount,
                    currency=(currency or project.currency).upper(),
                )
            )

        rates = {
            row["Id"]: h.money(row.get("pse__Bill_Rate__c"))
            for row in self.query("SELECT Id, pse__Bill_Rate__c FROM pse__Assignment__c")
        }
        hour_fields = ", ".join(f"pse__{d}_Hours__c" for d in WEEKDAYS)
        for row in self.query(
            f"SELECT Id, Name, pse__Project__c, pse__Assignment__c, pse__End_Date__c, pse__Billable__c, "  # noqa: S608  # nosec B608  # fixed field names
            f"pse__Billed__c, {hour_fields} FROM pse__Timecard_Header__c WHERE pse__Status__c = 'Approved'"
        ):
            if row.get("pse__Billable__c") is False:
                continue
            hours = sum((Decimal(str(row.get(f"pse__{d}_Hours__c") or 0)) for d in WEEKDAYS), Decimal("0"))
            amount = h.money(hours * rates.get(row.get("pse__Assignment__c") or "", Decimal("0")))
            add("time", row, amount, row.get("pse__End_Date__c"))
        for row in self.query(
            "SELECT Id, Name, pse__Project__c, pse__Expense_Date__c, pse__Amount__c, pse__Billable__c, "
            "pse__Billed__c, CurrencyIsoCode FROM pse__Expense__c WHERE pse__Status__c = 'Approved'"
        ):
            if row.get("pse__Billable__c") is False:
                continue
            add(
                "expense",
                row,
                h.money(row.get("pse__Amount__c")),
                row.get("pse__Expense_Date__c"),
                row.get("CurrencyIsoCode") or "",
            )
        for row in self.query(
            "SELECT Id, Name, pse__Project__c, pse__Actual_Date__c, pse__Target_Date__c, pse__Milestone_Amount__c, "
            "pse__Billed__c FROM pse__Milestone__c WHERE pse__Status__c = 'Approved'"
        ):
            completed = row.get("pse__Actual_Date__c") or row.get("pse__Target_Date__c")
            add("milestone", row, h.money(row.get("pse__Milestone_Amount__c")), completed)
        return found

    def _assignments(self, projects: dict[str, h.PsaProject]) -> list[h.Assignment]:
        """Every assignment with its schedule's dates and weekday hours (all projects: a person staffed
        on an internal project is not free for a client's)."""
        keys = {p.id: p.key for p in projects.values()}
        hour_fields = ", ".join(f"pse__{d}_Hours__c" for d in WEEKDAYS)
        schedules = {
            row["Id"]: row
            for row in self.query(
                f"SELECT Id, pse__Start_Date__c, pse__End_Date__c, {hour_fields} FROM pse__Schedule__c"  # noqa: S608  # nosec B608  # fixed field names
            )
        }
        found = []
        for row in self.query("SELECT Id, pse__Project__c, pse__Schedule__c, pse__Role__c FROM pse__Assignment__c"):
            schedule = schedules.get(row.get("pse__Schedule__c") or "") or {}
            starts, ends = h.day(schedule.get("pse__Start_Date__c")), h.day(schedule.get("pse__End_Date__c"))
            if starts is None or ends is None or ends < starts:
                continue
            weekly = sum((Decimal(str(schedule.get(f"pse__{d}_Hours__c") or 0)) for d in WEEKDAYS), Decimal("0"))
            found.append(
                h.Assignment(
                    source_id=row["Id"],
                    role=str(row.get("pse__Role__c") or ""),
                    project_key=keys.get(row.get("pse__Project__c") or "", ""),
                    starts_on=starts,
                    ends_on=ends,
                    weekly_hours=weekly,
                )
            )
        return found

    def _worked(self) -> list[h.Worked]:
        """Approved hours worked per role (the assignment's) and month, each weekday's hours dated
        from the timecard's start date (a week across a month end splits between the two months)."""
        roles = {
            row["Id"]: str(row.get("pse__Role__c") or "")
            for row in self.query("SELECT Id, pse__Role__c FROM pse__Assignment__c")
        }
        hour_fields = ", ".join(f"pse__{d}_Hours__c" for d in WEEKDAYS)
        found: dict[tuple[str, str], Decimal] = {}
        for row in self.query(
            f"SELECT Id, pse__Assignment__c, pse__Start_Date__c, pse__End_Date__c, {hour_fields} "  # noqa: S608  # nosec B608  # fixed field names
            "FROM pse__Timecard_Header__c WHERE pse__Status__c = 'Approved'"
        ):
            starts, ends = h.day(row.get("pse__Start_Date__c")), h.day(row.get("pse__End_Date__c"))
            if starts is None:
                continue
            role = roles.get(row.get("pse__Assignment__c") or "", "")
            for offset in range(7):
                date = starts + dt.timedelta(days=offset)
                if ends is not None and date > ends:
                    break
                hours = Decimal(str(row.get(f"pse__{WEEKDAYS[date.weekday()]}_Hours__c") or 0))
                if hours:
                    key = (role, h.period_of(date))
                    found[key] = found.get(key, Decimal("0")) + hours
        return [h.Worked(role=role, month=month, hours=hours) for (role, month), hours in sorted(found.items())]
