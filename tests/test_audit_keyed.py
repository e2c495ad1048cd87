"""Issue 17, audit chain: every row chained through one writer (failed and throttled sign-ins
too, also in the external log), a keyed chain a rewriter cannot re-chain, every break reported,
TRUNCATE refused, and an app role that can neither disable the trigger nor rewrite the trail."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from pscsync.archive import Month
from pscsync.audit import audit_record, audit_verify, entry_hash_of
from pscsync.models import AuditEntry
from pscsync.partitions import partition_create
from tests.helpers import audit_raw_sql

pytestmark = pytest.mark.django_db
postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'")


def test_failed_and_throttled_sign_ins_are_chained_and_shipped(
    client, viewer, settings, external, django_capture_on_commit_callbacks
) -> None:
    settings.LOGIN_THROTTLE = {**settings.LOGIN_THROTTLE, "account_free": 1}
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            client.post("/login/", {"username": "no-such-person", "password": "wrong-wrong-wrong"})
    actions = list(AuditEntry.objects.order_by("pk").values_list("action", "prev_hash", "key_id"))
    assert [a for a, _, _ in actions] == ["user.provision", "login.failed", "login.failed", "login.throttled"]
    assert all(prev and key for _, prev, key in actions[1:])  # linked and keyed, not bare rows
    assert audit_verify().intact
    assert [line["action"] for line in external.lines] == ["login.failed", "login.failed", "login.throttled"]


def test_a_row_rewritten_and_re_chained_without_the_key_is_found(operator) -> None:
    """The attacker of the probe: rewrite a row, then recompute every later hash as the code
    would without a key (plain SHA-256). Before the key, audit_verify then said "intact"."""
    entries = [audit_record(actor=operator, action="exception.comment", obj=operator, after={"n": i}) for i in range(4)]
    target = entries[1]
    audit_raw_sql("UPDATE pscsync_auditentry SET comment = %s WHERE id = %s", ["nothing happened here", target.pk])
    prev = AuditEntry.objects.get(pk=entries[0].pk).hash
    for entry in AuditEntry.objects.filter(pk__gte=target.pk).order_by("pk"):
        forged = entry_hash_of(entry, prev)  # no key: what the attacker can compute
        audit_raw_sql("UPDATE pscsync_auditentry SET prev_hash = %s, hash = %s WHERE id = %s", [prev, forged, entry.pk])
        prev = forged
    report = audit_verify()
    assert [entry.pk for entry, _ in report.breaks] == [e.pk for e in entries[1:]]
    assert all("keyed hash" in why for _, why in report.breaks)


def test_every_break_is_reported_not_only_the_first(operator, capsys) -> None:
    entries = [audit_record(actor=operator, action="exception.comment", obj=operator, after={"n": i}) for i in range(6)]
    audit_raw_sql("UPDATE pscsync_auditentry SET comment = %s WHERE id = %s", ["changed", entries[1].pk])
    audit_raw_sql("DELETE FROM pscsync_auditentry WHERE id = %s", [entries[3].pk])
    report = audit_verify()
    assert [(e.pk, "changed" in why or "deleted" in why) for e, why in report.breaks] == [
        (entries[1].pk, True),
        (entries[4].pk, True),
    ]
    with pytest.raises(CommandError, match="2 problem"):
        call_command("audit_verify")
    err = capsys.readouterr().err
    assert f"entry {entries[1].pk} " in err and f"entry {entries[4].pk} " in err


def test_rows_keep_verifying_after_the_key_is_rotated(entities, settings) -> None:
    settings.AUDIT_KEYS = "a1:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    audit_record(actor=None, action="entity.save", obj=entities["us"])
    settings.AUDIT_KEYS = "a2:" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=," + settings.AUDIT_KEYS
    audit_record(actor=None, action="entity.save", obj=entities["uk"])
    assert list(AuditEntry.objects.order_by("pk").values_list("key_id", flat=True))[-2:] == ["a1", "a2"]
    assert audit_verify().intact
    settings.AUDIT_KEYS = settings.AUDIT_KEYS.split(",")[0]  # a1 retired too early
    assert "not configured" in audit_verify().breaks[-1][1]


def test_an_unkeyed_row_after_keyed_ones_is_a_forgery(operator) -> None:
    audit_record(actor=operator, action="exception.comment", obj=operator)
    last = AuditEntry.objects.order_by("-pk").first()
    with connection.cursor() as cursor:  # an INSERT the app role may do, bypassing audit_append
        cursor.execute(
            "INSERT INTO pscsync_auditentry (created_at, actor_label, action, object_type, object_id, object_repr,"
            " before, after, comment, prev_hash, hash, key_id) VALUES"
            " (now(), 'x', 'login.succeeded', 'auth.user', '', '', '{}', '{}', '', %s, %s, '')",
            [last.hash, hashlib.sha256(b"anything").hexdigest()],
        )
    assert "no audit key" in audit_verify().breaks[-1][1]


# --- PostgreSQL: TRUNCATE, and the app role ------------------------------------------------


@postgres_only
def test_truncate_of_the_audit_table_is_refused(operator) -> None:
    """Row triggers do not fire on TRUNCATE; the statement trigger does (for any non-superuser,
    even one holding the TRUNCATE privilege)."""
    audit_record(actor=operator, action="exception.comment", obj=operator)
    role = f"pscsync_t_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending FK checks: TRUNCATE would refuse for that
        cursor.execute(f"CREATE ROLE {role} NOLOGIN")
        cursor.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        cursor.execute(f"GRANT TRUNCATE ON pscsync_auditentry TO {role}")
        try:
            cursor.execute(f"SET ROLE {role}")
            with pytest.raises(DatabaseError, match="TRUNCATE refused"), transaction.atomic():
                cursor.execute("TRUNCATE pscsync_auditentry")
        finally:
            cursor.execute("RESET ROLE")
    assert AuditEntry.objects.exists()


@postgres_only
def test_the_app_role_appends_but_cannot_disable_the_trigger_or_rewrite(operator, capsys) -> None:
    role = f"pscsync_app_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} NOLOGIN")
    call_command("audit_db_roles", role, "--apply")
    assert "only SELECT and INSERT pscsync_auditentry" in capsys.readouterr().out
    now = timezone.now()
    this_month = f"pscsync_auditentry_y{now:%Y}m{now:%m}"
    # A partition the daily beat makes after the grants takes the parent's grants, not the defaults.
    later_month = Month(now.date().replace(day=1)).plus(30)
    assert partition_create("pscsync_auditentry", later_month)
    later = f"pscsync_auditentry_y{later_month.first:%Y}m{later_month.first:%m}"
    first = audit_record(actor=operator, action="exception.comment", obj=operator)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        try:
            cursor.execute(f"SET ROLE {role}")
            audit_record(actor=operator, action="exception.comment", obj=operator)  # appending works
            assert AuditEntry.objects.filter(pk__gte=first.pk).count() == 2  # and reading
            for attack, why in [
                ("ALTER TABLE pscsync_auditentry DISABLE TRIGGER pscsync_auditentry_append_only", "owner"),
                ("ALTER TABLE pscsync_auditentry DISABLE TRIGGER ALL", "owner"),
                ("UPDATE pscsync_auditentry SET comment = 'x'", "permission denied"),
                ("DELETE FROM pscsync_auditentry", "permission denied"),
                ("TRUNCATE pscsync_auditentry", "permission denied"),
                ("DROP TABLE pscsync_auditentry", "owner"),
                # Its monthly partitions (migration 0020) are tables of their own: the same holds.
                (f"UPDATE {this_month} SET comment = 'x'", "permission denied"),  # noqa: S608  # nosec B608  # test's own name
                ("DELETE FROM pscsync_auditentry_default", "permission denied"),
                (f"TRUNCATE {this_month}", "permission denied"),
                (f"ALTER TABLE pscsync_auditentry DETACH PARTITION {this_month}", "owner"),
                (f"UPDATE {later} SET comment = 'x'", "permission denied"),  # noqa: S608  # nosec B608  # test's own name
            ]:
                with pytest.raises(DatabaseError, match=why), transaction.atomic():
                    cursor.execute(attack)
        finally:
            cursor.execute("RESET ROLE")
    assert audit_verify().intact


@postgres_only
def test_audit_db_roles_refuses_a_superuser_or_the_owner() -> None:
    with pytest.raises(CommandError, match="superuser|owns the tables"):
        call_command("audit_db_roles", connection.settings_dict["USER"])
