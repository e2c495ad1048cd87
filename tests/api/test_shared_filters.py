"""One filter set per list, shared by the page and the API: the handoff list (/handoffs/ and
/api/v1/handoffs/, pscsync.filters.HandoffFilter) and the workbench's exceptions (/workbench/ and
/api/v1/exceptions/, remediation.filters.ExceptionFilter). The same filter gives the same rows on
both, only the caller's entities, and a filter that cannot be applied is refused on both alike
(400, nothing shown, nothing started).

The records (tests/api/conftest.py `world`, plus three here), worked out by hand:
  US  OPP-US    needs attention, validation, "the customer 'Acme' has no tax code"
  US  OPP-US-M  needs attention, mapping,    "... could not map this record: tax ..."
  US  OPP-US-OK succeeded
  UK  OPP-UK    needs attention, validation, "budget is missing"
"""

from __future__ import annotations

import csv
import io
from collections import Counter

import pytest
from django.urls import reverse

from tests.api.conftest import AT, make_exception


@pytest.fixture
def records(world, entities):
    from pscsync.models import Event, Handoff

    us_connection = world["us"]["connection"]
    mapped = make_exception(
        us_connection,
        entities["us"],
        "OPP-US-M",
        "mapping echo-us/customer@v1 could not map this record: tax has no value map entry",
        error_class="mapping",
    )
    event = Event.objects.create(
        connection=us_connection,
        source_event_id="evt-OPP-US-OK",
        flow="echo",
        business_key="OPP-US-OK",
        legal_entity=entities["us"],
        occurred_at=AT,
        received_at=AT,
        raw_body="{}",
        payload={},
    )
    done = Handoff.objects.create(
        trigger_event=event,
        flow="echo",
        business_key="OPP-US-OK",
        legal_entity=entities["us"],
        source_connection=us_connection,
        status=Handoff.Status.SUCCEEDED,
        business_started_at=AT,
        created_at=AT,
    )
    keys = {"OPP-US": world["us"]["handoff"], "OPP-US-M": mapped, "OPP-US-OK": done, "OPP-UK": world["uk"]["handoff"]}
    return {key: handoff.pk for key, handoff in keys.items()}


def _page_keys(client, user, url: str, query: dict) -> set[str]:
    client.force_login(user)
    response = client.get(url, query)
    assert response.status_code == 200, response.content[:300]
    return {h.business_key for h in response.context["page"].object_list}


def _api_keys(api, token: str, url: str, query: dict) -> set[str]:
    from urllib.parse import urlencode

    response = api("GET", f"{url}?{urlencode(query)}", token)
    assert response.status_code == 200, response.content[:300]
    return {row["business_key"] for row in response.json()["results"]}


# --- Handoffs ------------------------------------------------------------------------------------

HANDOFF_CASES = [
    ({}, {"OPP-US", "OPP-US-M", "OPP-US-OK", "OPP-UK"}),
    ({"status": "needs_attention"}, {"OPP-US", "OPP-US-M", "OPP-UK"}),
    ({"status": "succeeded"}, {"OPP-US-OK"}),
    ({"q": "tax"}, {"OPP-US", "OPP-US-M"}),
    ({"q": "opp-us-"}, {"OPP-US-M", "OPP-US-OK"}),
    ({"legal_entity": "uk"}, {"OPP-UK"}),
    ({"legal_entity": "us,uk", "status": "needs_attention"}, {"OPP-US", "OPP-US-M", "OPP-UK"}),
    ({"error_class": "mapping"}, {"OPP-US-M"}),
    ({"flow": "echo", "status": "needs_attention", "legal_entity": "us"}, {"OPP-US", "OPP-US-M"}),
    ({"flow": "quote-to-project"}, set()),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("query", "expected"), HANDOFF_CASES)
def test_the_handoff_page_and_api_give_the_same_rows_for_the_same_filter(
    client, api, people, tokens, records, query, expected
) -> None:
    page = _page_keys(client, people["admin"], reverse("handoffs:list"), query)
    listed = _api_keys(api, tokens["admin"], "/api/v1/handoffs/", query)
    assert page == listed == expected


