"""The demo's simulated operators work real exceptions through pscsync's own HTTP interface, as a
person would: the retry dialog (review, then confirm), a resubmit with a corrected value, and a
resolve; each action is audited and counts in the reconciliation-effort figure."""

from __future__ import annotations

import datetime as dt

import pytest

from dashboards import leaders, metrics
from demo.simulation.operators import Workbench
from pscsync import clock
from pscsync.models import AuditEntry, Handoff
from tests.flows.conftest import run, trigger, won_deal


@pytest.fixture
def workbench(live_server, operator, settings):
    settings.TWO_FACTOR_REQUIRED_ROLES = []  # the demo's operators sign in with a password (docs/security.md)
    return Workbench(live_server.url, operator.username, "a-long-test-password")


def failed(firm, key: str, **deal) -> Handoff:
    opportunity = won_deal(firm, key=key, **deal)["opportunity"]
    handoff = run(trigger(firm, "quote-to-project", opportunity))
    assert handoff.status == Handoff.Status.NEEDS_ATTENTION, handoff.last_error_message
    return handoff


def test_operators_resubmit_correct_and_resolve_through_the_workbench(firm, workbench, transactional_db) -> None:
    no_tax = failed(firm, "71", account={"Tax_Profile__c": None})
    retired_line = failed(firm, "72", Service_Line__c="Cyber Security")
    handled = failed(firm, "73", Billing_Model__c="Retainer")
    listed = {row["id"] for row in workbench.exceptions()}
    assert {no_tax.pk, retired_line.pk, handled.pk} <= listed

    # 1. Fixed at the source, then the retry dialog: review first, then confirm (re-read the source).
    account = no_tax.steps.get(name="read_deal").output["account"]["id"]
    firm.salesforce.update(entity="account", record_id=account, fields={"Tax_Profile__c": "US-STANDARD"})
    assert workbench.resubmit(no_tax.pk, "set the tax profile", reread=True) == 200
    assert run(Handoff.objects.get(pk=no_tax.pk)).status == Handoff.Status.SUCCEEDED

    # 2. Resubmitted with a corrected value: the read deal's service line edited to Advisory.
    document = workbench.document(retired_line.pk)
    assert document["deal"]["service_line"] == "Cyber Security"
    edited = {**document, "deal": {**document["deal"], "service_line": "Advisory"}}
    assert workbench.resubmit_edited(retired_line.pk, edited, "retired service line → Advisory") == 200
    assert run(Handoff.objects.get(pk=retired_line.pk)).status == Handoff.Status.SUCCEEDED, Handoff.objects.get(
        pk=retired_line.pk
    ).last_error_message

    # 3. Handled by hand: resolved with the reason.
    assert workbench.resolve(handled.pk, "handled outside pscsync: set up by hand") == 200
    assert Handoff.objects.get(pk=handled.pk).status == Handoff.Status.RESOLVED

    people = AuditEntry.objects.filter(actor__username="otto.operator", action__startswith="handoff.")
    actions = list(people.values_list("action", flat=True))
    assert sorted(actions) == ["handoff.resolve", "handoff.resubmit", "handoff.resubmit"]
    # Three actions by the operator today: the reconciliation-effort figure has them.
    today = clock.now().date()
    effort = leaders.reconciliation_effort(metrics.Filters(today - dt.timedelta(days=1), today))
    assert effort["actions"] == 3 and effort["hours"] > 0
