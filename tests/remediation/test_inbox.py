"""The inbox and its helpers as an operator uses them: archive until N more occurrences or a date,
saved views shared by the team, filters in the address, assignee filter, search by business
identifiers, totals and exports limited to what the user may see, the replay preview, the
resubmit dialog's duplicate warning and the fix buttons that open the mapping studio."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest

from pscsync import clock
from remediation.models import BulkJob, ExceptionCause, ExceptionStatus, SavedView
from remediation.selectors import InboxFilter, inbox_groups, inbox_totals
from remediation.services import cause_archive, exceptions_reconcile, handoff_assign, saved_view_save
from tests.flows.conftest import run, trigger, won_deal

pytestmark = pytest.mark.django_db


def _tax_failure(firm, key: str, **deal):
    ids = won_deal(firm, key=key, account={"Tax_Profile__c": None}, **deal)
    return run(trigger(firm, "quote-to-project", ids["opportunity"]))


def test_archived_until_n_more_occurrences_comes_back_on_the_nth(firm, operator) -> None:
    _tax_failure(firm, "a1")
    cause = ExceptionCause.objects.get()
    cause_archive(actor=operator, cause=cause, until=None, occurrences=2, reason="known, fix on Friday")
    assert inbox_groups(operator, InboxFilter()) == []  # out of Open
    assert len(inbox_groups(operator, InboxFilter(tab="archived"))) == 1

    _tax_failure(firm, "a2")  # one more: still archived
    assert ExceptionCause.objects.get().status == ExceptionStatus.ARCHIVED
    _tax_failure(firm, "a3")  # the second more: back in Open with all three
    cause = ExceptionCause.objects.get()
    assert (cause.status, cause.archived_until_occurrences) == (ExceptionStatus.OPEN, None)
    assert inbox_groups(operator, InboxFilter())[0].count == 3


def test_archived_until_a_date_comes_back_when_it_passes_without_a_new_failure(firm, operator) -> None:
    _tax_failure(firm, "a4")
    cause = ExceptionCause.objects.get()
    cause_archive(actor=operator, cause=cause, until=clock.now() + dt.timedelta(days=1), occurrences=None, reason="x")
    exceptions_reconcile()
    assert ExceptionCause.objects.get().status == ExceptionStatus.ARCHIVED  # not yet
    ExceptionCause.objects.filter(pk=cause.pk).update(archived_until=clock.now() - dt.timedelta(minutes=1))
    exceptions_reconcile()  # beat's run after the date
    assert ExceptionCause.objects.get().status == ExceptionStatus.OPEN


def test_a_saved_view_is_shared_with_the_team_and_removed_only_by_its_author_or_an_admin(
    client, firm, operator, outsider, admin
) -> None:
    view = saved_view_save(actor=operator, name="US validation", query="flow=quote-to-project&error_class=validation")
    client.force_login(outsider)
    page = client.get("/workbench/").content.decode()
    assert "US validation" in page and "?flow=quote-to-project&amp;error_class=validation" in page
    removed = client.post(f"/workbench/views/{view.pk}/delete/", follow=True).content.decode()
    assert "saved by someone else" in removed and SavedView.objects.filter(pk=view.pk).exists()
    client.force_login(admin)
    client.post(f"/workbench/views/{view.pk}/delete/")
    assert not SavedView.objects.exists()


def test_filters_sort_and_tab_live_in_the_address(client, firm, operator) -> None:
    _tax_failure(firm, "f1")
    client.force_login(operator)
    page = client.get("/workbench/?flow=quote-to-project&error_class=validation&sort=money&assignee=none").content
    page = page.decode()
    assert 'hx-push-url="true"' in page  # each change of filter updates the address
    assert '<option value="quote-to-project" selected>' in page
    assert '<option value="validation" selected>Source data problem</option>' in page
    assert '<option value="money" selected>' in page and '<option value="none" selected>' in page
    assert "has no Tax Profile" in page
    assert "Nothing matches this filter" in client.get("/workbench/?flow=bill-to-cash").content.decode()


def test_the_assignee_filter_finds_what_is_assigned_to_a_person(firm, operator, admin) -> None:
    mine = _tax_failure(firm, "g1")
    _tax_failure(firm, "g2")
    handoff_assign(actor=admin, handoff=mine, assignee=operator)
    assert inbox_groups(operator, InboxFilter(assignee=operator.username))[0].count == 1
    assert inbox_groups(operator, InboxFilter(assignee="none"))[0].count == 1


def test_search_finds_a_handoff_by_its_project_code_contract_or_customer(firm, operator) -> None:
    first = _tax_failure(firm, "s1", account_name="Umbrella Corp")
    _tax_failure(firm, "s2")
    for query in (f"P-{first.business_key}", f"so-{first.business_key}", "umbrella"):
        [group] = inbox_groups(operator, InboxFilter(q=query))
        assert group.count == 1, query


def test_totals_and_exports_hold_only_what_the_user_may_see(client, firm, operator, outsider) -> None:
    _tax_failure(firm, "e1")
    _tax_failure(firm, "e2")
    assert inbox_totals(operator, InboxFilter()) == {"handoffs": 2, "groups": 1, "money": [("USD", 240000)]}
    assert inbox_totals(outsider, InboxFilter()) == {"handoffs": 0, "groups": 0, "money": []}

    client.force_login(operator)
    rows = list(csv.reader(io.StringIO(b"".join(client.get("/workbench/export.csv").streaming_content).decode())))
    assert rows[0][:3] == ["Handoff", "Flow", "Step"] and len(rows) == 3
    assert rows[1][1:4] == ["Quote to project", "Check the deal", "Source data problem"]  # words, not codes
    assert {r[7] for r in rows[1:]} == {"Globex e1", "Globex e2"} and rows[1][9] == "120000.00"
    client.force_login(outsider)  # the UK operator: the header, and nothing of the US entity
    rows = list(csv.reader(io.StringIO(b"".join(client.get("/workbench/export.csv").streaming_content).decode())))
    assert len(rows) == 1


def test_the_replay_preview_counts_before_it_runs_and_runs_only_what_was_previewed(client, firm, operator) -> None:
    _tax_failure(firm, "p1")
    _tax_failure(firm, "p2")
    ok = won_deal(firm, key="p3")
    run(trigger(firm, "quote-to-project", ok["opportunity"]))
    now = clock.now()
    window = {
        "connection": "salesforce",
        "start": (now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "end": (now + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
        "reason": "tax profiles fixed in Salesforce",
    }
    client.force_login(operator)
    page = client.post("/workbench/replay/", window).content.decode()
    # The events carry no legal entity of their own: they count through the handoffs they led to.
    assert "<strong>3</strong> events received in the window" in page
    assert re.search(r"Needs attention.*?<td class=\"num\">2</td>", page, re.S)
    assert re.search(r"Succeeded.*?<td class=\"num\">1</td>.*?nothing to do", page, re.S)
    seen = re.search(r'name="seen" value="(\w+)"', page).group(1)

    _tax_failure(firm, "p4")  # something changed since the preview
    stale = client.post("/workbench/replay/", {**window, "confirm": "yes", "seen": seen})
    assert stale.status_code == 409 and not BulkJob.objects.exists()
    assert "changed since the preview" in stale.content.decode()
    seen = re.search(r'name="seen" value="(\w+)"', stale.content.decode()).group(1)
    client.post("/workbench/replay/", {**window, "confirm": "yes", "seen": seen})
    job = BulkJob.objects.get()
    assert (job.kind, job.total) == (BulkJob.Kind.REPLAY, 3)


def test_the_resubmit_dialog_warns_when_the_target_already_holds_the_customer(client, firm, operator) -> None:
    first = won_deal(firm, key="w1")
    done = run(trigger(firm, "quote-to-project", first["opportunity"]))
    # A second deal of the same account fails on a service line nobody mapped.
    second = won_deal(firm, key="w2", AccountId=first["account"], Service_Line__c="Quantum Readiness")
    failed = run(trigger(firm, "quote-to-project", second["opportunity"]))
    client.force_login(operator)
    page = client.get(f"/workbench/handoffs/{failed.pk}/resubmit/").content.decode()
    assert "The target already holds a record with this key" in page
    assert f"C-{first['account']}" in page and f"handoff {done.pk}" in page
    assert "Create the customer in the ERP writes to <strong>NetSuite (US)</strong>" in page


def test_a_mapping_error_opens_the_value_map_in_the_studio_for_admins_and_operators_ask_one(
    client, firm, operator, admin
) -> None:
    deal = won_deal(firm, key="m1", Service_Line__c="Quantum Readiness")
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    client.force_login(admin)
    page = client.get(f"/workbench/handoffs/{handoff.pk}/").content.decode()
    link = re.search(r'href="(/mappings/\d+/\?open=service_line#value-map-service_line)"', page)
    assert link, page
    assert "How to fix:" in page
    studio = client.get(link.group(1)).content.decode()
    assert 'class="card value-map current" id="value-map-service_line" open' in studio
    client.force_login(operator)
    page = client.get(f"/workbench/handoffs/{handoff.pk}/").content.decode()
    assert "only an admin can; send them" in page


def test_a_value_the_mapping_cannot_translate_opens_its_value_map_in_the_studio(client, firm, admin) -> None:
    from pscsync.models import Mapping

    deal = won_deal(firm, key="m2", account={"Tax_Profile__c": "US-UNKNOWN"})
    handoff = run(trigger(firm, "quote-to-project", deal["opportunity"]))
    assert "could not map this record: custentity_tax_code" in handoff.last_error_message
    client.force_login(admin)
    page = client.get(f"/workbench/handoffs/{handoff.pk}/").content.decode()
    mapping = Mapping.objects.get(connection__slug="netsuite-us", entity="customer")
    assert f"/mappings/{mapping.pk}/?open=tax_code#value-map-tax_code" in page


def test_a_required_field_the_mapping_could_not_fill_opens_that_rule(firm, admin) -> None:
    from connectors.errors import MappingError
    from pscsync.mappings import mapping_in_force, mapping_run
    from pscsync.models import Handoff, Mapping
    from remediation.timeline import fix_links

    handoff = _tax_failure(firm, "m3")
    version = mapping_in_force(connection=firm.connections["netsuite-us"], entity="customer")
    with pytest.raises(MappingError) as failure:  # the message the runner stores, made by the real mapping
        document = {"deal": {"legal_entity": "us", "currency": "USD"}, "account": {"tax_profile": "US-STANDARD"}}
        mapping_run(version, document)
    # Stored as the runner stores a failure: the message for people, what it names as data.
    Handoff.objects.filter(pk=handoff.pk).update(
        last_error_class="mapping",
        last_error_message=failure.value.message,
        failed_mapping_id=failure.value.mapping_version,
        failed_fields=list(failure.value.fields),
        failed_value_map=failure.value.value_map,
    )
    handoff.refresh_from_db()
    [link] = fix_links(handoff, [])
    mapping = Mapping.objects.get(connection__slug="netsuite-us", entity="customer")
    assert link["url"] == f"/mappings/{mapping.pk}/?field=companyName#rule-1"
    assert link["label"] == "Open rule “companyName” of the customer mapping of NetSuite (US)" and link["admin"]


def test_a_change_after_the_review_is_shown_for_review_again_and_nothing_is_sent(client, firm, operator) -> None:
    from pscsync.models import Handoff

    handoff = _tax_failure(firm, "v1")
    client.force_login(operator)
    url = f"/workbench/handoffs/{handoff.pk}/resubmit/"
    review = client.post(url, {"mode": "stored", "reason": "retry"}).content.decode()
    reviewed = re.search(r'name="reviewed" value="(\w+)"', review).group(1)
    # The operator switches to re-mapping after reviewing "stored", then confirms.
    again = client.post(url, {"mode": "remap", "reason": "retry", "confirm": "yes", "reviewed": reviewed})
    assert "You changed something after the review" in again.content.decode()
    assert Handoff.objects.get(pk=handoff.pk).status == Handoff.Status.NEEDS_ATTENTION
    reviewed = re.search(r'name="reviewed" value="(\w+)"', again.content.decode()).group(1)
    client.post(url, {"mode": "remap", "reason": "retry", "confirm": "yes", "reviewed": reviewed})
    assert Handoff.objects.get(pk=handoff.pk).status == Handoff.Status.PENDING


def test_a_group_row_assigns_its_cause_and_comes_back_to_the_filtered_inbox(client, firm, operator) -> None:
    _tax_failure(firm, "r1")
    cause = ExceptionCause.objects.get()
    client.force_login(operator)
    page = client.get("/workbench/?flow=quote-to-project").content.decode()
    # The row's own forms sit outside the bulk form; its controls join them by the form attribute.
    assert f'<form id="row-assign-{cause.pk}"' in page and f'form="row-resolve-{cause.pk}"' in page
    back = "/workbench/?flow=quote-to-project"
    answer = client.post(
        f"/workbench/causes/{cause.pk}/act/", {"action": "assign", "assignee": operator.username, "next": back}
    )
    assert answer.status_code == 302 and answer["Location"] == back
    assert ExceptionCause.objects.get().assignee == operator
    # Somewhere else than our own pages: the cause page instead.
    answer = client.post(
        f"/workbench/causes/{cause.pk}/act/", {"action": "assign", "assignee": "", "next": "https://evil.example/"}
    )
    assert answer["Location"] == f"/workbench/causes/{cause.pk}/"
    assert ExceptionCause.objects.get().assignee is None


def test_a_group_row_resolves_its_handoffs_with_a_reason_through_a_tracked_job(client, firm, operator) -> None:
    _tax_failure(firm, "r2")
    _tax_failure(firm, "r3")
    cause = ExceptionCause.objects.get()
    client.force_login(operator)
    row = {"tab": "open", "scope": "selection", "kind": "resolve", "cause": str(cause.pk)}
    # Without a reason: refused, nothing started.
    answer = client.post("/workbench/bulk/", row)
    assert answer.status_code == 302 and BulkJob.objects.count() == 0
    answer = client.post("/workbench/bulk/", {**row, "reason": "duplicates of deals already in the ERP"})
    job = BulkJob.objects.get()
    assert answer["Location"] == f"/workbench/jobs/{job.pk}/"
    assert (job.kind, job.total) == ("resolve", 2)


def test_the_resubmit_form_opens_on_the_choice_that_can_succeed_and_marks_the_failing_field(
    client, firm, operator
) -> None:
    client.force_login(operator)
    # Missing tax profile (source data, validation): the edit, with the tax profile marked.
    tax = _tax_failure(firm, "d1")
    page = client.get(f"/workbench/handoffs/{tax.pk}/resubmit/").content.decode()
    assert re.search(r'<input[^>]*value="edit"[^>]*checked', page)
    marked = re.findall(
        r'<label for="[^"]+">([^<]*?)\s*(?:<span[^>]*>\*</span>)?\s*'
        r'<strong class="error-text small">— the failure is about this field',
        page,
    )
    assert marked == ["account · tax profile"]  # and not "account · name", though the message names the account
    # A service line nobody mapped (mapping): re-map with the mapping in force.
    ids = won_deal(firm, key="d2", Service_Line__c="Quantum Readiness")
    unmapped = run(trigger(firm, "quote-to-project", ids["opportunity"]))
    assert unmapped.last_error_class == "mapping"
    page = client.get(f"/workbench/handoffs/{unmapped.pk}/resubmit/").content.decode()
    assert re.search(r'<input[^>]*value="remap"[^>]*checked', page)
