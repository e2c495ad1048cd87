"""The anomalies a real firm produces, each leaving a precise condition in a source system, and
the correction an operator makes in that system before resubmitting.

| anomaly | source condition | operator's correction |
|---|---|---|
| missing_tax_profile | Salesforce Account without `Tax_Profile__c` | set the entity's standard tax profile |
| unknown_service_line | Opportunity `Service_Line__c` not in the ERP's value map | set a known service line |
| duplicate_customer | ERP customer of the same name keyed by hand, no external id | link it: key `C-<Account Id>` |
| erp_outage | the ERP sandbox answers 503 for a window | (none: the engine retries) |
| rate_limit_burst | the sandbox allows N requests a minute for a window | (none) |
| late_time | a week's time approved in the month after it was worked | (none: reconciliation explains it) |
| fx_date | the ERP invoice dated/posted on another day than the PSA billed it | (none: reconciliation explains it) |
| mixed_currency | an expense in EUR in a USD/GBP project's batch (GBP in a EUR one) | correct its currency |
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from demo.simulation.drivers import BusinessCentral, Driver, Kantata, NetSuite, Salesforce

ANOMALIES = (
    "missing_tax_profile",
    "unknown_service_line",
    "duplicate_customer",
    "erp_outage",
    "rate_limit_burst",
    "late_time",
    "fx_date",
    "mixed_currency",
)
FOREIGN_CURRENCY = "EUR"
# What an operator converts a foreign expense at (the firm's policy rate for the demo).
POLICY_RATES = {("EUR", "USD"): Decimal("1.08"), ("EUR", "GBP"): Decimal("0.86"), ("GBP", "EUR"): Decimal("1.16")}
DEFAULT_TAX_PROFILE = {"us": "US-STANDARD", "uk": "GB-VAT20", "de": "DE-VAT19"}
FALLBACK_SERVICE_LINE = "Advisory"


# Injectors ----------------------------------------------------------------------------------------
def foreign_currency(currency: str) -> str:
    """The currency an odd expense comes in: euros (a trip to the continent), or pounds for the
    German entity, whose own currency is the euro."""
    return "GBP" if currency.upper() == FOREIGN_CURRENCY else FOREIGN_CURRENCY


def hand_keyed_customer(erp: Driver, *, name: str, entity: str, number: str) -> str:
    """A customer someone created directly in the ERP: same name, no external id from us."""
    if isinstance(erp, NetSuite):
        return erp.create(
            "customer",
            {"companyName": name, "subsidiary": {"id": "3"}, "currency": {"id": "1"}, "comments": "keyed by hand"},
        )
    assert isinstance(erp, BusinessCentral)
    record = erp.create("customers", {"number": number, "displayName": name, "currencyCode": ""})
    return str(record["id"])


def outage_start(sandbox: Driver) -> None:
    """The vendor is down: every request answers 503 until the window ends."""
    sandbox.fault(error_status=503, count=10**9, retry_after=5)


def rate_limit_start(sandbox: Driver, per_minute: int) -> None:
    sandbox.fault(rate_limit_per_minute=per_minute)


def incident_end(sandbox: Driver) -> None:
    sandbox.clear_faults()


# Corrections (what the operator does in the source before resubmitting) -----------------------------
def fix_tax_profile(sf: Salesforce, *, account_id: str, entity: str) -> str:
    sf.update("Account", account_id, {"Tax_Profile__c": DEFAULT_TAX_PROFILE[entity]})
    return f"set Tax Profile {DEFAULT_TAX_PROFILE[entity]} on account {account_id}"


def fix_service_line(sf: Salesforce, *, opportunity_id: str) -> str:
    sf.update("Opportunity", opportunity_id, {"Service_Line__c": FALLBACK_SERVICE_LINE})
    return f"set Service Line {FALLBACK_SERVICE_LINE} on opportunity {opportunity_id}"


def fix_duplicate_customer(erp: Driver, *, customer_id: str, account_id: str) -> str:
    key = f"C-{account_id}"
    if isinstance(erp, NetSuite):
        erp.update("customer", customer_id, {"externalId": key})
    else:
        assert isinstance(erp, BusinessCentral)
        record = next(r for r in erp.list("customers") if str(r["id"]) == customer_id)
        erp.update("customers", record, {"number": key})
    return f"linked the hand-keyed {erp.name} customer {customer_id} to account {account_id} ({key})"


def fix_mixed_currency_certinia(sf: Salesforce, *, event_id: str, currency: str) -> str:
    items = sf.query(
        "SELECT Id, CurrencyIsoCode, pse__Amount__c FROM pse__Billing_Event_Item__c "  # noqa: S608  # nosec B608  # SOQL on ids read back from the vendor
        f"WHERE pse__Billing_Event__c = '{event_id}'"
    )
    fixed = 0
    for item in items:
        odd = (item.get("CurrencyIsoCode") or currency).upper()
        if odd != currency:
            amount = _converted(item.get("pse__Amount__c"), odd, currency)
            sf.update(
                "pse__Billing_Event_Item__c",
                item["Id"],
                {"CurrencyIsoCode": currency, "pse__Amount__c": float(amount), "pse__Unit_Price__c": float(amount)},
            )
            fixed += 1
    return f"converted {fixed} item(s) of billing event {event_id} to {currency}"


def fix_mixed_currency_kantata(kantata: Kantata, *, expense_ids: list[str], currency: str) -> str:
    for expense_id in expense_ids:
        expense = kantata.index("expenses", only=expense_id)[0]
        odd = (expense.get("currency") or currency).upper()
        if odd != currency:
            cents = int(_converted(Decimal(expense.get("amount_in_cents") or 0) / 100, odd, currency) * 100)
            kantata.update("expenses", "expense", expense_id, {"currency": currency, "amount_in_cents": cents})
    return f"converted expense(s) {', '.join(expense_ids)} to {currency}"


def _converted(amount: Any, source: str, target: str) -> Decimal:
    rate = POLICY_RATES.get((source, target), Decimal("1"))
    return (Decimal(str(amount or 0)) * rate).quantize(Decimal("0.01"))
