"""The mapping studio's changes: drafts, rules, value maps, publishing, restoring, import/export,
and the previews that say what a draft would do before anyone publishes it.

Edits go to one draft per mapping (a MappingVersion in status draft); publishing validates the
whole draft and turns it into the next numbered version through `pscsync.mappings.mapping_publish`
(the previous version is retired, never changed). Every change is audited with before and after.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max

from connectors.models import Connection
from pscsync import clock
from pscsync.audit import audit_record
from pscsync.csvsafe import SafeWriter, csv_unneutralise
from pscsync.mapping import TRANSFORMS, MappingResult, RuleProblem, mapping_apply, mapping_validate
from pscsync.mappings import MappingInvalid, mapping_publish
from pscsync.models import Handoff, Mapping, MappingVersion, Step

RULE_FIELDS = ("target", "source", "transform", "value_map", "default", "required")
EXPORT_FORMAT = "pscsync.mappings/1"


class StudioError(Exception):
    """A change the studio refuses; `problems` say where and why. Nothing was saved."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def _audit(actor: User, action: str, obj: Any, before: Any, after: Any, comment: str = "") -> None:
    audit_record(actor=actor, action=action, obj=obj, before=before, after=after, comment=comment)


def published(mapping: Mapping) -> MappingVersion | None:
    return mapping.versions.filter(status=MappingVersion.Status.PUBLISHED).first()


def draft_of(mapping: Mapping) -> MappingVersion | None:
    return mapping.versions.filter(status=MappingVersion.Status.DRAFT).first()


