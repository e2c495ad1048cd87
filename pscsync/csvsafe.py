"""CSV exports that a spreadsheet opens as data, never as formulas (OWASP "CSV injection").

Vendor text (a customer name, an error message, a key) may start with `=`, `+`, `-`, `@`, a tab
or a carriage return; Excel, LibreOffice and Sheets would run it as a formula (`=HYPERLINK(…)`,
`=cmd|…`). Such a cell is written with a leading apostrophe, which the spreadsheet shows as text.
Plain numbers (`-12.50`) are left as they are. `csv_unneutralise` undoes it for files we read
back (the mapping studio's value-map import), so an export re-imports unchanged.
"""

from __future__ import annotations

import csv
import re
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_unneutralise(value: str) -> str:
    if value.startswith("'") and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


class SafeWriter:
    """csv.writer whose rows go through csv_cell."""

    def __init__(self, out: Any) -> None:
        self._writer = csv.writer(out)

    def writerow(self, row: list[Any]) -> Any:
        return self._writer.writerow([csv_cell(value) for value in row])
