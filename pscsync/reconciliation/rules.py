"""The three comparisons and the mismatch catalogue (DOMAIN.md §3): pure functions of what the
systems hold (readers.Holdings), so they can be tested and re-run without a vendor.

Each comparison is done in layers — existence, count, amount in transaction currency, tax,
functional amount, period — and every failing layer leaves a Finding with its cause, the records
it names and the (subject, period) buckets it explains. A bucket whose totals differ beyond the
entity's tolerance, or that carries a structural finding (something missing, doubled, in the
wrong entity or currency, or taxed wrongly), becomes a mismatch; its cause is the most specific
finding, "rounding" when the difference is within a cent per line, else "unexplained"."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pscsync.reconciliation.readers import Deal, ErpInvoice, Holdings, PsaBatch, period_of

ZERO = Decimal("0.00")
# ERP stamps may be whole seconds (NetSuite): a change within that second is not "after".
STAMP_GRAIN = dt.timedelta(seconds=1)
CENT = Decimal("0.01")
DEAL_VALUE, BILLED_TIME, REVENUE = "deal_value", "billed_time", "revenue"
COMPARISONS = (DEAL_VALUE, BILLED_TIME, REVENUE)

# The most specific cause first: when several findings touch one bucket, the first one names it.
PRIORITY = (
    "missing_customer",
    "entity_mismatch",
    "currency_mix",
    "duplicate_invoice",
    "amendment_not_synced",
    "credit_not_in_psa",
    "retro_change",
    "late_time",
    "missing_record",
    "tax_code",
    "fx_date",
    "rounding",
    "unexplained",
)
# Findings that are a mismatch whatever the amounts say.
STRUCTURAL = {"missing_customer", "missing_record", "entity_mismatch", "currency_mix", "duplicate_invoice", "tax_code"}
FIXES = {
    "rounding": "accept it as rounding (post a small true-up to the rounding account if the ledger needs one)",
    "fx_date": "none in the billing: the ERP is the book of record for FX; align the PSA's conversion date with "
    "the ERP's rate policy and book the difference as FX variance",
    "amendment_not_synced": "run the deal's contract change so the PSA budget and the ERP contract carry the "
    "latest amendment (or resubmit its contract-change handoff)",
    "late_time": "accept it in the later period and disclose it as late time; accrue approved-but-unbilled time "
    "at month end (reopen the period only with the controller's approval)",
    "duplicate_invoice": "credit (reason: duplicate) or void the extra invoice if unpaid, and tell the customer if "
    "it was sent",
    "missing_customer": "create or link the customer in the ERP (subsidiary, currency, terms, tax registration), "
    "then resubmit the handoff",
    "tax_code": "fix the customer's tax profile or the tax-code mapping; if the invoice was issued, credit and "
    "rebill it",
    "currency_mix": "split the billing batch by currency in the PSA, or add the currency to the ERP customer, "
    "then resubmit",
    "entity_mismatch": "rebook the record in the right subsidiary, or raise an intercompany charge",
    "credit_not_in_psa": "record the credit or write-off in the PSA as an adjustment on the project",
    "retro_change": "raise an adjustment invoice or credit for the change, and lock billed records in the PSA",
    "missing_record": "find the failed or missing handoff in the workbench and resubmit it (or create the record)",
    "unexplained": "investigate: no catalogued cause explains this difference",
}


# The contract's billing terms: how many months after the work (or the PSA's billing run) its
# invoice may post and still be on time. Time and materials is billed monthly in arrears
# (October's hours on November's invoice); a fixed fee milestone is invoiced after it completes,
# in the month after at the latest. Billing on these terms is expected timing, not a mismatch. A
# billing model with no terms here (a retainer billed in advance) allows none.
ARREARS_MONTHS = {"Time and Materials": 1, "Fixed Fee": 1}


def arrears_months(deal: Deal | None) -> int:
    return ARREARS_MONTHS.get(deal.billing_model, 0) if deal else 0


def months_between(earlier: str, later: str) -> int | None:
    """Whole months from one YYYY-MM period to another; None when either is unknown."""
    if not earlier or not later:
        return None
    (y1, m1), (y2, m2) = (map(int, earlier.split("-")), map(int, later.split("-")))
    return (y2 - y1) * 12 + (m2 - m1)


def on_terms(done: str, posted: str, arrears: int) -> bool:
    """The invoice posted in the period the work was done in, or no later than the terms allow."""
    gap = months_between(done, posted)
    return gap is not None and 0 <= gap <= arrears


def compared_period(done: str, invoices: list[ErpInvoice], arrears: int) -> str:
    """The period a PSA amount is compared in: its invoice's posting period when the invoice came
    on terms (so work billed in arrears meets its invoice), else the period the work was done."""
    posted = min((period_of(i.date) for i in invoices if i.date), default="")
    return posted if on_terms(done, posted, arrears) else done


@dataclass(frozen=True)
class Tolerance:
    absolute: Decimal = Decimal("1.00")
    relative: Decimal = Decimal("0.0010")

    def exceeded(self, difference: Decimal, *amounts: Decimal) -> bool:
        largest = max((abs(a) for a in amounts), default=ZERO)
        return abs(difference) > max(self.absolute, self.relative * largest)


@dataclass
class Finding:
    cause: str
    message: str
    buckets: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    amount: Decimal | None = None  # its own difference, when the totals agree (FX, tax)
    records: list[str] = field(default_factory=list)


@dataclass
class Result:
    comparison: str
    subject_key: str
    subject_name: str
    customer_name: str
    period: str
    cause: str
    explanation: str
    currency: str
    amounts: dict[str, str]
    difference: Decimal
    details: dict[str, Any]


@dataclass
class Outcome:
    checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COMPARISONS, 0))
    results: list[Result] = field(default_factory=list)
    # Σ|ERP amount| of every subject checked, per comparison and currency: the denominator of
    # revenue schedule accuracy (1 − Σ|Δ| ÷ Σ|ERP recognised|, DOMAIN.md §2.5).
    erp_total: dict[str, dict[str, Decimal]] = field(default_factory=lambda: {c: {} for c in COMPARISONS})


def _cause_of(findings: list[Finding]) -> str | None:
    causes = {f.cause for f in findings}
    return next((c for c in PRIORITY if c in causes), None)


def _explain(headline: str, cause: str, findings: list[Finding]) -> str:
    said = [f.message for f in findings if f.cause == cause] + [f.message for f in findings if f.cause != cause]
    body = " ".join(dict.fromkeys(said))  # each message once, the deciding one first
    return f"{headline} {body} Usual fix: {FIXES[cause]}.".replace("  ", " ").strip()


# (a) Deal value ---------------------------------------------------------------------------------------
def deal_value(h: Holdings, tolerance: Tolerance, *, erp_name: str, psa_name: str) -> Outcome:
    outcome = Outcome()
    for deal in h.deals.values():
        outcome.checked[DEAL_VALUE] += 1
        findings, amounts, differences = _deal_findings(h, deal, erp_name=erp_name, psa_name=psa_name)
        difference = max(differences, key=abs, default=ZERO)
        beyond = tolerance.exceeded(difference, deal.amount)
        if not beyond and not any(f.cause in STRUCTURAL for f in findings):
            continue
        cause = _cause_of([f for f in findings if f.cause in STRUCTURAL or beyond]) or (
            "rounding" if abs(difference) <= CENT else "unexplained"
        )
        shown = ", ".join(f"{k.upper()} {v}" for k, v in amounts.items())
        headline = (
            f"Deal {deal.name} ({deal.id}, customer {deal.account_name or deal.account_id}): {shown} {deal.currency}."
        )
        details: dict[str, Any] = {"findings": [{"cause": f.cause, "message": f.message} for f in findings]}
        if not h.erp_has_contract_value:
            details["note"] = (
                "Business Central's standard API keeps no contract value (its project has a number and a name only), "
                "so this entity's deal value is compared CRM vs PSA; the ERP project is only checked to exist."
            )
        outcome.results.append(
            Result(
                comparison=DEAL_VALUE,
                subject_key=deal.id,
                subject_name=deal.name,
                customer_name=deal.account_name,
                period="",
                cause=cause,
                explanation=_explain(headline, cause, findings),
                currency=deal.currency,
                amounts=amounts,
                difference=difference,
                details=details,
            )
        )
    return outcome


def _deal_findings(
    h: Holdings, deal: Deal, *, erp_name: str, psa_name: str
) -> tuple[list[Finding], dict[str, str], list[Decimal]]:
    project = h.projects.get(deal.project_key)
    contract = h.contracts.get(deal.id)
    customer = h.customers.get(f"C-{deal.account_id}")
    amounts = {"crm": str(deal.amount)}
    findings: list[Finding] = []
    differences: list[Decimal] = []
    contract_word = "sales order SO-" if h.erp_has_contract_value else "project P-"
    # Existence
    if customer is None and (project is None or contract is None):
        findings.append(
            Finding(
                "missing_customer",
                f"{erp_name} has no customer C-{deal.account_id} for account {deal.account_name}, so the won deal "
                "could not be set up there.",
            )
        )
    # A missing record holds nothing of the deal: the whole deal value is at stake.
    if project is None:
        findings.append(Finding("missing_record", f"{psa_name} has no project {deal.project_key} for this won deal."))
        differences.append(-deal.amount)
    if contract is None:
        findings.append(
            Finding("missing_record", f"{erp_name} has no contract ({contract_word}{deal.id}) for this won deal.")
        )
        differences.append(-deal.amount)
    # Currency and entity
    for system, holder in (("PSA", project), ("ERP", contract)):
        currency = getattr(holder, "currency", "") if holder else ""
        if currency and currency != deal.currency:
            findings.append(
                Finding(
                    "currency_mix",
                    f"the {system} holds the contract in {currency} but the deal is in {deal.currency}.",
                )
            )
    if contract and contract.subsidiary and h.expected_subsidiary and contract.subsidiary != h.expected_subsidiary:
        findings.append(
            Finding(
                "entity_mismatch",
                f"{erp_name} books sales order {contract.key} in subsidiary {contract.subsidiary}, not in this legal "
                f"entity's subsidiary {h.expected_subsidiary}.",
            )
        )
    # Amounts
    if project is not None and project.budget is not None:
        amounts["psa"] = str(project.budget)
        differences.append(project.budget - deal.amount)
    if contract is not None and contract.amount is not None:
        amounts["erp"] = str(contract.amount)
        differences.append(contract.amount - deal.amount)
    stale = []
    if project is not None and project.budget is not None and project.budget != deal.amount:
        if project.budget_version is not None and project.budget_version < deal.version:
            stale.append(f"the PSA budget is at contract version {project.budget_version} ({project.budget})")
        elif project.budget_version is None and deal.version > 1:
            stale.append(f"the PSA project price ({project.budget}) is not the amended value")
    if contract is not None and contract.amount is not None and contract.amount != deal.amount:
        if contract.version is not None and contract.version < deal.version:
            stale.append(f"the ERP sales order is at contract version {contract.version} ({contract.amount})")
        elif (
            contract.modified_on and deal.modified_at and deal.modified_at.date() > contract.modified_on
        ) and deal.version > 1:
            stale.append(f"the ERP sales order ({contract.amount}) was last changed before the amendment")
    if stale:
        findings.append(
            Finding(
                "amendment_not_synced",
                f"The opportunity is at contract version {deal.version} ({deal.amount} {deal.currency}) but "
                + "; ".join(stale)
                + ".",
            )
        )
    return findings, amounts, differences


# (b) and (c) Billed time and revenue -----------------------------------------------------------------
@dataclass
class _Bucket:
    psa: Decimal = ZERO
    erp: Decimal = ZERO
    lines: int = 0
    currency: str = ""
    records: list[str] = field(default_factory=list)


def billing(
    h: Holdings,
    tolerance: Tolerance,
    *,
    erp_name: str,
    psa_name: str,
    entity_currency: str,
    batch_key: Callable[[str], str] = str,
) -> Outcome:
    """Billed time and revenue per (project, period), PSA batches vs the ERP's posted invoices.
    Each mismatch names the batches in it (`details["batches"]`, by `batch_key` of the batch's
    id: the business key its project-to-bill handoff runs under), so a figure that also counts
    batches released and not invoiced can count a batch's money once."""
    outcome = Outcome()
    deals_by_project = {d.project_key: d for d in h.deals.values()}
    names: dict[str, tuple[str, str]] = {}
    buckets: dict[str, dict[tuple[str, str], _Bucket]] = {
        BILLED_TIME: defaultdict(_Bucket),
        REVENUE: defaultdict(_Bucket),
    }
    findings: list[Finding] = []
    paired: dict[str, ErpInvoice] = {}
    invoice_project: dict[str, str] = {}

    by_key: dict[str, list[ErpInvoice]] = defaultdict(list)
    by_batch: dict[str, list[ErpInvoice]] = defaultdict(list)
    for invoice in h.invoices:
        if invoice.key:
            by_key[invoice.key].append(invoice)
        if invoice.batch_id:
            by_batch[invoice.batch_id].append(invoice)
    for batch in h.batches:
        deal = deals_by_project.get(batch.project_key)
        names[batch.project_key] = (
            batch.project_name or (deal.name if deal else ""),
            deal.account_name if deal else "",
        )
        raised = by_key.get(batch.invoice_key, []) + by_batch.get(batch.id, [])
        raised = list({i.id: i for i in raised}.values())
        for invoice in raised:
            paired[invoice.id] = invoice
            invoice_project[invoice.id] = batch.project_key
        # Only what the ERP posted is billed and recognised: a draft, an invoice pending approval,
        # a voided or credited one carries no revenue, so the batch is compared with its posted
        # invoices alone (and in their posting period).
        invoices = [i for i in raised if i.posted]
        unposted = [i for i in raised if not i.posted]
        pk = batch.project_key
        arrears = arrears_months(deal)
        for item in batch.items:
            b = buckets[BILLED_TIME][(pk, compared_period(period_of(item.date), invoices, arrears))]
            b.psa += item.amount
            b.lines += 1
            b.currency = b.currency or batch.currency
            b.records.append(batch_key(batch.id))
        r = buckets[REVENUE][(pk, compared_period(period_of(batch.date), invoices, arrears))]
        r.psa += batch.total
        r.lines += len(batch.items)
        r.currency = r.currency or batch.currency
        r.records.append(batch_key(batch.id))
        findings.extend(
            _batch_findings(h, batch, invoices, deal, unposted=unposted, erp_name=erp_name, psa_name=psa_name)
        )

    posted_pairs = {k: i for k, i in paired.items() if i.posted}
    for invoice in h.invoices:
        if not invoice.posted:
            continue  # not revenue (draft, pending approval, voided, credited): nothing to compare
        pk = invoice_project.get(invoice.id) or invoice.project_key or f"invoice:{invoice.number or invoice.id}"
        invoice_project[invoice.id] = pk
        period = period_of(invoice.date)
        for comparison in (BILLED_TIME, REVENUE):
            b = buckets[comparison][(pk, period)]
            b.erp += invoice.net
            b.lines += len(invoice.lines) if comparison == BILLED_TIME else 0
            b.currency = b.currency or invoice.currency
        if pk not in names:
            deal = deals_by_project.get(pk)
            names[pk] = (deal.name if deal else "", deal.account_name if deal else "")
        if invoice.id not in paired:
            findings.append(_unpaired_finding(h, invoice, pk, posted_pairs, erp_name=erp_name, psa_name=psa_name))

    for comparison in (BILLED_TIME, REVENUE):
        for (pk, period), bucket in sorted(buckets[comparison].items()):
            outcome.checked[comparison] += 1
            totals = outcome.erp_total[comparison]
            currency = bucket.currency or entity_currency
            totals[currency] = totals.get(currency, ZERO) + abs(bucket.erp)
            touching = [f for f in findings if (pk, period) in f.buckets.get(comparison, set())]
            result = _bucket_result(
                comparison,
                pk,
                period,
                bucket,
                touching,
                tolerance,
                names.get(pk, ("", "")),
                entity_currency,
                erp_name=erp_name,
                psa_name=psa_name,
            )
            if result is not None:
                outcome.results.append(result)
    return outcome


