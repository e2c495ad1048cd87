"""A large firm in PostgreSQL for the page benchmarks (bench/inbox, bench/dashboards).

    .venv/bin/python bench/largefirm.py --handoffs 1000000            # build or reuse the template
    .venv/bin/python bench/largefirm.py --handoffs 1000000 --reload   # rebuild it

Two years of the demo firm's traffic (US: Salesforce + Certinia + NetSuite in USD; UK: Salesforce
+ Kantata + Business Central in GBP) in the shapes the flows write: one trigger event per handoff,
the flow's real steps in order, one attempt per step plus transient retries (about 5 attempts per
handoff), the read steps' documents (deal, billing batch, invoice), the business times and facts
the runner records, cross references for what was written, and, for the handoffs that needed a
person, the workbench's `HandoffException` rows grouped into about 150 causes (5% of handoffs open,
10% resolved earlier). Rows are written with COPY; the dashboard aggregates are then built by the
production code (`dashboards.facts.rollups_rebuild_all`), timed.

The loaded database is kept as a template (`pscsync_bench_large_tpl_<n>`): a benchmark copies it
(`CREATE DATABASE ... TEMPLATE ...`, seconds) instead of loading again. Not a test.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import math
import os
import random
import subprocess
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG = "postgres://postgres@127.0.0.1:5432"
PASSWORD = "bench-password-0123456789"

# Settings for every process of the benchmarks (the bench's own keys; nothing real).
BENCH_ENV = {
    "SECRET_KEY": "bench-only-secret-key-not-for-production-0123456789abcdef",
    "PSCSYNC_CREDENTIALS_KEYS": "b1:" + base64.urlsafe_b64encode(b"b" * 32).decode(),
    "PSCSYNC_SECURE_COOKIES": "false",
    "PSCSYNC_LOG_LEVEL": "WARNING",
    "PSCSYNC_2FA_REQUIRED_ROLES": "none",
    "DJANGO_SETTINGS_MODULE": "pscsync.settings",
}

HISTORY_DAYS = 730
OPEN_SHARE = 0.05  # needs a person now: 50,000 of 1,000,000
RESOLVED_SHARE = 0.10  # needed a person once, fixed since
IN_FLIGHT_SHARE = 0.003  # pending, running or waiting to retry at load time
RETRY_SHARE = 0.10  # a step's first attempt failed transiently and the retry succeeded

FLOW_WEIGHTS = [
    ("quote-to-project", 0.15),
    ("project-to-bill", 0.33),
    ("bill-to-cash", 0.32),
    ("contract-change", 0.05),
    ("pipeline-to-demand", 0.15),
]
# The flows' steps in order and the system each talks to (None: a check, no call).
FLOW_STEPS: dict[str, list[tuple[str, str | None]]] = {
    "quote-to-project": [
        ("read_deal", "crm"),
        ("validate_deal", None),
        ("upsert_customer", "erp"),
        ("upsert_project", "psa"),
        ("upsert_milestones", "psa"),
        ("upsert_budget", "psa"),
        ("upsert_contract", "erp"),
        ("upsert_resource_requests", "psa"),
        ("update_opportunity", "crm"),
    ],
    "project-to-bill": [
        ("read_billing", "psa"),
        ("validate_billing", None),
        ("upsert_invoice", "erp"),
        ("mark_billed_in_psa", "psa"),
    ],
    "bill-to-cash": [("read_invoice", "erp"), ("update_opportunity_billing", "crm"), ("update_psa_billing", "psa")],
    "contract-change": [
        ("read_deal", "crm"),
        ("validate_amendment", None),
        ("upsert_budget", "psa"),
        ("upsert_contract", "erp"),
        ("update_opportunity", "crm"),
    ],
    "pipeline-to-demand": [
        ("read_deal", "crm"),
        ("decide_demand", None),
        ("upsert_estimate", "psa"),
        ("upsert_forecast_demand", "psa"),
    ],
}
SOURCE_SYSTEM = {
    "quote-to-project": "crm",
    "contract-change": "crm",
    "pipeline-to-demand": "crm",
    "project-to-bill": "psa",
    "bill-to-cash": "erp",
}
CONNECTIONS = {
    "us": {"crm": "salesforce", "psa": "certinia-us", "erp": "netsuite-us"},
    "uk": {"crm": "salesforce", "psa": "kantata-uk", "erp": "businesscentral-uk"},
}
VENDOR_LABEL = {
    "salesforce": "Salesforce",
    "certinia-us": "Certinia",
    "netsuite-us": "NetSuite",
    "kantata-uk": "Kantata",
    "businesscentral-uk": "Business Central",
}
SERVICE_LINES = ["Advisory", "Implementation", "Managed Services", "Training"]
ROLES = ["Consultant", "Senior Consultant", "Architect", "Project Manager", "Developer"]
WORDS_A = ["North", "Blue", "Cedar", "Summit", "Harbor", "Silver", "Granite", "Maple", "Pioneer", "Bright", "Crown"]
WORDS_B = ["Health", "Logistics", "Energy", "Retail", "Foods", "Capital", "Systems", "Media", "Labs", "Works"]


def _customers(rnd: random.Random, entity: str, n: int) -> list[str]:
    suffix = "Inc." if entity == "us" else "Ltd"
    return [f"{rnd.choice(WORDS_A)} {rnd.choice(WORDS_B)} {i:04d} {suffix}" for i in range(n)]


# Causes: about 150 distinct ways a handoff needs a person, as the flows word them.
def cause_catalogue() -> list[tuple[str, str, str, str]]:
    """(flow, step, error class, message with a variable part) for every cause the load uses."""
    out: list[tuple[str, str, str, str]] = []
    for fld in (
        "tax profile",
        "billing country",
        "legal entity",
        "service line",
        "billing model",
        "contract start",
        "contract end",
        "currency",
        "PO number",
        "payment terms",
        "account hierarchy",
        "billing contact",
    ):
        out.append(
            (
                "quote-to-project",
                "validate_deal",
                "validation",
                f"opportunity {{id}} has no {fld} — fix: set the {fld} on the opportunity or account, then resubmit",
            )
        )
    for msg in (
        "billing batch {id} mixes currencies; an invoice has one currency — fix: split the batch by currency",
        "billing batch {id} belongs to a project with no account — fix: link the project to its account",
        "customer {id} does not exist in the ERP yet — fix: resubmit the deal's quote-to-project handoff",
        "billing batch {id} has no items — fix: release the batch again in the PSA",
        "billing batch {id} names a project the ERP has no contract for — fix: resubmit the deal",
        "billing batch {id} has a milestone with no amount — fix: set the milestone amount",
    ):
        out.append(("project-to-bill", "validate_billing", "validation", msg))
    for msg in (
        "amendment {id} lowers the budget below what is already billed — fix: raise the amendment value",
        "amendment {id} has no contract version — fix: set the contract version on the opportunity",
    ):
        out.append(("contract-change", "validate_amendment", "validation", msg))
    maps = ("service line", "country", "legal entity", "billing model", "payment terms", "role", "department")
    for flow, steps in FLOW_STEPS.items():
        for step, system in steps:
            if system is None or step.startswith("read_"):
                continue
            for m in maps[: 3 if flow != "quote-to-project" else 7]:
                message = f"no value in the {m} value map for {{id}} — fix: add it in the mapping"
                out.append((flow, step, "mapping", message))
            out.append((flow, step, "rejected", "the target refused the record {id} (400): required field is missing"))
            out.append(
                (flow, step, "transient", "no answer within 30 s from the target for {id} after 5 attempts (timeout)")
            )
    return out


def signature_of(flow: str, step: str, error_class: str, message: str) -> tuple[str, str]:
    """The cause's signature as remediation.services.cause_key computes it."""
    from remediation.selectors import cause_signature

    text = cause_signature(message)
    raw = "\x1f".join((flow, step, error_class, text))
    return hashlib.sha256(raw.encode()).hexdigest(), text