@transaction.atomic
def draft_open(*, mapping: Mapping, actor: User, based_on: MappingVersion | None = None) -> MappingVersion:
    """The mapping's draft; a new one starts as a copy of the version in force (or `based_on`)."""
    Mapping.objects.select_for_update().filter(pk=mapping.pk).first()
    existing = draft_of(mapping)
    if existing is not None and based_on is None:
        return existing
    source = based_on or published(mapping)
    if existing is not None:
        existing.rules = list(source.rules) if source else []
        existing.value_maps = dict(source.value_maps) if source else {}
        existing.created_by, existing.created_at = actor, clock.now()
        existing.save(update_fields=["rules", "value_maps", "created_by", "created_at"])
        return existing
    number = (mapping.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    return MappingVersion.objects.create(
        mapping=mapping,
        number=number,
        status=MappingVersion.Status.DRAFT,
        rules=list(source.rules) if source else [],
        value_maps=dict(source.value_maps) if source else {},
        comment=f"draft from v{source.number}" if source else "new draft",
        created_by=actor,
        created_at=clock.now(),
    )


def rule_from_form(data: dict[str, Any]) -> dict[str, Any]:
    """A rule from submitted fields: empty parts are left out; a default is JSON when it parses."""
    rule: dict[str, Any] = {"target": str(data.get("target", "")).strip()}
    for part in ("source", "transform", "value_map"):
        value = str(data.get(part) or "").strip()
        if value:
            rule[part] = value
    default = str(data.get("default") or "").strip()
    if default:
        try:
            rule["default"] = json.loads(default)
        except ValueError:
            rule["default"] = default
    if data.get("required") in (True, "on", "true", "1"):
        rule["required"] = True
    return rule


def _save_rules(
    draft: MappingVersion, rules: list[dict[str, Any]], actor: User, action: str, only: int | None = None
) -> MappingVersion:
    """Validate the whole rule set; save only if it is valid (problems of rule `only` when given)."""
    problems = mapping_validate(rules, draft.value_maps)
    if only is not None:
        problems = [p for p in problems if p.rule in (only, 0)]
    if problems:
        raise StudioError(problems)
    before = list(draft.rules)
    draft.rules = rules
    draft.save(update_fields=["rules"])
    _audit(actor, action, draft, {"rules": before}, {"rules": rules})
    return draft


@transaction.atomic
def rule_save(*, draft: MappingVersion, position: int, data: dict[str, Any], actor: User) -> MappingVersion:
    """Replace rule `position` (1-based); position len+1 adds a rule at the end."""
    _editable(draft)
    rules = list(draft.rules)
    rule = rule_from_form(data)
    if position == len(rules) + 1:
        rules.append(rule)
    elif 1 <= position <= len(rules):
        rules[position - 1] = rule
    else:
        raise StudioError([RuleProblem(position, "rule", "there is no such rule")])
    return _save_rules(draft, rules, actor, "mapping.rule_save", only=position)


@transaction.atomic
def rule_remove(*, draft: MappingVersion, position: int, actor: User) -> MappingVersion:
    _editable(draft)
    rules = list(draft.rules)
    if not 1 <= position <= len(rules):
        raise StudioError([RuleProblem(position, "rule", "there is no such rule")])
    del rules[position - 1]
    return _save_rules(draft, rules, actor, "mapping.rule_remove")


@transaction.atomic
def rule_move(*, draft: MappingVersion, position: int, step: int, actor: User) -> MappingVersion:
    _editable(draft)
    rules = list(draft.rules)
    other = position + step
    if not (1 <= position <= len(rules) and 1 <= other <= len(rules)):
        return draft
    rules[position - 1], rules[other - 1] = rules[other - 1], rules[position - 1]
    return _save_rules(draft, rules, actor, "mapping.rule_move")


def _parse_value(text: str) -> Any:
    """A value-map cell: JSON when it is JSON (lists for plans, true/false), else the text."""
    text = text.strip()
    if text[:1] in "[{" or text in ("true", "false", "null"):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def value_map_rows(rows: list[tuple[str, str]], name: str) -> dict[str, Any]:
    """A value map from (key, value) rows; blank rows are skipped; a key twice is refused."""
    table: dict[str, Any] = {}
    seen: dict[str, int] = {}
    problems = []
    for line, (key, value) in enumerate(rows, start=1):
        key = key.strip()
        if not key and not value.strip():
            continue
        if not key:
            problems.append(RuleProblem(0, f"value map {name!r} row {line}", "has a value but no key"))
            continue
        folded = key.lower()
        if folded in seen:
            problems.append(
                RuleProblem(0, f"value map {name!r} row {line}", f"{key!r} is already on row {seen[folded]}")
            )
            continue
        seen[folded] = line
        table[key] = _parse_value(value)
    if problems:
        raise StudioError(problems)
    return table


def value_map_from_csv(text: str, name: str) -> dict[str, Any]:
    """CSV with two columns (source value, target value); a header row `key,value` is skipped."""
    reader = csv.reader(io.StringIO(text.strip()))
    # Our own export neutralises formula-like cells with an apostrophe; reading it back undoes that.
    rows = [(csv_unneutralise(r[0]) if r else "", csv_unneutralise(r[1]) if len(r) > 1 else "") for r in reader]
    if rows and [c.strip().lower() for c in rows[0]] in (["key", "value"], ["source", "target"]):
        rows = rows[1:]
    bad = [n for n, r in enumerate(rows, start=1) if r[0].strip() and not r[1].strip()]
    if bad:
        raise StudioError([RuleProblem(0, f"value map {name!r} row {bad[0]}", "needs two columns: key,value")])
    return value_map_rows(rows, name)


def value_map_to_csv(table: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = SafeWriter(out)  # a key or value never runs as a spreadsheet formula
    writer.writerow(["key", "value"])
    for key, value in table.items():
        writer.writerow([key, value if isinstance(value, str) else json.dumps(value)])
    return out.getvalue()


@transaction.atomic
def value_map_save(*, draft: MappingVersion, name: str, table: dict[str, Any], actor: User) -> MappingVersion:
    _editable(draft)
    name = name.strip()
    if not name or not name.replace("_", "").isalnum():
        raise StudioError([RuleProblem(0, "value map name", "use letters, digits and _ only")])
    maps = {**draft.value_maps, name: table}
    problems = mapping_validate(draft.rules, maps)
    if problems:
        raise StudioError(problems)
    before = draft.value_maps.get(name)
    draft.value_maps = maps
    draft.save(update_fields=["value_maps"])
    _audit(actor, "mapping.value_map_save", draft, {name: before}, {name: table})
    return draft


# A rule evaluated on one record may take this long; more means an expression to rewrite.
EVALUATION_LIMIT_SECONDS = 0.05


def dry_run_problems(draft: MappingVersion) -> list[RuleProblem]:
    """Run the draft on the records this mapping recently mapped: a rule that now returns a
    value its transform cannot take (the wrong type), where the version in force did not fail,
    or that takes too long, is a problem to fix before publishing."""
    in_force = published(draft.mapping)
    problems: dict[tuple[int, str], RuleProblem] = {}
    for sample in sample_documents(draft.mapping):
        label, document = sample.label, sample.document
        before = {p.rule for p in _safe_apply(in_force, document).errors} if in_force else set()
        for position, rule in enumerate(draft.rules, start=1):
            started = time.perf_counter()
            result = mapping_apply([rule], draft.value_maps, document)
            took = time.perf_counter() - started
            if took > EVALUATION_LIMIT_SECONDS:
                problems[(position, "slow")] = RuleProblem(
                    position, "source", f"took {took * 1000:.0f} ms on {label}: simplify the expression"
                )
            for error in result.errors:
                same_rule_before = any(
                    r.get("target") == rule.get("target") and i in before
                    for i, r in enumerate(in_force.rules if in_force else [], start=1)
                )
                if rule.get("transform") and error.message.startswith(f"{rule['transform']}:") and not same_rule_before:
                    problems[(position, "type")] = RuleProblem(
                        position, "transform", f"{error.message} (on {label}): the expression returns the wrong type"
                    )
    return list(problems.values())


@transaction.atomic
def draft_publish(*, draft: MappingVersion, comment: str, actor: User) -> MappingVersion:
    """Publish the draft as the next version. Refused whole if any rule is invalid, or fails on
    the records the mapping recently mapped where the version in force did not."""
    _editable(draft)
    problems = dry_run_problems(draft)
    if problems:
        raise StudioError(problems)
    mapping = draft.mapping
    rules, value_maps = list(draft.rules), dict(draft.value_maps)
    draft.delete()  # the draft's number goes to the published version
    try:
        return mapping_publish(
            connection=mapping.connection,
            entity=mapping.entity,
            direction=mapping.direction,
            rules=rules,
            value_maps=value_maps,
            comment=comment,
            actor=actor,
        )
    except MappingInvalid as exc:
        raise StudioError(exc.problems) from None


@transaction.atomic
def draft_discard(*, draft: MappingVersion, actor: User) -> None:
    _editable(draft)
    _audit(actor, "mapping.draft_discard", draft, {"rules": draft.rules, "value_maps": draft.value_maps}, {})
    draft.delete()


def _editable(draft: MappingVersion) -> None:
    if draft.status != MappingVersion.Status.DRAFT:
        raise StudioError([RuleProblem(0, "version", f"v{draft.number} is {draft.status}: only a draft can change")])


# Comparing versions -----------------------------------------------------------------------------
@dataclass
class Change:
    what: str  # "rule" or "value map"
    name: str
    kind: str  # added, removed, changed
    before: Any = None
    after: Any = None

    @property
    def sentence(self) -> str:
        """The change in words, for the versions page and the draft's list of changes."""
        if self.what == "value map":
            table, _, key = self.name.partition(": ")
            if self.kind == "added":
                return f"“{key}” added to the value map {table}, mapped to {_shown(self.after)}."
            if self.kind == "removed":
                return f"“{key}” removed from the value map {table} (it mapped to {_shown(self.before)})."
            now, was = _shown(self.after), _shown(self.before)
            return f"In the value map {table}, “{key}” now maps to {now} instead of {was}."
        if self.kind == "added":
            return f"New rule for {self.name}: {_rule_words(self.after)}."
        if self.kind == "removed":
            return f"The rule for {self.name} was removed (it was: {_rule_words(self.before)})."
        parts = []
        for part, word in _PART_WORDS:
            a, b = (self.before or {}).get(part), (self.after or {}).get(part)
            if a == b:
                continue
            if part == "required":
                parts.append("now required" if b else "no longer required")
            elif a in (None, ""):
                parts.append(f"{word} set to {_shown(b)}")
            elif b in (None, ""):
                parts.append(f"{word} {_shown(a)} removed")
            else:
                parts.append(f"{word} changed from {_shown(a)} to {_shown(b)}")
        return f"The rule for {self.name}: {'; '.join(parts)}."


_PART_WORDS = (
    ("source", "source"),
    ("transform", "transform"),
    ("value_map", "value map"),
    ("default", "default"),
    ("required", "required"),
)


def _shown(value: Any) -> str:
    """A rule part or value-map value as a person reads it: text in quotes, lists joined."""
    if isinstance(value, str):
        return f"“{value}”"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items())
    return "nothing" if value is None else str(value)


def _rule_words(rule: dict[str, Any] | None) -> str:
    if not rule:
        return "nothing"
    words = [f"from {_shown(rule['source'])}" if rule.get("source") else "a fixed value"]
    if rule.get("value_map"):
        words.append(f"looked up in the value map {rule['value_map']}")
    if rule.get("transform"):
        words.append(f"as {rule['transform']}")
    if "default" in rule:
        words.append(f"default {_shown(rule['default'])}")
    if rule.get("required"):
        words.append("required")
    return ", ".join(words)


def versions_diff(old: MappingVersion | None, new: MappingVersion) -> list[Change]:
    """Rules compared by target, value maps entry by entry."""
    changes: list[Change] = []
    before = {r["target"]: r for r in (old.rules if old else [])}
    after = {r["target"]: r for r in new.rules}
    for target in [*before, *[t for t in after if t not in before]]:
        a, b = before.get(target), after.get(target)
        if a != b:
            kind = "added" if a is None else "removed" if b is None else "changed"
            changes.append(Change("rule", target, kind, a, b))
    old_maps = old.value_maps if old else {}
    for name in sorted(set(old_maps) | set(new.value_maps)):
        a_map, b_map = old_maps.get(name, {}), new.value_maps.get(name, {})
        for key in [*a_map, *[k for k in b_map if k not in a_map]]:
            a, b = a_map.get(key), b_map.get(key)
            if a != b:
                kind = "added" if key not in a_map else "removed" if key not in b_map else "changed"
                changes.append(Change("value map", f"{name}: {key}", kind, a, b))
    return changes


# Import and export ------------------------------------------------------------------------------
def mappings_export(connection: Connection) -> dict[str, Any]:
    """Every published mapping of a connection, to promote from a test environment to production."""
    out = []
    for mapping in Mapping.objects.filter(connection=connection).order_by("entity", "direction"):
        version = published(mapping)
        if version is not None:
            out.append(
                {
                    "entity": mapping.entity,
                    "direction": mapping.direction,
                    "name": mapping.name,
                    "version": version.number,
                    "rules": version.rules,
                    "value_maps": version.value_maps,
                }
            )
    return {
        "format": EXPORT_FORMAT,
        "connection": {"vendor": connection.vendor, "slug": connection.slug},
        "mappings": out,
    }


@transaction.atomic
def mappings_import(*, connection: Connection, document: Any, actor: User) -> list[MappingVersion]:
    """Each imported mapping becomes the draft of its mapping, for review and publishing. The whole
    file is refused, naming the mapping and the rule, if any part is invalid."""
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise StudioError([RuleProblem(0, "file", f"not a pscsync mappings export (format {EXPORT_FORMAT})")])
    vendor = (document.get("connection") or {}).get("vendor")
    if vendor and vendor != connection.vendor:
        raise StudioError(
            [RuleProblem(0, "file", f"exported from a {vendor} connection; {connection.name} is {connection.vendor}")]
        )
    problems: list[RuleProblem] = []
    items = document.get("mappings")
    if not isinstance(items, list):
        raise StudioError([RuleProblem(0, "file", "has no list of mappings")])
    for item in items:
        entity = str((item or {}).get("entity", "")).strip()
        if not entity:
            problems.append(RuleProblem(0, "file", "a mapping has no entity"))
            continue
        for p in mapping_validate(item.get("rules") or [], item.get("value_maps") or {}):
            problems.append(RuleProblem(p.rule, f"{entity}: {p.part}", p.message))
    if problems:
        raise StudioError(problems)
    drafts = []
    for item in items:
        mapping, _ = Mapping.objects.get_or_create(
            connection=connection,
            entity=item["entity"],
            direction=item.get("direction") or Mapping.Direction.OUTBOUND,
            defaults={"name": item.get("name") or f"{connection.name}: {item['entity']}"},
        )
        draft = draft_open(mapping=mapping, actor=actor)
        draft.rules, draft.value_maps = item.get("rules") or [], item.get("value_maps") or {}
        draft.comment = "imported"
        draft.save(update_fields=["rules", "value_maps", "comment"])
        drafts.append(draft)
    _audit(actor, "mapping.import", connection, {}, {"mappings": [d.mapping.entity for d in drafts]})
    return drafts


# Previews --------------------------------------------------------------------------------------
def preview(version: MappingVersion, document: dict[str, Any]) -> dict[str, Any]:
    result = _safe_apply(version, document)
    by_rule = {p.rule: p for p in result.errors}
    rows = []
    for position, rule in enumerate(version.rules, start=1):
        target = rule["target"]
        rows.append(
            {
                "position": position,
                "rule": rule,
                "value": _get_path(result.output, target),
                "produced": target in result.produced_by,
                "error": by_rule.get(position),
            }
        )
    return {"ok": result.ok, "output": result.output, "rows": rows}


def _get_path(output: dict[str, Any], target: str) -> Any:
    node: Any = output
    for part in target.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _safe_apply(version: MappingVersion, document: dict[str, Any]) -> MappingResult:
    """Apply a version to one record for a preview. A rule that cannot evaluate on this record
    (another kind of record, a value of the wrong type) is this record's error, never a crash of
    the page: the preview must answer for every mapping whatever the records look like."""
    try:
        return mapping_apply(version.rules, version.value_maps, document)
    except (ArithmeticError, AttributeError, KeyError, LookupError, TypeError, ValueError) as exc:
        return MappingResult(errors=[RuleProblem(0, "record", f"cannot be mapped: {exc}")])


@dataclass(frozen=True)
class Sample:
    """A record offered to the live preview: where it comes from, and the document itself."""

    label: str
    document: dict[str, Any]
    failing: bool = False


def sample_documents(mapping: Mapping, limit: int = 10) -> list[Sample]:
    """Records to preview with: the ones failing now because of this mapping first, then the
    records it recently mapped (each write step keeps its source documents with its request)."""
    found: list[Sample] = []
    for handoff, _, documents in failing_handoffs(mapping, limit=limit):
        for doc in documents[:1]:
            found.append(Sample(f"Failing now · {_handoff_words(handoff)}", doc, failing=True))
    steps = (
        Step.objects.filter(mapping_version__mapping=mapping, status=Step.Status.SUCCEEDED)
        .select_related("handoff")
        .order_by("-finished_at")[:limit]
    )
    for step in steps:
        for _key, doc in _step_documents(step, mapping.entity)[:1]:
            found.append(Sample(f"Mapped {_when(step.finished_at)} · {_handoff_words(step.handoff)}", doc))
    return found


def _handoff_words(handoff: Handoff) -> str:
    from pscsync.glossary import flow_name

    who = handoff.customer_name or handoff.business_key
    return f"{flow_name(handoff.flow)} for {who}"


def _when(moment: Any) -> str:
    from pscsync.glossary import when_words

    return when_words(moment)


def _step_documents(step: Step, purpose: str) -> list[tuple[str, dict[str, Any]]]:
    attempt = step.attempts.order_by("-number").first()
    request = attempt.request if attempt else {}
    if not isinstance(request, dict) or request.get("purpose") != purpose:
        return []
    return [(r.get("key", ""), r["source"]) for r in request.get("records", []) if isinstance(r.get("source"), dict)]


@dataclass
class Failure:
    handoff: Handoff
    why: str  # in words, the rule that fails and why
    rule: int = 0  # 1-based rule position in the previewed version, 0 when the record fails whole
    missing_value: str = ""  # a value absent from a value map: "add it" in one click
    value_map: str = ""


@dataclass
class Impact:
    would_pass: list[Handoff] = field(default_factory=list)
    still_failing: list[Failure] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.would_pass) + len(self.still_failing)


