"""The simulated org's data model: which objects exist, their key prefixes, required fields,
lookups and external id fields, and how Salesforce spells record ids.

Standard objects carry the standard fields we know; every object also accepts any custom field
(`..__c`), as if the org had created whatever custom fields a mapping writes to. Certinia PSA
objects are managed-package custom objects in the `pse__` namespace (VENDOR_APIS.md section 2.3).
Required fields and lookups for the Certinia objects are our choice (Certinia's docs say they
vary per org); they are listed in docs/sandboxes/salesforce.md.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from connectors.sandboxes.base import FieldDef

# Every object has this external id field (Text, External ID, Unique): the connector upserts by it.
SYNC_KEY_FIELD = "pscsync_Key__c"
# A second, non-unique external id field, as older orgs have after data migrations: upserting by
# it can match several records, which Salesforce answers with 300 Multiple Choices.
LEGACY_KEY_FIELD = "Legacy_Id__c"

SYSTEM_FIELDS = (
    "Id",
    "IsDeleted",
    "CreatedDate",
    "CreatedById",
    "LastModifiedDate",
    "LastModifiedById",
    "SystemModstamp",
)
ORG_ID = "00DSB0000001pscMAA"
INTEGRATION_USER_ID = "005SB000000pscIAAQ"


@dataclass(frozen=True)
class SObject:
    name: str
    prefix: str
    label: str
    required: tuple[str, ...] = ()
    # lookup field -> the object it points at (also gives the relationship name for SOQL)
    references: dict[str, str] = field(default_factory=dict)
    standard_fields: tuple[str, ...] = ()
    auto_name: str = ""  # an auto-number Name ("TCH-{0:06d}") when the caller does not give one
    # The custom fields the org has defined on it, with their types and picklists, as its
    # describe lists them. Writes of other `__c` fields are still accepted (see the module doc).
    custom_fields: tuple[FieldDef, ...] = ()

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    @property
    def change_event(self) -> str:
        """Its CDC entity: AccountChangeEvent; pse__Proj__c -> pse__Proj__ChangeEvent."""
        return self.name.removesuffix("__c") + "__ChangeEvent" if self.custom else self.name + "ChangeEvent"

    @property
    def external_id_fields(self) -> tuple[str, ...]:
        return (SYNC_KEY_FIELD, LEGACY_KEY_FIELD)

    def knows_field(self, name: str) -> bool:
        return name.endswith("__c") or name in SYSTEM_FIELDS or name in self.standard_fields or name == "Name"

    def canonical_field(self, name: str) -> str | None:
        """The field's own spelling (SOQL and JSON field names are case-insensitive), or None."""
        lowered = name.lower()
        for known in (*SYSTEM_FIELDS, "Name", *self.standard_fields, *self.references):
            if known.lower() == lowered:
                return known
        return name if name.lower().endswith("__c") else None

    def relationship(self, name: str) -> tuple[str, str | None] | None:
        """(lookup field, target object or None if any) for a relationship name such as Account
        or pse__Project__r."""
        lowered = name.lower()
        if lowered.endswith("__r"):
            lookup = name[:-3] + "__c"
        else:
            lookup = name + "Id"
        for known, target in self.references.items():
            if known.lower() == lookup.lower():
                return known, target
        if lowered.endswith("__r"):
            return lookup, None  # a custom lookup we do not model: the target comes from the id
        return None


def _text(name: str) -> FieldDef:
    return FieldDef(name, "string")


def _money(name: str) -> FieldDef:
    return FieldDef(name, "currency")


def _number(name: str) -> FieldDef:
    return FieldDef(name, "double")


def _date(name: str) -> FieldDef:
    return FieldDef(name, "date")


def _moment(name: str) -> FieldDef:
    return FieldDef(name, "datetime")


def _flag(name: str) -> FieldDef:
    return FieldDef(name, "boolean")


def _picklist(name: str, *values: str) -> FieldDef:
    return FieldDef(name, "picklist", values=values)


_ADDRESS = tuple(
    f"{kind}{part}" for kind in ("Billing", "Shipping") for part in ("Street", "City", "State", "PostalCode", "Country")
)

