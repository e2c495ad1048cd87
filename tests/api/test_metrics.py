"""Metrics under DRF (the overview's KPIs, the weekly latency series), reconciliation runs and
flow SLAs: token auth, legal-entity scope, clear 400s for bad input."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from api.serializers import MetricsSerializer
from dashboards.facts import rollups_rebuild_all
from dashboards.kpis import KPIS
from dashboards.metrics import Filters
from dashboards.models import FlowSla
from dashboards.views import metrics_payload
from pscsync import clock
from pscsync.models import AuditEntry
from tests.dashboards.builders import T0, connection, handoff

H = dt.timedelta(hours=1)
PERIOD = "from=2026-10-01&to=2026-10-31"


@pytest.fixture
def deals(entities, monkeypatch):
    """A deal activated in 5 h in the US and one in 11 h in the UK."""
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    crm = connection("salesforce", list(entities.values()))
    for code, hours in (("us", 5), ("uk", 11)):
        handoff(
            flow="quote-to-project",
            conn=crm,
            entity=entities[code],
            key=f"OPP-{code}",
            started=T0,
            finished=T0 + hours * H,
            times={"deal_closed": T0, "project_activated": T0 + hours * H},
        )
    rollups_rebuild_all()
    return entities


@pytest.mark.django_db
def test_metrics_give_every_overview_kpi_for_the_callers_entities(api, tokens, deals) -> None:
    response = api("GET", f"/api/v1/metrics/?{PERIOD}", tokens["viewer"])
    assert response.status_code == 200
    data = response.json()
    figures = {m["key"]: m for m in data["metrics"]}
    assert figures["quote-to-project.latency_median"]["value"] == 5.0  # the US deal only
    assert figures["quote-to-project.finished"]["count"] == 1
    fields = {
        "key",
        "name",
        "value",
        "unit",
        "count",
        "definition",
        "state",
        "as_of",
        "state_note",
        "drill_down",
        "sla",
    }
    # Money figures also say whether every amount converted, and what is missing per currency.
    assert all(set(m) in (fields, fields | {"complete", "missing"}) for m in data["metrics"])
    # (A figure not measured has no value, so nothing to be complete about: no reconciliation ran here.)
    assert data["currency"] == "USD" and figures["billing.released_not_invoiced"]["complete"] is True
    assert "complete" not in figures["money_at_risk"]
    # Every figure of the registry, once, and each says whether it was measured.
    assert [m["key"] for m in data["metrics"]] == list(KPIS)
    assert figures["quote-to-project.finished"]["state"] == "measured"
    # No reconciliation ran: its figures are not measured (null), never a reassuring zero.
    assert (figures["revenue.match_rate"]["state"], figures["revenue.match_rate"]["value"]) == ("not_measured", None)
    assert figures["revenue.mismatch_value"]["as_of"] is None
    # The same payload the overview's figures come from, for the same filters.
    expected = metrics_payload(
        Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31), entity_ids=(deals["us"].pk,))
    )
    assert data == json.loads(json.dumps(MetricsSerializer(expected).data))
    uk = api("GET", f"/api/v1/metrics/?{PERIOD}&legal_entity=uk", tokens["admin"]).json()
    assert {m["key"]: m for m in uk["metrics"]}["quote-to-project.latency_median"]["value"] == 11.0
    # Another entity's code counts nothing, rather than showing its figures or confirming it exists.
    other = api("GET", f"/api/v1/metrics/?{PERIOD}&legal_entity=uk", tokens["viewer"]).json()
    assert {m["key"]: m for m in other["metrics"]}["quote-to-project.finished"]["value"] == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field", "status"),
    [
        # Malformed: 400.
        ("from=2026-13-01&to=2026-10-31", "from", 400),
        ("from=2026-10-01&to=yesterday", "to", 400),
        ("from=2026-10-01T00:00:00Z", "from", 400),
        ("from=&to=2026-10-31", "from", 400),
        # Well-formed dates the dashboards cannot answer for: 422 (docs/api.md's error table).
        ("from=2026-10-31&to=2026-10-01", "from", 422),
        ("from=2020-01-01&to=2026-10-31", "to", 422),  # longer than two years
        ("from=1999-12-31&to=2000-01-10", "from", 422),
    ],
)
def test_bad_dates_are_refused_with_an_error_that_names_the_parameter(api, tokens, deals, query, field, status) -> None:
    for url in ("/api/v1/metrics/", "/api/v1/metrics/latency/"):
        response = api("GET", f"{url}?{query}", tokens["viewer"])
        assert response.status_code == status, (url, response.content)
        assert field in response.json()["errors"], response.json()


@pytest.mark.django_db
def test_the_latency_series_is_weekly_per_flow(api, tokens, deals) -> None:
    data = api("GET", f"/api/v1/metrics/latency/?{PERIOD}&flow=quote-to-project", tokens["admin"]).json()
    (flow,) = data["flows"]
    assert flow["flow"] == "quote-to-project" and flow["sla"] == "1 business day"
    week = next(w for w in flow["weeks"] if w["measured"])
    assert week == {
        "week": "2026-10-05",
        "measured": 2,
        "median_hours": 5.0,
        "p90_hours": 11.0,
        "pct_within_sla": 100.0,
    }
    viewer = api("GET", f"/api/v1/metrics/latency/?{PERIOD}", tokens["viewer"]).json()
    assert len(viewer["flows"]) == 5
    assert sum(w["measured"] for w in viewer["flows"][0]["weeks"]) == 1  # the US deal only
    assert api("GET", "/api/v1/metrics/latency/?flow=nope", tokens["viewer"]).status_code == 400


@pytest.mark.django_db
def test_metrics_are_throttled_per_token(api, tokens, deals, settings, mid_minute) -> None:
    settings.API_RATE_PER_MINUTE = 2
    codes = [api("GET", "/api/v1/metrics/", tokens["viewer"]).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- Reconciliation runs ------------------------------------------------------------------------


@pytest.mark.django_db
def test_reconciliation_runs_are_listed_for_the_callers_entities(api, world, tokens) -> None:
    runs = api("GET", "/api/v1/reconciliation-runs/", tokens["viewer"]).json()["results"]
    assert [r["legal_entity"] for r in runs] == ["us"]
    assert runs[0]["summary"]["deal_value"]["checked"] == 1
    admin = api("GET", "/api/v1/reconciliation-runs/?legal_entity=uk&status=complete", tokens["admin"]).json()
    assert [r["id"] for r in admin["results"]] == [world["uk"]["reconciliation_run"].pk]
    bad = api("GET", "/api/v1/reconciliation-runs/?status=finished", tokens["admin"])
    assert bad.status_code == 400 and "status" in bad.json()["errors"]


# --- SLAs ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_flow_has_an_sla_default_until_an_admin_sets_one(api, tokens, entities) -> None:
    slas = {s["flow"]: s for s in api("GET", "/api/v1/slas/", tokens["viewer"]).json()["results"]}
    # Two clocks: the business cycle's SLA and the integration's own sync SLA (minutes).
    assert slas["bill-to-cash"]["target_label"] == "30 days" and slas["bill-to-cash"]["sync_target_minutes"] == 15
    assert set(slas) == {"quote-to-project", "project-to-bill", "bill-to-cash", "contract-change", "pipeline-to-demand"}
    assert slas["quote-to-project"] | {"measure": "", "sync_measure": "", "sync_target_minutes": 15} == {
        "flow": "quote-to-project",
        "measure": "",
        "sync_measure": "",
        "sync_target_minutes": 15,
        "target": "1.00",
        "unit": "business_days",
        "target_label": "1 business day",
        "note": "default (no SLA set by an admin)",
        "is_default": True,
        "updated_at": None,
    }
    assert api("GET", "/api/v1/slas/echo/", tokens["viewer"]).status_code == 404


@pytest.mark.django_db
def test_an_admin_sets_an_sla_audited_and_the_breach_flags_are_recomputed(
    api, tokens, entities, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from dashboards import tasks

    rebuilt: list[bool] = []
    monkeypatch.setattr(tasks.rollups_rebuild_task, "delay", lambda: rebuilt.append(True))
    with django_capture_on_commit_callbacks(execute=True):
        response = api(
            "PUT",
            "/api/v1/slas/bill-to-cash/",
            tokens["admin"],
            {"target": "12", "unit": "hours", "note": "CFO", "sync_target_minutes": 30},
        )
    assert response.status_code == 200 and response.json()["target_label"] == "12 h"
    assert response.json()["sync_target_minutes"] == 30
    assert response.json()["is_default"] is False and rebuilt == [True]
    sla = FlowSla.objects.get(flow="bill-to-cash")
    assert (sla.target, sla.unit, sla.note) == (Decimal("12"), "hours", "CFO")
    entry = AuditEntry.objects.get(action="sla.set")
    assert entry.before == {"target": "720", "unit": "hours", "sync_minutes": 15}
    assert entry.after == {"target": "12.00", "unit": "hours", "sync_minutes": 30}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"target": "0", "unit": "hours"}, 422),
        ({"target": "-1", "unit": "hours"}, 422),
        ({"target": "8", "unit": "fortnights"}, 400),
        ({"target": "8"}, 400),
        ({"target": "eight", "unit": "hours"}, 400),
        ({"target": "8", "unit": "hours", "sync_target_minutes": 0}, 400),
        ({"target": "8", "unit": "hours", "flow": "bill-to-cash"}, 400),
    ],
)
def test_a_bad_sla_is_refused_and_nothing_changes(api, tokens, entities, body, status) -> None:
    response = api("PUT", "/api/v1/slas/bill-to-cash/", tokens["admin"], body)
    assert response.status_code == status and response.json()["errors"]
    assert not FlowSla.objects.exists() and not AuditEntry.objects.filter(action="sla.set").exists()


def _ledger(conn, entity, number, *, status, posted, due, total, currency, payments=()):
    """An ERP invoice as its connector maps it, stored by the ledger service (read at clock.now())."""
    from connectors.base import LedgerInvoice, PaymentApplied
    from pscsync.ledger import ledger_record_invoice

    applied = tuple(PaymentApplied(f"{number}-{i}", number, Decimal(a), on) for i, (a, on) in enumerate(payments))
    is_posted = status in ("posted", "partly_paid", "paid")
    invoice = LedgerInvoice(
        id=number, number=number, key=f"I-{number}", project_key="", batch_key="", customer_id="C1",
        customer_name="Globex", currency=currency, total=Decimal(total), tax=Decimal("0.00"),
        open_balance=Decimal(total) - sum((p.amount for p in applied), Decimal("0")) if is_posted else Decimal("0"),
        status=status, source_status=status, invoice_date=posted, due_date=due,
        posting_date=posted if is_posted else None, payments=applied,
    )  # fmt: skip
    return ledger_record_invoice(legal_entity=entity, connection=conn, invoice=invoice)


@pytest.mark.django_db
def test_every_money_figure_from_the_ledger_with_its_currency_state_and_as_of(
    api, tokens, entities, monkeypatch
) -> None:
    """Receivables and their ageing, invoiced, cash collected, DSO and days to pay, worked by hand
    from the ledger below; each money figure with its currency, `complete`, `state` and `as_of`."""
    from dashboards.models import FxRate

    now = dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC)
    monkeypatch.setattr(clock, "now", lambda: now)
    us, uk, d = entities["us"], entities["uk"], dt.date
    ns = connection("netsuite-us", [us], kind="erp", vendor="netsuite")
    bc = connection("businesscentral-uk", [uk], kind="erp", vendor="businesscentral")
    FxRate.objects.create(currency="GBP", month="2026-10", kind="average", rate=Decimal("1.30"))
    FxRate.objects.create(currency="GBP", month="2026-10", kind="closing", rate=Decimal("1.28"))
    # N1 USD 1,000 posted 1 Oct, paid by 400 on 12 Oct and 600 on 20 Oct (paid in full 20 Oct).
    _ledger(ns, us, "N1", status="paid", posted=d(2026, 10, 1), due=d(2026, 10, 31), total="1000.00", currency="USD",
            payments=[("400.00", d(2026, 10, 12)), ("600.00", d(2026, 10, 20))])  # fmt: skip
    # N2 USD 3,000 posted 15 Aug, due 14 Sep, 1,200 paid 25 Oct: 1,800 owed, 47 days past due on 31 Oct.
    _ledger(ns, us, "N2", status="partly_paid", posted=d(2026, 8, 15), due=d(2026, 9, 14), total="3000.00",
            currency="USD", payments=[("1200.00", d(2026, 10, 25))])  # fmt: skip
    # N3 USD 500 pending approval in NetSuite: neither invoiced nor owed.
    _ledger(ns, us, "N3", status="pending_approval", posted=None, due=None, total="500.00", currency="USD")
    # B1 GBP 2,000 posted 20 Oct, due 19 Nov: owed, current.
    _ledger(bc, uk, "B1", status="posted", posted=d(2026, 10, 20), due=d(2026, 11, 19), total="2000.00",
            currency="GBP")  # fmt: skip
    # The bill-to-cash handoff that read N1 when its first payment came in (its times say 12 Oct).
    handoff(
        flow="bill-to-cash", conn=ns, entity=us, key="payment:N1-0", started=T0 + 7 * 24 * H,
        finished=T0 + 7 * 24 * H, times={"invoice_posted": "2026-10-01", "payment_applied": "2026-10-12"},
        outputs={"read_invoice": {"invoice": {"id": "N1", "total": "1000.00", "remaining": "600.00"}}},
    )  # fmt: skip
    rollups_rebuild_all()

    data = api("GET", f"/api/v1/metrics/?{PERIOD}", tokens["admin"]).json()  # the admin sees both entities
    m = {f["key"]: f for f in data["metrics"]}
    assert data["currency"] == "USD"
    # Receivables at 31 Oct: N2 1,800 + B1 GBP 2,000 × 1.28 (October closing) = 1,800 + 2,560 = 4,360.
    # Invoiced in October: N1 1,000 + B1 GBP 2,000 × 1.30 (October average) = 3,600.
    # Cash collected in October: 400 + 600 + 1,200 = 2,200 (all USD).
    expected = {
        "cash.receivables": "4360.00",
        "cash.receivables_current": "2560.00",
        "cash.receivables_1_30_days": "0",
        "cash.receivables_31_60_days": "1800.00",
        "cash.receivables_61_90_days": "0",
        "cash.receivables_over_90_days": "0",
        "billing.invoiced": "3600.00",
        "cash.collected": "2200.00",
    }
    for key, value in expected.items():
        assert Decimal(m[key]["value"]) == Decimal(value), key
        assert (m[key]["unit"], m[key]["complete"], m[key]["missing"], m[key]["state"]) == ("USD", True, {}, "measured")
        assert dt.datetime.fromisoformat(m[key]["as_of"].replace("Z", "+00:00")) == now
    assert (m["cash.receivables"]["count"], m["billing.invoiced"]["count"], m["cash.collected"]["count"]) == (2, 2, 3)
    # DSO: 4,360 ÷ invoiced 3 Aug – 31 Oct (N2 3,000 + N1 1,000 + B1 2,600 = 6,600) × 90 = 59.45 days.
    assert m["cash.dso"]["value"] == pytest.approx(4360 / 6600 * 90) and m["cash.dso"]["unit"] == "days"
    # Days to pay from the ledger: 1 Oct → 20 Oct (the payment that cleared it) = 456 h, not the
    # handoff's 12 Oct.
    assert m["bill-to-cash.latency_median"]["value"] == 456.0

    # The UK alone, in its functional currency: GBP 2,000 owed and invoiced, no cash yet (measured 0).
    uk_data = api("GET", f"/api/v1/metrics/?{PERIOD}&legal_entity=uk", tokens["admin"]).json()
    g = {f["key"]: f for f in uk_data["metrics"]}
    assert uk_data["currency"] == "GBP"
    assert [(g[k]["value"], g[k]["unit"]) for k in ("cash.receivables", "billing.invoiced", "cash.collected")] == [
        ("2000.00", "GBP"),
        ("2000.00", "GBP"),
        ("0", "GBP"),
    ]
    assert g["cash.collected"]["state"] == "measured"
    # DSO: 2,000 ÷ 2,000 × 90 = 90 days.
    assert g["cash.dso"]["value"] == pytest.approx(90.0)
    # The viewer's scope is the US: N2's 1,800 owed, nothing of the UK's.
    v = {f["key"]: f for f in api("GET", f"/api/v1/metrics/?{PERIOD}", tokens["viewer"]).json()["metrics"]}
    assert (v["cash.receivables"]["value"], v["cash.receivables_current"]["value"]) == ("1800.00", "0")

    # A CAD invoice with no CAD rate: the receivables say what they miss, per currency, for that
    # figure alone; DSO is not computed from a partial sum; cash collected is still complete.
    _ledger(ns, us, "N4", status="posted", posted=d(2026, 10, 28), due=d(2026, 11, 27), total="700.00", currency="CAD")
    m = {f["key"]: f for f in api("GET", f"/api/v1/metrics/?{PERIOD}", tokens["admin"]).json()["metrics"]}
    assert (m["cash.receivables"]["value"], m["cash.receivables"]["complete"]) == ("4360.00", False)
    assert m["cash.receivables"]["missing"] == {"CAD": "700.00"}
    assert m["cash.dso"]["value"] is None
    assert (m["cash.collected"]["complete"], m["cash.collected"]["missing"]) == (True, {})


@pytest.mark.django_db
def test_the_leader_figures_are_in_the_metrics_not_measured_until_their_source_is_read(api, tokens, deals) -> None:
    """Forecast accuracy, revenue schedule accuracy, reconciliation effort and every ledger figure are
    listed, each with a state; before any reconciliation or ledger read they are null, not zero."""
    m = {f["key"]: f for f in api("GET", f"/api/v1/metrics/?{PERIOD}", tokens["viewer"]).json()["metrics"]}
    for key in ("forecast.accuracy_30d_worked", "forecast.bias_90d_assigned"):
        assert m[key]["unit"] == "percent" and m[key]["value"] is None
    for key in ("revenue.schedule_value_accuracy", "revenue.schedule_row_match_rate"):
        assert (m[key]["state"], m[key]["value"]) == ("not_measured", None)
    # Nobody acted on anything: effort is measured, and it is zero.
    assert (m["reconciliation.effort_actions"]["value"], m["reconciliation.effort_hours"]["state"]) == (0, "measured")
    for key in ("cash.receivables", "cash.receivables_over_90_days", "cash.collected", "billing.invoiced", "cash.dso"):
        assert (m[key]["state"], m[key]["value"], m[key]["as_of"]) == ("not_measured", None, None), key
