"""Record schemas in our terms: what a vendor says a record's fields are (its describe, metadata
catalog or $metadata, read by the vendor's connector), and the declared shapes incoming payloads
are checked against.

A connector turns its vendor's description into a `RecordShape`: each field with the vendor's own
type word (kept for people) and one of our `KINDS` (compared across checks), whether a write must
give it, and the values its picklist allows. Nothing here knows a vendor.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.errors import ValidationError

# What a field holds, whatever the vendor calls it.
TEXT, NUMBER, BOOLEAN, DATE, DATETIME, REFERENCE, PICKLIST, OBJECT = (
    "text",
    "number",
    "boolean",
    "date",
    "datetime",
    "reference",
    "picklist",
    "object",
)
KINDS = frozenset({TEXT, NUMBER, BOOLEAN, DATE, DATETIME, REFERENCE, PICKLIST, OBJECT})
KIND_WORDS = {
    TEXT: "text",
    NUMBER: "a number",
    BOOLEAN: "yes/no",
    DATE: "a date",
    DATETIME: "a date and time",
    REFERENCE: "a link to another record",
    PICKLIST: "a pick list",
    OBJECT: "a structure",
}


@dataclass(frozen=True)
class FieldShape:
    name: str
    kind: str  # one of KINDS
    vendor_type: str  # the vendor's own word for the type (string, currency, Edm.Decimal, ...)
    required: bool = False
    values: tuple[str, ...] = ()  # a picklist's allowed values (empty: not a list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vendor_type": self.vendor_type,
            "required": self.required,
            "values": list(self.values),
        }

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> FieldShape:
        return cls(
            name,
            str(data.get("kind", TEXT)),
            str(data.get("vendor_type", "")),
            bool(data.get("required")),
            tuple(str(v) for v in data.get("values", ())),
        )


@dataclass(frozen=True)
class RecordShape:
    """A vendor record's fields as the vendor described them at one moment."""

    record: str  # the vendor's name for the record (pse__Proj__c, salesOrder, customers)
    fields: dict[str, FieldShape] = field(default_factory=dict)

    def get(self, name: str) -> FieldShape | None:
        """A field by name; vendors that ignore case in field names are matched that way too."""
        found = self.fields.get(name)
        if found is not None:
            return found
        lowered = name.lower()
        return next((f for n, f in self.fields.items() if n.lower() == lowered), None)

    def as_dict(self) -> dict[str, Any]:
        return {name: f.as_dict() for name, f in sorted(self.fields.items())}

    @classmethod
    def from_dict(cls, record: str, data: Mapping[str, Any]) -> RecordShape:
        return cls(record, {name: FieldShape.from_dict(name, spec) for name, spec in data.items()})


def shape_of(record: str, fields: Iterable[FieldShape]) -> RecordShape:
    return RecordShape(record, {f.name: f for f in fields})


# Declared shapes of incoming payloads ---------------------------------------------------------
# A declared shape: field -> (python types it may hold, required[, inner shape]). The inner shape
# applies to an object field, or to each item of a list field. A connector declares the shape of
# each payload it parses (a webhook body, a poll answer, each record of a read) and checks it
# before reading it, so a payload of another shape is a MalformedRecord in words (which vendor,
# which record, which field) instead of a KeyError or TypeError half-way through a flow.
PayloadShape = Mapping[str, tuple[Any, ...]]
_TYPE_WORDS: dict[type, str] = {
    str: "text",
    int: "a number",
    float: "a number",
    bool: "yes/no",
    dict: "an object",
    list: "a list",
}
TEXT_OR_NUMBER = (str, int, float)  # ids some vendors send either way


class NumberText(str):
    """In a shape's types: text that reads as a number ("1250.00"), as vendors that send
    amounts and rates as text do. Never instantiated; matched by `_fits`."""


class DateText(str):
    """In a shape's types: text starting with an ISO date ("2026-12-06", "2026-12-06T10:42:00Z")."""


NUMBER_OR_TEXT = (int, float, NumberText)
NUMBER_TEXT_LIMIT = Decimal("1e15")  # an amount or a rate, as a number or as number text
_TYPE_WORDS_MORE: dict[type, str] = {NumberText: "a number", DateText: "a date"}


class MalformedRecord(ValidationError):
    """The vendor sent a record we cannot read (a field missing or of another type). Permanent:
    the same record reads the same way until someone changes it or its mapping."""


def sent(vendor: str, noun: str) -> str:
    """ "Kantata sent an invoice": who sent what, for payload_check's `what`."""
    return f"{vendor} sent {'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def payload_check(payload: Any, shape: PayloadShape, *, what: str) -> dict[str, Any]:
    """`payload` if it has the declared shape; else a MalformedRecord naming what is wrong.
    `what` says who sent which record, as a person would: "Salesforce sent an opportunity
    (006…)" gives "Salesforce sent an opportunity (006…) we cannot read: Amount should be a
    number, got text 'lots'"."""
    problem = _problem(payload, shape, "")
    if problem:
        raise MalformedRecord(f"{what} we cannot read: {problem}")
    return payload


