"""A SOQL subset: enough for an integration to read what it needs, with Salesforce's errors.

SELECT field, Relationship.Field, ... | COUNT() | FIELDS(ALL|STANDARD|CUSTOM)
FROM Object
[WHERE cond]   cond := cond OR cond | cond AND cond | NOT cond | (cond)
                       | field op value | field [NOT] IN (v, ...) | field [NOT] LIKE 'a%'
               op := = != <> < > <= >=
               value := 'text' | 12.5 | true | false | null | 2024-06-10 | 2024-06-10T08:00:00Z
                        | TODAY | YESTERDAY | TOMORROW | LAST_N_DAYS:n | NEXT_N_DAYS:n
                        | THIS_MONTH | LAST_MONTH | THIS_YEAR
[ORDER BY field [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n] [OFFSET n]

Not supported (answered MALFORMED_QUERY): child subqueries, aggregates other than COUNT(),
GROUP BY, semi-joins, TYPEOF.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.sandboxes.salesforce.schema import SObject, find_object, parse_moment


class SoqlError(Exception):
    def __init__(self, message: str, code: str = "MALFORMED_QUERY") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<literal>[A-Za-z_]+:\d+)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<op>!=|<>|<=|>=|=|<|>|\(|\)|,)
    )""",
    re.VERBOSE,
)

KEYWORDS = {
    "select",
    "from",
    "where",
    "and",
    "or",
    "not",
    "in",
    "like",
    "order",
    "by",
    "asc",
    "desc",
    "nulls",
    "first",
    "last",
    "limit",
    "offset",
    "null",
    "true",
    "false",
}


@dataclass
class Token:
    kind: str
    text: str

    def is_word(self, word: str) -> bool:
        return self.kind == "name" and self.text.lower() == word


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            snippet = text[position : position + 20].strip()
            raise SoqlError(f"unexpected token: '{snippet}'")
        kind = match.lastgroup or ""
        tokens.append(Token(kind, match.group(kind)))
        position = match.end()
    return tokens


@dataclass
class Comparison:
    field: str
    op: str  # = != < > <= >= in notin like notlike
    value: Any


@dataclass
class BoolOp:
    op: str  # and or not
    parts: list[Any]


@dataclass
class Order:
    field: str
    descending: bool = False
    nulls_last: bool = False


@dataclass
class Query:
    sobject: SObject
    fields: list[str] = field(default_factory=list)  # canonical, possibly Relationship.Field
    count_only: bool = False
    where: Any = None
    order: list[Order] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class DateRange:
    """A date literal: TODAY, LAST_N_DAYS:7, 2024-06-10. Compared as the half-open [start, end)."""

    start: dt.datetime
    end: dt.datetime


