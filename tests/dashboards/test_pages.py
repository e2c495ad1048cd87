"""Pages, CSV and JSON render the KPIs, and a viewer limited to one entity sees only its figures."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from dashboards.facts import rollups_rebuild_all
from pscsync import clock
from tests.dashboards.builders import T0, connection, handoff

H = dt.timedelta(hours=1)
PERIOD = "from=2026-10-01&to=2026-10-31"
PAGES = ["overview", "quote-to-project", "project-to-bill", "bill-to-cash", "exceptions", "health", "demand"]


@pytest.fixture
def firm(entities, monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    crm = connection("salesforce", list(entities.values()))
    for code, hours, customer in (("us", 5, "Contoso US"), ("uk", 11, "Fabrikam UK")):
        handoff(
            flow="quote-to-project",
            conn=crm,
            entity=entities[code],
            key=f"OPP-{code}",
            started=T0,
            finished=T0 + hours * H,
            customer=customer,
            times={"deal_closed": T0, "project_activated": T0 + hours * H},
        )
        handoff(
            flow="project-to-bill",
            conn=crm,
            entity=entities[code],
            key=f"BE-{code}",
            status="needs_attention",
            customer=customer,
            amount="777.00" if code == "uk" else "100.00",
            times={"billing_released": T0, "time_approved": T0},
        )
    rollups_rebuild_all()
    return entities


@pytest.mark.django_db
@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"page-{p}")
def test_every_page_renders_with_its_help_and_csv(client, admin, firm, page) -> None:
    client.force_login(admin)
    url = "/dashboards/" if page == "overview" else f"/dashboards/{page}/"
    response = client.get(f"{url}?{PERIOD}")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<script>" not in body and "style=" not in body  # CSP: no inline script or style
    assert "Export CSV" in body


@pytest.mark.django_db
def test_viewer_of_one_entity_sees_only_its_figures(client, viewer, firm) -> None:
    client.force_login(viewer)  # limited to the US entity
    page = client.get(f"/dashboards/quote-to-project/?{PERIOD}").content.decode()
    assert "5 h" in page and "11 h" not in page
    csv = client.get(f"/dashboards/project-to-bill/?{PERIOD}&csv=blocked-billing").content.decode()
    assert "BE-us" in csv and "BE-uk" not in csv
    # Asking for the UK entity by URL gives nothing, not the UK figures.
    data = client.get(f"/api/v1/metrics/?{PERIOD}&legal_entity=uk").json()
    figures = {m["key"]: m for m in data["metrics"]}
    assert figures["quote-to-project.finished"]["value"] == 0
    data = client.get(f"/api/v1/metrics/?{PERIOD}").json()
    figures = {m["key"]: m for m in data["metrics"]}
    assert figures["quote-to-project.latency_median"]["value"] == 5.0
    assert figures["billing.released_not_invoiced"] == {
        **figures["billing.released_not_invoiced"],
        "key": "billing.released_not_invoiced",
        "value": "100.00",
        "unit": "USD",
        "count": 1,
        "state": "measured",
        "complete": True,
        "missing": {},
    }
    items = client.get(f"/dashboards/items/?{PERIOD}&flow=quote-to-project&measure=measured&csv=1").content.decode()
    assert "OPP-us" in items and "OPP-uk" not in items


@pytest.mark.django_db
def test_drill_down_reaches_the_handoff(client, admin, firm) -> None:
    client.force_login(admin)
    body = client.get(f"/dashboards/items/?{PERIOD}&flow=quote-to-project&measure=measured").content.decode()
    assert "/handoffs/" in body and "OPP-uk" in body


@pytest.mark.django_db
def test_admin_sets_an_sla(client, admin, firm, monkeypatch, django_capture_on_commit_callbacks) -> None:
    from dashboards import tasks
    from dashboards.models import FlowSla

    monkeypatch.setattr(tasks.rollups_rebuild_task, "delay", lambda: tasks.rollups_rebuild_task())
    client.force_login(admin)
    # The rebuild is queued after the SLA is committed (dashboards.services.flow_sla_set).
    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(
            "/dashboards/settings/", {"sla-flow": "quote-to-project", "sla-target": "8", "sla-unit": "hours"}
        )
    assert r.status_code == 302
    assert FlowSla.objects.get(flow="quote-to-project").target == 8
    body = client.get(f"/dashboards/quote-to-project/?{PERIOD}").content.decode()
    assert "1 breaches of 8 h" in body


@pytest.mark.django_db
def test_unbilled_wip_is_scoped_in_page_csv_and_json(client, viewer, firm) -> None:
    import datetime as dt
    from decimal import Decimal

    from pscsync.models import UnbilledWork

    for code, amount in (("us", "1800.00"), ("uk", "950.00")):
        UnbilledWork.objects.create(
            legal_entity=firm[code],
            kind="milestone",
            source_id=f"MS-{code}",
            description=f"Go-live {code}",
            project_key=f"P-OPP-{code}",
            work_date=dt.date(2026, 10, 20),
            amount=Decimal(amount),
            currency="USD",
            read_at=T0,
        )
    client.force_login(viewer)  # limited to the US entity
    page = client.get(f"/dashboards/project-to-bill/?{PERIOD}").content.decode()
    assert "Go-live us" in page and "Go-live uk" not in page
    csv = client.get(f"/dashboards/project-to-bill/?{PERIOD}&csv=wip-by-project").content.decode()
    assert "P-OPP-us" in csv and "P-OPP-uk" not in csv
    figures = {m["key"]: m for m in client.get(f"/api/v1/metrics/?{PERIOD}").json()["metrics"]}
    # The US milestone plus the US batch released and not invoiced (100.00).
    assert (figures["billing.unbilled_wip"]["value"], figures["billing.unbilled_wip"]["count"]) == ("1900.00", 2)


@pytest.mark.django_db
def test_a_latency_over_a_year_is_null_in_the_json_not_an_error(client, admin, entities, monkeypatch) -> None:
    # A deal activated 400 days after it closed lands in the histograms' open last bucket (infinity).
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    crm = connection("salesforce", list(entities.values()))
    closed = T0 - dt.timedelta(days=400)
    handoff(
        flow="quote-to-project",
        conn=crm,
        entity=entities["us"],
        key="OPP-slow",
        started=closed,
        finished=T0,
        times={"deal_closed": closed.isoformat(), "project_activated": T0.isoformat()},
    )
    rollups_rebuild_all()
    client.force_login(admin)
    page = client.get(f"/dashboards/quote-to-project/?{PERIOD}").content.decode()
    assert "over a year" in page
    response = client.get(f"/api/v1/metrics/?{PERIOD}")
    assert response.status_code == 200
    figures = {m["key"]: m for m in response.json()["metrics"]}
    assert figures["quote-to-project.latency_median"]["value"] is None
    assert "over a year" in figures["quote-to-project.latency_median"]["definition"]
    weeks = client.get(f"/api/v1/metrics/latency/?{PERIOD}&flow=quote-to-project").json()["flows"][0]["weeks"]
    assert [w["median_hours"] for w in weeks if w["measured"]] == [None]


@pytest.mark.django_db
def test_a_backlog_table_shows_the_oldest_200_and_the_csv_has_every_row(
    client, viewer, entities, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    """250 released batches without an invoice: the page reads and lists the 200 oldest and says
    how many the CSV has; the CSV lists all 250, oldest first; the tile counts all 250."""
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    crm = connection("salesforce", list(entities.values()))
    with django_capture_on_commit_callbacks(execute=True):  # the backlog hook, as after each commit
        for i in range(250):
            released = T0 - dt.timedelta(days=i)
            handoff(
                flow="project-to-bill",
                conn=crm,
                entity=entities["us"],
                key=f"BATCH-{i:03d}",
                status="running",
                started=released,
                times={"billing_released": released, "time_approved": released},
            )
    client.force_login(viewer)
    html = client.get(f"/dashboards/project-to-bill/?{PERIOD}").content.decode()
    assert "Showing the first 200 of 250 rows" in html
    assert "BATCH-249" in html and "BATCH-050" in html and "BATCH-049" not in html  # oldest first
    rows = client.get(f"/dashboards/project-to-bill/?{PERIOD}&csv=blocked-billing").content.decode().splitlines()
    assert len(rows) == 251 and rows[1].startswith("BATCH-249,") and rows[-1].startswith("BATCH-000,")
    overview = client.get(f"/dashboards/?{PERIOD}").content.decode()
    assert "(250 batches)" in overview


@pytest.mark.django_db
def test_billing_exceptions_by_type_customer_entity_and_project(client, admin, entities, monkeypatch) -> None:
    """Known answers for the exceptions page's four breakdowns (counted and summed in SQL), in
    the reporting currency at the month's average rate."""
    from dashboards.models import FxRate
    from remediation.models import ExceptionCause, HandoffException

    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    FxRate.objects.create(currency="GBP", month="2026-10", kind="average", rate="1.50")
    crm = connection("salesforce", list(entities.values()))
    cause = ExceptionCause.objects.create(
        signature="s" * 64,
        flow="project-to-bill",
        error_class="mapping",
        message="x",
        first_seen_at=T0,
        last_seen_at=T0,
    )
    batches = [  # entity, customer, project, amount, currency, filed in the workbench as, failed attempt
        ("us", "Contoso", "Cloud move", "1000.00", "USD", "mapping", "mapping"),
        ("us", "Contoso", "Cloud move", "500.00", "USD", "rejected", "mapping"),
        ("uk", "Fabrikam", "", "200.00", "GBP", None, "validation"),
    ]
    for code, customer, project, amount, currency, filed, failed in batches:
        h = handoff(
            flow="project-to-bill",
            conn=crm,
            entity=entities[code],
            customer=customer,
            amount=amount,
            currency=currency,
            times={"billing_released": T0, "time_approved": T0, "invoice_created": T0 + 5 * H},
            finished=T0 + 5 * H,
            attempts=[{"outcome": failed}],
            outputs={"read_billing": {"billing": {"project_name": project}}} if project else None,
        )
        if filed:
            HandoffException.objects.create(
                handoff=h, cause=cause, flow=h.flow, error_class=filed, opened_at=T0, last_failed_at=T0
            )
    rollups_rebuild_all()
    client.force_login(admin)

    def csv(name: str) -> list[str]:
        return (
            client.get(f"/dashboards/exceptions/?{PERIOD}&csv=billing-exceptions-by-{name}")
            .content.decode()
            .splitlines()[1:]
        )

    assert csv("type") == [
        'Mapping failed,1,"USD 1,000"',
        "Rejected by the target,1,USD 500",
        "Not filed in the workbench,1,USD 300",
    ]
    assert csv("customer") == ['Contoso,2,"USD 1,500"', "Fabrikam,1,USD 300"]
    assert csv("entity") == [f'{entities["us"].name},2,"USD 1,500"', f"{entities['uk'].name},1,USD 300"]
    assert csv("project") == ['Cloud move,2,"USD 1,500"', "—,1,USD 300"]