OBJECTS: dict[str, SObject] = {
    o.name: o
    for o in (
        SObject(
            "Account",
            "001",
            "Account",
            required=("Name",),
            references={"ParentId": "Account", "OwnerId": "User"},
            standard_fields=(
                "AccountNumber",
                "Type",
                "Industry",
                *_ADDRESS,
                "Phone",
                "Website",
                "Description",
                "NumberOfEmployees",
                "AnnualRevenue",
                "CurrencyIsoCode",
                "Site",
            ),
        ),
        SObject(
            "Contact",
            "003",
            "Contact",
            required=("LastName",),
            references={"AccountId": "Account", "OwnerId": "User", "ReportsToId": "Contact"},
            standard_fields=("FirstName", "LastName", "Email", "Phone", "Title", "Department", "CurrencyIsoCode"),
        ),
        SObject(
            "Opportunity",
            "006",
            "Opportunity",
            required=("Name", "StageName", "CloseDate"),
            references={"AccountId": "Account", "OwnerId": "User", "ContractId": "Contract"},
            standard_fields=(
                "StageName",
                "CloseDate",
                "Amount",
                "Probability",
                "Type",
                "LeadSource",
                "NextStep",
                "Description",
                "ForecastCategoryName",
                "CurrencyIsoCode",
                "IsClosed",
                "IsWon",
            ),
            custom_fields=(
                _text("ERP_Customer_Id__c"),
                _text("PSA_Project_Id__c"),
                _picklist("Project_Status__c", "Not Started", "Provisioned", "In Progress", "Closed"),
                _moment("Provisioned_At__c"),
                _text("Billing_Status__c"),
                _money("Amount_Invoiced__c"),
                _money("Amount_Paid__c"),
                _text("Last_Invoice__c"),
                _number("Contract_Synced_Version__c"),
                _moment("Contract_Synced_At__c"),
            ),
        ),
        SObject(
            "Quote",
            "0Q0",
            "Quote",
            required=("Name", "OpportunityId"),
            references={"OpportunityId": "Opportunity", "AccountId": "Account", "ContactId": "Contact"},
            standard_fields=("Status", "ExpirationDate", "Description", "GrandTotal", "CurrencyIsoCode"),
        ),
        SObject(
            "Contract",
            "800",
            "Contract",
            required=("AccountId",),
            references={"AccountId": "Account", "OwnerId": "User"},
            standard_fields=("Status", "StartDate", "EndDate", "ContractTerm", "Description", "CurrencyIsoCode"),
            auto_name="{0:08d}",
        ),
        SObject("User", "005", "User", standard_fields=("Username", "Email", "FirstName", "LastName", "IsActive")),
        # Certinia PSA (managed package, namespace pse__) ------------------------------------
        SObject(
            "pse__Proj__c",
            "a2Q",
            "Project",
            required=("Name",),
            references={
                "pse__Account__c": "Account",
                "pse__Project_Manager__c": "Contact",
                "pse__Opportunity__c": "Opportunity",
            },
            standard_fields=("CurrencyIsoCode",),
            custom_fields=(
                _date("pse__Start_Date__c"),
                _date("pse__End_Date__c"),
                _picklist("pse__Billing_Type__c", "Time and Materials", "Fixed Price", "Retainer"),
                _text("pse__Practice__c"),
                _text("pse__Currency__c"),
                _flag("pse__Is_Active__c"),
                _picklist("pse__Stage__c", "Planned", "In Progress", "Completed", "Canceled"),
                _text("ERP_Customer_Id__c"),
                _money("Billed_To_Date__c"),
                _money("Paid_To_Date__c"),
                _text("Billing_Status__c"),
            ),
        ),
        SObject(
            "pse__Milestone__c",
            "a2M",
            "Milestone",
            required=("Name", "pse__Project__c"),
            references={"pse__Project__c": "pse__Proj__c"},
            standard_fields=("CurrencyIsoCode",),
            custom_fields=(
                _money("pse__Milestone_Amount__c"),
                _date("pse__Target_Date__c"),
                _picklist("pse__Status__c", "Planned", "Open", "In Progress", "Approved", "Complete", "Canceled"),
            ),
        ),
        SObject(
            "pse__Schedule__c",
            "a1S",
            "Schedule",
            required=("pse__Start_Date__c", "pse__End_Date__c"),
            auto_name="SCH-{0:06d}",
        ),
        SObject(
            "pse__Assignment__c",
            "a1A",
            "Assignment",
            required=("pse__Project__c", "pse__Resource__c", "pse__Schedule__c"),
            references={
                "pse__Project__c": "pse__Proj__c",
                "pse__Resource__c": "Contact",
                "pse__Schedule__c": "pse__Schedule__c",
                "pse__Milestone__c": "pse__Milestone__c",
            },
            auto_name="AS-{0:06d}",
        ),
        SObject(
            "pse__Timecard_Header__c",
            "a4T",
            "Timecard",
            required=("pse__Resource__c", "pse__Project__c", "pse__Start_Date__c", "pse__End_Date__c"),
            references={
                "pse__Resource__c": "Contact",
                "pse__Project__c": "pse__Proj__c",
                "pse__Assignment__c": "pse__Assignment__c",
                "pse__Milestone__c": "pse__Milestone__c",
            },
            auto_name="TC-{0:07d}",
        ),
        SObject(
            "pse__Timecard__c",
            "a4U",
            "Timecard Split",
            references={"pse__Timecard_Header__c": "pse__Timecard_Header__c", "pse__Project__c": "pse__Proj__c"},
            auto_name="TCS-{0:07d}",
        ),
        SObject(
            "pse__Expense_Report__c",
            "a3R",
            "Expense Report",
            required=("Name", "pse__Project__c"),
            references={"pse__Project__c": "pse__Proj__c", "pse__Resource__c": "Contact"},
        ),
        SObject(
            "pse__Expense__c",
            "a3E",
            "Expense",
            required=("pse__Project__c", "pse__Resource__c", "pse__Expense_Date__c", "pse__Amount__c"),
            references={
                "pse__Project__c": "pse__Proj__c",
                "pse__Resource__c": "Contact",
                "pse__Assignment__c": "pse__Assignment__c",
                "pse__Expense_Report__c": "pse__Expense_Report__c",
            },
            standard_fields=("CurrencyIsoCode",),
            auto_name="EX-{0:07d}",
        ),
        SObject(
            "pse__Resource_Request__c",
            "a3Q",
            "Resource Request",
            required=("pse__Start_Date__c", "pse__End_Date__c"),
            references={
                "pse__Project__c": "pse__Proj__c",
                "pse__Opportunity__c": "Opportunity",
                "pse__Resource__c": "Contact",
                "pse__Staffer_Resource__c": "Contact",
            },
            auto_name="RR-{0:06d}",
            custom_fields=(
                _text("pse__Resource_Role__c"),
                _number("pse__SOW_Hours__c"),
                _date("pse__Start_Date__c"),
                _date("pse__End_Date__c"),
                _money("pse__Requested_Bill_Rate__c"),
                FieldDef("pse__Probability__c", "percent"),
                _number("Weighted_Hours__c"),
            ),
        ),
        SObject(
            "pse__Budget__c",
            "a2B",
            "Budget",
            required=("Name", "pse__Project__c"),
            references={"pse__Project__c": "pse__Proj__c", "pse__Opportunity__c": "Opportunity"},
            standard_fields=("CurrencyIsoCode",),
            custom_fields=(
                _money("pse__Amount__c"),
                _picklist(
                    "pse__Type__c",
                    "Customer Purchase Order",
                    "Customer Purchase Order Change Request",
                    "Internal Budget",
                    "Vendor Purchase Order",
                ),
                _picklist("pse__Status__c", "Draft", "Open", "Approved", "Rejected"),
                _date("pse__Effective_Date__c"),
                _text("pse__Currency__c"),
            ),
        ),
        SObject(
            "pse__Billing_Event__c",
            "a3B",
            "Billing Event",
            required=("pse__Project__c",),
            references={"pse__Project__c": "pse__Proj__c", "pse__Billing_Contact__c": "Contact"},
            standard_fields=("CurrencyIsoCode",),
            auto_name="BE-{0:06d}",
            custom_fields=(
                _text("pse__Invoice_Number__c"),
                _date("pse__Invoice_Date__c"),
                _flag("pse__Is_Released__c"),
                _picklist("pse__Status__c", "Draft", "Approved", "Released", "Invoiced"),
            ),
        ),
        SObject(
            "pse__Billing_Event_Item__c",
            "a3C",
            "Billing Event Item",
            required=("pse__Billing_Event__c",),
            references={
                "pse__Billing_Event__c": "pse__Billing_Event__c",
                "pse__Project__c": "pse__Proj__c",
                "pse__Milestone__c": "pse__Milestone__c",
                "pse__Expense__c": "pse__Expense__c",
            },
            standard_fields=("CurrencyIsoCode",),
            auto_name="BEI-{0:07d}",
        ),
    )
}
OBJECTS_BY_PREFIX: dict[str, SObject] = {o.prefix: o for o in OBJECTS.values()}


