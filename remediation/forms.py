"""Forms of the workbench. The edit form is generated from the document the failed handoff's
first step read (e.g. the deal and its account): typed fields, required marks, choices from the
value maps of the mappings in force, validated before anything is stored."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms

from pscsync.models import Handoff, MappingVersion
from remediation.services import ResubmitMode

# Fields the flows' checks require (docs/flows.md: "validation before any write").
REQUIRED = {
    "deal.legal_entity",
    "deal.service_line",
    "deal.billing_model",
    "deal.amount",
    "deal.currency",
    "deal.contract_start",
    "deal.contract_end",
    "account.id",
    "account.tax_profile",
    "account.country",
}
FIXED_CHOICES = {"deal.billing_model": ("Time and Materials", "Fixed Fee")}
# Not editable: ids that key the records written, and facts derived from the rest.
READ_ONLY = {"id", "deal.id", "handoff_facts"}
DATES = ("date", "contract_start", "contract_end")


def flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"deal": {"amount": "1"}} -> {"deal.amount": "1"}; lists stay whole (edited as JSON text)."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if path in READ_ONLY:
            continue
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def unflatten_into(document: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `document` with `changes` (dotted paths) applied."""
    import copy

    result = copy.deepcopy(document)
    for path, value in changes.items():
        node = result
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def value_map_choices(handoff: Handoff) -> dict[str, list[str]]:
    """For each source path a published mapping translates through a value map, the known values."""
    entity = handoff.legal_entity
    versions = MappingVersion.objects.filter(status=MappingVersion.Status.PUBLISHED)
    if entity is not None:
        versions = versions.filter(mapping__connection__legal_entities=entity)
    choices: dict[str, list[str]] = {}
    for version in versions.only("rules", "value_maps"):
        for rule in version.rules or []:
            source, table = rule.get("source"), rule.get("value_map")
            if isinstance(source, str) and table and table in (version.value_maps or {}):
                known = [str(k) for k in version.value_maps[table] if str(k) != "default"]
                choices.setdefault(source, sorted(set(known)))
    return choices


def _label(path: str) -> str:
    return path.replace(".", " · ").replace("_", " ")


class DocumentForm(forms.Form):
    """One field per leaf of the read document."""

    # Checked on the server, and only when "resume with my edit" is chosen: the browser must not
    # block the other two choices because the stored document has an empty required field.
    use_required_attribute = False

    def __init__(self, *args: Any, document: dict[str, Any], handoff: Handoff, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.original = flatten(document)
        self.document = document
        choices = value_map_choices(handoff)
        self.paths: dict[str, str] = {}
        for index, (path, value) in enumerate(self.original.items()):
            name = f"f{index}"
            self.paths[name] = path
            required = path in REQUIRED
            label = _label(path)
            known = list(FIXED_CHOICES.get(path, ())) or choices.get(path, [])
            if isinstance(value, bool):
                field: forms.Field = forms.BooleanField(required=False, label=label)
            elif known:
                options = [(v, v) for v in known]
                if value not in (None, "") and str(value) not in known:
                    options.insert(0, (str(value), f"{value} (not in the value map)"))
                if not required or value in (None, ""):
                    options.insert(0, ("", "— choose —" if required else "—"))
                field = forms.ChoiceField(choices=options, required=required, label=label)
            elif isinstance(value, int) and not isinstance(value, bool):
                field = forms.IntegerField(required=required, label=label)
            elif path.endswith("amount") or isinstance(value, float):
                field = forms.DecimalField(required=required, label=label, decimal_places=2, max_digits=16)
            elif any(path.endswith(suffix) for suffix in DATES):
                field = forms.DateField(required=required, label=label, widget=forms.DateInput(attrs={"type": "date"}))
            elif isinstance(value, list):
                field = forms.JSONField(required=required, label=label)
            else:
                field = forms.CharField(required=required, label=label, max_length=2000)
            field.initial = self._initial(value)
            field.widget.attrs.setdefault("data-path", path)
            self.fields[name] = field

    @staticmethod
    def _initial(value: Any) -> Any:
        if isinstance(value, str) and len(value) >= 10:
            try:
                return dt.date.fromisoformat(value[:10]) if value[4:5] == "-" and len(value) == 10 else value
            except ValueError:
                return value
        return value

    def _as_stored(self, path: str, value: Any) -> Any:
        """Back to the document's own representation (strings for amounts and dates)."""
        original = self.original[path]
        if value is None or value == "":
            return None if original is None else ""
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, Decimal):
            return str(value.quantize(Decimal("0.01")))
        if isinstance(original, str) and not isinstance(value, str):
            return str(value)
        return value

    def changes(self) -> dict[str, tuple[Any, Any]]:
        """path -> (original, edited), only for what differs."""
        diff = {}
        for name, path in self.paths.items():
            edited = self._as_stored(path, self.cleaned_data.get(name))
            original = self.original[path]
            if _same(original, edited):
                continue
            diff[path] = (original, edited)
        return diff

    def edited_document(self) -> dict[str, Any]:
        return unflatten_into(self.document, {p: new for p, (_, new) in self.changes().items()})


def _same(a: Any, b: Any) -> bool:
    if a in (None, "") and b in (None, ""):
        return True
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except (InvalidOperation, ValueError):
        return str(a) == str(b) if not isinstance(a, (list, dict)) else a == b


class ResubmitForm(forms.Form):
    mode = forms.ChoiceField(choices=ResubmitMode.CHOICES, widget=forms.RadioSelect, initial=ResubmitMode.STORED)
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), max_length=2000, help_text="Kept in the audit trail."
    )


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=2000)
