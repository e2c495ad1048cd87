"""The known-answer firm (issue 15): a small firm scripted through the real flows against the
vendor sandboxes over HTTP, then every figure of the KPI registry (dashboards.kpis), read through
GET /api/v1/metrics/ for the firm, the US and the UK, against values worked out by hand below.
Nothing here computes an expected value with pscsync's code: each is a literal with its arithmetic.

The firm. Two legal entities: US (USD; Salesforce + Certinia + NetSuite; US public holidays) and UK
(GBP; Salesforce + Kantata + Business Central; England's bank holidays). The period is December
2026 (a month end on 31 Dec); the figures are read on Mon 4 Jan 2027 09:00 UTC, after the FX read
(07:00) and a reconciliation of both entities (08:00, which also reads the PSAs and the ledgers).
The clock is frozen and moved forward step by step, so every instant below is exact.

FX, written into both ERP sandboxes' market (USD per GBP): 1.20 from 1 Oct, 1.25 from 2 Nov, 1.24
from 1 Dec, 1.28 from 3 Dec. NetSuite's consolidated rates (the month rates figures use): October
average 1.20, November average 1.25, December average (1.24 + 1.28) / 2 = 1.26, December closing
1.28. The firm is shown in USD: flows (invoiced, cash, exception value) at their month's average,
balances (receivables, WIP, blocked, won value, mismatches) at December's closing 1.28.

Deals, quote to project (closed won -> project active; SLA 1 business day; sync SLA 15 min).
Sync minutes are heard -> done, reported as the upper edge of their histogram bucket (4 -> 5).
  US  Q1 120,000  Tue 1 Dec 10:00 -> 14:00                         4 h  0.17 bd  sync 4
      Q2  80,000  Wed 2 Dec 09:00 -> 15:00                         6 h  0.25 bd  sync 4
      Q3  60,000  Thu 3 Dec 16:00 -> Fri 4 Dec 10:00 (heard 16:01) 18 h 0.75 bd  sync 1,079 -> 1,080
      Q4  40,000  Fri 4 Dec 15:00 -> Mon 7 Dec 09:00               66 h 9 h + 9 h = 0.75 bd  sync 4
      Q5  30,000  Thu 24 Dec 12:00 -> Mon 28 Dec 12:00             96 h 12 h + 0 (Fri 25 Dec,
                  Christmas) + 12 h = 1.00 bd: within; 2 bd (late) if the holiday counted
  UK  Q6  60,000  Mon 7 Dec 09:00 -> 12:00                         3 h               sync 4
      Q7  45,000  Tue 8 Dec 10:00 -> Wed 9 Dec 14:00               28 h 14 h + 14 h = 1.17 bd: late
      Q8  25,000  Thu 24 Dec 14:00 -> Tue 29 Dec 08:00            114 h 10 h + 0 (Christmas) + 0
                  (Mon 28 Dec, Boxing Day substitute) + 8 h = 0.75 bd
  Won, not yet a project (open on 4 Jan 09:00):
      W1 US  50,000 USD  closed Wed 30 Dec 10:00; its account has no tax profile: needs a person.
         14 h + 24 h + 0 (Fri 1 Jan) + 9 h = 47 h = 1.96 business days: past SLA.
      W2 UK  30,000 GBP  closed Thu 31 Dec 20:00; Kantata down (503): waiting to retry. Amended to
         36,000 on Sun 3 Jan (its contract change waits for the project). 4 h + 0 (1 Jan) + 9 h =
         0.54 business days: not past SLA.
Contract changes (the amendment heard -> PSA and ERP updated; SLA 1 business day):
  US  Q1 -> 150,000 v2, Tue 15 Dec 09:00 -> 11:00 = 2 h (sync 120 min)
  UK  Q6 -> 66,000 v2, Wed 16 Dec 10:00 -> 13:00 = 3 h (sync 180 min)
Pipeline to demand: US P1 (Proposal, 40 %) Mon 21 Dec 10:00 -> 11:00 = 1 h (sync 60 min).
Project to bill (time approved, or the release when the PSA gives no approval date -> invoice
posted: the later of the ledger's posting date and the raise by pscsync; an invoice not posted
leaves the cycle open; SLA 5 business days; released in December: 4 batches):
  US  PB1 Q1: 10 h x 150 = 1,500; approved Mon 7 Dec; invoice raised Tue 8 Dec 10:00 (sync 4),
          its NetSuite trandate 7 Dec, approved (posted) on 29 Dec: ends at the raise = 34 h
      PB2 Q2: 20 h x 150 = 3,000; approved Mon 14 Dec; invoice raised Fri 18 Dec 12:00 (sync 4),
          still pending approval on 4 Jan: open
      PB4 Q1: the PSA puts PB1's 10 h (1,500) in a second batch, released Mon 21 Dec: refused
          (already billed), needs a person: an exception, released and not invoiced
  UK  PB3 Q6: Kantata invoice 14.5 h x 120 = 1,740 GBP dated Mon 14 Dec (no approval date:
          from the release); BC invoice raised 10:00 (heard 09:40: sync 20 min, late), still a
          draft on 4 Jan: open
Unbilled work left in the PSAs: US Q3 10 h x 150 = 1,500 in the week ending Sun 25 Oct (approved,
never billed: 71 days old on 4 Jan, 61-90 days); UK Q6 7.5 h x 120 = 900 GBP on Mon 21 Dec.
Ledgers (tests.flows.test_ledger's NetSuite and BC firms, synced on Thu 31 Dec, plus the flow's own):
  NetSuite US: N1 15 Oct 10,000 paid 4,000 (20 Nov) + 6,000 (10 Dec); N2 10 Nov 5,000 due 10 Dec,
    paid 1,500 (5 Dec); N3 20 Dec 8,000 pending approval; N4 1 Sep 2,000 due 1 Oct unpaid; N5
    1 Dec 3,000 voided; N6 15 Dec 1,200 due 14 Jan; PB1's invoice (7 Dec, 1,500) approved and paid
    1,500 on 28 Dec; PB2's invoice (14 Dec, 3,000) still pending approval.
  Business Central UK: B1 2 Nov 12,000 paid 7,000 (30 Nov) + 5,000 (3 Dec); B2 8 Dec 4,000 due
    7 Jan, paid 1,000 (18 Dec); B3 22 Dec 2,500 draft; B4 20 Oct 6,000 due 19 Nov unpaid; B5 2 Dec
    900 cancelled; PB3's invoice (14 Dec, 1,740) a draft.
Every bill-to-cash sync is heard 5 minutes before it is done (sync 5 min, within 15 min).
Reconciliation effort: a US operator takes W1 (Wed 30 Dec 10:30) and PB4 (10:45) into their
inbox, one sitting of 15 min + 10 min reading = 25 min, and hands W1 back on Thu 31 Dec 09:00, a
sitting of 10 min: 3 actions, 35 min = 0.58 h (the week of Mon 28 Dec; hours to two places).

Running the same firm on the embedded SQLite default: see test_known_answer_firm_on_sqlite.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from decimal import Decimal
from typing import Any

import httpx
import pytest

from connectors.base import InboundChange
from dashboards import pages
from dashboards.fx import fx_rates_read
from dashboards.kpis import KPIS
from dashboards.metrics import Filters
from pscsync import clock
from pscsync.models import ErpInvoice, Handoff
from pscsync.reconciliation.services import reconcile
from remediation.services import handoff_assign
from tests.flows.conftest import run, won_deal
from tests.flows.test_ledger import bc_firm, netsuite_firm
from tests.flows.test_project_to_bill import certinia_approved_week, kantata_invoice, kantata_time
from tests.helpers import moves_told, sqlite_outcomes

pytestmark = pytest.mark.django_db

UTC = dt.UTC
D = Decimal
PERIOD = "from=2026-12-01&to=2026-12-31"
NESTED = "PSCSYNC_KNOWN_ANSWER_NESTED"

# --- The expected figures, by hand --------------------------------------------------------------
# (value, count). Latencies in hours and sync in minutes are nearest-rank percentiles reported as
# the upper edge of their histogram bucket; every latency above lies on an edge (whole hours up to
# 72 h, multiples of 6 h up to 336 h, of 24 h beyond), so the edge is the exact value.
# Percentages are of counts; money as the exact decimal the JSON carries.
NONE = (None, 0)
EXPECTED: dict[str, dict[str, tuple[Any, int]]] = {
    "us": {
        # 5 activated: [4, 6, 18, 66, 96] h; median rank ceil(0.5 x 5) = 3 -> 18; p90 rank ceil(4.5) = 5
        # -> 96; all 5 within 1 business day (Q5 thanks to Christmas); sync [5, 5, 5, 5, 1080]: 4 of 5.
        "quote-to-project.finished": (5, 5),
        "quote-to-project.latency_median": (18.0, 5),
        "quote-to-project.latency_p90": (96.0, 5),
        "quote-to-project.within_sla": (100.0, 5),
        "quote-to-project.sync_median": (5.0, 5),
        "quote-to-project.sync_within_sla": (80.0, 5),
        # Approved time -> invoice posted ends at the later of the ledger's posting date and the
        # raise. PB1: approved Mon 7 Dec 00:00; NetSuite's trandate 7 Dec (00:00) is before the
        # raise, Tue 8 Dec 10:00, so it ends at the raise: 24 h + 10 h = 34 h (1.42 business days,
        # within 5). PB2's invoice is pending approval on 4 Jan: open, not counted. One ended:
        # median and p90 rank 1 -> 34. The sync clock counts both handoffs (each 4 min -> 5).
        "project-to-bill.finished": (1, 1),
        "project-to-bill.latency_median": (34.0, 1),
        "project-to-bill.latency_p90": (34.0, 1),
        "project-to-bill.within_sla": (100.0, 1),
        "project-to-bill.sync_median": (5.0, 2),
        "project-to-bill.sync_within_sla": (100.0, 2),
        # Paid in full in December: PB1's invoice 7 -> 28 Dec = 21 d = 504 h (within 720 h) and N1
        # 15 Oct -> 10 Dec = 56 d = 1,344 h (late): 1 of 2. Synced in December: 8 invoices
        # (PB1's, PB2's, N1-N6), each last synced in 5 min.
        "bill-to-cash.finished": (2, 2),
        "bill-to-cash.latency_median": (504.0, 2),
        "bill-to-cash.latency_p90": (1344.0, 2),
        "bill-to-cash.within_sla": (50.0, 2),
        "bill-to-cash.sync_median": (5.0, 8),
        "bill-to-cash.sync_within_sla": (100.0, 8),
        "contract-change.finished": (1, 1),
        "contract-change.latency_median": (2.0, 1),
        "contract-change.latency_p90": (2.0, 1),
        "contract-change.within_sla": (100.0, 1),
        "contract-change.sync_median": (120.0, 1),
        "contract-change.sync_within_sla": (0.0, 1),
        "pipeline-to-demand.finished": (1, 1),
        "pipeline-to-demand.latency_median": (1.0, 1),
        "pipeline-to-demand.latency_p90": (1.0, 1),
        "pipeline-to-demand.within_sla": (100.0, 1),
        "pipeline-to-demand.sync_median": (60.0, 1),
        "pipeline-to-demand.sync_within_sla": (0.0, 1),
        # PB4 1,500 released 21 Dec, no invoice.
        "billing.released_not_invoiced": (D("1500.00"), 1),
        # Q3's October week 1,500 + PB4 1,500 + N3 8,000 (pending) + PB2's invoice 3,000 (pending)
        # = 14,000.00 in 4 records; over 60 days: the October week (71 days), 1,500.00.
        "billing.unbilled_wip": (D("14000.00"), 4),
        "billing.unbilled_wip_over_60_days": (D("1500.00"), 4),
        # Released in December: PB1, PB2, PB4; PB4 needed a person: 1 / 3.
        "billing.exception_rate": (100 / 3, 3),
        "billing.exception_value": (D("1500.00"), 1),
        # Revenue per project-month, PSA batches vs the ERP's POSTED invoices (DOMAIN.md §3.1; a
        # draft, pending or voided invoice is no revenue), 6 compared: Q1/Dec PSA 1,500 + 1,500
        # (PB1, PB4) vs ERP 1,500 (PB1's, posted) -> 1,500; Q2/Dec 3,000 vs 0 (PB2's invoice
        # pending) -> 3,000; N1 (Oct) 10,000, N2 (Nov) 5,000, N4 (Sep) 2,000, N6 (Dec) 1,200 are
        # posted invoices no PSA batch explains; N3 (pending) and N5 (voided) are not compared.
        # December's: 1,500 + 3,000 + 1,200 = 5,700.00 in 3 mismatches; 0 of 6 agree.
        "revenue.mismatch_value": (D("5700.00"), 3),
        "revenue.match_rate": (0.0, 6),
        # Receivables 31 Dec: N2 5,000 - 1,500 = 3,500 (21 days late) + N4 2,000 (91 days late) +
        # N6 1,200 (current) = 6,700; N1 and PB1's invoice paid in full, N3 and PB2's pending, N5
        # voided. Invoiced in the 90 days 3 Oct - 31 Dec: N1 10,000 + N2 5,000 + N6 1,200 + PB1's
        # 1,500 = 17,700 (4 invoices). DSO = 6,700 / 17,700 x 90 = 34.0677966 days.
        "cash.dso": (6700 / 17700 * 90, 4),
        "cash.receivables": (D("6700.00"), 3),
        "cash.receivables_current": (D("1200.00"), 1),
        "cash.receivables_1_30_days": (D("3500.00"), 1),
        "cash.receivables_31_60_days": (D("0"), 0),
        "cash.receivables_61_90_days": (D("0"), 0),
        "cash.receivables_over_90_days": (D("2000.00"), 1),
        # Posted in December: N6 1,200 + PB1's 1,500 = 2,700.00 (N3, PB2's pending; N5 voided).
        "billing.invoiced": (D("2700.00"), 2),
        # Applied in December: N1 6,000 (10 Dec) + N2 1,500 (5 Dec) + PB1's 1,500 (28 Dec) = 9,000.00.
        "cash.collected": (D("9000.00"), 3),
        "bill-to-cash.days_to_pay_median": (504.0, 2),
        "deals.won_not_activated": (1, 1),
        "deals.won_not_activated_value": (D("50000.00"), 1),
        "deals.won_not_activated_past_sla": (1, 1),
        "exceptions.open": (2, 2),  # W1 and PB4
        # Each batch's money once: PB4 1,500 released, not invoiced + W1 50,000 (past SLA) + the
        # mismatches per project, the larger of billed time and revenue (the same money twice):
        # Q1 billed time 1,500 (PB4's item carries no date: no period, counted in every period)
        # and revenue 1,500 (Dec) -> 1,500, all of it PB4's, already counted -> 0; Q2 3,000 and
        # 3,000 -> 3,000 (PB2's handoff is done, not stuck); N6 1,200 and 1,200 -> 1,200.
        # 1,500 + 50,000 + 0 + 3,000 + 1,200 = 55,700.00 (was 78,900 with PB4 three times and
        # every invoice twice); three parts.
        "money_at_risk": (D("55700.00"), 3),
        # 1 - Σ|Δ| / Σ|ERP| over every project-month compared: Σ|Δ| = 1,500 + 3,000 + 10,000 +
        # 5,000 + 2,000 + 1,200 = 22,700; Σ|ERP| = posted invoices 1,500 + 10,000 + 5,000 + 2,000
        # + 1,200 = 19,700: 1 - 22,700 / 19,700 = -3,000 / 19,700 = -15.23 %, floored at 0 % (the
        # PSA counts 3,000 the ledger has not posted on top of 1,500 it bills twice: docs/dashboards.md).
        "revenue.schedule_value_accuracy": (0.0, 6),
        "revenue.schedule_row_match_rate": (0.0, 6),
        "reconciliation.effort_actions": (3, 3),
        "reconciliation.effort_hours": (0.58, 3),
    },
    "uk": {
        # [3, 28, 114] h: median rank 2 -> 28, p90 rank 3 -> 114; Q7 late: 2 of 3.
        "quote-to-project.finished": (3, 3),
        "quote-to-project.latency_median": (28.0, 3),
        "quote-to-project.latency_p90": (114.0, 3),
        "quote-to-project.within_sla": (200 / 3, 3),
        "quote-to-project.sync_median": (5.0, 3),
        "quote-to-project.sync_within_sla": (100.0, 3),
        # PB3's invoice is a draft in Business Central on 4 Jan: not posted, the cycle is open;
        # nothing ended. Its handoff synced in 20 min (heard 09:40, done 10:00; late).
        "project-to-bill.finished": (0, 0),
        "project-to-bill.latency_median": NONE,
        "project-to-bill.latency_p90": NONE,
        "project-to-bill.within_sla": NONE,
        "project-to-bill.sync_median": (20.0, 1),
        "project-to-bill.sync_within_sla": (0.0, 1),
        # B1 2 Nov -> 3 Dec = 31 d = 744 h, over 720 h. Synced: PB3's, B1-B5 (6).
        "bill-to-cash.finished": (1, 1),
        "bill-to-cash.latency_median": (744.0, 1),
        "bill-to-cash.latency_p90": (744.0, 1),
        "bill-to-cash.within_sla": (0.0, 1),
        "bill-to-cash.sync_median": (5.0, 6),
        "bill-to-cash.sync_within_sla": (100.0, 6),
        "contract-change.finished": (1, 1),
        "contract-change.latency_median": (3.0, 1),
        "contract-change.latency_p90": (3.0, 1),
        "contract-change.within_sla": (100.0, 1),
        "contract-change.sync_median": (180.0, 1),
        "contract-change.sync_within_sla": (0.0, 1),
        "pipeline-to-demand.finished": (0, 0),
        "pipeline-to-demand.latency_median": NONE,
        "pipeline-to-demand.latency_p90": NONE,
        "pipeline-to-demand.within_sla": NONE,
        "pipeline-to-demand.sync_median": NONE,
        "pipeline-to-demand.sync_within_sla": NONE,
        "billing.released_not_invoiced": (D("0"), 0),
        # Kantata 900 + B3 2,500 (draft) + PB3's 1,740 (draft) = 5,140.00 GBP, all under 30 days.
        "billing.unbilled_wip": (D("5140.00"), 3),
        "billing.unbilled_wip_over_60_days": (D("0"), 3),
        "billing.exception_rate": (0.0, 1),
        "billing.exception_value": (D("0"), 0),
        # Posted invoices only, 4 compared: Q6/Dec PSA 1,740 vs 0 (PB3's invoice a draft) ->
        # 1,740; B1 (Nov) 12,000, B2 (Dec) 4,000, B4 (Oct) 6,000 have no PSA batch; B3 (draft) and
        # B5 (cancelled) are not compared. December's: 1,740 + 4,000 = 5,740.00 in 2; 0 of 4 agree.
        "revenue.mismatch_value": (D("5740.00"), 2),
        "revenue.match_rate": (0.0, 4),
        # B2 4,000 - 1,000 = 3,000 (current) + B4 6,000 (42 days late) = 9,000; invoiced 3 Oct - 31 Dec:
        # B1 12,000 + B2 4,000 + B4 6,000 = 22,000; DSO = 9,000 / 22,000 x 90 = 36.8181818.
        "cash.dso": (9000 / 22000 * 90, 3),
        "cash.receivables": (D("9000.00"), 2),
        "cash.receivables_current": (D("3000.00"), 1),
        "cash.receivables_1_30_days": (D("0"), 0),
        "cash.receivables_31_60_days": (D("6000.00"), 1),
        "cash.receivables_61_90_days": (D("0"), 0),
        "cash.receivables_over_90_days": (D("0"), 0),
        "billing.invoiced": (D("4000.00"), 1),  # B2 (B3 draft, B5 cancelled, PB3's draft)
        "cash.collected": (D("6000.00"), 2),  # B1 5,000 (3 Dec) + B2 1,000 (18 Dec)
        "bill-to-cash.days_to_pay_median": (744.0, 1),
        "deals.won_not_activated": (1, 1),
        "deals.won_not_activated_value": (D("36000.00"), 1),  # W2 at its amended value
        "deals.won_not_activated_past_sla": (0, 1),
        "exceptions.open": (0, 0),
        # Nothing released and stuck, W2 not past SLA; per project the larger of billed time and
        # revenue: Q6 1,740 (PB3's handoff done) + B2 4,000 = 5,740.00.
        "money_at_risk": (D("5740.00"), 3),
        # Σ|Δ| = 1,740 + 12,000 + 4,000 + 6,000 = 23,740; Σ|ERP| = 12,000 + 4,000 + 6,000 = 22,000:
        # 1 - 23,740 / 22,000 = -1,740 / 22,000 = -7.91 %, floored at 0 %.
        "revenue.schedule_value_accuracy": (0.0, 4),
        "revenue.schedule_row_match_rate": (0.0, 4),
        "reconciliation.effort_actions": (0, 0),
        "reconciliation.effort_hours": (0, 0),
    },
    "firm": {
        # 8 activated: [3, 4, 6, 18, 28, 66, 96, 114]: median rank 4 -> 18, p90 rank ceil(7.2) = 8
        # -> 114; 7 of 8 within (Q7 late); sync 7 of 8 (Q3).
        "quote-to-project.finished": (8, 8),
        "quote-to-project.latency_median": (18.0, 8),
        "quote-to-project.latency_p90": (114.0, 8),
        "quote-to-project.within_sla": (87.5, 8),
        "quote-to-project.sync_median": (5.0, 8),
        "quote-to-project.sync_within_sla": (87.5, 8),
        # Ended: PB1 only (PB2 pending, PB3 a draft): [34]; sync [5, 5, 20]: 2 of 3.
        "project-to-bill.finished": (1, 1),
        "project-to-bill.latency_median": (34.0, 1),
        "project-to-bill.latency_p90": (34.0, 1),
        "project-to-bill.within_sla": (100.0, 1),
        "project-to-bill.sync_median": (5.0, 3),
        "project-to-bill.sync_within_sla": (200 / 3, 3),
        # [504, 744, 1344]: median 744, p90 1,344; 1 of 3 within 720 h; 14 invoices synced.
        "bill-to-cash.finished": (3, 3),
        "bill-to-cash.latency_median": (744.0, 3),
        "bill-to-cash.latency_p90": (1344.0, 3),
        "bill-to-cash.within_sla": (100 / 3, 3),
        "bill-to-cash.sync_median": (5.0, 14),
        "bill-to-cash.sync_within_sla": (100.0, 14),
        "contract-change.finished": (2, 2),
        "contract-change.latency_median": (2.0, 2),
        "contract-change.latency_p90": (3.0, 2),
        "contract-change.within_sla": (100.0, 2),
        "contract-change.sync_median": (120.0, 2),
        "contract-change.sync_within_sla": (0.0, 2),
        "pipeline-to-demand.finished": (1, 1),
        "pipeline-to-demand.latency_median": (1.0, 1),
        "pipeline-to-demand.latency_p90": (1.0, 1),
        "pipeline-to-demand.within_sla": (100.0, 1),
        "pipeline-to-demand.sync_median": (60.0, 1),
        "pipeline-to-demand.sync_within_sla": (0.0, 1),
        "billing.released_not_invoiced": (D("1500.00"), 1),
        # 14,000 + 5,140 GBP x 1.28 (6,579.20) = 20,579.20 USD; over 60 days 1,500.00.
        "billing.unbilled_wip": (D("20579.20"), 7),
        "billing.unbilled_wip_over_60_days": (D("1500.00"), 7),
        "billing.exception_rate": (25.0, 4),
        "billing.exception_value": (D("1500.00"), 1),
        # 5,700 + 5,740 x 1.28 (7,347.20) = 13,047.20 in 5; 0 of 10 agree.
        "revenue.mismatch_value": (D("13047.20"), 5),
        "revenue.match_rate": (0.0, 10),
        # Receivables 6,700 + 9,000 x 1.28 (11,520) = 18,220; invoiced in the window: US 17,700 +
        # B1 12,000 x 1.25 (Nov, 15,000) + B2 4,000 x 1.26 (Dec, 5,040) + B4 6,000 x 1.20 (Oct,
        # 7,200) = 44,940; DSO = 18,220 / 44,940 x 90 = 36.4886515 days.
        "cash.dso": (18220 / 44940 * 90, 7),
        "cash.receivables": (D("18220.00"), 5),
        "cash.receivables_current": (D("5040.00"), 2),  # 1,200 + 3,000 x 1.28 (3,840)
        "cash.receivables_1_30_days": (D("3500.00"), 1),
        "cash.receivables_31_60_days": (D("7680.00"), 1),  # 6,000 x 1.28
        "cash.receivables_61_90_days": (D("0"), 0),
        "cash.receivables_over_90_days": (D("2000.00"), 1),
        "billing.invoiced": (D("7740.00"), 3),  # 2,700 + 4,000 x 1.26 (5,040)
        "cash.collected": (D("16560.00"), 5),  # 9,000 + 6,000 x 1.26 (7,560)
        "bill-to-cash.days_to_pay_median": (744.0, 3),
        "deals.won_not_activated": (2, 2),
        "deals.won_not_activated_value": (D("96080.00"), 2),  # 50,000 + 36,000 x 1.28 (46,080)
        "deals.won_not_activated_past_sla": (1, 2),
        "exceptions.open": (2, 2),
        "money_at_risk": (D("63047.20"), 3),  # 55,700 + 5,740 x 1.28 (7,347.20)
        # Σ|Δ| 22,700 + 23,740 x 1.28 (30,387.20) = 53,087.20; Σ|ERP| 19,700 + 22,000 x 1.28
        # (28,160) = 47,860: 1 - 53,087.20 / 47,860 = -5,227.20 / 47,860 = -10.92 %, floored at 0 %.
        "revenue.schedule_value_accuracy": (0.0, 10),
        "revenue.schedule_row_match_rate": (0.0, 10),
        "reconciliation.effort_actions": (3, 3),
        "reconciliation.effort_hours": (0.58, 3),
    },
}
# Resource forecast accuracy needs a demand snapshot taken 30, 60 or 90 days before an ended month
# of the period (the weekly beat job); this firm took none, so every forecast figure is "no value,
# nothing compared" for every scope.
for _scope in EXPECTED.values():
    for _lag in (30, 60, 90):
        for _actual in ("worked", "assigned"):
            _scope[f"forecast.accuracy_{_lag}d_{_actual}"] = NONE
            _scope[f"forecast.bias_{_lag}d_{_actual}"] = NONE
CURRENCY = {"firm": "USD", "us": "USD", "uk": "GBP"}


def at(day: str, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=UTC)


class Clock(clock.FrozenClock):
    def to(self, when: dt.datetime) -> None:
        assert when >= self.current, f"the clock runs forward: {when} after {self.current}"
        self.current = when


CLOCK = Clock(at("2026-11-30", 8))


def heard(firm, flow: str, key: str, when: dt.datetime, *, slug: str = "salesforce", n: int = 0) -> Handoff:
    """The change stored as intake would, heard at `when` (its source time; the clock moves there)."""
    from pscsync.intake import event_receive

    CLOCK.to(when)
    change = InboundChange(
        source_event_id=f"kaf:{flow}:{key}:{when.isoformat()}:{n}",
        event_type="test",
        flow=flow,
        business_key=key,
        occurred_at=when,
        payload={"key": key},
    )
    result = event_receive(connection=firm.connections[slug], change=change, headers={}, raw_body=json.dumps({}))
    assert result.handoff is not None
    return result.handoff


def mismatched(got: dict[str, dict[str, Any]], expected: dict[str, tuple[Any, int]], currency: str) -> list[str]:
    """Every figure whose value, count, state or completeness differs from the hand-worked one."""
    wrong = []
    for key, (value, count) in expected.items():
        m = got.get(key)
        if m is None:
            wrong.append(f"{key}: missing from the payload")
            continue
        if isinstance(value, Decimal):
            same = m["value"] is not None and Decimal(m["value"]) == value and m["unit"] == currency
            same = same and m["complete"] is True and m["missing"] == {}
        elif isinstance(value, float):
            same = m["value"] is not None and m["value"] == pytest.approx(value, abs=1e-9)
        else:
            same = m["value"] == value
        if not same or m["count"] != count or m["state"] != "measured":
            wrong.append(f"{key}: got {m['value']!r} ({m['count']}, {m['state']}), worked out {value!r} ({count})")
    return wrong


def test_every_registered_figure_matches_the_hand_worked_firm(firm, entities, admin, operator) -> None:
    from django.db import connection
    from django.test import Client

    from api.tokens import api_token_issue

    # The nested run is on the embedded default, the outer one on PostgreSQL.
    assert connection.vendor == ("sqlite" if os.getenv(NESTED) == "1" else "postgresql")
    CLOCK.current = at("2026-11-30", 8)
    clock.use(CLOCK)
    try:
        built = _build(firm, CLOCK, operator)
        CLOCK.to(at("2027-01-04", 9))
        token = api_token_issue(user=admin, name="known answers", days=30).plaintext
        api = Client()
        wrong: dict[str, list[str]] = {}
        for scope in ("firm", "us", "uk"):
            assert set(EXPECTED[scope]) == set(KPIS), "every registered figure has a worked-out value"
            query = PERIOD if scope == "firm" else f"{PERIOD}&legal_entity={scope}"
            response = api.get(f"/api/v1/metrics/?{query}", HTTP_AUTHORIZATION=f"Bearer {token}")
            assert response.status_code == 200, response.content
            data = response.json()
            assert data["currency"] == CURRENCY[scope]
            got = {m["key"]: m for m in data["metrics"]}
            wrong[scope] = mismatched(got, EXPECTED[scope], CURRENCY[scope])
        # Every scope's differences at once: one figure wrong in the firm is often wrong in an entity.
        assert wrong == {"firm": [], "us": [], "uk": []}, "\n".join(f"{k}: {w}" for k, v in wrong.items() for w in v)
        # "Invoiced" drills down to the bill-to-cash items started in the period: exactly the
        # invoices posted in December, not the voided N5 or the cancelled B5 (posted, then reversed).
        for scope, invoices in (("us", {f"I-{built['PB1']}", "KA-N6"}), ("uk", {"KA-B2"})):
            f = Filters(start=dt.date(2026, 12, 1), end=dt.date(2026, 12, 31), entity_ids=(entities[scope].pk,))
            ids = [x.key.removeprefix("invoice:") for x in pages.items(f, "bill-to-cash", "started")[1]]
            assert set(ErpInvoice.objects.filter(vendor_id__in=ids).values_list("key", flat=True)) == invoices
            assert len(ids) == len(invoices)
    finally:
        clock.use(None)


def _q2p(
    firm,
    c: Clock,
    key: str,
    entity: str,
    closed: dt.datetime,
    heard_at: dt.datetime,
    done: dt.datetime,
    amount: int,
    **deal,
) -> dict[str, str]:
    """A deal closed won at `closed` in Salesforce, heard at `heard_at`, provisioned at `done`."""
    ids = _deal(firm, c, key, entity, closed, amount, **deal)
    return _provision(firm, c, ids, heard_at, done)


def _deal(firm, c: Clock, key: str, entity: str, closed: dt.datetime, amount: int, **deal) -> dict[str, str]:
    c.to(closed)
    return won_deal(
        firm,
        entity=entity,
        key=key,
        Amount=amount,
        CloseDate=closed.date().isoformat(),
        Closed_At__c=closed.isoformat(),
        **deal,
    )


def _provision(firm, c: Clock, ids: dict, heard_at: dt.datetime, done: dt.datetime) -> dict:
    h = heard(firm, "quote-to-project", ids["opportunity"], heard_at)
    c.to(done)
    ids["handoff"] = run(h)
    return ids


def _certinia_week(firm, opp: str, *, monday: str, hours: tuple[float, ...], approved: str, name: str) -> str:
    """One approved billable week at 150/h on the deal's Certinia project (hours from Monday on)."""
    certinia = firm.connector("certinia-us")
    return certinia_approved_week(
        certinia, opp, hours=hours, monday=monday, approved=approved, name=name, schedule_start="2026-10-01"
    )


