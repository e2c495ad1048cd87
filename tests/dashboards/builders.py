"""Hand-built handoffs with known business times, for KPI tests, screenshots and the bench."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

from connectors.models import Connection
from pscsync.lifecycle import handoff_opened
from pscsync.models import Attempt, Event, Handoff, LegalEntity, Step

_seq = itertools.count(1)
T0 = dt.datetime(2026, 10, 5, 9, 0, tzinfo=dt.UTC)  # a Monday


def connection(slug: str, entities: list[LegalEntity], kind: str = "crm", vendor: str = "salesforce") -> Connection:
    conn, _ = Connection.objects.get_or_create(
        slug=slug,
        defaults={
            "name": slug.replace("-", " ").title(),
            "kind": kind,
            "vendor": vendor,
            "base_url": "http://127.0.0.1:9/",
        },
    )
    conn.legal_entities.add(*entities)
    return conn


def iso(at: dt.datetime | dt.date) -> str:
    return at.isoformat()


def handoff(
    *,
    flow: str,
    conn: Connection,
    entity: LegalEntity | None,
    key: str | None = None,
    status: str = "succeeded",
    started: dt.datetime = T0,
    finished: dt.datetime | None = None,
    times: dict[str, Any] | None = None,
    amount: str | Decimal | None = "1000.00",
    currency: str = "USD",
    customer: str = "Contoso",
    service_line: str = "Advisory",
    outputs: dict[str, dict[str, Any]] | None = None,
    attempts: list[dict[str, Any]] | None = None,
    error_class: str = "",
) -> Handoff:
    n = next(_seq)
    key = key or f"KEY-{n}"
    event = Event.objects.create(
        connection=conn,
        source_event_id=f"evt-{n}",
        flow=flow,
        business_key=key,
        legal_entity=entity,
        occurred_at=started,
        received_at=started,
        raw_body="{}",
        payload={},
    )
    h = Handoff.objects.create(
        flow=flow,
        business_key=key,
        legal_entity=entity,
        source_connection=conn,
        trigger_event=event,
        status=status,
        business_started_at=started,
        created_at=started,
        finished_at=finished if status in Handoff.TERMINAL else None,
        business_finished_at=finished if status == "succeeded" else None,
        business_times={k: (iso(v) if not isinstance(v, str) else v) for k, v in (times or {}).items()},
        customer_name=customer,
        service_line=service_line,
        amount=Decimal(str(amount)) if amount is not None else None,
        currency=currency,
        last_error_class=error_class,
        last_error_message=f"{error_class} failure" if error_class else "",
    )
    # Told to the listeners (dashboards, workbench) after commit, as intake opens a handoff.
    handoff_opened(h, actor="test", reason="built by a test")
    for pos, (name, output) in enumerate((outputs or {}).items()):
        Step.objects.create(
            handoff=h, name=name, position=pos, status="succeeded", idempotency_key=f"{h.pk}-{name}", output=output
        )
    if attempts:
        step = Step.objects.create(
            handoff=h,
            name="write",
            position=99,
            status="succeeded",
            idempotency_key=f"{h.pk}-w",
            target_connection=conn,
        )
        for i, a in enumerate(attempts, start=1):
            Attempt.objects.create(
                step=step,
                number=i,
                started_at=a.get("at", started),
                outcome=a.get("outcome", "succeeded"),
                duration_ms=a.get("ms", 100),
                http_status=a.get("http"),
                retry_after_seconds=a.get("retry_after"),
            )
    return h