@pytest.mark.django_db
def test_the_handoff_age_filter_counts_whole_days_since_the_business_started(
    client, api, people, tokens, records, monkeypatch
) -> None:
    import datetime as dt

    from pscsync import clock

    # Every record started on 1 November; on 11 November they are 10 whole days old.
    monkeypatch.setattr(clock, "now", lambda: dt.datetime(2026, 11, 11, 8, 0, tzinfo=dt.UTC))
    for query, expected in (({"age_min": 10, "age_max": 10}, 4), ({"age_min": 11}, 0), ({"age_max": 9}, 0)):
        page = _page_keys(client, people["admin"], reverse("handoffs:list"), query)
        listed = _api_keys(api, tokens["admin"], "/api/v1/handoffs/", query)
        assert page == listed and len(page) == expected, query


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "expected"),
    [({}, {"OPP-UK"}), ({"legal_entity": "us"}, set()), ({"q": "OPP"}, {"OPP-UK"}), ({"status": "succeeded"}, set())],
)
def test_the_handoff_filter_never_reaches_beyond_the_callers_entities(
    client, api, people, tokens, records, query, expected
) -> None:
    # The outsider works for the UK entity only: naming the US entity finds nothing, on both.
    page = _page_keys(client, people["outsider"], reverse("handoffs:list"), query)
    listed = _api_keys(api, tokens["outsider"], "/api/v1/handoffs/", query)
    assert page == listed == expected


