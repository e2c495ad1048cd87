"""Every human action is an audit entry, hash-chained; audit_verify names the first broken row."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from pscsync.audit import audit_record, audit_verify
from pscsync.models import AuditEntry
from tests.helpers import audit_raw_sql

pytestmark = pytest.mark.django_db


def _entries(operator, n: int) -> list[AuditEntry]:
    return [audit_record(actor=operator, action="exception.comment", obj=operator, after={"n": i}) for i in range(n)]


def test_an_intact_chain_verifies(operator, capsys) -> None:
    _entries(operator, 4)
    call_command("audit_verify")
    assert "audit chain intact" in capsys.readouterr().out
    first, second = AuditEntry.objects.order_by("pk")[:2]
    assert second.prev_hash == first.hash and len(first.hash) == 64


def test_a_changed_row_is_named(operator) -> None:
    entries = _entries(operator, 5)
    audit_raw_sql("UPDATE pscsync_auditentry SET comment = %s WHERE id = %s", ["rewritten", entries[2].pk])
    report = audit_verify()
    [(broken, why)] = report.breaks
    assert broken.pk == entries[2].pk and report.checked >= 5 and "changed" in why
    with pytest.raises(CommandError, match=f"broken at entry {entries[2].pk}"):
        call_command("audit_verify")


def test_a_deleted_row_breaks_the_link_of_the_next(operator) -> None:
    entries = _entries(operator, 5)
    audit_raw_sql("DELETE FROM pscsync_auditentry WHERE id = %s", [entries[1].pk])
    [(broken, why)] = audit_verify().breaks
    assert broken.pk == entries[2].pk and "deleted" in why