# COPY text format ---------------------------------------------------------------------------------
def _t(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    s = str(value)
    if "\\" in s or "\t" in s or "\n" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return s


class Copier:
    """Buffered COPY into one table: rows as tuples, flushed in chunks."""

    def __init__(self, cursor: Any, table: str, columns: list[str]) -> None:
        self.cursor, self.table, self.columns = cursor, table, columns
        self.buf = io.StringIO()
        self.rows = 0
        self.pending = 0

    def add(self, *values: Any) -> None:
        self.buf.write("\t".join(_t(v) for v in values))
        self.buf.write("\n")
        self.rows += 1
        self.pending += 1
        if self.pending >= 50000:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        cols = ", ".join(f'"{c}"' for c in self.columns)
        with self.cursor.copy(f'COPY "{self.table}" ({cols}) FROM STDIN') as copy:
            copy.write(self.buf.getvalue())
        self.buf = io.StringIO()
        self.pending = 0


@dataclass
class LoadStats:
    handoffs: int = 0
    steps: int = 0
    attempts: int = 0
    events: int = 0
    xrefs: int = 0
    open_exceptions: int = 0
    open_in_open_causes: int = 0
    in_progress_exceptions: int = 0
    resolved_exceptions: int = 0
    causes: int = 0
    ledger_invoices: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    seconds_copy: float = 0.0
    seconds_rollups: float = 0.0
    rollups: dict[str, int] = field(default_factory=dict)


def firm_seed() -> dict[str, Any]:
    """Legal entities, the five connections with their shipped mappings, the bench's users, FX."""
    from connectors.models import Connection
    from dashboards.models import FxRate
    from demo.firm import firm_connections_save
    from pscsync.models import LegalEntity
    from pscsync.services import user_provision

    us, _ = LegalEntity.objects.update_or_create(
        code="us", defaults={"name": "Northwind Consulting Inc.", "currency": "USD", "country": "US"}
    )
    uk, _ = LegalEntity.objects.update_or_create(
        code="uk", defaults={"name": "Northwind Consulting Ltd.", "currency": "GBP", "country": "GB"}
    )
    urls = {name: f"http://127.0.0.1:9/{name}" for name in ("salesforce", "kantata", "netsuite", "businesscentral")}
    firm_connections_save(us=us, uk=uk, sandbox_urls=urls)
    for username, role in (("viewer", "viewer"), ("operator", "operator"), ("admin", "admin")):
        user_provision(username=username, password=PASSWORD, role=role, all_entities=True)
    user_provision(username="operator-uk", password=PASSWORD, role="operator", entities=[uk])
    today = dt.date.today()
    month = dt.date(today.year - 3, today.month, 1)
    rates = []
    while month <= today:
        wobble = Decimal(str(round(0.04 * math.sin(month.toordinal() / 90), 4)))
        for kind, base in (("average", Decimal("1.27")), ("closing", Decimal("1.26"))):
            rates.append(FxRate(currency="GBP", month=month.strftime("%Y-%m"), kind=kind, rate=base + wobble))
        month = (month + dt.timedelta(days=32)).replace(day=1)
    FxRate.objects.bulk_create(rates, ignore_conflicts=True)
    return {
        "entities": {"us": us.pk, "uk": uk.pk},
        "connections": dict(Connection.objects.values_list("slug", "pk")),
        "currency": {"us": "USD", "uk": "GBP"},
    }


def _lognormal_hours(rnd: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rnd.gauss(0, sigma))


def load(n: int, *, seed: int = 11, now: dt.datetime | None = None, log: Any = print) -> LoadStats:
    """Fill the (migrated, empty) default database with a firm of `n` handoffs."""
    from django.db import connection as db

    stats = LoadStats()
    t0 = time.monotonic()
    firm = firm_seed()
    rnd = random.Random(seed)
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    span = dt.timedelta(days=HISTORY_DAYS)
    begin = now - span
    ents, conns = firm["entities"], firm["connections"]
    customers = {"us": _customers(rnd, "us", 4000), "uk": _customers(rnd, "uk", 2500)}
    flows = [f for f, _ in FLOW_WEIGHTS]
    cum = []
    acc = 0.0
    for _, w in FLOW_WEIGHTS:
        acc += w
        cum.append(acc)

    # Which handoffs need a person now: mostly recent (an exponential backlog, mean 45 days), so the
    # workbench's ages look like a real backlog rather than two years of neglect.
    n_open = int(n * OPEN_SHARE)
    open_ids: set[int] = set()
    while len(open_ids) < n_open:
        age_days = min(rnd.expovariate(1 / 45), HISTORY_DAYS - 1)
        open_ids.add(max(1, n - int(age_days / HISTORY_DAYS * n)))
    in_flight_ids = {n - i for i in range(int(n * IN_FLIGHT_SHARE)) if (n - i) not in open_ids}

    catalogue = cause_catalogue()
    causes_by_flow: dict[str, list[int]] = {}
    for i, (flow, *_rest) in enumerate(catalogue):
        causes_by_flow.setdefault(flow, []).append(i)
    # Zipf-like weights: a few causes hold most of the backlog.
    cause_weight = [1 / (1 + r) ** 1.1 for r in range(len(catalogue))]
    rnd.shuffle(cause_weight)

    def pick_cause(flow: str) -> int:
        ids = causes_by_flow[flow]
        return rnd.choices(ids, weights=[cause_weight[i] for i in ids])[0]

    cause_rows: dict[int, dict[str, Any]] = {}

    history_partitions(begin, now)
    cursor = db.connection.cursor()
    handoffs = Copier(
        cursor,
        "pscsync_handoff",
        [
            "id",
            "flow",
            "business_key",
            "legal_entity_id",
            "source_connection_id",
            "trigger_event_id",
            "payload",
            "status",
            "business_started_at",
            "created_at",
            "started_at",
            "finished_at",
            "business_finished_at",
            "attempt_count",
            "next_attempt_at",
            "dispatched_at",
            "lease_owner",
            "lease_expires_at",
            "worker_crashes",
            "superseded_count",
            "last_error_class",
            "last_error_message",
            "mapping_version",
            "business_times",
            "customer_name",
            "service_line",
            "amount",
            "currency",
            "traceparent",
            "trace_id",
            "attempts_flagged",
            "source_occurred_at",
            "source_sequence",
            "source_changed_at",
        ],
    )
    # The dedupe key intake writes with each event (pscsync.models.EventKey).
    keys = Copier(cursor, "pscsync_eventkey", ["id", "connection_id", "source_event_id", "event_id", "received_at"])
    events = Copier(
        cursor,
        "pscsync_event",
        [
            "id",
            "connection_id",
            "source_event_id",
            "event_type",
            "flow",
            "business_key",
            "legal_entity_id",
            "occurred_at",
            "source_sequence",
            "received_at",
            "headers",
            "raw_body",
            "payload",
            "status",
            "handoff_id",
            "traceparent",
        ],
    )
    steps = Copier(
        cursor,
        "pscsync_step",
        [
            "id",
            "handoff_id",
            "name",
            "position",
            "status",
            "idempotency_key",
            "target_connection_id",
            "external_id",
            "output",
            "finished_at",
        ],
    )
    attempts = Copier(
        cursor,
        "pscsync_attempt",
        [
            "step_id",
            "number",
            "outcome",
            "started_at",
            "duration_ms",
            "request",
            "response",
            "http_status",
            "error_class",
            "error_message",
            "external_id",
            "retry_after_seconds",
            "worker",
        ],
    )
    xrefs = Copier(
        cursor,
        "pscsync_crossreference",
        [
            "entity_type",
            "canonical_id",
            "connection_id",
            "external_id",
            "legal_entity_id",
            "handoff_id",
            "created_at",
            "updated_at",
        ],
    )
    items = Copier(
        cursor,
        "remediation_handoffexception",
        [
            "handoff_id",
            "cause_id",
            "status",
            "flow",
            "step_name",
            "error_class",
            "legal_entity_id",
            "connection_id",
            "customer_name",
            "amount",
            "currency",
            "identifiers",
            "search_text",
            "opened_at",
            "last_failed_at",
            "resolved_at",
            "resolution",
            "failures",
            "business_started_at",
        ],
    )
    deals: list[tuple[str, str, str, str, Decimal]] = []  # (key, entity, customer, service line, value)
    invoices: deque[tuple[int, str, str, str, Decimal, dt.datetime, str]] = deque()  # created, not posted
    posted: deque[tuple[int, str, str, str, Decimal, dt.datetime, str]] = deque()  # posted, not paid
    open_keys: set[tuple[str, str]] = set()
    # The ERP's ledger of every invoice pscsync raised: inv_id -> [entity, customer, amount,
    # currency, batch key, raised at, posted on, paid on] (written by _ledger after the loop).
    ledger: dict[int, list[Any]] = {}
    step_id = 0
    deal_seq = 0
    invoice_seq = 0
    batch_seq = 0
    seconds_per = span.total_seconds() / n
    for hid in range(1, n + 1):
        created = begin + dt.timedelta(seconds=hid * seconds_per + rnd.random() * seconds_per)
        r = rnd.random()
        flow = flows[next(i for i, c in enumerate(cum) if r <= c)]
        if flow in ("contract-change", "pipeline-to-demand") and len(deals) < 10:
            flow = "quote-to-project"
        if flow == "bill-to-cash" and not invoices and not posted and rnd.random() < 0.5:
            flow = "project-to-bill"
        status = "succeeded"
        if hid in open_ids:
            status = "needs_attention"
        elif hid in in_flight_ids:
            status = rnd.choice(["pending", "running", "waiting_retry"])
        elif rnd.random() < 0.01:
            status = rnd.choice(["resolved", "cancelled"])
        had_exception = status in ("resolved", "cancelled") or (status == "succeeded" and rnd.random() < RESOLVED_SHARE)
        if status == "waiting_retry" and rnd.random() < 0.5:
            had_exception = True  # resubmitted from the workbench, retrying now: "in progress"
        times: dict[str, str] = {}
        extra_outputs: dict[str, Any] = {}
        # Business content per flow, in the shapes the flows record (pscsync/flows/*.py).
        if flow in ("quote-to-project",):
            entity = "us" if rnd.random() < 0.6 else "uk"
            deal_seq += 1
            key = f"006{deal_seq:012d}"
            customer = customers[entity][int(len(customers[entity]) * rnd.random() ** 2)]
            line = rnd.choice(SERVICE_LINES)
            amount = Decimal(rnd.randrange(10, 1000) * 500)
            business_start = created - dt.timedelta(minutes=rnd.randint(1, 30))
            lat = _lognormal_hours(rnd, 5, 1.2)
            times["deal_closed"] = business_start.isoformat()
            if status == "succeeded":
                times["project_activated"] = (business_start + dt.timedelta(hours=lat)).isoformat()
            deals.append((key, entity, customer, line, amount))
            deal_doc = _deal_doc(rnd, key, entity, customer, line, amount, business_start, won=True)
            extra_outputs["read_deal"] = {"deal": deal_doc, "account": {"name": customer}}
        elif flow in ("contract-change", "pipeline-to-demand"):
            key, entity, customer, line, amount = deals[min(len(deals) - 1, int(len(deals) * (1 - rnd.random() ** 3)))]
            business_start = created - dt.timedelta(minutes=rnd.randint(1, 20))
            won = flow == "contract-change"
            if flow == "contract-change":
                amount = (amount * Decimal(str(round(rnd.uniform(1.02, 1.3), 2)))).quantize(Decimal("1"))
            deal_doc = _deal_doc(rnd, key, entity, customer, line, amount, business_start, won=won)
            extra_outputs["read_deal"] = {"deal": deal_doc, "account": {"name": customer}}
        elif flow == "project-to-bill":
            entity = "us" if rnd.random() < 0.6 else "uk"
            batch_seq += 1
            key = f"a1B{batch_seq:012d}" if entity == "us" else f"kantata-invoice:{4000000 + batch_seq}"
            if deals:
                _k, entity, customer, line, _v = deals[min(len(deals) - 1, int(len(deals) * (1 - rnd.random() ** 2)))]
                key = f"a1B{batch_seq:012d}" if entity == "us" else f"kantata-invoice:{4000000 + batch_seq}"
            else:
                customer = customers[entity][0]
                line = SERVICE_LINES[0]
            amount = Decimal(rnd.randrange(100, 8000) * 10)
            business_start = created - dt.timedelta(minutes=rnd.randint(1, 60))
            approved = business_start - dt.timedelta(days=rnd.choice([1, 2, 3, 5, 8, 13]), hours=rnd.randint(0, 9))
            times["billing_released"] = business_start.date().isoformat()
            times["time_approved"] = approved.date().isoformat()
            if status == "succeeded":
                inv_at = business_start + dt.timedelta(hours=_lognormal_hours(rnd, 3, 1.0))
                times["invoice_created"] = inv_at.isoformat()
                invoice_seq += 1
                cur = "USD" if entity == "us" else "GBP"
                invoices.append((invoice_seq, entity, customer, line, amount, inv_at, cur))
                ledger[invoice_seq] = [entity, customer, amount, cur, key, inv_at, None, None]
            extra_outputs["read_billing"] = {
                "id": key,
                "invoice_key": f"I-{key}",
                "date": business_start.date().isoformat(),
                "currency": firm["currency"][entity],
                "customer_name": customer,
                "items": [{"kind": "time", "amount": str(amount), "date": approved.date().isoformat()}],
                "total": str(amount),
            }
        else:  # bill-to-cash: an invoice posted, or later the payment that clears it
            # Each invoice is posted once, and some posted ones are later paid once.
            if posted and (rnd.random() < 0.45 or len(posted) > 20000 or not invoices):
                inv_id, entity, customer, line, amount, posted_at, cur = posted.popleft()
                paid = True
            elif invoices:
                invoice = invoices.popleft()
                posted.append(invoice)
                inv_id, entity, customer, line, amount, posted_at, cur = invoice
                paid = False
            else:
                entity = "us"
                invoice_seq += 1
                inv_id, customer, line, amount, posted_at, cur = (
                    invoice_seq,
                    customers["us"][0],
                    SERVICE_LINES[0],
                    Decimal("1000"),
                    created,
                    "USD",
                )
                ledger[inv_id] = ["us", customer, amount, cur, "", created, None, None]
                paid = False
            posted_at = min(posted_at, created)
            if entity == "us":
                key = f"payment:{9000000 + hid}" if paid else f"invoice:{inv_id}"
            else:
                key = f"bc-payment:{hid:012d}" if paid else f"bc-invoice:{inv_id:012d}"
            times["invoice_posted"] = posted_at.date().isoformat()
            business_start = created - dt.timedelta(minutes=rnd.randint(1, 20))
            if paid:
                times["payment_applied"] = business_start.date().isoformat()
                ledger[inv_id][7] = business_start.date()
            else:
                ledger[inv_id][6] = posted_at.date()
            extra_outputs["read_invoice"] = {
                "id": str(inv_id),
                "invoice": {
                    "id": str(inv_id),
                    "number": f"INV{inv_id:08d}",
                    "date": posted_at.date().isoformat(),
                    "posted": True,
                    "total": str(amount),
                    "remaining": "0.00" if paid else str(amount),
                    "currency": cur,
                },
                "project": {"status": "Paid" if paid else "Invoice posted", "invoiced": str(amount)},
            }
        if status in Handoff_OPEN and (flow, key) in open_keys:
            status = "succeeded"  # one open handoff per business key (the engine's constraint)
        if status in Handoff_OPEN:
            open_keys.add((flow, key))
        currency = firm["currency"][entity]
        source = conns[CONNECTIONS[entity][SOURCE_SYSTEM[flow]]]
        started_at = created + dt.timedelta(seconds=rnd.uniform(0.05, 2))
        run_seconds = rnd.uniform(0.5, 6)
        finished_at = started_at + dt.timedelta(seconds=run_seconds)
        business_finished = None
        if status == "succeeded":
            end_text = times.get("project_activated") or times.get("invoice_created")
            business_finished = dt.datetime.fromisoformat(end_text) if end_text else finished_at
        flow_steps = FLOW_STEPS[flow]
        # How far the run got: a failing step for exceptions, a step in flight for running ones.
        fail_at = None
        cause_id = None
        if status == "needs_attention" or had_exception:
            cause_id = pick_cause(flow)
            cflow, cstep, cclass, cmsg = catalogue[cause_id]
            fail_at = next(i for i, (s, _) in enumerate(flow_steps) if s == cstep)
        error_class = error_message = ""
        if status == "needs_attention":
            error_class = catalogue[cause_id][2]
            error_message = f"{catalogue[cause_id][1]}: " + catalogue[cause_id][3].format(id=_variable(rnd, key))
        payload = {"id": key, "flow": flow, "changed_at": business_start.isoformat()}
        handoffs.add(
            hid,
            flow,
            key,
            ents[entity],
            source,
            hid,
            payload,
            status,
            business_start,
            created,
            started_at if status != "pending" else None,
            finished_at if status in ("succeeded", "resolved", "cancelled") else None,
            business_finished,
            5 if error_class == "transient" else (1 if status == "waiting_retry" else 0),
            created + dt.timedelta(minutes=5) if status == "waiting_retry" else None,
            created if status in ("pending", "running") else None,
            "celery@bench" if status == "running" else "",
            now + dt.timedelta(minutes=5) if status == "running" else None,
            0,
            0,
            error_class,
            error_message,
            "v1",
            times,
            customer,
            line,
            amount,
            currency,
            "",  # no trace: the load is not a traced intake (ops.tracing)
            "",
            False,  # kept on the handoff only when its attempts are archived (pscsync.archive)
            business_start,  # its trigger event's source position and change time, copied
            hid,
            business_start,
        )
        stats.by_status[status] = stats.by_status.get(status, 0) + 1
        events.add(
            hid,
            source,
            f"evt-{hid}",
            _event_type(flow, key),
            flow,
            key,
            ents[entity],
            business_start,
            hid,
            created,
            {"content-type": "application/json"},
            json.dumps(payload, separators=(",", ":")),
            payload,
            "accepted",
            hid,
            "",
        )
        keys.add(hid, source, f"evt-{hid}", hid, created)
        # Steps and attempts.
        clock_at = started_at
        if status == "pending":
            last_done = -1
        elif status in ("running", "waiting_retry"):
            last_done = rnd.randrange(0, len(flow_steps) - 1)
        elif status == "needs_attention":
            last_done = fail_at - 1
        elif status in ("resolved", "cancelled"):
            last_done = fail_at - 1
        else:
            last_done = len(flow_steps) - 1
        for pos, (sname, system) in enumerate(flow_steps):
            step_id += 1
            target = conns[CONNECTIONS[entity][system]] if system else None
            ikey = f"{sname}:{key}" if system is None or sname.startswith("read_") else _write_key(sname, key)
            if pos <= last_done:
                sstatus = "succeeded"
            elif pos == last_done + 1 and status in ("needs_attention", "resolved", "cancelled"):
                sstatus = "failed"
            elif pos == last_done + 1 and status in ("running",):
                sstatus = "in_flight"
            else:
                sstatus = "pending"
            if sstatus == "pending" and pos > last_done + 1:
                ikey = ""  # keys are computed when a step is first begun
            output: dict[str, Any] = {}
            external = ""
            if sstatus == "succeeded":
                output = extra_outputs.get(sname) or ({} if system is None else {"id": _ext_id(system, hid, pos)})
                external = "" if system is None or sname.startswith("read_") else _ext_id(system, hid, pos)
            step_finished = clock_at + dt.timedelta(milliseconds=300) if sstatus == "succeeded" else None
            steps.add(step_id, hid, sname, pos, sstatus, ikey, target, external, output, step_finished)
            if sstatus == "pending" and not (pos == last_done + 1 and status == "waiting_retry"):
                continue
            tries: list[tuple[str, int | None, str, str]] = []
            if pos == fail_at and (status in ("needs_attention", "resolved", "cancelled") or had_exception):
                cclass = catalogue[cause_id][2]
                msg = catalogue[cause_id][3].format(id=_variable(rnd, key))
                if cclass == "transient":
                    tries += [("transient", 504, "timeout", msg)] * (5 if status == "needs_attention" else 2)
                else:
                    tries.append((cclass, 400 if cclass == "rejected" else None, cclass, msg))
                if sstatus == "succeeded":
                    tries.append(("succeeded", 200, "", ""))
            elif sstatus == "succeeded":
                if system and rnd.random() < RETRY_SHARE:
                    code = rnd.choice([429, 503, 504])
                    tries.append(("transient", code, "rate_limited" if code == 429 else "server_error", f"{code}"))
                tries.append(("succeeded", 200 if system else None, "", ""))
            elif sstatus == "in_flight":
                tries.append(("in_flight", None, "", ""))
            elif status == "waiting_retry":
                tries.append(("transient", 503, "server_error", "503 Service Unavailable"))
            for number, (outcome, http, eclass, emsg) in enumerate(tries, start=1):
                ms = None if outcome == "in_flight" else int(_lognormal_hours(rnd, 140 if system else 3, 0.8))
                attempts.add(
                    step_id,
                    number,
                    outcome,
                    clock_at,
                    ms,
                    {"operation": "check" if system is None else "upsert", "step": sname, "key": ikey},
                    {} if outcome == "in_flight" else {"status": http, "id": external} if system else {"ok": True},
                    http,
                    eclass,
                    emsg,
                    external if outcome == "succeeded" else "",
                    (rnd.choice([10, 20, 60]) if http == 429 else None),
                    "celery@bench",
                )
                clock_at += dt.timedelta(milliseconds=(ms or 0) + 20)
            if sstatus == "succeeded" and system and not sname.startswith("read_") and sname.startswith("upsert_"):
                if flow == "quote-to-project" and sname in ("upsert_project", "upsert_contract", "upsert_customer"):
                    canonical = f"C-{customer}" if sname == "upsert_customer" else key
                    if sname != "upsert_customer" or (customer, target) not in _seen_customers:
                        _seen_customers.add((customer, target))
                        xrefs.add(
                            sname.removeprefix("upsert_"),
                            canonical,
                            target,
                            external,
                            ents[entity],
                            hid,
                            clock_at,
                            clock_at,
                        )
                elif flow == "project-to-bill" and sname == "upsert_invoice":
                    xrefs.add("invoice", f"I-{key}", target, external, ents[entity], hid, clock_at, clock_at)
        # The workbench's record of it, as exception_sync writes it.
        if cause_id is not None:
            cflow, cstep, cclass, cmsg = catalogue[cause_id]
            row = cause_rows.setdefault(cause_id, {"first": created, "last": created, "n": 0, "open": 0, "prog": 0})
            row["last"] = created
            row["n"] += 1
            if status == "needs_attention":
                istatus, resolved_at, resolution = "open", None, ""
                row["open"] += 1
            elif status == "waiting_retry":
                istatus, resolved_at, resolution = "in_progress", None, ""
                row["prog"] += 1
            else:
                istatus, resolved_at, resolution = "resolved", finished_at + dt.timedelta(hours=2), status
            idents = _identifiers(flow, key)
            fmsg = catalogue[cause_id][3].format(id=_variable(rnd, key))
            search = " ".join([key, customer, *idents.values(), _write_key(cstep, key), fmsg]).lower()[:4000]
            target = conns[CONNECTIONS[entity][flow_steps[fail_at][1]]] if flow_steps[fail_at][1] else source
            items.add(
                hid,
                cause_id + 1,
                istatus,
                flow,
                cstep,
                cclass,
                ents[entity],
                target,
                customer,
                amount,
                currency,
                idents,
                search,
                created + dt.timedelta(seconds=10),
                created + dt.timedelta(seconds=10),
                resolved_at,
                resolution,
                1,
                business_start,
            )
        if hid % 100000 == 0:
            log(f"  {hid:,} handoffs generated ({time.monotonic() - t0:.0f} s)")
    # Causes first would need their counts; they are written after, so items reference ids that
    # exist only at commit: the FK is deferred (Django's constraints are DEFERRABLE INITIALLY DEFERRED).
    causes = Copier(
        cursor,
        "remediation_exceptioncause",
        [
            "id",
            "signature",
            "flow",
            "step_name",
            "error_class",
            "message",
            "status",
            "archived_until",
            "archived_until_occurrences",
            "occurrences",
            "first_seen_at",
            "last_seen_at",
            "resolved_at",
            "runbook_meaning",
            "runbook_cause",
            "runbook_action",
            "runbook_link",
            "title",
        ],
    )
    with_open = sorted(i for i, r in cause_rows.items() if r["open"])
    regressed = set(with_open[3:6])
    archived = set(with_open[7:10])
    for cid, row in sorted(cause_rows.items()):
        flow, step, cclass, msg = catalogue[cid]
        sig, text = signature_of(flow, step, cclass, msg.format(id=f"{cid:015d}"))
        if row["open"]:
            cstatus = "regressed" if cid in regressed else ("archived" if cid in archived else "open")
        elif row["prog"]:
            cstatus = "in_progress"
        else:
            cstatus = "resolved"
        if cstatus == "open":
            stats.open_in_open_causes += row["open"]
        causes.add(
            cid + 1,
            sig,
            flow,
            step,
            cclass,
            text[:300],
            cstatus,
            now + dt.timedelta(days=30) if cstatus == "archived" else None,
            None,
            row["n"],
            row["first"],
            row["last"],
            row["last"] if cstatus == "resolved" else None,
            "",
            "",
            "",
            "",
            text,  # the title: the latest occurrence's message in full
        )
        stats.open_exceptions += row["open"]
        stats.in_progress_exceptions += row["prog"]
        stats.resolved_exceptions += row["n"] - row["open"] - row["prog"]
    for c in (handoffs, events, keys, steps, attempts, xrefs, causes, items):
        c.flush()
    stats.handoffs, stats.steps, stats.attempts = handoffs.rows, steps.rows, attempts.rows
    stats.events, stats.xrefs, stats.causes = events.rows, xrefs.rows, causes.rows
    for table in (
        "pscsync_handoff",
        "pscsync_event",
        "pscsync_eventkey",
        "pscsync_step",
        "pscsync_attempt",
        "remediation_exceptioncause",
        "remediation_handoffexception",
        "pscsync_crossreference",
    ):
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")  # noqa: S608
    _mismatches(rnd, ents, deals, now)
    stats.ledger_invoices = _ledger(cursor, rnd, firm, ledger, now)
    audit_backfill(cursor)
    cursor.execute("ANALYZE")
    _seen_customers.clear()
    cursor.close()
    stats.seconds_copy = time.monotonic() - t0
    log(f"  rows written in {stats.seconds_copy:.0f} s")
    return stats


def _ledger(
    cursor: Any, rnd: random.Random, firm: dict[str, Any], ledger: dict[int, list[Any]], now: dt.datetime
) -> int:
    """The ERPs' ledgers as pscsync.ledger stores them (ErpInvoice, InvoiceStatusChange,
    PaymentApplication), one invoice per invoice raised. The bill-to-cash handoffs above post
    and pay only part of them (one posting or payment handoff each); the ERP posts the rest a
    day or three after it was raised and customers pay 20 to 75 days later, so that the ledger
    holds what a firm this size holds: two years of paid invoices, about two months of open
    receivables (some partly paid), and the last fortnight's drafts and pending approvals."""
    today = now.date()
    invoices = Copier(
        cursor,
        "pscsync_erpinvoice",
        [
            "id", "legal_entity_id", "connection_id", "vendor_id", "number", "key", "customer_id",
            "customer_name", "project_key", "batch_key", "currency", "total", "tax", "open_balance",
            "status", "source_status", "invoice_date", "due_date", "posting_date", "paid_on",
            "voided_on", "applied_total", "applied_through", "first_seen_at", "read_at",
        ],
    )  # fmt: skip
    moves = Copier(cursor, "pscsync_invoicestatuschange", ["invoice_id", "from_status", "to_status", "on", "seen_at"])
    applications = Copier(
        cursor,
        "pscsync_paymentapplication",
        ["invoice_id", "legal_entity_id", "currency", "payment_id", "reference", "amount", "applied_on", "read_at"],
    )
    words = {"draft": "Draft", "pending_approval": "Pending Approval", "posted": "Open", "partly_paid": "Open"}
    for inv_id, (entity, customer, amount, cur, batch, raised_at, posted_on, paid_on) in sorted(ledger.items()):
        raised = raised_at.date()
        if posted_on is None and (raised < today - dt.timedelta(days=14) or paid_on or rnd.random() < 0.5):
            posted_on = min(today, raised + dt.timedelta(days=rnd.randint(1, 3)))
        if posted_on and paid_on is None:
            late = posted_on + dt.timedelta(days=int(rnd.uniform(20, 75)))
            paid_on = late if late <= today - dt.timedelta(days=1) else None
        if paid_on and posted_on:
            paid_on = max(paid_on, posted_on)
        paid_part = Decimal("0")
        if posted_on is None:
            status = "pending_approval" if entity == "us" else "draft"
        elif paid_on:
            status = "paid"
            paid_part = amount
        elif rnd.random() < 0.15:
            status = "partly_paid"
            paid_part = (amount * Decimal("0.4")).quantize(Decimal("0.01"))
        else:
            status = "posted"
        connection = firm["connections"][CONNECTIONS[entity]["erp"]]
        scope = firm["entities"][entity]  # applications carry their invoice's entity and currency
        tax = (amount * Decimal("0.2") if entity == "uk" else Decimal("0")).quantize(Decimal("0.01"))
        total = amount + tax
        seen = dt.datetime.combine(posted_on or raised, dt.time(6), dt.UTC)
        # The customer payments applied (payment id, reference, amount, date), drawn in the order the
        # firm always drew them, so a seed gives the same ledger.
        lines: list[tuple[str, str, Decimal, dt.date]] = []
        steps: list[tuple[str, str, dt.date]] = []
        if posted_on is None:
            steps.append(("", status, raised))
        else:
            steps.append(("", "posted", posted_on))
            if status == "paid":
                if rnd.random() < 0.2:  # two customer payments: part on account, then the rest
                    first = (total * Decimal("0.5")).quantize(Decimal("0.01"))
                    early = posted_on + (paid_on - posted_on) / 2
                    lines += [(f"p{inv_id}a", f"PAY{inv_id}A", first, early)]
                    lines += [(f"p{inv_id}", f"PAY{inv_id}", total - first, paid_on)]
                    steps += [("posted", "partly_paid", early), ("partly_paid", "paid", paid_on)]
                else:
                    lines += [(f"p{inv_id}", f"PAY{inv_id}", total, paid_on)]
                    steps += [("posted", "paid", paid_on)]
            elif status == "partly_paid":
                on = min(today, posted_on + dt.timedelta(days=rnd.randint(5, 25)))
                lines += [(f"p{inv_id}", f"PAY{inv_id}", paid_part, on)]
                steps += [("posted", "partly_paid", on)]
        invoices.add(
            inv_id, firm["entities"][entity], connection, str(inv_id), f"INV{inv_id:08d}",
            f"I-{batch}" if batch else "", f"C{zlib.crc32(customer.encode()) % 100000:05d}", customer, "", batch, cur,
            total, tax, total - paid_part if status != "paid" else Decimal("0"),
            status, "Paid" if status == "paid" else words[status], raised,
            (posted_on or raised) + dt.timedelta(days=30), posted_on, paid_on if status == "paid" else None,
            None, sum((line[2] for line in lines), Decimal("0")), max((line[3] for line in lines), default=None),
            seen, now,
        )  # fmt: skip
        for before, after, on in steps:
            moves.add(inv_id, before, after, on, seen)
        for payment_id, reference, paid, on in lines:
            applications.add(inv_id, scope, cur, payment_id, reference, paid, on, now)
    for c in (invoices, moves, applications):
        c.flush()
    for table in ("pscsync_erpinvoice", "pscsync_invoicestatuschange", "pscsync_paymentapplication"):
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")  # noqa: S608
    return invoices.rows


def aggregates_build(stats: LoadStats, log: Any = print) -> None:
    """The dashboards' facts and rollups, by the production backfill (what an admin's SLA change runs)."""
    from django.db import connection as db

    from dashboards.facts import rollups_rebuild_all
    from pscsync import ledger_days

    log("  building the dashboard aggregates with dashboards.facts.rollups_rebuild_all ...")
    t1 = time.monotonic()
    # The ledger was written with COPY, around the models that keep the ledger by day.
    ledger_days.rebuild()
    stats.rollups = rollups_rebuild_all()
    stats.seconds_rollups = time.monotonic() - t1
    with db.cursor() as cursor:
        # Steady state, as autovacuum leaves a live database: statistics and the visibility map
        # (index-only scans) in place.
        cursor.execute("ANALYZE" if db.in_atomic_block else "VACUUM ANALYZE")  # tests run in a transaction
    log(f"  rollups_rebuild_all: {stats.rollups} in {stats.seconds_rollups:.0f} s")


def history_partitions(begin: dt.datetime, now: dt.datetime) -> list[str]:
    """Monthly partitions of attempts and audit entries for every month of the history, as a
    database that ran those two years has them (the daily beat makes each month ahead of time).
    Without them the migration, run on the empty database, made only the months from now on, and
    COPY put two years of rows in the DEFAULT partition, where retention can drop none."""
    from pscsync.archive import Month
    from pscsync.partitions import TABLES, partition_create, partition_name, partitioned

    if not partitioned():
        return []
    made = []
    month = Month(begin.date().replace(day=1))
    while month.first <= now.date():
        made += [partition_name(t, month) for t in TABLES if partition_create(t, month)]
        month = month.next()
    return made


AUDIT_BACKFILL = """
INSERT INTO pscsync_auditentry (created_at, actor_id, actor_label, action, object_type, object_id, object_repr,
    legal_entity_id, before, after, comment, remote_addr, prev_hash, hash, key_id)
SELECT e.resolved_at - interval '1 hour', u.id, u.username,
    CASE e.resolution WHEN 'succeeded' THEN 'handoff.resubmit' WHEN 'resolved' THEN 'handoff.resolve'
        ELSE 'handoff.cancel' END,
    'pscsync.handoff', e.handoff_id::text, h.flow || ' ' || h.business_key, e.legal_entity_id,
    jsonb_build_object('status', 'needs_attention'),
    jsonb_build_object('status', CASE e.resolution WHEN 'succeeded' THEN 'pending' ELSE e.resolution END),
    'fixed at the source', NULL, '', '', ''
FROM remediation_handoffexception e JOIN pscsync_handoff h ON h.id = e.handoff_id
    CROSS JOIN auth_user u
WHERE e.status = 'resolved' AND u.username = 'operator'
ORDER BY e.resolved_at
"""


def audit_backfill(cursor: Any) -> None:
    """One operator action per resolved exception, as the workbench records it, so the handoff
    page reads its history from an audit trail of realistic size (not hash-chained: the chain
    is not what is measured here)."""
    cursor.execute(AUDIT_BACKFILL)


Handoff_OPEN = frozenset({"pending", "running", "waiting_retry", "needs_attention"})
_seen_customers: set[tuple[str, int]] = set()


def _deal_doc(
    rnd: random.Random,
    key: str,
    entity: str,
    customer: str,
    line: str,
    amount: Decimal,
    at: dt.datetime,
    *,
    won: bool,
) -> dict[str, Any]:
    start = at.date() + dt.timedelta(days=rnd.randint(7, 45))
    end = start + dt.timedelta(days=rnd.choice([60, 90, 120, 180, 270, 365]))
    probability = 100 if won else rnd.choice([10, 20, 40, 60, 75, 90])
    plan = [{"role": r, "hours": rnd.choice([40, 80, 160, 320])} for r in rnd.sample(ROLES, rnd.randint(1, 3))]
    return {
        "id": key,
        "name": f"{customer} – {line}",
        "stage": "Closed Won" if won else rnd.choice(["Qualification", "Proposal", "Negotiation"]),
        "probability": probability,
        "is_won": won,
        "is_closed": won,
        "close_date": at.date().isoformat(),
        "closed_at": at.isoformat() if won else "",
        "amount": str(amount),
        "currency": "USD" if entity == "us" else "GBP",
        "legal_entity": entity,
        "service_line": line,
        "billing_model": rnd.choice(["time_and_materials", "fixed_fee"]),
        "contract_start": start.isoformat(),
        "contract_end": end.isoformat(),
        "contract_version": 1,
        "po_number": "",
        "resource_plan_text": json.dumps(plan) if rnd.random() < 0.8 else "",
    }


def _variable(rnd: random.Random, key: str) -> str:
    return key if any(ch.isdigit() for ch in key[-5:]) else f"{rnd.randrange(10**14, 10**15)}"


def _write_key(step: str, key: str) -> str:
    return {
        "upsert_customer": f"C-{key}",
        "upsert_project": f"P-{key}",
        "upsert_contract": f"SO-{key}",
        "upsert_invoice": f"I-{key}",
    }.get(step, f"{step}:{key}")


def _ext_id(system: str, hid: int, pos: int) -> str:
    return {"crm": f"a0X{hid:012d}{pos}", "psa": f"a2P{hid:012d}{pos}", "erp": f"{hid * 10 + pos}"}[system]


def _event_type(flow: str, key: str) -> str:
    return {
        "quote-to-project": "OpportunityChangeEvent",
        "contract-change": "OpportunityChangeEvent",
        "pipeline-to-demand": "OpportunityChangeEvent",
        "project-to-bill": "pse__Billing_Event__ChangeEvent" if key.startswith("a1B") else "invoice.created",
        "bill-to-cash": "salesInvoices.updated" if key.startswith("bc-") else "invoice",
    }[flow]


def _identifiers(flow: str, key: str) -> dict[str, str]:
    if flow in ("quote-to-project", "contract-change", "pipeline-to-demand"):
        return {"opportunity": key, "project": f"P-{key}", "contract": f"SO-{key}"}
    if flow == "project-to-bill":
        if key.startswith("kantata-invoice:"):
            return {"psa_invoice": key.split(":", 1)[1], "invoice": f"I-K{key.split(':', 1)[1]}"}
        return {"billing_event": key, "invoice": f"I-{key}"}
    return {"invoice": key}


def _mismatches(rnd: random.Random, ents: dict[str, int], deals: list, now: dt.datetime) -> None:
    """Open and cleared reconciliation mismatches and each entity's latest runs."""
    from pscsync.models import Mismatch, ReconciliationRun

    causes = [c for c, _ in Mismatch.Cause.choices]
    rows = []
    for i, (key, entity, customer, _line, amount) in enumerate(deals[::50]):
        comparison = ("deal_value", "billed_time", "revenue")[i % 3]
        period = "" if comparison == "deal_value" else (now - dt.timedelta(days=rnd.randint(0, 400))).strftime("%Y-%m")
        diff = (amount * Decimal(str(rnd.uniform(0.001, 0.05)))).quantize(Decimal("0.01"))
        cleared = rnd.random() < 0.6
        rows.append(
            Mismatch(
                comparison=comparison,
                legal_entity_id=ents[entity],
                subject_key=key,
                subject_name=f"{customer} – deal",
                customer_name=customer,
                period=period,
                cause=rnd.choice(causes),
                explanation="difference beyond tolerance",
                currency="USD" if entity == "us" else "GBP",
                amounts={"crm": str(amount), "erp": str(amount - diff)},
                difference=diff,
                status="cleared" if cleared else "open",
                first_seen_at=now - dt.timedelta(days=rnd.randint(1, 300)),
                last_seen_at=now - dt.timedelta(days=rnd.randint(0, 1)),
                cleared_at=now if cleared else None,
            )
        )
    Mismatch.objects.bulk_create(rows, batch_size=5000, ignore_conflicts=True)
    runs = []
    for pk in ents.values():
        for d in range(30):
            at = now - dt.timedelta(days=d)
            checked = rnd.randint(800, 1500)
            runs.append(
                ReconciliationRun(
                    legal_entity_id=pk,
                    status="complete",
                    started_at=at,
                    finished_at=at + dt.timedelta(minutes=3),
                    summary={"revenue": {"checked": checked, "matched": checked - rnd.randint(5, 40)}},
                    duration_ms=180000,
                )
            )
    ReconciliationRun.objects.bulk_create(runs)


# Databases ----------------------------------------------------------------------------------------
# Several people share one PostgreSQL: PSCSYNC_BENCH_DB_PREFIX gives each their own databases.
DB_PREFIX = os.environ.get("PSCSYNC_BENCH_DB_PREFIX", "pscsync_bench_large")


def template_name(n: int) -> str:
    # BENCH_TEMPLATE_PREFIX: a template of one's own (two people benching different trees).
    return f"{os.environ.get('BENCH_TEMPLATE_PREFIX', DB_PREFIX + '_tpl')}_{n}"


def _admin_sql(sql: str) -> str:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        row = conn.execute(sql).fetchone() if sql.lstrip().upper().startswith("SELECT") else conn.execute(sql)
        return str(row[0]) if isinstance(row, tuple) and row else ""


def database_exists(name: str) -> bool:
    return _admin_sql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "1"  # noqa: S608 (our names)


def database_drop(name: str) -> None:
    _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_from_template(name: str, template: str) -> float:
    """A fresh copy of the loaded firm (seconds taken)."""
    t = time.monotonic()
    database_drop(name)
    _admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return time.monotonic() - t


def database_migrate(name: str) -> float:
    """Apply migrations newer than the template (e.g. indexes added since it was loaded), then
    VACUUM ANALYZE: a backfill rewrites rows, and the pages are timed in the steady state
    autovacuum leaves a live database in (as the template was), not with autovacuum running."""
    import psycopg

    t = time.monotonic()
    env = {**os.environ, **BENCH_ENV, "DATABASE_URL": f"{PG}/{name}", "PYTHONPATH": str(ROOT)}
    python = ROOT / ".venv" / "bin" / "python"
    pending = subprocess.run(
        [python, str(ROOT / "manage.py"), "migrate", "--plan", "-v", "0"], env=env, check=True, capture_output=True
    )
    subprocess.run([python, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=env, check=True)
    if b"No planned migration operations" not in pending.stdout:
        with psycopg.connect(f"{PG}/{name}", autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    return time.monotonic() - t


def template_ensure(n: int, *, reload: bool = False, seed: int = 11, log: Any = print) -> str:
    """The loaded template database for n handoffs, built in a child process when missing."""
    name = template_name(n)
    if database_exists(name) and not reload:
        log(f"using the loaded template {name} (--reload to rebuild it)")
        return name
    database_drop(name)
    _admin_sql(f'CREATE DATABASE "{name}"')
    env = {**os.environ, **BENCH_ENV, "DATABASE_URL": f"{PG}/{name}", "PYTHONPATH": str(ROOT)}
    python = ROOT / ".venv" / "bin" / "python"
    subprocess.run([python, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=env, check=True)
    subprocess.run([python, __file__, "--handoffs", str(n), "--seed", str(seed), "--into-current"], env=env, check=True)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handoffs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--reload", action="store_true", help="rebuild the template even if it exists")
    parser.add_argument("--into-current", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.into_current:
        template_ensure(args.handoffs, reload=args.reload, seed=args.seed)
        return
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import transaction

    print(f"loading {args.handoffs:,} handoffs into {os.environ['DATABASE_URL'].rsplit('/', 1)[1]} ...", flush=True)
    say = lambda m: print(m, flush=True)  # noqa: E731
    with transaction.atomic():
        stats = load(args.handoffs, seed=args.seed, log=say)
    aggregates_build(stats, log=say)
    print(
        json.dumps(
            {k: v for k, v in stats.__dict__.items()},
            default=str,
            indent=1,
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