class _Parser:
    def __init__(self, text: str, now: dt.datetime) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.now = now

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise SoqlError("unexpected end of query")
        self.i += 1
        return token

    def expect_word(self, word: str) -> None:
        token = self.take()
        if not token.is_word(word):
            raise SoqlError(f"unexpected token: '{token.text}', expecting {word.upper()}")

    def expect_op(self, op: str) -> None:
        token = self.take()
        if token.text != op:
            raise SoqlError(f"unexpected token: '{token.text}', expecting '{op}'")

    def at_word(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token.is_word(word)

    # SELECT ... FROM ...
    def parse(self) -> Query:
        self.expect_word("select")
        raw_fields: list[str] = []
        count_only = False
        while True:
            token = self.take()
            if token.text == "(":
                raise SoqlError("child relationship subqueries are not supported by the pscsync sandbox")
            if token.kind != "name" or token.text.lower() in KEYWORDS:
                raise SoqlError(f"unexpected token: '{token.text}'")
            following = self.peek()
            if following is not None and following.text == "(":
                self.take()
                arg = ""
                if self.peek() is not None and self.peek().text != ")":
                    arg = self.take().text
                self.expect_op(")")
                if token.text.lower() == "count" and not arg:
                    count_only = True
                elif token.text.lower() == "fields" and arg.lower() in {"all", "standard", "custom"}:
                    raw_fields.append(f"FIELDS({arg.upper()})")
                else:
                    raise SoqlError(f"the function {token.text}({arg}) is not supported by the pscsync sandbox")
            else:
                raw_fields.append(token.text)
            if self.peek() is not None and self.peek().text == ",":
                self.take()
                continue
            break
        self.expect_word("from")
        name = self.take()
        sobject = find_object(name.text)
        if sobject is None:
            raise SoqlError(
                f"sObject type '{name.text}' is not supported. If you are attempting to use a custom object, "
                "be sure to append the '__c' after the entity name.",
                "INVALID_TYPE",
            )
        query = Query(sobject=sobject, count_only=count_only)
        query.fields = [self.field_name(sobject, f) if not f.startswith("FIELDS(") else f for f in raw_fields]
        if self.at_word("where"):
            self.take()
            query.where = self.parse_or()
        if self.at_word("order"):
            self.take()
            self.expect_word("by")
            while True:
                order = Order(self.field_name(sobject, self.take().text))
                if self.at_word("asc") or self.at_word("desc"):
                    order.descending = self.take().text.lower() == "desc"
                order.nulls_last = order.descending
                if self.at_word("nulls"):
                    self.take()
                    order.nulls_last = self.take().text.lower() == "last"
                query.order.append(order)
                if self.peek() is not None and self.peek().text == ",":
                    self.take()
                    continue
                break
        if self.at_word("limit"):
            self.take()
            query.limit = self.whole_number()
        if self.at_word("offset"):
            self.take()
            query.offset = self.whole_number()
        if self.peek() is not None:
            raise SoqlError(f"unexpected token: '{self.peek().text}'")
        if any(f.startswith("FIELDS(ALL") or f.startswith("FIELDS(CUSTOM") for f in query.fields) and (
            query.limit is None or query.limit > 200
        ):
            raise SoqlError("The SOQL FIELDS function must have a LIMIT of at most 200")
        return query

    def whole_number(self) -> int:
        token = self.take()
        if token.kind != "number" or "." in token.text or token.text.startswith("-"):
            raise SoqlError(f"unexpected token: '{token.text}', expecting a whole number")
        return int(token.text)

    def field_name(self, sobject: SObject, text: str) -> str:
        if text.lower() in KEYWORDS:
            raise SoqlError(f"unexpected token: '{text}'")
        parts = text.split(".")
        if len(parts) > 2:
            raise SoqlError(f"relationships more than one level deep are not supported by the sandbox: {text}")
        if parts[0].lower() == sobject.name.lower() and len(parts) == 2:  # Account.Name FROM Account
            parts = parts[1:]
        if len(parts) == 1:
            canonical = sobject.canonical_field(parts[0])
            if canonical is None:
                raise SoqlError(
                    f"No such column '{parts[0]}' on entity '{sobject.name}'. If you are attempting to use a custom "
                    "field, be sure to append the '__c' after the custom field name.",
                    "INVALID_FIELD",
                )
            return canonical
        relation = sobject.relationship(parts[0])
        if relation is None:
            raise SoqlError(
                f"Didn't understand relationship '{parts[0]}' in field path. If you are attempting to use a custom "
                "relationship, be sure to append the '__r' after the custom relationship name.",
                "INVALID_FIELD",
            )
        return f"{parts[0]}.{parts[1]}"

    # WHERE
    def parse_or(self) -> Any:
        parts = [self.parse_and()]
        while self.at_word("or"):
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else BoolOp("or", parts)

    def parse_and(self) -> Any:
        parts = [self.parse_not()]
        while self.at_word("and"):
            self.take()
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else BoolOp("and", parts)

    def parse_not(self) -> Any:
        if self.at_word("not"):
            self.take()
            return BoolOp("not", [self.parse_not()])
        token = self.peek()
        if token is not None and token.text == "(":
            self.take()
            inner = self.parse_or()
            self.expect_op(")")
            return inner
        return self.parse_comparison()

    def parse_comparison(self) -> Comparison:
        name = self.take()
        if name.kind != "name":
            raise SoqlError(f"unexpected token: '{name.text}'")
        field_path = name.text  # resolved against the object by the caller of parse()
        negate = False
        if self.at_word("not"):
            self.take()
            negate = True
        token = self.take()
        if token.is_word("in"):
            self.expect_op("(")
            values = [self.value()]
            while self.peek() is not None and self.peek().text == ",":
                self.take()
                values.append(self.value())
            self.expect_op(")")
            return Comparison(field_path, "notin" if negate else "in", values)
        if token.is_word("like"):
            value = self.value()
            if not isinstance(value, str):
                raise SoqlError("LIKE needs a quoted text value")
            return Comparison(field_path, "notlike" if negate else "like", value)
        if negate or token.kind != "op" or token.text in {"(", ")", ","}:
            raise SoqlError(f"unexpected token: '{token.text}'")
        return Comparison(field_path, "!=" if token.text == "<>" else token.text, self.value())

    def value(self) -> Any:
        token = self.take()
        if token.kind == "string":
            return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), token.text[1:-1])
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "datetime":
            moment = parse_moment(token.text)
            if moment is None:
                raise SoqlError(f"value of filter criterion is not of type dateTime: {token.text}")
            return moment
        if token.kind == "date":
            day = parse_moment(token.text)
            if day is None:
                raise SoqlError(f"value of filter criterion is not of type date: {token.text}")
            return DateRange(day, day + dt.timedelta(days=1))
        if token.kind == "literal":
            return self.date_literal(token.text)
        if token.kind == "name":
            word = token.text.lower()
            if word in {"true", "false"}:
                return word == "true"
            if word == "null":
                return None
            return self.date_literal(token.text)
        raise SoqlError(f"unexpected token: '{token.text}'")

    def date_literal(self, text: str) -> DateRange:
        today = self.now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day = dt.timedelta(days=1)
        name, _, number = text.upper().partition(":")
        n = int(number) if number else 0
        month_start = today.replace(day=1)
        next_month = (month_start + dt.timedelta(days=32)).replace(day=1)
        fixed = {
            "TODAY": (today, today + day),
            "YESTERDAY": (today - day, today),
            "TOMORROW": (today + day, today + 2 * day),
            "THIS_MONTH": (month_start, next_month),
            "LAST_MONTH": ((month_start - day).replace(day=1), month_start),
            "THIS_YEAR": (today.replace(month=1, day=1), today.replace(year=today.year + 1, month=1, day=1)),
        }
        if name in fixed and not number:
            return DateRange(*fixed[name])
        if name == "LAST_N_DAYS" and number:
            return DateRange(today - n * day, today + day)
        if name == "NEXT_N_DAYS" and number:
            return DateRange(today + day, today + (n + 1) * day)
        raise SoqlError(f"unexpected token: '{text}'")


