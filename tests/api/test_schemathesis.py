"""Schemathesis against /api/schema/, for each role's token: the examples, fuzzing and stateful
phases (plus the coverage phase for the admin, or for all with PSCSYNC_SCHEMATHESIS_FULL=1) and
every check. The WSGI app is called in-process (about ten times faster
than over HTTP to a live server), so `make test` runs it with no server to start.

What must hold: no server error, no response that breaks the schema, and every operation
refuses a request without a token or with an invalid one (the `ignored_auth` check, plus an
explicit sweep below).

One setting differs from the defaults, on purpose: positive_data_acceptance also accepts 422.
A well-formed request that the domain refuses (a mapping expression that does not parse, a
connection URL that is not the vendor's host, an id in a body that the caller cannot see) is
refused with 422; the schema cannot express those rules.
"""

from __future__ import annotations

import os
import time

import pytest
import schemathesis
from schemathesis import engine
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events

from connectors import egress

# Examples per operation and phase; raise it for a deeper run (PSCSYNC_SCHEMATHESIS_EXAMPLES=100).
# Measured for the admin (load 15): coverage 228 s, stateful 139 s, fuzzing 113 s, examples 0 s.
# Trimmed from 8 examples and 40 stateful steps: every operation still gets its schema examples,
# 5 fuzzed cases per role and (admin) every coverage case, and each stateful walk up to 20 steps.
MAX_EXAMPLES = int(os.getenv("PSCSYNC_SCHEMATHESIS_EXAMPLES", "5"))
MAX_STEPS = int(os.getenv("PSCSYNC_SCHEMATHESIS_STEPS", "20"))


# The coverage phase (boundary values for every parameter) is the slowest; it runs for the admin,
# whose token reaches every handler, and for every role when PSCSYNC_SCHEMATHESIS_FULL=1.
FULL = os.getenv("PSCSYNC_SCHEMATHESIS_FULL", "") in {"1", "true"}


def _config(token: str, *, coverage: bool) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": 20261127,
            "headers": {"Authorization": f"Bearer {token}"},
            # Text never carries NUL: PostgreSQL cannot store it and the API refuses it (docs/api.md).
            "generation": {"max-examples": MAX_EXAMPLES, "allow-x00": False},
            "checks": {
                "enabled": True,
                "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]},
            },
            "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": True, "max-steps": MAX_STEPS}},
            "suppress-health-check": ["all"],
        }
    )


def _run(token: str, *, coverage: bool = True) -> tuple[list[str], float, int]:
    from pscsync.wsgi import application

    started = time.monotonic()
    schema = schemathesis.openapi.from_wsgi(
        "/api/schema/",
        application,
        config=_config(token, coverage=coverage),
        headers={"Authorization": f"Bearer {token}"},
    )
    problems: list[str] = []
    operations = 0
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            operations += 1
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.failure_info is not None:
                        info = check.failure_info
                        seen = event.recorder.interactions.get(case_id)
                        answer = ""
                        if seen is not None and seen.response is not None:
                            request = seen.response.request
                            answer = f" <- {request.method} {request.url} {str(request.body)[:300]}"
                            answer += f" -> {seen.response.status_code} {seen.response.content[:300]!r}"
                        problems.append(
                            f"{event.recorder.label} [{check.name}] {info.failure.title}: {info.failure.message}"[:600]
                            + answer
                        )
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(f"error: {getattr(event, 'value', None) or getattr(event, 'exception', None)!r}"[:600])
    return sorted(set(problems)), time.monotonic() - started, operations


@pytest.fixture
def offline_dns(monkeypatch):
    # Generated URLs name random hosts; resolve them all to a public documentation address
    # instead of asking real DNS (the egress rules then refuse them as non-vendor hosts).
    def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host in ("127.0.0.1", "localhost") else ["192.0.2.10"]

    monkeypatch.setattr(egress, "_resolve", resolve)
    monkeypatch.setattr(egress, "_kind", lambda a: "loopback" if a.startswith("127.") else "public")


@pytest.fixture
def wsgi_transport(monkeypatch):
    # schemathesis 4.32.5 hands `max_redirects` (a requests setting) to werkzeug's test client
    # on some probes, which raises TypeError; drop the socket-level settings as its own code
    # does for requests sessions.
    from schemathesis.transport import wsgi

    original = wsgi.WSGITransport.send

    def send(self, case, *, session=None, **kwargs):
        for name in ("max_redirects", "verify", "cert", "proxies"):
            kwargs.pop(name, None)
        return original(self, case, session=session, **kwargs)

    monkeypatch.setattr(wsgi.WSGITransport, "send", send)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ["viewer", "operator", "admin", "outsider"])
def test_schemathesis_finds_nothing_for_each_roles_token(
    world, tokens, role, settings, offline_dns, wsgi_transport
) -> None:
    settings.API_RATE_PER_MINUTE = 1_000_000
    problems, elapsed, operations = _run(tokens[role], coverage=FULL or role == "admin")
    print(f"schemathesis {role}: {operations} scenarios in {elapsed:.1f} s")
    assert problems == [], "\n\n".join(problems)


@pytest.mark.django_db
def test_every_operation_refuses_a_missing_or_invalid_token(client, world, tokens) -> None:
    """Walks the schema itself, so a new operation is covered the day it is added."""
    schema = client.get("/api/schema/?format=json", HTTP_AUTHORIZATION=f"Bearer {tokens['viewer']}").json()
    ids = {"id": world["us"]["handoff"].pk, "gid": "0123456789abcdef", "flow": "quote-to-project"}
    checked = 0
    for path, operations in schema["paths"].items():
        url = path.format(**ids)
        for method in operations:
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            for header in (
                {},
                {"HTTP_AUTHORIZATION": "Bearer psc_0123456789ab_forged"},
                {"HTTP_AUTHORIZATION": "Basic eDp5"},
            ):
                response = client.generic(method.upper(), url, data="{}", content_type="application/json", **header)
                assert response.status_code == 401, (method, url, header, response.status_code)
                assert response.json()["code"] in {"not_authenticated", "authentication_failed"}
                assert response["WWW-Authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 48  # every operation of v1.1 at the time of writing