@pytest.mark.django_db
def test_receivables_ageing_and_cash_agree_in_page_csv_and_json_and_respect_scope(client, viewer, firm) -> None:
    from decimal import Decimal

    from connectors.models import Connection
    from tests.dashboards.test_metrics import ledger_invoice

    client.force_login(viewer)  # limited to the US entity
    before = client.get(f"/dashboards/bill-to-cash/?{PERIOD}").content.decode()
    assert "No ERP invoice has been read yet" in before and "Not measured yet" in before  # not "USD 0 owed"
    erp = Connection.objects.get(slug="salesforce")  # any connection: the ledger row only names it
    # US: 2,000 posted 1 Sep, due 1 Oct, 500 paid 10 Oct -> 1,500 owed, 30 days past due at 31 Oct.
    ledger_invoice(
        erp, firm["us"], "US-1", status="partly_paid", posted=dt.date(2026, 9, 1), due=dt.date(2026, 10, 1),
        total="2000.00", payments=[("500.00", dt.date(2026, 10, 10))],
    )  # fmt: skip
    # UK (the viewer does not see it): 9,000 posted, unpaid.
    ledger_invoice(
        erp, firm["uk"], "UK-1", status="posted", posted=dt.date(2026, 10, 2), due=dt.date(2026, 11, 1), total="9000.00"
    )
    page = client.get(f"/dashboards/bill-to-cash/?{PERIOD}").content.decode()
    assert "Receivables ageing by customer" in page and "USD 1,500" in page and "9,000" not in page
    csv = client.get(f"/dashboards/bill-to-cash/?{PERIOD}&csv=receivables-ageing").content.decode().splitlines()
    assert len(csv) == 2 and "USD 1,500" in csv[1] and "Globex" in csv[1]
    drill = client.get(f"/dashboards/bill-to-cash/?{PERIOD}&csv=open-invoices").content.decode().splitlines()
    assert len(drill) == 2 and drill[1].startswith("US-1,") and "1,500.00" in drill[1] and ",30," in drill[1]
    assert "1 Sep 2026,1 Oct 2026" in drill[1]  # posted, due: dates as people write them
    figures = {m["key"]: m for m in client.get(f"/api/v1/metrics/?{PERIOD}").json()["metrics"]}
    assert Decimal(figures["cash.receivables"]["value"]) == Decimal("1500.00")
    assert Decimal(figures["cash.receivables_1_30_days"]["value"]) == Decimal("1500.00")
    assert Decimal(figures["cash.collected"]["value"]) == Decimal("500.00")
    # Invoiced in the 90 days to 31 Oct: 2,000 (1 Sep); DSO = 1,500 ÷ 2,000 × 90 = 67.5 days.
    assert figures["cash.dso"]["value"] == pytest.approx(67.5)
    assert figures["cash.dso"]["state"] == "measured" and figures["cash.dso"]["as_of"]