def find_object(name: str) -> SObject | None:
    """Object names are case-insensitive in the REST paths and in SOQL."""
    found = OBJECTS.get(name)
    if found is not None:
        return found
    lowered = name.lower()
    return next((o for o in OBJECTS.values() if o.name.lower() == lowered), None)


# Record ids -------------------------------------------------------------------------------------
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def id18(id15: str) -> str:
    """Salesforce's case-safe 18-character id: three checksum characters, one per 5-character
    chunk, whose bits say which characters of the chunk are upper case."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, ch in enumerate(id15[start : start + 5]) if "A" <= ch <= "Z")
        suffix += _SUFFIX[bits]
    return id15 + suffix


def new_id(prefix: str, number: int) -> str:
    """prefix + 'SB0' (our pod) + a 9-character base-62 serial, made case-safe."""
    digits = ""
    for _ in range(9):
        number, rem = divmod(number, 62)
        digits = _BASE62[rem] + digits
    return id18(prefix + "SB0" + digits)


def normalise_id(value: str) -> str | None:
    """An 18-character id for a 15- or 18-character one, or None when it is not id-shaped."""
    if not isinstance(value, str) or len(value) not in (15, 18) or not value.isalnum():
        return None
    full = id18(value[:15])
    if len(value) == 18 and value[15:].upper() != full[15:]:
        return None
    return full


# Dates ----------------------------------------------------------------------------------------
def sf_datetime(moment: dt.datetime) -> str:
    """Salesforce's REST datetime format: 2024-06-10T08:13:20.000+0000."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+0000"


def parse_moment(value: object) -> dt.datetime | None:
    """A date or datetime string in any form Salesforce writes or reads, as a UTC datetime."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC)
        text = text.replace("Z", "+00:00")
        if len(text) >= 5 and text[-5] in "+-" and ":" not in text[-5:]:
            text = text[:-2] + ":" + text[-2:]
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
