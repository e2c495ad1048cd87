"""Mappings as data: field rules that turn a source record into a target record.

A rule: {"target": "companyName", "source": "account.name", "transform": "strip",
         "value_map": "service_line_to_department", "default": null, "required": true}
- `source` is a JMESPath expression over the source document (evaluated by the jmespath library,
  never by eval), or a literal when `source` is empty and `default` is set;
- `transform` is one of a fixed safe set (TRANSFORMS);
- `value_map` names a table of the mapping version (service line -> department, country -> tax
  code, legal entity -> subsidiary); a value missing from the table is a mapping error;
- `default` is used when the source yields nothing; `required` makes "nothing" an error.
Targets may be dotted ("address.city") to build nested objects.

`mapping_validate` refuses a bad rule set with the rule's position and the reason, before anything
is saved; `mapping_apply` returns the output, the rule that produced each field, and every error.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jmespath
import jmespath.exceptions

MAX_EXPRESSION_LENGTH = 500


def _to_decimal(value: Any) -> str:
    try:
        return str(decimal.Decimal(str(value)).quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_UP))
    except decimal.InvalidOperation:
        raise ValueError(f"{value!r} is not an amount") from None


def _to_int(value: Any) -> int:
    try:
        return int(decimal.Decimal(str(value)))
    except decimal.InvalidOperation:
        raise ValueError(f"{value!r} is not a whole number") from None


def _to_date(value: Any) -> str:
    text = str(value)
    try:
        return dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _to_datetime(value: Any) -> str:
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a date and time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed.isoformat()


def _to_cents(value: Any) -> int:
    try:
        return int((decimal.Decimal(str(value)) * 100).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))
    except decimal.InvalidOperation:
        raise ValueError(f"{value!r} is not an amount") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "1", "y"}:
        return True
    if text in {"false", "no", "0", "n", ""}:
        return False
    raise ValueError(f"{value!r} is not yes or no")


TRANSFORMS: dict[str, Callable[[Any], Any]] = {
    "strip": lambda v: str(v).strip(),
    "upper": lambda v: str(v).upper(),
    "lower": lambda v: str(v).lower(),
    "string": str,
    "amount": _to_decimal,
    "integer": _to_int,
    "date": _to_date,
    "datetime": _to_datetime,
    "boolean": _to_bool,
    "cents": _to_cents,
    "minutes_from_hours": lambda v: _to_int(decimal.Decimal(str(v)) * 60),
    "negate_amount": lambda v: _to_decimal(-decimal.Decimal(str(v))),
    "first_line": lambda v: str(v).splitlines()[0] if str(v) else "",
}

RULE_KEYS = {"target", "source", "transform", "value_map", "default", "required"}


@dataclass(frozen=True)
class RuleProblem:
    """Why a rule set cannot be saved: which rule, which part, what is wrong."""

    rule: int  # 1-based position; 0 for a value map problem
    part: str
    message: str
    # The value map that lacked the record's value, when that is the problem (a fix in that map).
    value_map: str = ""

    def __str__(self) -> str:
        where = f"rule {self.rule} ({self.part})" if self.rule else self.part
        return f"{where}: {self.message}"


@dataclass
class MappingResult:
    output: dict[str, Any] = field(default_factory=dict)
    # target -> 1-based rule number that produced it
    produced_by: dict[str, int] = field(default_factory=dict)
    errors: list[RuleProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def mapping_validate(rules: list[dict[str, Any]], value_maps: dict[str, dict[str, Any]]) -> list[RuleProblem]:
    """Every problem with a rule set, in rule order. An empty list means it may be saved."""
    problems: list[RuleProblem] = []
    if not isinstance(value_maps, dict):
        return [RuleProblem(0, "value maps", "must be an object of named tables")]
    for name, table in value_maps.items():
        if not isinstance(table, dict):
            problems.append(RuleProblem(0, f"value map {name!r}", "must be a table of source value -> target value"))
            continue
        folded: dict[str, str] = {}
        for key in table:
            low = str(key).strip().lower()
            if low in folded:
                problems.append(RuleProblem(0, f"value map {name!r}", f"{key!r} and {folded[low]!r} are the same key"))
            folded[low] = key
    seen: dict[str, int] = {}
    for position, rule in enumerate(rules, start=1):
        if not isinstance(rule, dict):
            problems.append(RuleProblem(position, "rule", "must be an object"))
            continue
        unknown = set(rule) - RULE_KEYS
        if unknown:
            problems.append(RuleProblem(position, "rule", f"unknown part(s): {', '.join(sorted(unknown))}"))
        target = rule.get("target")
        if not isinstance(target, str) or not target.strip():
            problems.append(RuleProblem(position, "target", "is required"))
        elif target in seen:
            problems.append(RuleProblem(position, "target", f"{target!r} is already set by rule {seen[target]}"))
        else:
            seen[target] = position
        source = rule.get("source") or ""
        if not isinstance(source, str):
            problems.append(RuleProblem(position, "source", "must be text"))
        elif len(source) > MAX_EXPRESSION_LENGTH:
            problems.append(RuleProblem(position, "source", f"is longer than {MAX_EXPRESSION_LENGTH} characters"))
        elif source:
            try:
                jmespath.compile(source)
            except jmespath.exceptions.ParseError as exc:
                problems.append(
                    RuleProblem(position, "source", f"invalid expression at character {exc.lex_position}: {exc.msg}")
                )
            except jmespath.exceptions.JMESPathError as exc:
                problems.append(RuleProblem(position, "source", f"invalid expression: {exc}"))
        elif "default" not in rule:
            problems.append(RuleProblem(position, "source", "is empty and there is no default"))
        transform = rule.get("transform")
        if transform and transform not in TRANSFORMS:
            problems.append(
                RuleProblem(position, "transform", f"{transform!r} is not one of: {', '.join(sorted(TRANSFORMS))}")
            )
        value_map = rule.get("value_map")
        if value_map and value_map not in value_maps:
            problems.append(RuleProblem(position, "value map", f"no value map is named {value_map!r}"))
    targets = list(seen)
    for target in targets:
        for other in targets:
            if other != target and other.startswith(target + "."):
                problems.append(
                    RuleProblem(
                        seen[other], "target", f"{other!r} would be inside {target!r}, which rule {seen[target]} sets"
                    )
                )
    return problems


def _set_path(output: dict[str, Any], target: str, value: Any) -> None:
    parts = target.split(".")
    node = output
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _lookup(table: dict[str, Any], value: Any) -> tuple[bool, Any]:
    if value in table:
        return True, table[value]
    folded = {str(k).strip().lower(): v for k, v in table.items()}
    key = str(value).strip().lower()
    return (True, folded[key]) if key in folded else (False, None)


def _unreadable(exc: jmespath.exceptions.JMESPathError) -> str:
    """Why a valid expression could not be evaluated on this record, in words."""
    if isinstance(exc, jmespath.exceptions.JMESPathTypeError):
        if exc.current_value is None:
            return f"cannot be read from this record: {exc.function_name}() found an empty field"
        return f"cannot be read from this record: {exc.function_name}() cannot take {exc.actual_type} values"
    return f"cannot be read from this record: {exc}"


def mapping_apply(
    rules: list[dict[str, Any]], value_maps: dict[str, dict[str, Any]], source: dict[str, Any]
) -> MappingResult:
    """Map one source document. Every rule runs; all errors are reported together."""
    result = MappingResult()
    for position, rule in enumerate(rules, start=1):
        target = rule["target"]
        expression = rule.get("source") or ""
        try:
            value = jmespath.search(expression, source) if expression else None
        except jmespath.exceptions.JMESPathError as exc:
            # A valid expression can still fail on a record of another shape (join() over a null,
            # a function given the wrong type): that is this record's error, not a crash.
            result.errors.append(RuleProblem(position, target, _unreadable(exc)))
            continue
        if value in (None, "") and "default" in rule:
            value = rule["default"]
        if value in (None, "", []):
            if rule.get("required"):
                what = f"{expression!r} found nothing in the source" if expression else "no value"
                result.errors.append(RuleProblem(position, target, f"is required but {what}"))
            continue
        if rule.get("value_map"):
            found, mapped = _lookup(value_maps.get(rule["value_map"], {}), value)
            if not found:
                result.errors.append(
                    RuleProblem(
                        position, target, f"{value!r} is not in value map {rule['value_map']!r}", rule["value_map"]
                    )
                )
                continue
            value = mapped
        if rule.get("transform"):
            try:
                value = TRANSFORMS[rule["transform"]](value)
            except (ValueError, TypeError, decimal.InvalidOperation) as exc:
                result.errors.append(RuleProblem(position, target, f"{rule['transform']}: {exc}"))
                continue
        _set_path(result.output, target, value)
        result.produced_by[target] = position
    return result