BAD_HANDOFF_FILTERS = [
    ({"status": "stuck"}, "status"),
    ({"age_min": "-1"}, "age_min"),
    ({"age_max": "ten"}, "age_max"),
    ({"age_min": "99999999999"}, "age_min"),
    ({"created_after": "yesterday"}, "created_after"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("query", "field"), BAD_HANDOFF_FILTERS)
def test_a_bad_handoff_filter_is_refused_on_the_page_and_the_api(
    client, api, people, tokens, records, query, field
) -> None:
    from urllib.parse import urlencode

    response = api("GET", f"/api/v1/handoffs/?{urlencode(query)}", tokens["admin"])
    assert response.status_code == 400
    assert field in response.json()["errors"]
    client.force_login(people["admin"])
    page = client.get(reverse("handoffs:list"), query)
    assert page.status_code == 400
    assert "this filter cannot be applied" in page.content.decode()
    assert list(page.context["page"].object_list) == []  # nothing shown, rather than everything


# --- Exceptions ----------------------------------------------------------------------------------

EXCEPTION_CASES = [
    ({"tab": "open"}, {"OPP-US", "OPP-US-M", "OPP-UK"}),
    ({"tab": "open", "q": "tax"}, {"OPP-US", "OPP-US-M"}),
    ({"tab": "open", "legal_entity": "uk"}, {"OPP-UK"}),
    ({"tab": "open", "error_class": "mapping"}, {"OPP-US-M"}),
    ({"tab": "open", "assignee": "none", "flow": "echo"}, {"OPP-US", "OPP-US-M", "OPP-UK"}),
    ({"tab": "open", "customer": "nobody-by-this-name"}, set()),
    ({"tab": "resolved"}, set()),
]


def _inbox(client, user, query: dict) -> tuple[Counter, set[str]]:
    """The inbox's causes with their counts, and the handoffs its CSV export lists, for a filter."""
    client.force_login(user)
    response = client.get(reverse("remediation:inbox"), query)
    assert response.status_code == 200, response.content[:300]
    causes = Counter({g.cause.pk: g.count for g in response.context["groups"]})
    export = client.get(reverse("remediation:export"), query)
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    return causes, {row["Business key"] for row in rows}


@pytest.mark.django_db
@pytest.mark.parametrize(("query", "expected"), EXCEPTION_CASES)
def test_the_inbox_and_the_exceptions_api_give_the_same_rows_for_the_same_filter(
    client, api, people, tokens, records, query, expected
) -> None:
    from urllib.parse import urlencode

    causes, exported = _inbox(client, people["admin"], query)
    response = api("GET", f"/api/v1/exceptions/?{urlencode(query)}", tokens["admin"])
    assert response.status_code == 200
    rows = response.json()["results"]
    assert exported == {row["business_key"] for row in rows} == expected
    # The inbox's groups are the API rows' causes, with as many handoffs each.
    assert causes == Counter(row["cause"] for row in rows)


@pytest.mark.django_db
def test_the_exceptions_api_without_a_tab_lists_every_handoff_that_needs_a_person(api, tokens, records, world) -> None:
    from remediation.models import ExceptionCause, ExceptionStatus

    # An archived cause leaves the inbox's Open tab, but its handoff still needs a person.
    cause = world["uk"]["handoff"].exception.cause
    ExceptionCause.objects.filter(pk=cause.pk).update(status=ExceptionStatus.ARCHIVED)
    every = _api_keys(api, tokens["admin"], "/api/v1/exceptions/", {})
    assert every == {"OPP-US", "OPP-US-M", "OPP-UK"}
    assert _api_keys(api, tokens["admin"], "/api/v1/exceptions/", {"tab": "open"}) == {"OPP-US", "OPP-US-M"}
    assert _api_keys(api, tokens["admin"], "/api/v1/exceptions/", {"tab": "archived"}) == {"OPP-UK"}


@pytest.mark.django_db
@pytest.mark.parametrize("query", [{"tab": "open"}, {"tab": "open", "legal_entity": "us"}, {"q": "acme"}])
def test_the_exception_filter_never_reaches_beyond_the_callers_entities(
    client, api, people, tokens, records, query
) -> None:
    from urllib.parse import urlencode

    _, exported = _inbox(client, people["outsider"], query)
    rows = api("GET", f"/api/v1/exceptions/?{urlencode(query)}", tokens["outsider"]).json()["results"]
    expected = {"OPP-UK"} if "legal_entity" not in query and "q" not in query else set()
    assert exported == {row["business_key"] for row in rows} == expected


BAD_EXCEPTION_FILTERS = [
    ({"tab": "later"}, "tab"),
    ({"age": "-3"}, "age"),
    ({"age": "a week"}, "age"),
    ({"created_before": "2026-11-01"}, "created_before"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("query", "field"), BAD_EXCEPTION_FILTERS)
def test_a_bad_exception_filter_is_refused_and_starts_nothing(
    client, api, people, tokens, records, query, field
) -> None:
    from urllib.parse import urlencode

    from remediation.models import BulkJob

    response = api("GET", f"/api/v1/exceptions/?{urlencode(query)}", tokens["admin"])
    assert response.status_code == 400 and field in response.json()["errors"]
    client.force_login(people["admin"])
    page = client.get(reverse("remediation:inbox"), query)
    assert page.status_code == 400
    assert "this filter cannot be applied" in page.content.decode()
    assert page.context["groups"] == []
    assert client.get(reverse("remediation:export"), query).status_code == 400
    # A bulk job over "the whole filter" with a filter that cannot be applied is not started.
    jobs = BulkJob.objects.count()
    body = {**query, "scope": "filter", "kind": "resolve", "reason": "tidy up"}
    assert client.post(reverse("remediation:bulk"), body).status_code == 400
    assert BulkJob.objects.count() == jobs


@pytest.mark.django_db
def test_an_unknown_inbox_sort_is_refused_on_the_page(client, people, records) -> None:
    client.force_login(people["admin"])
    page = client.get(reverse("remediation:inbox"), {"sort": "sideways"})
    assert page.status_code == 400 and "Sort by one of" in page.content.decode()


@pytest.mark.django_db
def test_a_saved_view_with_a_filter_that_cannot_be_applied_is_refused(api, tokens, records) -> None:
    response = api("POST", "/api/v1/saved-views/", tokens["operator"], {"name": "old", "query": "age=old"})
    assert response.status_code == 422
    assert any(p.startswith("age:") for p in response.json()["errors"]["query"])
