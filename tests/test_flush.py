"""The test suite's quicker flush (tests/flush.py) leaves what Django's flush leaves: every table
empty, the audit table included (PostgreSQL refuses to DELETE from it), and the role groups back."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection

from tests import flush


def _tables_with_rows() -> set[str]:
    held = set()
    with connection.cursor() as cursor:
        for table in connection.introspection.django_table_names(only_existing=True, include_views=False):
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {connection.ops.quote_name(table)})")  # noqa: S608  # nosec B608  # Django's table names
            if cursor.fetchone()[0]:
                held.add(table)
    return held


@pytest.mark.django_db(transaction=True)
def test_flush_empties_every_table_and_brings_the_roles_back(admin, echo_connection, monkeypatch) -> None:
    from django.contrib.auth.models import Group

    from pscsync.access import ROLES
    from pscsync.audit import audit_record
    from pscsync.models import AuditEntry

    audit_record(actor=admin, action="test.touch", obj=echo_connection, legal_entity=None)
    monkeypatch.setattr(flush, "DELETE_AT_MOST", 1)  # the legal entities' two rows go by TRUNCATE
    held = _tables_with_rows()
    assert {AuditEntry._meta.db_table, "auth_user", "pscsync_legalentity", "connectors_connection"} <= held

    call_command("flush", interactive=False, verbosity=0)

    left = _tables_with_rows()
    # Only what post_migrate makes again, as after Django's own flush.
    assert left <= {"django_content_type", "auth_permission", "auth_group", "auth_group_permissions"}
    assert set(Group.objects.values_list("name", flat=True)) == set(ROLES)
    assert Group.objects.get(name="admin").permissions.exists()


@pytest.mark.django_db(transaction=True)
def test_nothing_is_left_from_the_test_before() -> None:
    # Runs after the test above (file order) and its teardown's flush.
    assert _tables_with_rows() <= {"django_content_type", "auth_permission", "auth_group", "auth_group_permissions"}
