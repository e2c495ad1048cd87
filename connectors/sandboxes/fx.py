"""The currency market both ERP sandboxes publish rates from: US dollars per one GBP, EUR and CAD
on each business day (Monday to Friday) since ORIGIN up to today, as a bank's daily fixing.

By default a deterministic random walk per currency (the same on every machine): each day moves
by a normal step of about 0.35% and is pulled 2% of the way back to where the currency started,
so rates drift plausibly without running away. A test can replace the whole market with a table
it writes, so its expected values are the ones it wrote:

  POST   /_sandbox/rates  {"rates": [{"currency": "GBP", "date": "2026-10-01", "usd": "1.25"}, ...]}
  DELETE /_sandbox/rates  back to the generated market
"""

from __future__ import annotations

import datetime as dt
import math
import random
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from connectors.sandboxes.base import BadRequest, Request, Response, Store

ORIGIN = dt.date(2024, 1, 1)
START = {"GBP": 1.27, "EUR": 1.09, "CAD": 0.75}
CURRENCIES = tuple(START)
HORIZON_DAYS = 366 * 6
TABLE_KEY = "fx_table"


@cache
def _walk(currency: str) -> tuple[float, ...]:
    rng = random.Random(f"pscsync-sandbox-fx-{currency}")  # a simulation, not security
    start = START[currency]
    value, out = start, []
    for _ in range(HORIZON_DAYS):
        out.append(value)
        value = value * math.exp(rng.gauss(0.0, 0.0035)) + 0.02 * (start - value)
    return tuple(out)


def generated(currency: str, day: dt.date) -> Decimal:
    """USD per one unit of `currency` on `day` in the generated market (six decimals)."""
    index = min(max((day - ORIGIN).days, 0), HORIZON_DAYS - 1)
    return Decimal(f"{_walk(currency)[index]:.6f}")


def fixings(store: Store, until: dt.date | None = None) -> list[tuple[dt.date, str, Decimal]]:
    """(day, currency, USD per unit) of every published rate up to `until` (default today), by day."""
    until = until or dt.datetime.now(dt.UTC).date()
    table = store.kv_get(TABLE_KEY)
    if table:
        rows = [
            (dt.date.fromisoformat(day), cur, Decimal(usd)) for cur, days in table.items() for day, usd in days.items()
        ]
        return sorted(r for r in rows if r[0] <= until)
    out = []
    day = ORIGIN
    while day <= until:
        if day.weekday() < 5:
            out.extend((day, cur, generated(cur, day)) for cur in CURRENCIES)
        day += dt.timedelta(days=1)
    return out


def cross(usd_per: dict[str, Decimal], currency: str, base: str) -> Decimal | None:
    """Units of `base` per one `currency`, from USD rates of both (six decimals)."""
    one = Decimal("1")
    num = one if currency == "USD" else usd_per.get(currency)
    den = one if base == "USD" else usd_per.get(base)
    if num is None or den is None:
        return None
    return (num / den).quantize(Decimal("0.000001"))


def by_day(store: Store, until: dt.date | None = None) -> list[tuple[dt.date, dict[str, Decimal]]]:
    """The fixings grouped per day: [(day, {currency: USD per unit})]."""
    days: dict[dt.date, dict[str, Decimal]] = {}
    for day, cur, usd in fixings(store, until):
        days.setdefault(day, {})[cur] = usd
    return sorted(days.items())


def rates_set(store: Store, request: Request) -> Response:
    """POST /_sandbox/rates: the market becomes exactly the table written."""
    body: Any = request.json() or {}
    rows = body.get("rates") if isinstance(body, dict) else None
    if not isinstance(rows, list) or not rows:
        raise BadRequest('the body must be {"rates": [{"currency": "GBP", "date": "YYYY-MM-DD", "usd": "1.27"}]}')
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        try:
            currency, day, usd = str(row["currency"]), dt.date.fromisoformat(str(row["date"])), Decimal(str(row["usd"]))
        except (KeyError, TypeError, ValueError, InvalidOperation):
            raise BadRequest(f"a rate needs currency, date (YYYY-MM-DD) and usd (a number): {row!r}") from None
        if len(currency) != 3 or usd <= 0:
            raise BadRequest(f"a rate needs a three-letter currency and a positive usd: {row!r}")
        table.setdefault(currency, {})[day.isoformat()] = str(usd)
    store.kv_set(TABLE_KEY, table)
    return Response(200, {"currencies": sorted(table), "rates": sum(len(v) for v in table.values())})


def rates_clear(store: Store, request: Request) -> Response:
    """DELETE /_sandbox/rates: back to the generated market."""
    store.kv_set(TABLE_KEY, None)
    return Response(200, {"generated": True})
