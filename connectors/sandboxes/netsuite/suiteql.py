"""The SuiteQL subset the NetSuite sandbox answers (POST /services/rest/query/v1/suiteql).

    SELECT col [AS alias], TO_CHAR(col, 'YYYY-MM-DD HH24:MI:SS') [AS alias], ... | *
    FROM <table>
    [WHERE cond]        cond: =, <>, !=, <, <=, >, >=, [NOT] LIKE, IS [NOT] NULL, [NOT] IN (...),
                        BETWEEN x AND y, AND, OR, NOT, parentheses; values are 'strings', numbers,
                        TO_DATE('...', 'fmt'), TO_TIMESTAMP('...', 'fmt'), UPPER(col), LOWER(col)
    [ORDER BY col [ASC|DESC], ...]

Names are case-insensitive and columns come back lowercase, as in NetSuite. Date-time columns
come back in the account's date format ("6/10/2024", the day only) unless the query formats them
with TO_CHAR, which is what a poller must do to keep the time of day.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)|(?P<op><>|!=|<=|>=|[=<>(),*])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*))"
)
KEYWORDS = {"SELECT", "FROM", "WHERE", "ORDER", "BY", "AND", "OR", "NOT", "LIKE", "IS", "NULL", "IN", "BETWEEN"}


class SuiteQLError(ValueError):
    """The query is outside the subset or malformed; NetSuite answers 400 INVALID_PARAMETER."""


@dataclass(frozen=True)
class Column:
    name: str  # lowercase source column
    alias: str
    date_format: str | None = None  # TO_CHAR format


@dataclass(frozen=True)
class Query:
    columns: list[Column] | None  # None: SELECT *
    table: str
    where: Callable[[dict[str, Any]], bool] | None
    order: list[tuple[str, bool]]  # (column, descending)


def to_strptime(fmt: str) -> str:
    """An Oracle date format model ('YYYY-MM-DD HH24:MI:SS') as a strptime format."""
    out = fmt.replace('"T"', "T")
    for model, code in (("YYYY", "%Y"), ("HH24", "%H"), ("MM", "%m"), ("DD", "%d"), ("MI", "%M"), ("SS", "%S")):
        out = out.replace(model, code)
    return out


def parse_date(text: str, fmt: str | None = None) -> dt.datetime:
    text = text.strip()
    try:
        if fmt:
            value = dt.datetime.strptime(text, to_strptime(fmt))  # noqa: DTZ007 - zone set below
        elif "/" in text:
            value = dt.datetime.strptime(text, "%m/%d/%Y")  # noqa: DTZ007 - zone set below
        else:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SuiteQLError(f"Invalid date value '{text}' for format '{fmt or 'YYYY-MM-DD'}'.") from None
    # The sandbox keeps every date-time in UTC; a date without a zone is read as UTC.
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def account_date(value: dt.datetime) -> str:
    """How NetSuite shows a date-time column with the default preference: M/D/YYYY."""
    return f"{value.month}/{value.day}/{value.year}"


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.strip().rstrip(";")
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise SuiteQLError(f"Unexpected character near '{text[pos : pos + 20]}'.")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def keyword(self, *words: str) -> bool:
        kind, value = self.peek()
        if kind == "name" and value.upper() in words:
            self.pos += 1
            return True
        return False

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            raise SuiteQLError(f"Expected {word} but found '{self.peek()[1] or 'end of query'}'.")

    def symbol(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.pos += 1
            return True
        return False

    def expect_symbol(self, op: str) -> None:
        if not self.symbol(op):
            raise SuiteQLError(f"Expected '{op}' but found '{self.peek()[1] or 'end of query'}'.")

    def name(self) -> str:
        kind, value = self.peek()
        if kind != "name" or value.upper() in KEYWORDS:
            raise SuiteQLError(f"Expected a field name but found '{value or 'end of query'}'.")
        self.pos += 1
        return value.lower()

    def string(self) -> str:
        kind, value = self.peek()
        if kind != "string":
            raise SuiteQLError(f"Expected a quoted string but found '{value or 'end of query'}'.")
        self.pos += 1
        return value[1:-1].replace("''", "'")

    # Grammar ----------------------------------------------------------------------------------
    def query(self) -> Query:
        self.expect_keyword("SELECT")
        columns = None if self.symbol("*") else self.columns()
        self.expect_keyword("FROM")
        table = self.name()
        where = self.expression() if self.keyword("WHERE") else None
        order: list[tuple[str, bool]] = []
        if self.keyword("ORDER"):
            self.expect_keyword("BY")
            while True:
                column = self.name()
                descending = self.keyword("DESC")
                if not descending:
                    self.keyword("ASC")
                order.append((column, descending))
                if not self.symbol(","):
                    break
        if self.peek()[0] != "end":
            raise SuiteQLError(f"Unexpected '{self.peek()[1]}' after the end of the query.")
        return Query(columns=columns, table=table, where=where, order=order)

    def columns(self) -> list[Column]:
        columns = []
        while True:
            if self.peek()[1].upper() == "TO_CHAR" and self.peek(1) == ("op", "("):
                self.pos += 2
                name = self.name()
                self.expect_symbol(",")
                fmt = self.string()
                self.expect_symbol(")")
                column = Column(name=name, alias=name, date_format=fmt)
            else:
                name = self.name()
                column = Column(name=name, alias=name)
            if self.keyword("AS") or (self.peek()[0] == "name" and self.peek()[1].upper() not in KEYWORDS):
                column = Column(name=column.name, alias=self.name(), date_format=column.date_format)
            columns.append(column)
            if not self.symbol(","):
                return columns

    def expression(self) -> Callable[[dict[str, Any]], bool]:
        left = self.conjunction()
        while self.keyword("OR"):
            right = self.conjunction()
            left = _or(left, right)
        return left

    def conjunction(self) -> Callable[[dict[str, Any]], bool]:
        left = self.negation()
        while self.keyword("AND"):
            right = self.negation()
            left = _and(left, right)
        return left

    def negation(self) -> Callable[[dict[str, Any]], bool]:
        if self.keyword("NOT"):
            inner = self.negation()
            return lambda row: not inner(row)
        if self.peek() == ("op", "("):
            self.pos += 1
            inner = self.expression()
            self.expect_symbol(")")
            return inner
        return self.comparison()

    def comparison(self) -> Callable[[dict[str, Any]], bool]:
        left = self.operand()
        if self.keyword("IS"):
            negate = self.keyword("NOT")
            self.expect_keyword("NULL")
            return lambda row: (left(row) in (None, "")) != negate
        negate = self.keyword("NOT")
        if self.keyword("LIKE"):
            pattern = self.operand()
            return lambda row: _like(left(row), pattern(row)) != negate
        if self.keyword("IN"):
            self.expect_symbol("(")
            options = [self.operand()]
            while self.symbol(","):
                options.append(self.operand())
            self.expect_symbol(")")
            return lambda row: any(_compare(left(row), o(row)) == 0 for o in options) != negate
        if self.keyword("BETWEEN"):
            low = self.operand()
            self.expect_keyword("AND")
            high = self.operand()
            return lambda row: (_ge(left(row), low(row)) and _ge(high(row), left(row))) != negate
        if negate:
            raise SuiteQLError("NOT must be followed by LIKE, IN or BETWEEN here.")
        kind, op = self.peek()
        if kind != "op" or op not in {"=", "<>", "!=", "<", "<=", ">", ">="}:
            raise SuiteQLError(f"Expected a comparison but found '{op or 'end of query'}'.")
        self.pos += 1
        right = self.operand()
        return _comparator(op, left, right)

    def operand(self) -> Callable[[dict[str, Any]], Any]:
        kind, value = self.peek()
        if kind == "string":
            text = self.string()
            return lambda row: text
        if kind == "number":
            self.pos += 1
            number = float(value) if "." in value else int(value)
            return lambda row: number
        if kind == "name" and self.peek(1) == ("op", "("):
            function = value.upper()
            self.pos += 2
            if function in {"TO_DATE", "TO_TIMESTAMP"}:
                text = self.string()
                fmt = self.string() if self.symbol(",") else None
                self.expect_symbol(")")
                moment = parse_date(text, fmt)
                return lambda row: moment
            if function in {"UPPER", "LOWER"}:
                inner = self.operand()
                self.expect_symbol(")")
                change = str.upper if function == "UPPER" else str.lower
                return lambda row: change(str(inner(row))) if inner(row) is not None else None
            raise SuiteQLError(f"Unsupported function {function}.")
        column = self.name()
        return lambda row: row.get(column)


def _and(a: Callable[[dict[str, Any]], bool], b: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda row: a(row) and b(row)


def _or(a: Callable[[dict[str, Any]], bool], b: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda row: a(row) or b(row)


def _coerce(left: Any, right: Any) -> tuple[Any, Any]:
    """Bring both sides to one type, as Oracle's implicit conversions would."""
    if isinstance(left, dt.datetime) and isinstance(right, str):
        return left, parse_date(right)
    if isinstance(right, dt.datetime) and isinstance(left, str):
        return parse_date(left), right
    if isinstance(left, bool) or isinstance(right, bool):
        return str(left).upper()[:1], str(right).upper()[:1]  # NetSuite booleans are 'T' / 'F'
    if isinstance(left, int | float) and isinstance(right, str):
        try:
            return left, float(right)
        except ValueError:
            return str(left), right
    if isinstance(right, int | float) and isinstance(left, str):
        try:
            return float(left), right
        except ValueError:
            return left, str(right)
    return left, right