def mapping_label_prefix(mapping: Mapping) -> str:
    """The part of a version's label every error this mapping produced carries (any version)."""
    return f"{mapping.connection.slug}/{mapping.entity}@"


# "... service line 'Data Science' ... is not in the 'service_line' value map of mapping x/contract@v3"
_VALUE_MAP_MISS = re.compile(
    r"(?P<value>'[^']*'|\"[^\"]*\") (?:of .*? )?is not in (?:the )?(?:value map )?'(?P<map>\w+)'"
)


def failing_handoffs(mapping: Mapping, limit: int | None = None) -> list[tuple[Handoff, str, list[dict[str, Any]]]]:
    """Handoffs that need attention because of this mapping, and only those: their error was
    produced by this mapping (its message names the mapping, whatever the version). A handoff
    failing on another mapping, or on a check of its own, is not counted here, even when this
    mapping's rules would fail on a record of another kind. Each comes with its error and the
    documents it would map (the records its failed write step kept, or the deal it read)."""
    candidates = (
        Handoff.objects.filter(
            status=Handoff.Status.NEEDS_ATTENTION,
            last_error_class__in=("mapping", "validation"),
            last_error_message__contains=mapping_label_prefix(mapping),
        )
        .select_related("legal_entity", "source_connection")
        .order_by("created_at")
    )
    if limit is not None:
        candidates = candidates[:limit]
    out = []
    for handoff in candidates:
        documents = []
        for step in handoff.steps.exclude(status=Step.Status.SUCCEEDED).order_by("position"):
            documents += [doc for _, doc in _step_documents(step, mapping.entity)]
        if not documents:
            # Failed before writing (the deal check found the value missing): the deal it read.
            deal = handoff.steps.filter(name="read_deal", status=Step.Status.SUCCEEDED).values_list("output", flat=True)
            if deal and isinstance(deal[0], dict) and deal[0].get("deal"):
                read = deal[0]
                documents = [{"deal": read["deal"], "account": read.get("account", {}), "refs": _PLACEHOLDER_REFS}]
        if documents:
            out.append((handoff, handoff.last_error_message, documents))
    return out


