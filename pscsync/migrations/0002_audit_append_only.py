"""On PostgreSQL the database itself refuses to change or delete an audit entry."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION pscsync_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER pscsync_auditentry_append_only
    BEFORE UPDATE OR DELETE ON pscsync_auditentry
    FOR EACH ROW EXECUTE FUNCTION pscsync_audit_append_only();
"""
DROP = """
DROP TRIGGER IF EXISTS pscsync_auditentry_append_only ON pscsync_auditentry;
DROP FUNCTION IF EXISTS pscsync_audit_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("pscsync", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
