"""The audit chain is keyed (each row names its HMAC key), and PostgreSQL refuses TRUNCATE of the
audit table as it already refused UPDATE and DELETE (a statement-level trigger: row triggers do
not fire on TRUNCATE).

A superuser may still truncate: a superuser can drop any trigger anyway, so refusing would only
break `flush` (how test databases are emptied between transactional tests). The app must never run
as a superuser; docs/security.md "Database roles" and `manage.py audit_db_roles`."""

from django.db import migrations, models

CREATE = """
CREATE OR REPLACE FUNCTION pscsync_audit_no_truncate() RETURNS trigger AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit entries are append-only: TRUNCATE refused';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER pscsync_auditentry_no_truncate
    BEFORE TRUNCATE ON pscsync_auditentry
    FOR EACH STATEMENT EXECUTE FUNCTION pscsync_audit_no_truncate();
"""
DROP = """
DROP TRIGGER IF EXISTS pscsync_auditentry_no_truncate ON pscsync_auditentry;
DROP FUNCTION IF EXISTS pscsync_audit_no_truncate();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("pscsync", "0010_ledger_invoices")]
    operations = [
        migrations.AddField(
            model_name="auditentry",
            name="key_id",
            field=models.CharField(blank=True, default="", max_length=20),
        ),
        migrations.RunPython(forwards, backwards),
    ]
