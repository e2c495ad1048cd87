"""Print (or apply) the grants that split the database roles: the migration owner owns every
table; the app's role reads and writes them, but may only SELECT and INSERT the audit trail.

A role that does not own a table cannot ALTER it, so it cannot disable the append-only triggers;
without UPDATE, DELETE and TRUNCATE it cannot rewrite or empty the trail either. Run it as the
owner after every `migrate` (new tables need their grants). docs/security.md "Database roles".
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

AUDIT_TABLE = "pscsync_auditentry"


def audit_partitions() -> list[str]:
    """The audit table's partitions (pscsync.partitions): each is a table the role could reach."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY c.relname",
            [AUDIT_TABLE],
        )
        return [r[0] for r in cursor.fetchall()]


def grants_sql(app_role: str) -> list[str]:
    role = connection.ops.quote_name(app_role)
    revoke = "REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {} FROM " + role
    return [
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        revoke.format(AUDIT_TABLE),
        # A partition is a table of its own: the parent's revoke does not reach it.
        *(revoke.format(name) for name in audit_partitions()),
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
    ]


class Command(BaseCommand):
    help = "Print (or --apply) the grants for the app's database role: SELECT/INSERT only on the audit trail."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("app_role", help="the role web and worker processes connect as (must already exist)")
        parser.add_argument("--apply", action="store_true", help="run the statements (connect as the owner)")

    def handle(self, *args: Any, app_role: str, apply: bool, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("database roles exist on PostgreSQL only")
        with connection.cursor() as cursor:
            cursor.execute("SELECT tableowner FROM pg_tables WHERE tablename = %s", [AUDIT_TABLE])
            row = cursor.fetchone()
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [app_role])
            app = cursor.fetchone()
        if row is None:
            raise CommandError("run `manage.py migrate` first: the audit table does not exist")
        if app is None:
            raise CommandError(f"role {app_role!r} does not exist: CREATE ROLE {app_role} LOGIN PASSWORD '…' first")
        if row[0] == app_role:
            raise CommandError(f"{app_role!r} owns the tables: the app's role must not be the migration owner")
        if app[0]:
            raise CommandError(f"{app_role!r} is a superuser: it could drop the audit triggers")
        statements = grants_sql(app_role)
        if not apply:
            self.stdout.write(";\n".join(statements) + ";")
            return
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        self.stdout.write(f"{app_role} may read and write every table, and only SELECT and INSERT {AUDIT_TABLE}")