def _compare(left: Any, right: Any) -> int | None:
    """-1, 0 or 1; None when either side is NULL (a NULL comparison is never true)."""
    if left is None or right is None:
        return None
    left, right = _coerce(left, right)
    try:
        return (left > right) - (left < right)
    except TypeError:
        left, right = str(left), str(right)
        return (left > right) - (left < right)


def _ge(left: Any, right: Any) -> bool:
    result = _compare(left, right)
    return result is not None and result >= 0


def _comparator(op: str, left: Callable[[dict[str, Any]], Any], right: Callable[[dict[str, Any]], Any]) -> Any:
    tests: dict[str, Callable[[int], bool]] = {
        "=": lambda c: c == 0,
        "<>": lambda c: c != 0,
        "!=": lambda c: c != 0,
        "<": lambda c: c < 0,
        "<=": lambda c: c <= 0,
        ">": lambda c: c > 0,
        ">=": lambda c: c >= 0,
    }
    test = tests[op]

    def compare(row: dict[str, Any]) -> bool:
        result = _compare(left(row), right(row))
        return result is not None and test(result)

    return compare


def _like(value: Any, pattern: Any) -> bool:
    if value is None or pattern is None:
        return False
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in str(pattern))
    return re.fullmatch(regex, str(value), flags=re.DOTALL) is not None


