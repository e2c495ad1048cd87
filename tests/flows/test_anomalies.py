"""The demo firm's anomalies end as the right error class, with a message naming the record and
the fix, and nothing half-written; a vendor outage is ridden out without duplicates."""

from __future__ import annotations

import pytest

from pscsync import clock
from pscsync.models import Handoff
from tests.flows.conftest import run, trigger, won_deal

pytestmark = pytest.mark.django_db


def erp_customers(firm, key: str) -> int:
    return firm.sandboxes["netsuite"].journal()["creates_by_key"].get(f"customer/{key}", 0)


def test_a_missing_tax_profile_is_a_validation_error_naming_the_account(firm) -> None:
    deal = won_deal(firm, key="51", account={"Tax_Profile__c": None})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert (handoff.status, handoff.last_error_class) == (Handoff.Status.NEEDS_ATTENTION, "validation")
    assert f"account 'Globex 51' ({deal['account']}) has no Tax Profile" in handoff.last_error_message
    assert "set Tax Profile on the account in Salesforce" in handoff.last_error_message
    assert erp_customers(firm, f"C-{deal['account']}") == 0  # nothing written anywhere


def test_an_unknown_service_line_is_a_mapping_error_naming_the_value_map(firm) -> None:
    deal = won_deal(firm, key="52", Service_Line__c="Cyber Security")
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert (handoff.status, handoff.last_error_class) == (Handoff.Status.NEEDS_ATTENTION, "mapping")
    assert "service line 'Cyber Security'" in handoff.last_error_message
    assert "'service_line' value map of mapping netsuite-us/contract@v1" in handoff.last_error_message
    assert erp_customers(firm, f"C-{deal['account']}") == 0


def test_several_problems_are_reported_together(firm) -> None:
    deal = won_deal(
        firm, key="53", Billing_Model__c="Retainer", Contract_End__c="2026-01-01", account={"BillingCountry": None}
    )
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    message = handoff.last_error_message
    assert (
        "has no Billing Country" in message
        and "billing model 'Retainer'" in message
        and "is before Contract Start" in message
    )


def test_a_customer_keyed_by_hand_in_the_erp_is_not_duplicated(firm) -> None:
    netsuite = firm.connector("netsuite-us")
    netsuite.send(
        "POST",
        "/services/rest/record/v1/customer",
        json={"companyName": "Initech", "subsidiary": {"id": "3"}, "currency": {"id": "1"}},
    )
    deal = won_deal(firm, key="54", account_name="Initech")
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert (handoff.status, handoff.last_error_class) == (Handoff.Status.NEEDS_ATTENTION, "validation")
    assert "already has a customer named 'Initech'" in handoff.last_error_message
    assert f"set that customer's external id to C-{deal['account']}" in handoff.last_error_message
    assert erp_customers(firm, f"C-{deal['account']}") == 0


def test_an_erp_outage_is_retried_and_nothing_is_written_twice(firm, settings) -> None:
    deal = won_deal(firm, key="55")
    firm.sandboxes["netsuite"].fault(error_status=503, match="/record/v1/salesOrder", count=2)
    frozen = clock.FrozenClock()
    clock.use(frozen)
    try:
        handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
        assert handoff.status == Handoff.Status.WAITING_RETRY
        # A 5xx on a write may or may not have been applied: the retry looks before writing.
        assert handoff.last_error_class == "unknown"
        for _ in range(3):
            frozen.advance(3600)
            handoff = run(handoff)
            if handoff.status == Handoff.Status.SUCCEEDED:
                break
    finally:
        clock.use(None)
    assert handoff.status == Handoff.Status.SUCCEEDED, handoff.last_error_message
    creates = firm.sandboxes["netsuite"].journal()["creates_by_key"]
    assert creates[f"customer/C-{deal['account']}"] == 1 and creates[f"salesOrder/SO-{deal['opportunity']}"] == 1
    # The steps done before the outage were not sent again.
    assert handoff.steps.get(name="upsert_customer").attempts.count() == 1


def test_a_rate_limit_answer_is_waited_out_as_the_vendor_asks(firm) -> None:
    deal = won_deal(firm, key="56")
    firm.sandboxes["netsuite"].fault(error_status=429, retry_after=120, match="/record/v1/customer", count=1)
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert handoff.status == Handoff.Status.WAITING_RETRY
    wait = (handoff.next_attempt_at - clock.now()).total_seconds()
    assert wait >= 115  # never sooner than the vendor's Retry-After
