"""Seed the sandboxes with what the flows would have written, one deal at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.kantata import API as KANTATA_API
from connectors.netsuite import RECORD

NS_CURRENCY = {"USD": "1", "GBP": "2", "CAD": "3", "EUR": "4"}


@dataclass
class Seeded:
    opportunity: str
    account: str
    project: str  # the PSA project's id
    customer: str = ""  # the ERP customer's id
    batches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def project_key(self) -> str:
        return f"P-{self.opportunity}"


def deal(
    firm: Any,
    *,
    entity: str = "us",
    n: int = 1,
    amount: float = 120000,
    currency: str = "",
    version: int = 1,
    tax_profile: str = "",
    psa_amount: float | None = None,
    erp_amount: float | None = None,
    erp_version: int | None = None,
    psa_version: int | None = None,
    customer: bool = True,
    customer_tax_code: str | None = None,
) -> Seeded:
    sf = firm.salesforce
    currency = currency or ("USD" if entity == "us" else "GBP")
    tax_profile = tax_profile or ("US-STANDARD" if entity == "us" else "GB-VAT20")
    account = sf.send(
        "POST",
        sf.api_path("sobjects/Account/"),
        json={"Name": f"Globex {entity} {n}", "Tax_Profile__c": tax_profile, "BillingCountry": entity.upper()},
    ).body["id"]
    opportunity = sf.send(
        "POST",
        sf.api_path("sobjects/Opportunity/"),
        json={
            "Name": f"Globex {entity} {n} rollout",
            "AccountId": account,
            "StageName": "Closed Won",
            "CloseDate": "2026-09-15",
            "Amount": amount,
            "CurrencyIsoCode": currency,
            "Legal_Entity__c": entity,
            "Billing_Model__c": "Time and Materials",
            "Contract_Version__c": version,
        },
    ).body["id"]
    psa_amount = amount if psa_amount is None else psa_amount
    erp_amount = amount if erp_amount is None else erp_amount
    seeded = Seeded(opportunity=opportunity, account=account, project="")
    if entity == "us":
        certinia = firm.connector("certinia-us")
        seeded.project = certinia.upsert(
            entity="project",
            key=seeded.project_key,
            fields={"Name": f"Globex {n} rollout", "pse__Account__c": account, "pse__Currency__c": currency},
        ).external_id
        budget_version = psa_version or version
        certinia.upsert(
            entity="budget",
            key=f"B-{opportunity}-v{budget_version}",
            fields={
                "Name": f"Contract budget v{budget_version}",
                "pse__Project__c": seeded.project,
                "pse__Amount__c": psa_amount,
                "pse__Status__c": "Approved",
            },
        )
        netsuite = firm.connector("netsuite-us")
        if customer:
            netsuite.upsert(
                entity="customer",
                key=f"C-{account}",
                fields={
                    "companyName": f"Globex {entity} {n}",
                    "subsidiary": {"id": "3"},
                    "currency": {"id": NS_CURRENCY[currency]},
                    "custentity_tax_code": customer_tax_code or {"US-STANDARD": "US-STD"}.get(tax_profile, "US-EXEMPT"),
                },
            )
            seeded.customer = netsuite.lookup(entity="customer", key=f"C-{account}").external_id
            netsuite.upsert(
                entity="sales_order",
                key=f"SO-{opportunity}",
                fields={
                    "entity": {"id": seeded.customer},
                    "subsidiary": {"id": "3"},
                    "currency": {"id": NS_CURRENCY[currency]},
                    "tranDate": "2026-09-15",
                    "custbody_contract_version": erp_version or version,
                    "item": {
                        "items": [{"item": {"id": "55"}, "quantity": 1, "rate": erp_amount, "amount": erp_amount}]
                    },
                },
            )
    else:
        kantata = firm.connector("kantata-uk")
        seeded.project = kantata.upsert(
            entity="workspaces",
            key=seeded.project_key,
            fields={"title": f"Globex uk {n} rollout", "price": int(round(psa_amount * 100)), "currency": currency},
        ).external_id
        bc = firm.connector("businesscentral-uk")
        if customer:
            seeded.customer = bc.upsert(
                entity="customers",
                key=f"C-{account}",
                fields={"displayName": f"Globex uk {n}", "currencyCode": currency, "taxLiable": True},
            ).external_id
            bc.upsert(entity="projects", key=seeded.project_key, fields={"displayName": f"Globex uk {n} rollout"})
    return seeded


def certinia_batch(
    firm: Any,
    seeded: Seeded,
    *,
    date: str = "2026-10-30",
    items: list[tuple[str, float]] = (("2026-10-23", 4000.0), ("2026-10-30", 2000.0)),
    currency: str = "USD",
    fx_rate: float | None = None,
) -> dict[str, Any]:
    """A released billing event with one timecard item per (work date, amount)."""
    certinia = firm.connector("certinia-us")
    event_fields = {
        "pse__Project__c": seeded.project,
        "pse__Date__c": date,
        "CurrencyIsoCode": currency,
        "pse__Status__c": "Released",
        "pse__Is_Released__c": True,
    }
    if fx_rate is not None:
        event_fields["pscsync_Exchange_Rate__c"] = fx_rate
    event = certinia.send("POST", certinia.api_path("sobjects/pse__Billing_Event__c/"), json=event_fields).body["id"]
    created = []
    for index, (work_date, amount) in enumerate(items):
        item = certinia.send(
            "POST",
            certinia.api_path("sobjects/pse__Billing_Event_Item__c/"),
            json={
                "pse__Billing_Event__c": event,
                "pse__Project__c": seeded.project,
                "pse__Category__c": "Timecard",
                "pse__Object_Id__c": f"a4T{index:015d}",
                "pse__Date__c": work_date,
                "pse__Amount__c": amount,
                "CurrencyIsoCode": currency,
            },
        ).body["id"]
        created.append({"id": item, "date": work_date, "amount": amount})
    batch = {"id": event, "date": date, "items": created, "currency": currency}
    seeded.batches.append(batch)
    return batch


def netsuite_invoice(
    firm: Any,
    seeded: Seeded,
    batch: dict[str, Any],
    *,
    key: str | None = "",
    date: str = "",
    amounts: dict[int, float] | None = None,
    currency: str = "",
    subsidiary: str = "3",
    extra_lines: list[dict[str, Any]] = (),
    posted: bool = True,
    **fields: Any,
) -> str:
    """The invoice project-to-bill writes for `batch` (key None: keyed by hand, no external id),
    approved in NetSuite (posted) unless `posted` is False: it then waits in the approval queue,
    and reconciliation counts no revenue for it."""
    netsuite = firm.connector("netsuite-us")
    lines = [
        {
            "item": {"id": "55"},
            "quantity": 1,
            "rate": (amounts or {}).get(i, item["amount"]),
            "amount": (amounts or {}).get(i, item["amount"]),
            "description": f"Time {item['date']}",
            "custcol_source_ref": item["id"],
        }
        for i, item in enumerate(batch["items"])
    ]
    body = {
        "entity": {"id": seeded.customer},
        "subsidiary": {"id": subsidiary},
        "currency": {"id": NS_CURRENCY[currency or batch["currency"]]},
        "tranDate": date or batch["date"],
        "custbody_psa_batch": batch["id"] if key is not None else "",
        "custbody_project_key": seeded.project_key,
        "item": {"items": lines + list(extra_lines)},
        **({"approvalStatus": {"id": "2"}} if posted else {}),
        **fields,
    }
    if key is None:
        result = netsuite.send("POST", f"{RECORD}/invoice", json=body)
        return result.headers.get("location", "").rstrip("/").rsplit("/", 1)[-1]
    return netsuite.upsert(entity="invoice", key=key or f"I-{batch['id']}", fields=body).external_id


def kantata_batch_and_invoice(
    firm: Any,
    seeded: Seeded,
    *,
    date: str = "2026-10-30",
    minutes: int = 600,
    rate_cents: int = 15000,
    invoice: bool = True,
    bc_amount: float | None = None,
    posted: bool = True,
) -> dict:
    """A Kantata invoice of one approved time entry and, with `invoice`, its Business Central
    invoice, posted unless `posted` is False (a draft: no revenue in the ledger)."""
    kantata = firm.connector("kantata-uk")
    entry = kantata.send(
        "POST",
        f"{KANTATA_API}/time_entries",
        json={
            "time_entry": {
                "workspace_id": seeded.project,
                "date_performed": date,
                "time_in_minutes": minutes,
                "rate_in_cents": rate_cents,
                "approved": True,
                "billable": True,
            }
        },
    ).body
    entry_id = next(iter(entry["time_entries"]))
    created = kantata.send(
        "POST",
        f"{KANTATA_API}/invoices",
        json={"invoice": {"workspace_id": seeded.project, "time_entry_ids": [int(entry_id)], "invoice_date": date}},
    ).body
    invoice_id = next(iter(created["invoices"]))
    amount = minutes / 60 * rate_cents / 100
    if invoice:
        bc = firm.connector("businesscentral-uk")
        written = bc.upsert(
            entity="salesInvoices",
            key=f"I-K{invoice_id}",
            fields={
                "customerNumber": f"C-{seeded.account}",
                "invoiceDate": date,
                "customerPurchaseOrderReference": seeded.project_key,
                "salesInvoiceLines": [
                    {
                        "lineType": "Account",
                        "lineObjectNumber": "40100",
                        "description": f"[TE-{entry_id}] Time {date}",
                        "quantity": 1,
                        "unitPrice": bc_amount if bc_amount is not None else amount,
                    }
                ],
            },
        )
        if posted:
            bc.post_invoice(written.external_id)
    return {"invoice": invoice_id, "entry": entry_id, "amount": amount}