def _both(bt: set[tuple[str, str]], rev: set[tuple[str, str]]) -> dict[str, set[tuple[str, str]]]:
    return {BILLED_TIME: bt, REVENUE: rev}


def _batch_findings(
    h: Holdings,
    batch: PsaBatch,
    invoices: list[ErpInvoice],
    deal: Deal | None,
    *,
    unposted: list[ErpInvoice] | None = None,
    erp_name: str,
    psa_name: str,
) -> list[Finding]:
    """What is wrong with one batch against its posted invoices (`invoices`); `unposted` are the
    invoices it raised that the ERP has not posted (or voided), named when none is posted."""
    pk = batch.project_key
    arrears = arrears_months(deal)

    def item_bucket(item: Any) -> tuple[str, str]:
        return (pk, compared_period(period_of(item.date), invoices, arrears))

    item_buckets = {item_bucket(i) for i in batch.items}
    batch_bucket = (pk, compared_period(period_of(batch.date), invoices, arrears))
    invoice_buckets = {(pk, period_of(i.date)) for i in invoices}
    everywhere = _both(item_buckets | invoice_buckets, {batch_bucket} | invoice_buckets)
    what = f"{psa_name} billing batch {batch.name} ({batch.id}, {batch.total} {batch.currency}, dated {batch.date})"
    out: list[Finding] = []
    customer_key = f"C-{deal.account_id}" if deal else ""
    # Existence
    if not invoices:
        if deal is not None and customer_key not in h.customers:
            out.append(
                Finding(
                    "missing_customer",
                    f"{what} has no invoice {batch.invoice_key} in {erp_name} because {erp_name} has no customer "
                    f"{customer_key} for {deal.account_name}.",
                    everywhere,
                )
            )
        elif unposted:
            states = ", ".join(f"{i.label} is {i.state_words}" for i in unposted)
            out.append(
                Finding(
                    "missing_record",
                    f"{what} has no posted invoice in {erp_name}: {states}, so {erp_name} has not billed it yet.",
                    everywhere,
                )
            )
        else:
            out.append(
                Finding("missing_record", f"{what} has no invoice {batch.invoice_key} in {erp_name}.", everywhere)
            )
        return out
    # Count
    if len(invoices) > 1:
        listed = ", ".join(f"{i.label} {i.net}" for i in invoices)
        out.append(
            Finding(
                "duplicate_invoice",
                f"{what} is billed by {len(invoices)} invoices in {erp_name}: {listed}.",
                everywhere,
            )
        )
    for item in batch.items:
        lines = [(inv, line) for inv in invoices for line in inv.lines if line.ref == item.id]
        if len(lines) > 1:
            out.append(
                Finding(
                    "duplicate_invoice",
                    f"{item.kind.lower()} {item.source_id} (item {item.id}, {item.amount}) is billed on {len(lines)} "
                    f"invoice lines ({', '.join(inv.label for inv, _ in lines)}).",
                    everywhere,
                )
            )
    # Currency
    currencies = sorted({i.currency for i in batch.items if i.currency})
    if len(currencies) > 1:
        out.append(Finding("currency_mix", f"{what} mixes currencies ({', '.join(currencies)}).", everywhere))
    for invoice in invoices:
        if invoice.currency and batch.currency and invoice.currency != batch.currency:
            out.append(
                Finding(
                    "currency_mix",
                    f"{invoice.label} is in {invoice.currency} but {what} is in {batch.currency}.",
                    everywhere,
                )
            )
        if invoice.subsidiary and h.expected_subsidiary and invoice.subsidiary != h.expected_subsidiary:
            out.append(
                Finding(
                    "entity_mismatch",
                    f"{invoice.label} for project {pk} is booked in subsidiary {invoice.subsidiary}, not in this "
                    f"legal entity's subsidiary {h.expected_subsidiary}.",
                    everywhere,
                )
            )
    # Amounts per line: retroactive changes and credits
    refs = {item.id for item in batch.items}
    for item in batch.items:
        for invoice in invoices:
            for line in invoice.lines:
                if line.ref != item.id or line.amount == item.amount:
                    continue
                if item.modified_at and invoice.created_at and item.modified_at > invoice.created_at + STAMP_GRAIN:
                    out.append(
                        Finding(
                            "retro_change",
                            f"{item.kind.lower()} {item.source_id} (item {item.id}) was changed in {psa_name} on "
                            f"{item.modified_at:%Y-%m-%d %H:%M} UTC, after {invoice.label} billed it: PSA now "
                            f"{item.amount}, invoiced {line.amount}.",
                            _both({item_bucket(item)}, {batch_bucket}),
                        )
                    )
    for invoice in invoices:
        credits = [line for line in invoice.lines if line.amount < 0 and line.ref not in refs]
        if credits:
            total = sum((line.amount for line in credits), ZERO)
            out.append(
                Finding(
                    "credit_not_in_psa",
                    f"{invoice.label} carries a credit of {total} {invoice.currency} "
                    f"({'; '.join(line.description or 'no description' for line in credits)}) that {psa_name} does "
                    f"not know of.",
                    everywhere,
                )
            )
    # Tax
    profile = deal.tax_profile if deal else ""
    expected = h.tax_codes.get(profile, "") if profile else ""
    customer = h.customers.get(customer_key)
    for invoice in invoices:
        if customer and expected and customer.tax_code != expected:
            out.append(
                Finding(
                    "tax_code",
                    f"customer {customer.key} ({customer.name}) has tax code {customer.tax_code or 'none'} in "
                    f"{erp_name}, but the account's tax profile {profile} maps to {expected}; {invoice.label} "
                    f"carries tax {invoice.tax}.",
                    everywhere,
                    amount=invoice.tax,
                )
            )
        elif profile.upper().endswith("EXEMPT") and invoice.tax != ZERO:
            out.append(
                Finding(
                    "tax_code",
                    f"{invoice.label} charges tax {invoice.tax} {invoice.currency} although the customer is tax "
                    f"exempt ({profile}).",
                    everywhere,
                    amount=invoice.tax,
                )
            )
    # Functional amount
    for invoice in invoices:
        if batch.fx_rate and invoice.fx_rate and batch.fx_rate != invoice.fx_rate and invoice.net == batch.total:
            functional = (invoice.net * invoice.fx_rate - batch.total * batch.fx_rate).quantize(CENT)
            out.append(
                Finding(
                    "fx_date",
                    f"{what} and {invoice.label} agree in {batch.currency}, but the PSA converted at {batch.fx_rate} "
                    f"and {erp_name} at {invoice.fx_rate} (invoice date {invoice.date}): {functional} in the "
                    "functional currency.",
                    _both({(pk, period_of(invoice.date))}, {(pk, period_of(invoice.date))}),
                    amount=functional,
                )
            )
    # Period: later than the billing terms allow (billing in arrears on its terms is on time)
    terms = f"{arrears} month(s) in arrears" if arrears else "billing in the month of the work"
    for invoice in invoices:
        posted = period_of(invoice.date)
        late = sorted(
            {
                period_of(i.date)
                for i in batch.items
                if period_of(i.date) < posted and not on_terms(period_of(i.date), posted, arrears)
            }
        )
        late_items = [i for i in batch.items if period_of(i.date) in late]
        if late_items:
            value = sum((i.amount for i in late_items), ZERO)
            out.append(
                Finding(
                    "late_time",
                    f"{len(late_items)} item(s) worth {value} {batch.currency} were worked in {', '.join(late)} but "
                    f"{invoice.label} posted them in {posted}, later than the contract's terms ({terms}) allow (e.g. "
                    f"{late_items[0].kind.lower()} {late_items[0].source_id} dated {late_items[0].date}).",
                    _both({(pk, p) for p in late} | {(pk, posted)}, set()),
                )
            )
        if period_of(batch.date) and posted and not on_terms(period_of(batch.date), posted, arrears):
            out.append(
                Finding(
                    "late_time",
                    f"{psa_name} billed batch {batch.name} in {period_of(batch.date)} but {invoice.label} is dated "
                    f"{invoice.date}, in {period_of(invoice.date)} (the ERP posted it to a later open period).",
                    _both(set(), {batch_bucket, (pk, period_of(invoice.date))}),
                )
            )
    return out


