"""Emptying the test database after a transactional test, quickly, on PostgreSQL.

Django empties it with one TRUNCATE of every table (about 70 here). PostgreSQL makes a new file for
each table and index and drops the old ones at commit, whether the table held a row or not: about
0.5 s a test on a quiet machine, 2 to 3 s on a loaded one, and the suite has well over a hundred
transactional tests (every live server, every live worker). A test writes to a handful of tables,
so this asks which tables hold rows (one query) and DELETEs from those only: milliseconds.

What is left afterwards is the same as after Django's flush: every table empty, sequences not
reset (Django does not reset them either unless a test asks, and then Django's own flush runs).
The foreign keys Django makes are DEFERRABLE INITIALLY DEFERRED, so the order of the deletes does
not matter within the one transaction flush runs them in. Two cases still TRUNCATE: the audit
table, whose rows PostgreSQL refuses to delete (a superuser may truncate it, migration 0011), and
a table holding more rows than a DELETE empties quickly; CASCADE takes whatever references them,
and the truncate runs before the deletes (PostgreSQL refuses to truncate a table with key checks
pending from a delete in the same transaction).
"""

from __future__ import annotations

from typing import Any

from django.core.management import sql as management_sql

# Above this many rows a TRUNCATE is cheaper than a DELETE (a seeded ledger at scale, say).
DELETE_AT_MOST = 5000


def sql_flush(style: Any, connection: Any, reset_sequences: bool = True, allow_cascade: bool = False) -> list[str]:
    """A drop-in for django.core.management.sql.sql_flush, as the flush command calls it."""
    if connection.vendor != "postgresql" or reset_sequences:
        return management_sql.sql_flush(style, connection, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    if not tables:
        return []
    quote = connection.ops.quote_name
    # One statement: each table with how many rows it holds, counted up to one past the limit.
    probe = " UNION ALL ".join(
        f"SELECT %s, (SELECT count(*) FROM (SELECT 1 FROM {quote(t)} LIMIT {DELETE_AT_MOST + 1}) AS r)"  # noqa: S608  # nosec B608  # Django's table names, quoted
        for t in tables
    )
    with connection.cursor() as cursor:
        cursor.execute(probe, list(tables))
        held = {name: count for name, count in cursor.fetchall() if count}
    from pscsync.models import AuditEntry

    truncate = sorted(t for t, count in held.items() if count > DELETE_AT_MOST or t == AuditEntry._meta.db_table)
    # Never an empty list: flush emits post_migrate (content types, permissions, the role
    # groups) only after a non-empty one, as after Django's own.
    statements = ["SET CONSTRAINTS ALL DEFERRED"]
    if truncate:  # first: a table with deletes pending their key checks cannot be truncated after
        statements.append(f"TRUNCATE {', '.join(quote(t) for t in truncate)} CASCADE")
    statements += [f"DELETE FROM {quote(t)}" for t in sorted(held) if t not in truncate]  # noqa: S608  # nosec B608  # as above
    return statements
