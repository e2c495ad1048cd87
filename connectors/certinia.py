"""Certinia PSA (formerly FinancialForce PSA). Certinia lives inside a Salesforce org: its records
are the managed package's `pse__` custom objects, read and written through the same Salesforce
REST API, tokens, SOQL paging, errors, limits and change events. So this connector is the
Salesforce connector with Certinia's objects, field lists and words.

Entity names are the objects' API names (pse__Proj__c, pse__Milestone__c, ...); the friendly
names below (project, milestone, ...) are accepted too. Credentials and base URL: as for
Salesforce (connectors/salesforce.py).
"""

from __future__ import annotations

from typing import ClassVar

from connectors.salesforce import SalesforceConnector

PROJECT = "pse__Proj__c"


class CertiniaConnector(SalesforceConnector):
    vendor = "certinia"
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