def parse(text: str) -> Query:
    if not isinstance(text, str) or not text.strip():
        raise SuiteQLError("The query is empty.")
    return _Parser(text).query()


def sort_key(value: Any) -> tuple[int, Any]:
    """NULLs last, numbers (and numeric ids) by value, everything else as text."""
    if value is None:
        return (3, "")
    if isinstance(value, dt.datetime):
        return (0, value.timestamp())
    if isinstance(value, bool):
        return (2, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value):
        return (0, float(value))
    return (1, str(value))


def run(query: Query, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Filter, order and project `rows` (lowercase column -> value, dates as datetimes)."""
    selected = [row for row in rows if query.where is None or query.where(row)]
    for column, descending in reversed(query.order):
        selected.sort(key=lambda row, c=column: sort_key(row.get(c)), reverse=descending)
    out = []
    for row in selected:
        if query.columns is None:
            item = {k: _show(v, None) for k, v in row.items()}
        else:
            item = {c.alias: _show(row.get(c.name), c.date_format) for c in query.columns}
        out.append(item)
    return out


def _show(value: Any, date_format: str | None) -> Any:
    if isinstance(value, dt.datetime):
        return value.strftime(to_strptime(date_format)) if date_format else account_date(value)
    if isinstance(value, bool):
        return "T" if value else "F"
    return value
