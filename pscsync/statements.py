"""Parts of one data-modifying statement (PostgreSQL `WITH`), built from model instances.

The runner's commits write several rows (the handoff's lease or move, its history row, a step, an
attempt, cross references) that belong together: as one statement they are one round trip, and
each part writes only if a guard holds (the lease row, or the move, came back), so a worker that
lost its lease writes nothing. Values are prepared by the models' own fields, as a save would
prepare them, and cast, so a value stands alone in a SELECT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections


@dataclass
class Write:
    """A data-modifying sub-statement of a WITH, which writes only if its guard (an SQL
    condition over the statement's other parts) holds. `read`, when given, is a select-list
    expression over this part's RETURNING rows (`id`, `count(*)`); its value is set on `value`
    once the statement has run."""

    sql: str
    params: list[Any]
    read: str = ""
    value: Any = None


# Per model and field names: the quoted columns, their "%s::type" placeholders and the fields.
# What a field's column and cast are does not change in a process; working them out (and going
# through the connection proxy for each) cost more CPU than the rest of a commit's statement.
_columns: dict[tuple[type, tuple[str, ...]], tuple[list[tuple[str, str]], list[Any]]] = {}


def _fields(model: type, names: Sequence[str]) -> tuple[list[tuple[str, str]], list[Any]]:
    key = (model, tuple(names))
    found = _columns.get(key)
    if found is None:
        db = connections[DEFAULT_DB_ALIAS]
        fields = [model._meta.get_field(name) for name in names]  # type: ignore[attr-defined]
        columns = [(db.ops.quote_name(f.column), f"%s::{f.cast_db_type(db)}") for f in fields]
        found = _columns[key] = (columns, fields)
    return found


def columns(model: type, names: Sequence[str]) -> list[tuple[str, str]]:
    """(quoted column, "%s::type") of each named field of the model, worked out once per process."""
    return _fields(model, names)[0]


def prepared(obj: Any, names: Sequence[str]) -> tuple[list[tuple[str, str]], list[Any]]:
    """(quoted column, "%s::type") and the database value of each named field of obj."""
    columns, fields = _fields(type(obj), names)
    db = connections[DEFAULT_DB_ALIAS]
    adding = obj.pk is None
    return columns, [f.get_db_prep_save(f.pre_save(obj, adding), connection=db) for f in fields]


def update(obj: Any, names: Sequence[str], guard: str, *, where: str = "", where_params: Sequence[Any] = ()) -> Write:
    """UPDATE the named fields of obj's row (by id, and `where` when given), if `guard` holds."""
    columns, values = prepared(obj, names)
    sets = ", ".join(f"{column} = {placeholder}" for column, placeholder in columns)
    extra = f" AND {where}" if where else ""
    sql = f"UPDATE {obj._meta.db_table} SET {sets} WHERE id = %s{extra} AND {guard} RETURNING 1"  # noqa: S608  # nosec B608  # model names
    return Write(sql, [*values, obj.pk, *where_params], read="count(*)")


def insert(obj: Any, guard: str) -> Write:
    """INSERT obj (every concrete field but the id), if `guard` holds; reads back its id."""
    names = [f.name for f in obj._meta.concrete_fields if not f.primary_key]
    columns, values = prepared(obj, names)
    sql = (
        f"INSERT INTO {obj._meta.db_table} ({', '.join(c for c, _ in columns)}) "  # nosec B608  # model names
        f"SELECT {', '.join(p for _, p in columns)} WHERE {guard} RETURNING id"
    )
    return Write(sql, values, read="id")


def upsert(objs: Sequence[Any], *, unique: Sequence[str], update_fields: Sequence[str], guard: str) -> Write:
    """INSERT … ON CONFLICT (unique) DO UPDATE SET update_fields, for rows of one model, if
    `guard` holds: what bulk_create(update_conflicts=True) writes, as a part."""
    model = objs[0]._meta
    names = [f.name for f in model.concrete_fields if not f.primary_key]
    rows, params = [], []
    for obj in objs:
        columns, values = prepared(obj, names)
        rows.append("(" + ", ".join(p for _, p in columns) + ")")
        params += values
    quoted = [c for c, _ in _fields(type(objs[0]), names)[0]]
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name

    def column(name: str) -> str:
        return quote(model.get_field(name).column)

    sets = ", ".join(f"{column(n)} = EXCLUDED.{column(n)}" for n in update_fields)
    sql = (
        f"INSERT INTO {model.db_table} ({', '.join(quoted)}) "  # noqa: S608  # nosec B608  # model names
        f"SELECT * FROM (VALUES {', '.join(rows)}) AS v WHERE {guard} "
        f"ON CONFLICT ({', '.join(column(n) for n in unique)}) DO UPDATE SET {sets}"
    )
    return Write(sql, params)


def run(head: Sequence[str], head_params: Sequence[Any], writes: Sequence[Write], final: str) -> tuple[Any, ...]:
    """Run `WITH <head parts>, w0 AS (…), w1 AS (…) SELECT <final>, <each write's read>` and set
    each write's value. `final` reads the head parts (e.g. whether the guard's row came back).
    Returns the row's first values (those of `final`)."""
    parts, params = list(head), list(head_params)
    reads = []
    for n, write in enumerate(writes):
        parts.append(f"w{n} AS ({write.sql})")
        params += write.params
        if write.read:
            reads.append((write, f"(SELECT {write.read} FROM w{n})"))  # noqa: S608  # nosec B608  # our parts
    select = ", ".join([final, *(expression for _, expression in reads)])
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("WITH " + ", ".join(parts) + " SELECT " + select, params)
        row = cursor.fetchone()
    for (write, _), value in zip(reads, row[len(row) - len(reads) :], strict=True):
        write.value = value
    return tuple(row[: len(row) - len(reads)])
