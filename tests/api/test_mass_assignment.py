"""T21 (RELIABILITY.md): every writable API action refuses fields outside its allowlist — status,
legal entity, external references, amounts, created_by, is_staff — with a 400 that names them,
and stores nothing. Policy (docs/api.md): unknown fields are an error, never silently ignored."""

from __future__ import annotations

import pytest

from connectors.models import Connection
from pscsync.models import AuditEntry, Handoff, MappingVersion
from remediation.models import BulkJob

pytestmark = pytest.mark.django_db

FORBIDDEN = {
    "status": "succeeded",
    "legal_entity": 999,
    "external_ref": "X-1",
    "amount": "1000000.00",
    "created_by": 1,
    "is_staff": True,
}


def _state(world) -> tuple:
    handoff = Handoff.objects.get(pk=world["us"]["handoff"].pk)
    return (
        handoff.status,
        handoff.legal_entity_id,
        handoff.amount,
        Connection.objects.count(),
        MappingVersion.objects.count(),
        BulkJob.objects.count(),
        AuditEntry.objects.count(),
    )


@pytest.mark.parametrize(
    ("role", "method", "url", "body"),
    [
        ("operator", "POST", "/api/v1/exceptions/{h}/resubmit/", {"mode": "stored", "reason": "retry"}),
        ("operator", "POST", "/api/v1/exceptions/{h}/resolve/", {"reason": "fixed by hand"}),
        ("operator", "POST", "/api/v1/exceptions/{h}/cancel/", {"reason": "not needed"}),
        ("operator", "POST", "/api/v1/exceptions/{h}/comment/", {"text": "looking"}),
        ("operator", "POST", "/api/v1/jobs/", {"kind": "retry", "handoffs": ["{h}"], "reason": "after outage"}),
        ("admin", "POST", "/api/v1/connections/", {"slug": "new-one", "name": "New", "kind": "erp"}),
        ("admin", "PATCH", "/api/v1/connections/{c}/", {"name": "Renamed"}),
        ("admin", "POST", "/api/v1/mappings/", {"connection": "echo-us", "entity": "project", "rules": []}),
    ],
)
def test_fields_outside_the_allowlist_are_refused_and_nothing_changes(
    api, world, tokens, role, method, url, body
) -> None:
    ids = {"h": world["us"]["handoff"].pk, "c": world["us"]["connection"].pk}
    url = url.format(**ids)
    body = {k: ([ids["h"]] if v == ["{h}"] else v) for k, v in body.items()}
    before = _state(world)
    response = api(method, url, tokens[role], {**body, **FORBIDDEN})
    assert response.status_code == 400, (url, response.status_code, response.content[:300])
    refused = response.json()
    named = " ".join(str(v) for v in refused.get("errors", {}).values()) + str(refused.get("errors", {}).keys())
    assert any(field in named for field in FORBIDDEN), refused
    assert _state(world) == before