def _certinia_run(firm, opp: str, day: str) -> str:
    """The PSA's billing run on the project, dated `day`: one billing event."""
    certinia = firm.connector("certinia-us")
    project = certinia.lookup(entity="project", key=f"P-{opp}").external_id
    url = f"{firm.sandboxes['salesforce'].url}/_sandbox/certinia/billing-events"
    [event] = httpx.post(url, json={"project": project}, timeout=10).json()["billingEvents"]
    certinia.update(entity="billing_event", record_id=event, fields={"pse__Date__c": day})
    return event


def _sync(firm, c: Clock, slug: str, key: str, heard_at: dt.datetime, done: dt.datetime, n: int = 0) -> Handoff:
    h = heard(firm, "bill-to-cash", key, heard_at, slug=slug, n=n)
    c.to(done)
    h = run(h)
    assert h.status == Handoff.Status.SUCCEEDED, h.last_error_message
    return h


MARKET = [
    ("GBP", "2026-10-01", "1.20"),
    ("GBP", "2026-11-02", "1.25"),
    ("GBP", "2026-12-01", "1.24"),
    ("GBP", "2026-12-03", "1.28"),
]


def _build(firm, c: Clock, operator) -> dict:
    for name in ("netsuite", "businesscentral"):
        body = {"rates": [{"currency": cur, "date": d, "usd": u} for cur, d, u in MARKET]}
        httpx.post(f"{firm.sandboxes[name].url}/_sandbox/rates", json=body, timeout=5).raise_for_status()
    d = {}
    # Quote to project.
    d["Q1"] = _q2p(firm, c, "Q1", "us", at("2026-12-01", 10), at("2026-12-01", 13, 56), at("2026-12-01", 14), 120000)
    d["Q2"] = _q2p(firm, c, "Q2", "us", at("2026-12-02", 9), at("2026-12-02", 14, 56), at("2026-12-02", 15), 80000)
    d["Q3"] = _q2p(firm, c, "Q3", "us", at("2026-12-03", 16), at("2026-12-03", 16, 1), at("2026-12-04", 10), 60000)
    d["Q4"] = _q2p(firm, c, "Q4", "us", at("2026-12-04", 15), at("2026-12-07", 8, 56), at("2026-12-07", 9), 40000)
    uk = {"Billing_Model__c": "Time and Materials", "Service_Line__c": "Advisory"}
    d["Q6"] = _q2p(
        firm, c, "Q6", "uk", at("2026-12-07", 9), at("2026-12-07", 11, 56), at("2026-12-07", 12), 60000, **uk
    )
    # Project to bill.
    c.to(at("2026-12-08", 9))
    _certinia_week(firm, d["Q1"]["opportunity"], monday="2026-11-30", hours=(8, 2), approved="2026-12-07", name="PB1")
    pb1 = d["PB1"] = _certinia_run(firm, d["Q1"]["opportunity"], "2026-12-07")
    h = heard(firm, "project-to-bill", pb1, at("2026-12-08", 9, 56), slug="certinia-us")
    c.to(at("2026-12-08", 10))
    h = run(h)
    assert h.status == Handoff.Status.SUCCEEDED, ("PB1", h.last_error_message)
    d["Q7"] = _q2p(
        firm, c, "Q7", "uk", at("2026-12-08", 10), at("2026-12-09", 13, 56), at("2026-12-09", 14), 45000, **uk
    )
    c.to(at("2026-12-14", 9))
    pb3 = kantata_invoice(firm, d["Q6"]["opportunity"])  # 8 h + 6.5 h on 7-8 Dec, invoiced 14 Dec
    h = heard(firm, "project-to-bill", f"kantata-invoice:{pb3}", at("2026-12-14", 9, 40), slug="kantata-uk")
    c.to(at("2026-12-14", 10))
    h = run(h)
    assert h.status == Handoff.Status.SUCCEEDED, ("PB3", h.last_error_message)
    # Amendments.
    c.to(at("2026-12-15", 8, 59))
    firm.salesforce.update(
        entity="opportunity", record_id=d["Q1"]["opportunity"], fields={"Amount": 150000, "Contract_Version__c": 2}
    )
    h = heard(firm, "contract-change", d["Q1"]["opportunity"], at("2026-12-15", 9))
    c.to(at("2026-12-15", 11))
    h = run(h)
    assert h.status == Handoff.Status.SUCCEEDED, ("A1", h.last_error_message)
    c.to(at("2026-12-16", 9, 59))
    firm.salesforce.update(
        entity="opportunity", record_id=d["Q6"]["opportunity"], fields={"Amount": 66000, "Contract_Version__c": 2}
    )
    h = heard(firm, "contract-change", d["Q6"]["opportunity"], at("2026-12-16", 10))
    c.to(at("2026-12-16", 13))
    h = run(h)
    assert h.status == Handoff.Status.SUCCEEDED, ("A2", h.last_error_message)
    c.to(at("2026-12-18", 11))
    _certinia_week(
        firm, d["Q2"]["opportunity"], monday="2026-12-07", hours=(8, 8, 4), approved="2026-12-14", name="PB2"
    )
    pb2 = _certinia_run(firm, d["Q2"]["opportunity"], "2026-12-14")
    h = heard(firm, "project-to-bill", pb2, at("2026-12-18", 11, 56), slug="certinia-us")
    c.to(at("2026-12-18", 12))
    h = run(h)
    assert h.status == Handoff.Status.SUCCEEDED, ("PB2", h.last_error_message)
    # Pipeline.
    c.to(at("2026-12-21", 9, 59))
    p1 = won_deal(firm, entity="us", key="P1", StageName="Proposal", Probability=40, Amount=90000)
    h = heard(firm, "pipeline-to-demand", p1["opportunity"], at("2026-12-21", 10))
    c.to(at("2026-12-21", 11))
    h = run(h)
    assert h.status == Handoff.Status.SUCCEEDED, ("P1", h.last_error_message)
    # PB4: the PSA bills PB1's timecard again.
    certinia = firm.connector("certinia-us")
    [original] = list(
        certinia.read(
            "billing_event_item",
            where={"pse__Billing_Event__c": pb1, "pse__Category__c": "Timecard"},
            fields=["pse__Object_Id__c", "pse__Project__c"],
        )
    )
    again = certinia.upsert(
        entity="billing_event",
        key="BE-again",
        fields={"pse__Project__c": original["pse__Project__c"], "pse__Date__c": "2026-12-21"},
    ).external_id
    certinia.upsert(
        entity="billing_event_item",
        key="BEI-again",
        fields={
            "pse__Billing_Event__c": again,
            "pse__Object_Id__c": original["pse__Object_Id__c"],
            "pse__Category__c": "Timecard",
            "pse__Quantity__c": 10,
            "pse__Unit_Price__c": 150,
            "pse__Amount__c": 1500,
        },
    )
    d["PB4"] = again
    h = heard(firm, "project-to-bill", again, at("2026-12-21", 11, 56), slug="certinia-us")
    c.to(at("2026-12-21", 12))
    h = run(h)
    assert h.status == Handoff.Status.NEEDS_ATTENTION and "would bill again" in h.last_error_message
    d["Q5"] = _deal(firm, c, "Q5", "us", at("2026-12-24", 12), 30000)
    d["Q8"] = _deal(firm, c, "Q8", "uk", at("2026-12-24", 14), 25000, **uk)
    _provision(firm, c, d["Q5"], at("2026-12-28", 11, 56), at("2026-12-28", 12))
    _provision(firm, c, d["Q8"], at("2026-12-29", 7, 56), at("2026-12-29", 8))
    # Unbilled work in the PSAs.
    _certinia_week(firm, d["Q3"]["opportunity"], monday="2026-10-19", hours=(8, 2), approved="2026-10-26", name="W-old")
    kantata_time(firm, d["Q6"]["opportunity"], (("2026-12-21", 450),))
    # Bill to cash.
    ns = firm.connector("netsuite-us")
    c.to(at("2026-12-29", 10))
    ns.upsert(entity="invoice", key=f"I-{pb1}", fields={"approvalStatus": {"id": "2"}})
    inv = ns.lookup(entity="invoice", key=f"I-{pb1}")
    pay = ns.upsert(
        entity="payment",
        key="PAY-PB1",
        fields={
            "customer": {"id": inv.response["entity"]["id"]},
            "payment": 1500,
            "tranDate": "2026-12-28",
            "apply": {"items": [{"doc": {"id": inv.external_id}, "apply": True, "amount": 1500}]},
        },
    )
    _sync(firm, c, "netsuite-us", f"I-{pb1}", at("2026-12-29", 10, 55), at("2026-12-29", 11))
    _sync(firm, c, "netsuite-us", f"payment:{pay.external_id}", at("2026-12-29", 11, 55), at("2026-12-29", 12))
    _sync(firm, c, "netsuite-us", f"I-{pb2}", at("2026-12-29", 12, 55), at("2026-12-29", 13))
    bc = firm.connector("businesscentral-uk")
    draft = bc.lookup(entity="salesInvoices", key=f"I-K{pb3}")
    _sync(
        firm, c, "businesscentral-uk", f"bc-invoice:{draft.external_id}", at("2026-12-29", 13, 55), at("2026-12-29", 14)
    )
    # Won, not yet a project.
    w1 = _q2p(
        firm,
        c,
        "W1",
        "us",
        at("2026-12-30", 10),
        at("2026-12-30", 10, 1),
        at("2026-12-30", 10, 5),
        50000,
        account={"Tax_Profile__c": ""},
    )
    assert (
        w1["handoff"].status == Handoff.Status.NEEDS_ATTENTION and "no Tax Profile" in w1["handoff"].last_error_message
    )
    # An operator takes W1 and PB4 into their inbox (one sitting), then hands W1 back next morning.
    c.to(at("2026-12-30", 10, 30))
    handoff_assign(actor=operator, handoff=w1["handoff"], assignee=operator)
    c.to(at("2026-12-30", 10, 45))
    handoff_assign(actor=operator, handoff=Handoff.objects.get(business_key=d["PB4"]), assignee=operator)
    c.to(at("2026-12-30", 11))
    ns_ids = netsuite_firm(firm)
    slot = [at("2026-12-31", 10)]

    def sync(slug: str, key: str, n: int = 0) -> None:
        _sync(firm, c, slug, key, slot[0] - dt.timedelta(minutes=5), slot[0], n)
        slot[0] += dt.timedelta(minutes=10)

    c.to(at("2026-12-31", 9))
    handoff_assign(actor=operator, handoff=w1["handoff"], assignee=None)
    for name in ("N1", "N2", "N3", "N4", "N5", "N6"):
        sync("netsuite-us", f"invoice:{ns_ids[name]}")
    httpx.post(f"{firm.sandboxes['netsuite'].url}/_sandbox/void/invoice/{ns_ids['N5']}", timeout=5).raise_for_status()
    sync("netsuite-us", f"invoice:{ns_ids['N5']}", 1)
    for name in ("P1", "P2", "P3"):
        sync("netsuite-us", f"payment:{ns_ids[name]}")
    bc_ids = bc_firm(firm)
    for name in ("B1", "B2", "B3", "B4", "B5"):
        sync("businesscentral-uk", f"bc-invoice:{bc_ids[name]}")
    bc.send("POST", f"{bc.company_path()}/salesInvoices({bc_ids['B5']})/Microsoft.NAV.cancel")
    sync("businesscentral-uk", f"bc-invoice:{bc_ids['B5']}", 1)
    for name in ("Q1", "Q2", "Q3"):
        sync("businesscentral-uk", f"bc-payment:{bc_ids[name]}")
    firm.sandboxes["kantata"].fault(error_status=503, count=1000)
    try:
        w2 = _q2p(
            firm, c, "W2", "uk", at("2026-12-31", 20), at("2026-12-31", 20, 1), at("2026-12-31", 20, 5), 30000, **uk
        )
    finally:
        firm.sandboxes["kantata"].clear_faults()
    assert w2["handoff"].status == Handoff.Status.WAITING_RETRY
    c.to(at("2027-01-03", 9, 59))
    firm.salesforce.update(
        entity="opportunity", record_id=w2["opportunity"], fields={"Amount": 36000, "Contract_Version__c": 2}
    )
    h = heard(firm, "contract-change", w2["opportunity"], at("2027-01-03", 10))
    c.to(at("2027-01-03", 10, 5))
    h = run(h)
    w2["handoff"].refresh_from_db()
    assert h.status == Handoff.Status.WAITING_RETRY and "not provisioned yet" in h.last_error_message
    assert w2["handoff"].amount == Decimal("36000.00")  # the waiting deal carries its amended value
    c.to(at("2027-01-04", 7))
    assert fx_rates_read()["failed"] == {}
    c.to(at("2027-01-04", 8))
    with moves_told():  # the ledger's moves reach the dashboards, as after the worker's commit
        assert [r.status for r in reconcile()] == ["complete", "complete"]
    return d


@pytest.mark.skipif(os.getenv(NESTED) == "1", reason="already the SQLite run")
@pytest.mark.on_sqlite(
    target=f"{__file__}::test_every_registered_figure_matches_the_hand_worked_firm", env=NESTED, timeout=900
)
def test_known_answer_firm_on_sqlite(sqlite_run) -> None:
    """The same firm and figures in the nested pytest on the embedded default (SQLite, no
    DATABASE_URL): the flows run in-process (no worker or broker needed), the sandboxes over HTTP."""
    outcomes = sqlite_outcomes(
        sqlite_run.stdout, f"{__file__}::test_every_registered_figure_matches_the_hand_worked_firm"
    )
    assert len(outcomes) == 1 and outcomes[0].startswith("PASSED"), (
        sqlite_run.stdout[-4000:] + sqlite_run.stderr[-2000:]
    )
