"""The injectable clock. Every business and engine time comparison reads `now()` from here.

Tests freeze and advance it; the demo can run it faster than real time so backoffs and business
latencies play out in minutes. All processes configured alike (PSCSYNC_CLOCK) agree on the time.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone


class SystemClock:
    def now(self) -> dt.datetime:
        return timezone.now()


@dataclass
class FrozenClock:
    """A clock that moves only when told to (tests)."""

    current: dt.datetime = field(default_factory=timezone.now)

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += dt.timedelta(seconds=seconds)


@dataclass
class ScaledClock:
    """Business time that runs `speed` times faster than wall time from a fixed origin."""

    speed: float
    origin: dt.datetime

    def now(self) -> dt.datetime:
        wall = time.time() - self.origin.timestamp()
        return self.origin + dt.timedelta(seconds=wall * self.speed)


def clock_from_setting(value: str) -> SystemClock | ScaledClock:
    if value in ("", "system"):
        return SystemClock()
    if value.startswith("scaled:"):
        try:
            speed, origin = value.removeprefix("scaled:").split("@", 1)
            return ScaledClock(speed=float(speed), origin=dt.datetime.fromisoformat(origin))
        except ValueError:
            pass
    raise ImproperlyConfigured(f"PSCSYNC_CLOCK must be 'system' or 'scaled:<speed>@<ISO time>', got {value!r}")


_clock: SystemClock | ScaledClock | FrozenClock | None = None


def now() -> dt.datetime:
    global _clock
    if _clock is None:
        _clock = clock_from_setting(settings.CLOCK)
    return _clock.now()


def use(clock: SystemClock | ScaledClock | FrozenClock | None) -> None:
    """Swap the process clock (tests). None goes back to the configured one."""
    global _clock
    _clock = clock
