"""The reconciliation job: per legal entity, read what its CRM, PSA and ERP hold, compare
(rules.py), and keep the Mismatch records in step — new ones opened, seen ones touched, gone ones
cleared. One ReconciliationRun per entity says what was checked, or why the run is incomplete.

A vendor failure while reading makes the entity's run incomplete and changes no mismatch: a
partial picture would clear differences that still exist and invent ones that do not."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

from django.db import transaction

from connectors.canonical import BILLING_BATCH, KEYS, capability_or_none
from connectors.errors import ConnectorError
from connectors.models import Connection
from pscsync import clock
from pscsync.ledger import ledger_record_invoices
from pscsync.models import (
    LegalEntity,
    Mismatch,
    PsaAssignment,
    PsaWorkedHours,
    ReconciliationRun,
    ReconciliationTolerance,
    UnbilledWork,
)
from pscsync.reconciliation import rules
from pscsync.reconciliation.readers import Holdings, holdings_read

logger = logging.getLogger(__name__)


def tolerance_for(entity: LegalEntity) -> rules.Tolerance:
    stored = ReconciliationTolerance.objects.filter(legal_entity=entity).first()
    if stored is None:
        return rules.Tolerance()
    return rules.Tolerance(absolute=stored.absolute, relative=stored.relative)


@dataclass
class _Systems:
    crm: Connection
    psa: Connection
    erp: Connection


def _systems(entity: LegalEntity) -> _Systems:
    from pscsync.flows.routing import systems_for

    found = systems_for(entity)
    return _Systems(crm=found.crm, psa=found.psa, erp=found.erp)


def reconcile(*, entity: str | None = None, period: str = "") -> list[ReconciliationRun]:
    """Reconcile one legal entity (by code) or every entity with systems; one run each."""
    entities = LegalEntity.objects.filter(connections__isnull=False).distinct()  # entities with systems
    if entity:
        entities = LegalEntity.objects.all()
        entities = entities.filter(code__iexact=entity)
        if not entities.exists():
            raise LookupError(f"no legal entity {entity!r}")
    return [entity_reconcile(legal_entity=e, period=period) for e in entities]


def entity_reconcile(*, legal_entity: LegalEntity, period: str = "") -> ReconciliationRun:
    started = time.monotonic()
    run = ReconciliationRun.objects.create(legal_entity=legal_entity, period=period, started_at=clock.now())
    try:
        systems = _systems(legal_entity)
        holdings = holdings_read(entity=legal_entity, crm=systems.crm, psa=systems.psa, erp=systems.erp)
    except (ConnectorError, LookupError, Exception) as exc:  # any failure leaves mismatches as they are
        run.status = ReconciliationRun.Status.INCOMPLETE
        run.error = _why(exc)
        run.finished_at = clock.now()
        run.duration_ms = int((time.monotonic() - started) * 1000)
        run.save(update_fields=["status", "error", "finished_at", "duration_ms"])
        logger.warning("reconciliation of %s incomplete: %s", legal_entity.code, run.error)
        return run
    tolerance = tolerance_for(legal_entity)
    names = {"erp_name": systems.erp.name, "psa_name": systems.psa.name}
    deal = rules.deal_value(holdings, tolerance, **names)
    # A batch is named by the key its project-to-bill handoff runs under (the PSA's own key format).
    found = capability_or_none(systems.psa, BILLING_BATCH)
    batch_key = found.key_format if found else KEYS[BILLING_BATCH]
    billed = rules.billing(
        holdings,
        tolerance,
        entity_currency=legal_entity.currency,
        batch_key=lambda batch: batch_key(batch=batch),
        **names,
    )
    checked = {c: deal.checked[c] + billed.checked[c] for c in rules.COMPARISONS}
    results = deal.results + billed.results
    if period:
        results = [r for r in results if r.comparison == rules.DEAL_VALUE or r.period == period]
    summary = _store(legal_entity, results, checked, period=period)
    for comparison in (rules.BILLED_TIME, rules.REVENUE):
        totals = billed.erp_total[comparison]
        summary[comparison]["erp_total"] = {c: str(v) for c, v in sorted(totals.items())}
    psa_snapshot_store(legal_entity, holdings)  # as of now, whatever period the run compared
    erp_ledger_store(legal_entity, systems.erp, holdings)
    run.status = ReconciliationRun.Status.COMPLETE
    run.summary = summary
    run.finished_at = clock.now()
    run.duration_ms = int((time.monotonic() - started) * 1000)
    run.save(update_fields=["status", "summary", "finished_at", "duration_ms"])
    return run


def _why(exc: BaseException) -> str:
    message = getattr(exc, "message", "") or str(exc) or exc.__class__.__name__
    return f"could not read every system, so no mismatch was changed: {message}"


@transaction.atomic
def _store(entity: LegalEntity, results: list[rules.Result], checked: dict[str, int], *, period: str) -> dict:
    now = clock.now()
    seen: set[int] = set()
    by_cause: dict[str, Counter] = {c: Counter() for c in rules.COMPARISONS}
    for result in results:
        mismatch, created = Mismatch.objects.select_for_update().get_or_create(
            comparison=result.comparison,
            legal_entity=entity,
            subject_key=result.subject_key[:200],
            period=result.period,
            defaults={
                "first_seen_at": now,
                "last_seen_at": now,
                "difference": result.difference,
                "cause": result.cause,
            },
        )
        if mismatch.status == Mismatch.Status.CLEARED:
            mismatch.first_seen_at = now  # a difference back after it cleared is a new one
        mismatch.subject_name = result.subject_name[:200]
        mismatch.customer_name = result.customer_name[:200]
        mismatch.cause = result.cause
        mismatch.explanation = result.explanation
        mismatch.currency = result.currency[:3]
        mismatch.amounts = result.amounts
        mismatch.difference = result.difference
        mismatch.details = result.details
        mismatch.status = Mismatch.Status.OPEN
        mismatch.cleared_at = None
        mismatch.last_seen_at = now
        mismatch.save()
        seen.add(mismatch.pk)
        by_cause[result.comparison][result.cause] += 1
    stale = Mismatch.objects.filter(legal_entity=entity, status=Mismatch.Status.OPEN).exclude(pk__in=seen)
    if period:
        stale = stale.filter(period__in=[period, ""])
    cleared = Counter(stale.values_list("comparison", flat=True))
    stale.update(status=Mismatch.Status.CLEARED, cleared_at=now)
    return {
        c: {
            "checked": checked[c],
            "matched": max(checked[c] - sum(by_cause[c].values()), 0),
            "mismatches": dict(sorted(by_cause[c].items())),
            "cleared": cleared.get(c, 0),
        }
        for c in rules.COMPARISONS
    }


def erp_ledger_store(legal_entity: LegalEntity, erp: Connection, holdings: Holdings) -> None:
    """Store the ERP's invoices as its ledger holds them now (posted state, open balance, payments).
    A connection serving only this entity holds only its invoices, so the read is complete for
    it; one shared by several entities records the invoices of this entity's projects."""
    invoices = [i.ledger for i in holdings.invoices if i.ledger is not None]
    complete = erp.legal_entities.count() <= 1
    if not complete:
        projects = {deal.project_key for deal in holdings.deals.values()}
        invoices = [i for i in invoices if i.project_key in projects]
    ledger_record_invoices(legal_entity=legal_entity, connection=erp, invoices=invoices, complete=complete)