# Ids written by earlier steps do not exist yet for a handoff that failed before them.
_PLACEHOLDER_REFS = {
    "erp_customer_id": "(from an earlier step)",
    "psa_project_id": "(from an earlier step)",
    "erp_contract_id": "(from an earlier step)",
}


def _failure(handoff: Handoff, version: MappingVersion, problem: RuleProblem) -> Failure:
    rule = version.rules[problem.rule - 1] if 0 < problem.rule <= len(version.rules) else {}
    where = f"rule {problem.rule} ({rule.get('target', problem.part)})" if rule else problem.part
    failure = Failure(handoff, f"{where} {problem.message}", rule=problem.rule)
    match = _VALUE_MAP_MISS.search(problem.message)
    if match and rule.get("value_map") == match["map"]:
        failure.missing_value, failure.value_map = match["value"][1:-1], match["map"]
    return failure


def impact(version: MappingVersion) -> Impact:
    """What `version` (usually the draft) would do for the handoffs this mapping fails right now.
    Never raises on a record: a rule that cannot evaluate is that handoff's error."""
    result = Impact()
    for handoff, _, documents in failing_handoffs(version.mapping):
        problems = [p for document in documents for p in _safe_apply(version, document).errors]
        if problems:
            result.still_failing.append(_failure(handoff, version, problems[0]))
        else:
            result.would_pass.append(handoff)
    return result


@transaction.atomic
def value_map_entry_add(*, mapping: Mapping, name: str, key: str, value: str, actor: User) -> MappingVersion:
    """Add one entry to a value map of the mapping's draft (opened from the version in force
    when there is none): the impact list's "add this value" in one click. Refused, naming the
    reason, when the key is already there or the value is empty."""
    key, value = key.strip(), value.strip()
    if not key or not value:
        raise StudioError([RuleProblem(0, f"value map {name!r}", "needs both the value and what it maps to")])
    draft = draft_open(mapping=mapping, actor=actor)
    table = dict(draft.value_maps.get(name) or {})
    if name not in draft.value_maps:
        raise StudioError([RuleProblem(0, "value map", f"there is no value map named {name!r}")])
    if key.lower() in {str(k).strip().lower() for k in table}:
        raise StudioError([RuleProblem(0, f"value map {name!r}", f"{key!r} is already in it")])
    table[key] = _parse_value(value)
    return value_map_save(draft=draft, name=name, table=table, actor=actor)


def transforms() -> list[str]:
    return sorted(TRANSFORMS)
