"""The operator's inbox: operators land on it; most urgent first (SLA breached, then money at
risk in the reporting currency, then age); an SLA column in words."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from dashboards.models import FlowSla, FxRate
from pscsync import clock
from pscsync.lifecycle import handoff_move
from pscsync.models import Event, Handoff
from remediation.selectors import InboxFilter, inbox_groups, inbox_totals
from tests.helpers import moves_told

pytestmark = pytest.mark.django_db


def _failed(
    connection, entity, *, key: str, hours_ago: float, amount: int | None, currency: str, message: str, customer=""
) -> Handoff:
    now = clock.now()
    started = now - dt.timedelta(hours=hours_ago)
    event = Event.objects.create(
        connection=connection, source_event_id=f"e-{key}", occurred_at=started, received_at=now, raw_body="{}"
    )
    handoff = Handoff.objects.create(
        flow="quote-to-project",
        business_key=key,
        source_connection=connection,
        trigger_event=event,
        business_started_at=started,
        created_at=now,
        status=Handoff.Status.RUNNING,
        amount=amount,
        currency=currency,
        customer_name=customer,
        legal_entity=entity,
    )
    with moves_told():  # the workbench's listener opens the exception, as after the runner's move
        handoff_move(
            handoff,
            from_states=[Handoff.Status.RUNNING],
            to=Handoff.Status.NEEDS_ATTENTION,
            actor="test",
            fields={"last_error_class": "validation", "last_error_message": message},
        )
    return handoff


def test_most_urgent_first_breach_then_converted_money_then_age(operator, echo_connection, entities) -> None:
    FlowSla.objects.create(flow="quote-to-project", target=Decimal("24"), unit=FlowSla.Unit.HOURS)
    month = clock.now().strftime("%Y-%m")
    FxRate.objects.create(currency="GBP", month=month, kind=FxRate.Kind.CLOSING, rate=Decimal("1.25"))
    us = entities["us"]
    # Not breached (started 2 h ago): 10,000 GBP = 12,500 USD at 1.25, more than 11,000 USD.
    _failed(echo_connection, us, key="A", hours_ago=2, amount=10000, currency="GBP", message="no Tax Profile")
    _failed(echo_connection, us, key="B", hours_ago=3, amount=11000, currency="USD", message="no Service Line")
    # Breached (started 27 h ago against 24 h): first, though it carries the least money.
    _failed(echo_connection, us, key="C", hours_ago=27, amount=100, currency="USD", message="no Amount")
    groups = inbox_groups(operator, InboxFilter())
    assert [g.cause.title for g in groups] == ["no Amount", "no Tax Profile", "no Service Line"]
    from pscsync.glossary import sla_words

    assert sla_words(groups[0].sla_remaining) == "3 h over"
    assert sla_words(groups[1].sla_remaining) == "due in 22 h"


def test_a_cause_in_two_currencies_and_entities_is_one_row_with_its_money_per_currency(
    admin, echo_connection, entities
) -> None:
    """The inbox reads one row per cause and currency and folds them per cause: the counts, dates,
    money, customers and entities of a cause that fails in GBP for the UK and in USD for the US."""
    us, uk = entities["us"], entities["uk"]
    a = _failed(echo_connection, uk, key="A", hours_ago=2, amount=10000, currency="GBP", message="no Tax Profile",
                customer="Initech")  # fmt: skip
    _failed(echo_connection, us, key="D", hours_ago=5, amount=500, currency="USD", message="no Tax Profile",
            customer="Globex")  # fmt: skip
    _failed(echo_connection, us, key="E", hours_ago=1, amount=250, currency="USD", message="no Tax Profile",
            customer="Globex")  # fmt: skip
    _failed(echo_connection, us, key="B", hours_ago=3, amount=11000, currency="USD", message="no Service Line")
    _failed(echo_connection, us, key="F", hours_ago=4, amount=None, currency="", message="no Amount")

    # Most money at risk: a plain sum per cause (11,000 > 10,000 + 500 + 250 = 10,750); a cause
    # with no amount at all comes last.
    groups = inbox_groups(admin, InboxFilter(sort="money"))
    assert [g.cause.title for g in groups] == ["no Service Line", "no Tax Profile", "no Amount"]
    tax = groups[1]
    assert tax.count == 3
    assert tax.money == [("GBP", 10000), ("USD", 750)]
    assert tax.customers == ["Globex", "Initech"]
    assert tax.entities == ["Acme Consulting Inc.", "Acme Consulting Ltd."]
    assert tax.first_seen == a.exception.opened_at  # the three opened in the order made: A first
    assert groups[2].money == [] and groups[2].count == 1
    assert inbox_totals(admin, InboxFilter()) == {
        "handoffs": 5,
        "groups": 3,
        "money": [("GBP", 10000), ("USD", 11750)],  # 500 + 250 + 11,000
    }
    # The other orders over the same folded rows: most handoffs; oldest first (opened A, D, E, B, F).
    assert [g.count for g in inbox_groups(admin, InboxFilter(sort="count"))] == [3, 1, 1]
    oldest = [g.cause.title for g in inbox_groups(admin, InboxFilter(sort="oldest"))]
    assert oldest == ["no Tax Profile", "no Service Line", "no Amount"]
    recent = [g.cause.title for g in inbox_groups(admin, InboxFilter(sort="recent"))]
    assert recent == ["no Amount", "no Service Line", "no Tax Profile"]


def test_an_operator_lands_on_the_workbench(client, operator) -> None:
    client.force_login(operator)
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/workbench/"