@transaction.atomic
def psa_snapshot_store(legal_entity: LegalEntity, holdings: Holdings) -> None:
    """Replace the entity's unbilled work, assignments and hours worked with what the PSA holds now. Customer
    and service line come from the CRM deal the project was made from (project key P-<opportunity>)."""
    now = clock.now()
    deals = {deal.project_key: deal for deal in holdings.deals.values()}
    rows = []
    for item in holdings.unbilled:
        deal = deals.get(item.project_key)
        rows.append(
            UnbilledWork(
                legal_entity=legal_entity,
                kind=item.kind,
                source_id=item.source_id[:200],
                description=item.description[:200],
                project_key=item.project_key[:200],
                project_name=item.project_name[:200],
                customer_name=(deal.account_name if deal else "")[:200],
                service_line=(deal.service_line if deal else "")[:100],
                work_date=item.work_date,
                amount=item.amount,
                currency=item.currency[:3],
                read_at=now,
            )
        )
    UnbilledWork.objects.filter(legal_entity=legal_entity).delete()
    UnbilledWork.objects.bulk_create(rows)
    PsaAssignment.objects.filter(legal_entity=legal_entity).delete()
    PsaAssignment.objects.bulk_create(
        PsaAssignment(
            legal_entity=legal_entity,
            source_id=a.source_id[:200],
            role=a.role[:100],
            project_key=a.project_key[:200],
            starts_on=a.starts_on,
            ends_on=a.ends_on,
            weekly_hours=a.weekly_hours,
            read_at=now,
        )
        for a in holdings.assignments
    )
    PsaWorkedHours.objects.filter(legal_entity=legal_entity).delete()
    PsaWorkedHours.objects.bulk_create(
        PsaWorkedHours(legal_entity=legal_entity, role=w.role[:100], month=w.month, hours=w.hours, read_at=now)
        for w in holdings.worked
    )
