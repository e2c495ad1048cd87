"""Issue 17, intake: a delivery that can never be stored gets a 4xx naming the problem (a 503
would make the sender retry the same bytes for ever) and stores nothing, on PostgreSQL and on
SQLite; a chunked body is read (under the size limit) by the real server, gunicorn; and a
property-based run of malformed signed deliveries against live gunicorn on PostgreSQL never
gets a 5xx nor leaves anything half-stored."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from connectors.signatures import standard_webhook_sign
from pscsync.models import Event, Handoff
from tests.helpers import PYTHON, ROOT, SECRET, Process, free_port, sqlite_outcomes, wait_for_port

URL = "/webhooks/echo-us/"


def signed_headers(body: bytes, msg_id: str) -> dict[str, str]:
    ts = int(time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": standard_webhook_sign(secret=SECRET, msg_id=msg_id, timestamp=ts, body=body),
        "content-type": "application/json",
    }


def _body(**fields: object) -> bytes:
    item = {"type": "record.changed", "key": "OPP-1", "version": 1, "occurred_at": "2026-11-01T00:00:00+00:00"}
    item["data"] = {"name": "Customer"}
    item.update(fields)
    return json.dumps(item).encode()


# (what the probe sent, body, webhook-id, words the answer must contain)
MALFORMED = [
    ("NUL inside a JSON string", _body(data={"name": "A\u0000B"}), "evt-nul", "NUL"),
    ("version 2^63", _body(version=2**63), "evt-big", "out of range"),
    ("version 2^70", _body(version=2**70), "evt-huge", "out of range"),
    ("webhook-id of 201 characters", _body(), "e" * 201, "event id"),
    ("type of 81 characters", _body(type="t" * 81), "evt-type", "event type"),
    ("UTF-16 body", _body().decode().encode("utf-16"), "evt-utf16", "UTF-8"),
    ("NaN in the data", _body().replace(b'"Customer"', b"NaN"), "evt-nan", "NaN"),
]


def _post(client, body: bytes, msg_id: str):
    headers = signed_headers(body, msg_id)
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "content-type"}
    return client.post(URL, data=body, content_type="application/json", **extra)


@pytest.mark.django_db
@pytest.mark.parametrize(("what", "body", "msg_id", "words"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_permanent_problem_is_a_4xx_naming_it_and_stores_nothing(client, echo_connection, what, body, msg_id, words):
    response = _post(client, body, msg_id)
    assert response.status_code == 400, (what, response.status_code, response.content)
    assert words in response.json()["error"] and "Retry-After" not in response
    assert not Event.objects.exists() and not Handoff.objects.exists()
    # The same connection still takes a good delivery.
    assert _post(client, _body(), "evt-good").status_code == 202


@pytest.mark.skipif(os.getenv("PSCSYNC_INTAKE_PROBE_NESTED") == "1", reason="already the SQLite run")
@pytest.mark.on_sqlite(
    target=f"{__file__}::test_a_permanent_problem_is_a_4xx_naming_it_and_stores_nothing",
    env="PSCSYNC_INTAKE_PROBE_NESTED",
)
def test_the_same_on_sqlite(sqlite_run) -> None:
    """The parametrized test above, in the nested pytest on the embedded SQLite database."""
    outcomes = sqlite_outcomes(
        sqlite_run.stdout, f"{__file__}::test_a_permanent_problem_is_a_4xx_naming_it_and_stores_nothing"
    )
    assert len(outcomes) == len(MALFORMED), sqlite_run.stdout[-3000:] + sqlite_run.stderr[-2000:]
    assert all(line.startswith("PASSED") for line in outcomes), sqlite_run.stdout[-3000:] + sqlite_run.stderr[-2000:]


# --- Live gunicorn on PostgreSQL ---------------------------------------------------------------


@pytest.fixture(scope="module")
def web(django_db_setup, django_db_blocker, tmp_path_factory):
    """gunicorn on the test database: the server that de-chunks bodies in production."""
    from urllib.parse import urlparse, urlunparse

    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the live intake runs on PostgreSQL")
    url = urlparse(os.environ["DATABASE_URL"])
    var_dir = tmp_path_factory.mktemp("web-var")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": urlunparse(url._replace(path="/" + connection.settings_dict["NAME"])),
        "PSCSYNC_VAR_DIR": str(var_dir),
        "PYTHONPATH": str(ROOT),
    }
    gunicorn = str(Path(PYTHON).parent / "gunicorn")
    process = Process("web", [gunicorn, "pscsync.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2"], env, var_dir / "web.log")
    process.start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    process.stop()


def _stored() -> tuple[int, int]:
    return Event.objects.count(), Handoff.objects.count()


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_read_not_taken_as_empty(web, echo_connection, settings) -> None:
    body = _body()
    headers = signed_headers(body, "evt-chunked")

    def chunks():  # a generator makes httpx send Transfer-Encoding: chunked
        yield body[:40]
        yield body[40:]

    response = httpx.post(f"{web}{URL}", content=chunks(), headers=headers, timeout=10)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 202, response.text
    assert Event.objects.get().raw_body == body.decode()
    # The size limit holds for chunked bodies too.
    big = b'{"pad": "' + b"x" * (settings.WEBHOOK_MAX_BODY_BYTES + 10) + b'"}'
    response = httpx.post(f"{web}{URL}", content=iter([big]), headers=signed_headers(big, "evt-big"), timeout=10)
    assert response.status_code == 413


_text = st.text(st.characters(codec="utf-8"), max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_field_values = st.one_of(
    _json,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.text(max_size=300),
    st.sampled_from(["2026-11-01T00:00:00+00:00", "2026-11-01T00:00:00", "9999-12-31T23:59:59+14:00", ""]),
)
_VALID = {
    "type": "record.changed",
    "key": "OPP-7",
    "version": 3,
    "occurred_at": "2026-11-01T00:00:00+00:00",
    "data": {"name": "Customer"},
}
# A well-formed delivery with up to three fields replaced (or dropped), so both refusals and
# acceptances are exercised and every refusal is about the field that was changed.
_delivery = st.builds(
    lambda changes, dropped: {k: v for k, v in {**_VALID, **changes}.items() if k not in dropped},
    st.dictionaries(st.sampled_from([*_VALID, "legal_entity"]), _field_values, max_size=3),
    st.sets(st.sampled_from(list(_VALID)), max_size=1),
)
_encoding = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "utf-32", "latin-1"])
# What an HTTP header can carry: visible ASCII (httpx refuses the rest before sending).
_msg_id = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=260)


@pytest.mark.django_db(transaction=True)
def test_malformed_signed_deliveries_never_get_a_5xx_nor_half_store(web, echo_connection) -> None:
    client = httpx.Client(base_url=web, timeout=20)
    seen: dict[int, int] = {}

    @hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(item=_delivery, encoding=_encoding, msg_id=_msg_id)
    def attempt(item: dict, encoding: str, msg_id: str) -> None:
        text = json.dumps(item, ensure_ascii=False)
        try:
            body = text.encode(encoding)
        except UnicodeEncodeError:
            body = text.encode("utf-8")
        headers = signed_headers(body, msg_id)
        before = _stored()
        response = client.post(URL, content=body, headers=headers)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (item, encoding, msg_id, response.text)
        events, handoffs = _stored()
        if response.status_code >= 400:
            assert (events, handoffs) == before, response.text  # a refusal stores nothing
        elif response.status_code == 202:  # accepted: the event stored whole, with its handoff
            assert events == before[0] + 1 and handoffs - before[1] in (0, 1)
            event = Event.objects.get(connection=echo_connection, source_event_id=msg_id)
            assert event.raw_body.encode("utf-8") == body
        else:  # 200: a duplicate of an id seen earlier in the run changes nothing
            assert (events, handoffs) == before

    attempt()
    assert sum(code >= 400 for code in seen) and any(code < 300 for code in seen), seen
