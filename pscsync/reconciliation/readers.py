"""What each system holds, read through its connector (real HTTP) in canonical shapes
(connectors/holdings.py, docs/canonical.md): one legal entity's CRM deals, PSA projects and billing
batches, ERP contracts, invoices and customers. The vendor readers live in the connectors; this
module only gathers one entity's three and the mapping tables reconciliation compares against.

A reader either returns everything the system holds or raises (a ConnectorError when the vendor
fails): a partial read would clear mismatches that still exist or invent ones that do not."""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.holdings import (
    Assignment,
    Deal,
    ErpContract,
    ErpCustomer,
    ErpInvoice,
    ErpLine,
    PsaBatch,
    PsaItem,
    PsaProject,
    Unbilled,
    Worked,
    period_of,
)
from connectors.models import Connection
from connectors.registry import connector_for
from pscsync.mappings import mapping_in_force
from pscsync.models import LegalEntity

__all__ = [
    "Assignment",
    "Deal",
    "ErpContract",
    "ErpCustomer",
    "ErpInvoice",
    "ErpLine",
    "Holdings",
    "PsaBatch",
    "PsaItem",
    "PsaProject",
    "Unbilled",
    "Worked",
    "holdings_read",
    "period_of",
]


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


# Mapping tables ------------------------------------------------------------------------------------
def values_of(connection: Connection, entity: str, table: str) -> dict[str, str]:
    try:
        return {
            str(k): str(v)
            for k, v in (mapping_in_force(connection=connection, entity=entity).value_maps or {}).get(table, {}).items()
        }
    except Exception:  # no published mapping: the firm runs without one for this entity
        return {}


# All of one entity ------------------------------------------------------------------------------------
def holdings_read(*, entity: LegalEntity, crm: Connection, psa: Connection, erp: Connection) -> Holdings:
    deals = connector_for(crm).deals_won(entity_code=entity.code, currency=entity.currency)
    psa_found = connector_for(psa).psa_holdings()
    ledger = connector_for(erp)
    tables = {name: values_of(erp, purpose, table) for name, (purpose, table) in ledger.reconcile_value_maps.items()}
    erp_found = ledger.erp_holdings(currency=entity.currency, value_maps=tables)
    return Holdings(
        deals=deals,
        projects=psa_found.projects,
        batches=psa_found.batches,
        contracts=erp_found.contracts,
        invoices=erp_found.invoices,
        customers=erp_found.customers,
        expected_subsidiary=tables.get("subsidiary", {}).get(entity.code, ""),
        tax_codes=tables.get("tax_codes", {}),
        erp_has_contract_value=ledger.keeps_contract_value,
        unbilled=psa_found.unbilled,
        assignments=psa_found.assignments,
        worked=psa_found.worked,
    )