def _unpaired_finding(
    h: Holdings, invoice: ErpInvoice, pk: str, paired: dict[str, ErpInvoice], *, erp_name: str, psa_name: str
) -> Finding:
    bucket = {(pk, period_of(invoice.date))}
    for other in paired.values():
        if (
            other.customer_id == invoice.customer_id
            and other.net == invoice.net
            and other.date
            and invoice.date
            and abs((other.date - invoice.date).days) <= 3
        ):
            return Finding(
                "duplicate_invoice",
                f"{invoice.label} ({invoice.net} {invoice.currency}, {invoice.date}) repeats {other.label} for the "
                f"same customer, amount and date within 3 days; {psa_name} billed it once.",
                _both(bucket, bucket),
            )
    if invoice.net < 0:
        return Finding(
            "credit_not_in_psa",
            f"{erp_name} holds a credit {invoice.label} of {invoice.net} {invoice.currency} that {psa_name} "
            "does not know of.",
            _both(bucket, bucket),
        )
    return Finding(
        "missing_record",
        f"{invoice.label} ({invoice.net} {invoice.currency}, {invoice.date}) in {erp_name} has no billing batch in "
        f"{psa_name}.",
        _both(bucket, bucket),
    )


def _bucket_result(
    comparison: str,
    pk: str,
    period: str,
    bucket: _Bucket,
    findings: list[Finding],
    tolerance: Tolerance,
    names: tuple[str, str],
    entity_currency: str,
    *,
    erp_name: str,
    psa_name: str,
) -> Result | None:
    difference = bucket.erp - bucket.psa
    beyond = tolerance.exceeded(difference, bucket.psa, bucket.erp)
    structural = [f for f in findings if f.cause in STRUCTURAL]
    own = [f for f in findings if f.amount is not None and tolerance.exceeded(f.amount, bucket.psa, bucket.erp)]
    if not beyond and not structural and not own:
        return None
    deciding = findings if beyond else structural + own
    cause = _cause_of(deciding)
    if cause is None:
        cause = "rounding" if difference != ZERO and abs(difference) <= CENT * max(bucket.lines, 1) else "unexplained"
    if difference == ZERO and own:
        difference = max((f.amount for f in own if f.amount is not None), key=abs)
    if cause == "rounding":
        findings = [
            Finding(
                "rounding",
                f"The difference ({bucket.erp - bucket.psa}) is within one cent per line ({bucket.lines} lines): "
                "the PSA and the ERP round at different levels.",
            ),
            *findings,
        ]
    currency = bucket.currency or entity_currency
    word = "Billed time" if comparison == BILLED_TIME else "Recognised revenue"
    name, customer = names
    headline = (
        f"{word} for project {name or pk} ({pk}"
        + (f", customer {customer}" if customer else "")
        + f") in {period or 'no period'}: {psa_name} {bucket.psa} vs {erp_name} {bucket.erp} {currency}."
    )
    return Result(
        comparison=comparison,
        subject_key=pk,
        subject_name=name,
        customer_name=customer,
        period=period,
        cause=cause,
        explanation=_explain(headline, cause, findings),
        currency=currency,
        amounts={"psa": str(bucket.psa), "erp": str(bucket.erp)},
        difference=difference,
        details={
            "lines": bucket.lines,
            "batches": sorted(set(bucket.records)),
            "findings": [{"cause": f.cause, "message": f.message} for f in findings],
        },
    )