def records_checked(
    records: Iterable[Any], shape: PayloadShape, *, what: str, id_field: str = ""
) -> Iterator[dict[str, Any]]:
    """Each record of a read, checked against its declared shape as it arrives; `id_field`
    names the record in the message when it has one."""
    for record in records:
        ident = record.get(id_field) if id_field and isinstance(record, dict) else None
        yield payload_check(record, shape, what=f"{what} ({ident})" if isinstance(ident, (str, int)) else what)


def _problem(payload: Any, shape: PayloadShape, prefix: str) -> str:
    """The first way `payload` breaks `shape`, in words ("" when it fits)."""
    if not isinstance(payload, dict):
        where = prefix.rstrip(".") or "it"
        return f"{where} is not a record (got {_kind_of(payload)})"
    for name, spec in shape.items():
        types, required = spec[0], spec[1]
        inner: PayloadShape | None = spec[2] if len(spec) > 2 else None
        value = payload.get(name)
        label = f"{prefix}{name}"
        if value is None or required and value == "":  # an empty id is no id
            if required:
                return f"{label} is missing"
            continue
        if not _fits(value, types):
            words: dict[type, str] = {**_TYPE_WORDS, **_TYPE_WORDS_MORE}
            expected = " or ".join(dict.fromkeys(words.get(t, t.__name__) for t in types))
            return f"{label} should be {expected}, got {_kind_of(value)}"
        if inner is not None:
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                at = f"{label}[{i + 1}]." if isinstance(value, list) else f"{label}."
                problem = _problem(item, inner, at)
                if problem:
                    return problem
    return ""


def _fits(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types  # a bool is an int to Python, not a number to a vendor
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if isinstance(value, str):
        if NumberText in types:
            try:
                number = Decimal(value.strip())
            except InvalidOperation:
                return False
            # No amount, rate or count a vendor keeps comes near 10^15; "1e999" is not one.
            return number.is_finite() and abs(number) < NUMBER_TEXT_LIMIT
        if DateText in types:
            try:
                dt.date.fromisoformat(value[:10])
            except ValueError:
                return False
            return True
    return isinstance(value, types)


def _kind_of(value: Any) -> str:
    """A received value as a person reads it: its kind and the start of it."""
    if value is None:
        return "nothing"
    kind = _TYPE_WORDS.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    return f"{kind} {value!r:.60}"


# OData CSDL ($metadata) ------------------------------------------------------------------------
# A standard (OASIS OData v4), not one vendor's: Business Central and Dynamics 365 Finance both
# describe their entity sets this way, so their connectors share the reading.
_EDM_KINDS = {
    "Edm.String": TEXT,
    "Edm.Guid": TEXT,
    "Edm.Decimal": NUMBER,
    "Edm.Double": NUMBER,
    "Edm.Single": NUMBER,
    "Edm.Int16": NUMBER,
    "Edm.Int32": NUMBER,
    "Edm.Int64": NUMBER,
    "Edm.Byte": NUMBER,
    "Edm.Boolean": BOOLEAN,
    "Edm.Date": DATE,
    "Edm.DateTimeOffset": DATETIME,
}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def csdl_shape(document: str, entity_set: str) -> RecordShape:
    """The properties of `entity_set`'s entity type in an OData CSDL XML document: EDM types,
    enum members (spaces encoded as _x0020_, as Microsoft writes them) and Nullable="false"."""
    from defusedxml import ElementTree

    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as exc:
        raise ValidationError(f"the $metadata document is not valid XML: {exc}") from None
    elements = list(root.iter())
    entity_type = next(
        (
            str(e.get("EntityType", ""))
            for e in elements
            if _local(e.tag) == "EntitySet" and e.get("Name") == entity_set
        ),
        "",
    )
    if not entity_type:
        raise ValidationError(f"the $metadata document has no entity set {entity_set}")
    type_name = entity_type.rsplit(".", 1)[-1]
    enums = {
        str(e.get("Name")): tuple(
            str(m.get("Name", "")).replace("_x0020_", " ").strip() for m in e if _local(m.tag) == "Member"
        )
        for e in elements
        if _local(e.tag) == "EnumType"
    }
    declared = next((e for e in elements if _local(e.tag) == "EntityType" and e.get("Name") == type_name), None)
    if declared is None:
        raise ValidationError(f"the $metadata document declares no entity type {entity_type}")
    fields = []
    for prop in declared:
        if _local(prop.tag) != "Property":
            continue
        edm_type = str(prop.get("Type", "Edm.String"))
        values = enums.get(edm_type.rsplit(".", 1)[-1], ())
        kind = PICKLIST if values else _EDM_KINDS.get(edm_type, TEXT)
        required = prop.get("Nullable") == "false"
        fields.append(FieldShape(str(prop.get("Name")), kind, edm_type, required, tuple(v for v in values if v)))
    return shape_of(entity_set, fields)
