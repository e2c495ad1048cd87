"""Reconciliation: CRM deal value vs ERP contract vs PSA budget; PSA billed time vs ERP invoiced and
PSA vs ERP recognised revenue, per project and month (docs/reconciliation.md)."""
