"""Credentials sealed to their row, the append-only audit trail, the start-up checks."""

from __future__ import annotations

import pytest
from django.db import connection

from connectors.models import Connection
from pscsync.crypto import CredentialsUnreadable
from pscsync.models import AuditEntry
from pscsync.services import connection_save


@pytest.fixture
def two_connections(entities):
    made = []
    for slug in ("erp-a", "erp-b"):
        made.append(
            connection_save(
                slug=slug,
                name=slug,
                kind="erp",
                vendor="netsuite",
                base_url="https://example.test",
                entities=[entities["us"]],
                credentials={"client_secret": f"secret-of-{slug}"},
            )
        )
    return made


@pytest.mark.django_db
def test_credentials_are_stored_encrypted_and_read_back(two_connections) -> None:
    a, _ = two_connections
    raw = bytes(Connection.objects.get(pk=a.pk).credentials_sealed)
    assert b"secret-of-erp-a" not in raw
    assert Connection.objects.get(pk=a.pk).credentials() == {"client_secret": "secret-of-erp-a"}


@pytest.mark.django_db
def test_ciphertext_moved_to_another_connection_does_not_decrypt(two_connections) -> None:
    a, b = two_connections
    Connection.objects.filter(pk=b.pk).update(credentials_sealed=a.credentials_sealed)
    with pytest.raises(CredentialsUnreadable, match="do not belong to this connection"):
        Connection.objects.get(pk=b.pk).credentials()


@pytest.mark.django_db
def test_rotated_keys_still_read_old_rows_and_new_rows_use_the_new_key(two_connections, settings) -> None:
    a, _ = two_connections
    old_keys = settings.CREDENTIALS_KEYS
    settings.CREDENTIALS_KEYS = "k2:" + "bmV3LWtleS1mb3ItY3JlZGVudGlhbHMtMzItYnl0ZXM=" + "," + old_keys
    assert Connection.objects.get(pk=a.pk).credentials() == {"client_secret": "secret-of-erp-a"}
    a.set_credentials({"client_secret": "rotated"})
    a.save()
    assert a.credentials_key_id == "k2"
    settings.CREDENTIALS_KEYS = old_keys
    with pytest.raises(CredentialsUnreadable, match="key 'k2'"):
        Connection.objects.get(pk=a.pk).credentials()


@pytest.mark.django_db
def test_a_connection_change_is_audited_without_the_secret(two_connections) -> None:
    entry = AuditEntry.objects.filter(action="connection.save").first()
    assert entry.after["credentials_changed"] is True
    assert "secret-of" not in str(entry.after) and "secret-of" not in str(entry.before)


@pytest.mark.django_db
def test_audit_entries_cannot_be_changed_or_deleted(two_connections) -> None:
    entry = AuditEntry.objects.first()
    entry.comment = "rewritten"
    with pytest.raises(PermissionError):
        entry.save()
    with pytest.raises(PermissionError):
        entry.delete()


@pytest.mark.django_db(transaction=True)
def test_the_database_itself_refuses_audit_changes_on_postgresql(two_connections) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the trigger exists on PostgreSQL only; SQLite relies on the model guard")
    from django.db import DatabaseError

    with pytest.raises(DatabaseError, match="append-only"):
        AuditEntry.objects.all().update(comment="rewritten")
    with pytest.raises(DatabaseError, match="append-only"):
        AuditEntry.objects.all().delete()


def test_queue_timing_check_refuses_a_time_limit_near_the_visibility_timeout(settings) -> None:
    from pscsync.checks import check_queue_timings

    settings.CELERY_BROKER_URL = "redis://localhost:6379/0"
    settings.TASK_HARD_TIME_LIMIT_SECONDS = 3590
    settings.VISIBILITY_TIMEOUT_SECONDS = 3600
    assert [e.id for e in check_queue_timings()] == ["pscsync.E001", "pscsync.E002"]
