"""The benchmarks' large-firm loader (bench/largefirm.py) at a tiny size, so it cannot silently rot:
what it writes with COPY must look to the pages like what the engine writes."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from pscsync import clock

pytestmark = pytest.mark.django_db


@pytest.fixture
def loaded():
    if connection.vendor != "postgresql":
        pytest.skip("the loader writes with PostgreSQL COPY")
    from bench.largefirm import aggregates_build, load

    stats = load(2000, seed=3, now=clock.now(), log=lambda _m: None)
    aggregates_build(stats, log=lambda _m: None)
    return stats


def test_loader_writes_the_shapes_the_flows_write(loaded) -> None:
    from pscsync.models import Attempt, Handoff, Step

    assert Handoff.objects.count() == loaded.handoffs == 2000
    # About five attempts per handoff, as the 1M / 5M firm has, and every flow's real steps.
    assert 4.0 <= Attempt.objects.count() / 2000 <= 6.0
    assert set(Step.objects.filter(handoff__flow="quote-to-project").values_list("name", flat=True)) >= {
        "read_deal",
        "validate_deal",
        "upsert_project",
        "update_opportunity",
    }
    assert loaded.by_status["needs_attention"] == Handoff.objects.filter(status="needs_attention").count() > 50


def test_the_inbox_shows_every_loaded_open_exception(loaded, client) -> None:
    from django.contrib.auth import get_user_model

    from remediation import selectors

    operator = get_user_model().objects.get(username="operator")
    groups = selectors.inbox_groups(operator, selectors.InboxFilter(), limit=1000)
    assert sum(g.count for g in groups) == loaded.open_in_open_causes > 0
    # Each open exception belongs to a handoff that needs a person, and the other way round.
    assert loaded.open_exceptions == loaded.by_status["needs_attention"]
    client.force_login(operator)
    page = client.get("/workbench/")
    assert page.status_code == 200
    assert str(groups[0].count) in page.content.decode()


def test_the_overview_counts_what_was_loaded(loaded, client) -> None:
    from django.contrib.auth import get_user_model

    from dashboards import metrics
    from dashboards.models import FlowFact

    everything = metrics.Filters(start=clock.now().date() - dt.timedelta(days=800), end=clock.now().date())
    opened = metrics.open_exceptions(everything)
    assert opened["count"] == loaded.by_status["needs_attention"]
    # Rollups built by the production backfill agree with the facts they come from.
    started = sum(metrics.flow_stats(everything, flow, with_previous=False).started for flow in metrics.FLOWS)
    assert started == FlowFact.objects.filter(start_day__isnull=False).count() > 1000
    client.force_login(get_user_model().objects.get(username="viewer"))
    assert client.get("/dashboards/").status_code == 200


def test_the_ledger_holds_every_invoice_raised(loaded) -> None:
    """One ERP invoice per invoice the project-to-bill handoffs raised, in ledger states whose
    balances agree with their payment applications (so the money figures read a real ledger)."""
    from django.db.models import Sum

    from pscsync.models import ErpInvoice, Handoff, PaymentApplication

    raised = Handoff.objects.filter(flow="project-to-bill", business_times__has_key="invoice_created").count()
    assert ErpInvoice.objects.exclude(batch_key="").count() == raised > 100
    assert loaded.ledger_invoices == ErpInvoice.objects.count()
    statuses = set(ErpInvoice.objects.values_list("status", flat=True))
    assert {"posted", "paid"} <= statuses
    for invoice in ErpInvoice.objects.filter(status__in=["paid", "partly_paid"]).annotate(
        a=Sum("applications__amount")
    ):
        assert invoice.total - invoice.a == invoice.open_balance
        assert invoice.posting_date is not None
    assert not PaymentApplication.objects.filter(invoice__status__in=["draft", "pending_approval"]).exists()


def test_the_history_lies_in_its_monthly_partitions(loaded) -> None:
    """Two years of attempts and audit entries go to their months' partitions, as in a database
    that ran those years, not to the DEFAULT partition, where retention could drop none of them."""
    from pscsync.partitions import partition_months, partitioned

    assert partitioned("pscsync_attempt") and partitioned("pscsync_auditentry")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pscsync_attempt_default")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT count(*) FROM pscsync_auditentry_default")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT count(*) FROM pscsync_attempt")
        assert cursor.fetchone()[0] > 8000
    # 730 days back from today: the month of 730 days ago through this month, each its own partition.
    today = clock.now().date()
    first = (today - dt.timedelta(days=730)).replace(day=1)
    months = (today.year - first.year) * 12 + today.month - first.month + 1
    assert months in (24, 25)
    history = [m for m in partition_months("pscsync_attempt") if first <= m.first <= today]
    assert len(history) == months