def parse(text: str, *, now: dt.datetime | None = None) -> Query:
    query = _Parser(text, now or dt.datetime.now(dt.UTC)).parse()
    query.where = _resolve_fields(query.sobject, query.where)
    return query


def _resolve_fields(sobject: SObject, node: Any) -> Any:
    if node is None:
        return None
    if isinstance(node, BoolOp):
        return BoolOp(node.op, [_resolve_fields(sobject, p) for p in node.parts])
    parser = _Parser("", dt.datetime.now(dt.UTC))
    return Comparison(parser.field_name(sobject, node.field), node.op, node.value)


# Evaluation ---------------------------------------------------------------------------------
Resolve = Callable[[str], dict[str, Any] | None]  # a record id -> that record (any object), or None


def field_value(record: dict[str, Any], path: str, sobject: SObject, resolve: Resolve) -> Any:
    if "." not in path:
        return _get(record, path)
    relationship, name = path.split(".", 1)
    relation = sobject.relationship(relationship)
    if relation is None:
        return None
    parent_id = _get(record, relation[0])
    parent = resolve(parent_id) if isinstance(parent_id, str) else None
    return _get(parent, name) if parent else None


def _get(record: dict[str, Any], name: str) -> Any:
    if name in record:
        return record[name]
    lowered = name.lower()
    return next((v for k, v in record.items() if k.lower() == lowered), None)


