"""A money figure and how a person reads it.

`Money` is what a money figure is: the amount converted to the figure's currency plus, per
source currency, what could not be converted for want of a rate. Adding two figures adds both
parts, so a total knows exactly what it is missing (never a silent zero, never a page-wide sum).
`money_text` writes it for a page: "USD 412,000 + GBP 44,632 not converted".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

ZERO = Decimal("0")
# How many minor units a currency has (ISO 4217); the rest have two.
MINOR_UNITS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}


@dataclass(eq=False)
class Money:
    """A converted total in `currency` and what is not in it: `missing` source currency → amount."""

    currency: str
    amount: Decimal = ZERO
    missing: dict[str, Decimal] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every amount behind the figure was converted."""
        return not any(self.missing.values())

    def __add__(self, other: Money | Decimal | int) -> Money:
        if isinstance(other, Money):
            if other.currency != self.currency and (other.amount or self.amount):
                raise ValueError(f"cannot add {other.currency} to {self.currency} without a rate")
            if not other.missing:  # the usual case, thousands of times a page: nothing to merge
                return Money(self.currency, self.amount + other.amount, dict(self.missing) if self.missing else {})
            missing = dict(self.missing)
            for cur, value in other.missing.items():
                missing[cur] = missing.get(cur, ZERO) + value
            return Money(self.currency, self.amount + other.amount, missing)
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    __radd__ = __add__

    def __neg__(self) -> Money:
        return Money(self.currency, -self.amount, {cur: -v for cur, v in self.missing.items()})

    def __sub__(self, other: Money) -> Money:
        return self + -other

    def __eq__(self, other: object) -> bool:
        """Equal to a plain number only when complete: a figure missing an amount is not that number."""
        if isinstance(other, Money):
            return (self.currency, self.amount, self.complete) == (other.currency, other.amount, other.complete) and {
                k: v for k, v in self.missing.items() if v
            } == {k: v for k, v in other.missing.items() if v}
        if isinstance(other, Decimal | int | float):
            return self.complete and self.amount == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dict it carries

    def __lt__(self, other: Money | Decimal | int) -> bool:
        """Ordered by the converted amount (tables sort by value)."""
        return self.amount < (other.amount if isinstance(other, Money) else other)

    def __gt__(self, other: Money | Decimal | int) -> bool:
        return self.amount > (other.amount if isinstance(other, Money) else other)

    def __float__(self) -> float:
        """The converted amount (a chart plots what converted; the figure names the rest)."""
        return float(self.amount)

    def __bool__(self) -> bool:
        """Something is there: a converted amount or an amount that could not be converted."""
        return bool(self.amount) or not self.complete

    def as_dict(self) -> dict[str, Any]:
        """For JSON: exact decimal strings, and what is missing per currency."""
        return {
            "value": str(self.amount),
            "currency": self.currency,
            "complete": self.complete,
            "missing": {cur: str(value) for cur, value in sorted(self.missing.items()) if value},
        }


def amount_text(value: Decimal | float | int, currency: str, *, decimals: int | None = 0) -> str:
    """ "GBP 44,632": the ISO code (unambiguous between USD, CAD and AUD), thousands separated,
    whole units unless `decimals` says otherwise (None: the currency's minor units)."""
    places = MINOR_UNITS.get(currency, 2) if decimals is None else decimals
    quantum = Decimal(1).scaleb(-places)
    rounded = Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP)
    return f"{currency} {rounded:,.{places}f}".strip()


def money_text(value: Money | Decimal | None, currency: str = "", *, decimals: int | None = 0) -> str:
    """A figure as a person reads it: "USD 412,000 + GBP 44,632 not converted"; a figure with
    nothing converted names only what is missing ("GBP 44,632 not converted")."""
    if value is None:
        return "—"
    if not isinstance(value, Money):
        return amount_text(value, currency, decimals=decimals)
    missing = [amount_text(v, cur, decimals=decimals) for cur, v in sorted(value.missing.items()) if v]
    if not missing:
        return amount_text(value.amount, value.currency, decimals=decimals)
    gap = " + ".join(missing) + " not converted"
    if not value.amount:
        return gap
    return f"{amount_text(value.amount, value.currency, decimals=decimals)} + {gap}"
