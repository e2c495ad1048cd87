"""docs/dashboards.md defines every figure of the KPI registry in finance words: each registered
key has a row in its table and each key there is registered, with the same unit. A figure added
to the registry without its definition in the doc (or a doc row for a figure that is gone) fails."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from dashboards import leaders
from dashboards.facts import MEASURES
from dashboards.kpis import KPIS

DOC = Path(__file__).resolve().parents[2] / "docs" / "dashboards.md"
PLACEHOLDERS = {
    "<flow>": list(MEASURES),
    "<lag>": [str(lag) for lag in leaders.LAGS_DAYS],
    "<actual>": ["worked", "assigned"],
}


def expand(pattern: str) -> list[str]:
    """`forecast.accuracy_<lag>d_<actual>` → one key per combination of the placeholders in it."""
    names = [p for p in PLACEHOLDERS if p in pattern]
    keys = []
    for values in itertools.product(*(PLACEHOLDERS[n] for n in names)):
        key = pattern
        for name, value in zip(names, values, strict=True):
            key = key.replace(name, value)
        keys.append(key)
    return keys


def doc_rows() -> dict[str, tuple[str, str]]:
    """key → (unit, definition) from the registry's table in the doc."""
    text = DOC.read_text()
    table = text[text.index("| key | unit | definition (finance words) |") :]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        keys_cell, unit, definition = cells
        for pattern in re.findall(r"`([^`]+)`", keys_cell):
            for key in expand(pattern):
                assert key not in rows, f"{key} is defined twice in docs/dashboards.md"
                rows[key] = (unit, definition)
    return rows


def test_every_registered_figure_is_defined_in_the_doc_and_nothing_else() -> None:
    rows = doc_rows()
    assert sorted(set(KPIS) - set(rows)) == [], "registered but not defined in docs/dashboards.md"
    assert sorted(set(rows) - set(KPIS)) == [], "defined in docs/dashboards.md but not registered"


def test_the_doc_and_the_registry_agree_on_each_unit_and_say_something() -> None:
    rows = doc_rows()
    wrong = {key: (rows[key][0], kpi.unit) for key, kpi in KPIS.items() if rows[key][0] != kpi.unit}
    assert wrong == {}, "docs/dashboards.md unit vs the registry's"
    assert all(len(definition.split()) >= 5 for _unit, definition in rows.values())


def test_the_expansion_reads_the_placeholders() -> None:
    assert expand("forecast.bias_<lag>d_<actual>")[:2] == ["forecast.bias_30d_worked", "forecast.bias_30d_assigned"]
    assert len(expand("<flow>.finished")) == 5