def _compare(left: Any, right: Any) -> int | None:
    """-1/0/1, or None when the two cannot be compared (null, or different kinds)."""
    if left is None or right is None:
        return None
    if isinstance(right, dt.datetime):
        moment = parse_moment(left)
        if moment is None:
            return None
        return (moment > right) - (moment < right)
    if isinstance(right, bool) or isinstance(left, bool):
        return 0 if bool(left) == bool(right) else 1
    if isinstance(right, int | float):
        try:
            number = float(left)
        except (TypeError, ValueError):
            return None
        return (number > right) - (number < right)
    a, b = str(left).lower(), str(right).lower()  # SOQL text comparison ignores case
    return (a > b) - (a < b)


def _in_range(value: Any, op: str, span: DateRange) -> bool:
    moment = parse_moment(value)
    if moment is None:
        return op == "!="
    inside = span.start <= moment < span.end
    return {
        "=": inside,
        "!=": not inside,
        "<": moment < span.start,
        "<=": moment < span.end,
        ">": moment >= span.end,
        ">=": moment >= span.start,
    }[op]


def _like(value: Any, pattern: str) -> bool:
    if value is None:
        return False
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, str(value), re.IGNORECASE | re.DOTALL) is not None


def matches(node: Any, record: dict[str, Any], sobject: SObject, resolve: Resolve) -> bool:
    if node is None:
        return True
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(matches(p, record, sobject, resolve) for p in node.parts)
        if node.op == "or":
            return any(matches(p, record, sobject, resolve) for p in node.parts)
        return not matches(node.parts[0], record, sobject, resolve)
    value = field_value(record, node.field, sobject, resolve)
    if node.op in {"in", "notin"}:
        found = any(
            (_in_range(value, "=", v) if isinstance(v, DateRange) else _compare(value, v) == 0) for v in node.value
        )
        return found if node.op == "in" else not found
    if node.op in {"like", "notlike"}:
        return _like(value, node.value) if node.op == "like" else not _like(value, node.value)
    if isinstance(node.value, DateRange):
        return _in_range(value, node.op, node.value)
    if node.value is None:
        return (value is None) if node.op == "=" else (value is not None) if node.op == "!=" else False
    if value is None:
        return node.op == "!="
    result = _compare(value, node.value)
    if result is None:
        return node.op == "!="
    return {
        "=": result == 0,
        "!=": result != 0,
        "<": result < 0,
        ">": result > 0,
        "<=": result <= 0,
        ">=": result >= 0,
    }[node.op]


def run(query: Query, records: list[dict[str, Any]], resolve: Resolve) -> list[dict[str, Any]]:
    """The matching records, ordered, with LIMIT and OFFSET applied."""
    rows = [r for r in records if matches(query.where, r, query.sobject, resolve)]
    for order in reversed(query.order):
        present = [r for r in rows if field_value(r, order.field, query.sobject, resolve) is not None]
        missing = [r for r in rows if field_value(r, order.field, query.sobject, resolve) is None]
        present.sort(key=lambda r, f=order.field: _sort_key(field_value(r, f, query.sobject, resolve)))
        if order.descending:
            present.reverse()
        rows = present + missing if order.nulls_last else missing + present
    rows = rows[query.offset :]
    return rows[: query.limit] if query.limit is not None else rows


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value).lower())
