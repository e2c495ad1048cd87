"""T27's last part: every audited action is also in the external audit log, once, after its
commit; an action rolled back leaves no line; the chain verifier and the external copy agree."""

from __future__ import annotations

import pytest
from django.db import transaction

from pscsync.audit import audit_record, audit_verify
from pscsync.models import AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)


def test_each_committed_entry_is_copied_once_and_a_rolled_back_one_never(entities, admin, external) -> None:
    existing = AuditEntry.objects.count()
    first = audit_record(actor=admin, action="connection.save", obj=entities["us"], before={}, after={"name": "x"})
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record(actor=admin, action="mapping.publish", obj=entities["uk"])
        raise RuntimeError("the change failed")
    second = audit_record(actor=admin, action="handoff.resubmit", obj=entities["uk"], comment="after outage")

    assert [line["action"] for line in external.lines] == ["connection.save", "handoff.resubmit"]
    assert [line["hash"] for line in external.lines] == [first.hash, second.hash]
    assert external.lines[1]["prev_hash"] == first.hash and external.lines[1]["actor"] == admin.username
    assert audit_verify().intact
    assert AuditEntry.objects.count() == existing + 2