@pytest.mark.django_db
def test_an_age_bar_opens_exactly_the_handoffs_of_its_bucket(client, viewer, entities, monkeypatch) -> None:
    # Today is 31 Oct 2026. Needing attention since: 31 Oct (0 days), 25 Oct (6), 24 Oct (7),
    # 2 Oct (29), 1 Oct (30) and, in the UK the viewer does not see, 24 Oct. The "7–29 days" bar
    # is 24 Oct and 2 Oct (6 is "1–6 days", 30 is "30 days or more").
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC))
    crm = connection("salesforce", list(entities.values()))
    for key, day, code in (
        ("A0", 31, "us"),
        ("A6", 25, "us"),
        ("A7", 24, "us"),
        ("A29", 2, "us"),
        ("A30", 1, "us"),
        ("UK7", 24, "uk"),
    ):
        start = dt.datetime(2026, 10, day, 9, tzinfo=dt.UTC)
        handoff(
            flow="quote-to-project", conn=crm, entity=entities[code], key=key, status="needs_attention", started=start
        )
    from dashboards.metrics import EXCEPTION_AGE_BUCKETS, Filters
    from dashboards.pages import age_bucket_link

    f = Filters(start=dt.date(2026, 10, 1), end=dt.date(2026, 10, 31), entity_ids=(entities["us"].pk,))
    links = [age_bucket_link(f, lo, hi) for lo, hi, _label in EXCEPTION_AGE_BUCKETS]
    assert links[2] == "/handoffs/?status=needs_attention&age_min=7&age_max=29&legal_entity=us"
    client.force_login(viewer)
    keys = []
    for link in links:
        page = client.get(link).content.decode()
        keys.append(sorted(re.findall(r">(A\d+|UK\d+)</a>", page)))
    assert keys == [["A0"], ["A6"], ["A29", "A7"], ["A30"]]
