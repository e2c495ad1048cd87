"""The injectable clock. Every business and engine time comparison reads `now()` from here.

Tests freeze and advance it; the demo can run it faster than real time so backoffs and business
latencies play out in minutes. All processes configured alike (PSCSYNC_CLOCK) agree on the time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class FileClock:
    """Business time steered from outside the process, shared by every process that reads the file.

    The file holds `{"origin": ISO time, "origin_wall": epoch seconds, "speed": s}`: business time
    is `origin + (wall - origin_wall) * speed`. It is re-read whenever it changes (mtime, inode or
    size), so a simulator can run the web app, the worker and beat fast through past days and then
    settle them to real time. Without the file the clock is the system clock.
    """

    path: Path
    _stamp: tuple[int, int, int] | None = None
    _state: tuple[dt.datetime, float, float] | None = None

    def _load(self) -> tuple[dt.datetime, float, float] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            self._stamp = self._state = None
            return None
        stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(Path(self.path).read_text())
                origin = dt.datetime.fromisoformat(data["origin"])
                if origin.tzinfo is None:
                    origin = origin.replace(tzinfo=dt.UTC)
                self._state = (origin, float(data["origin_wall"]), float(data.get("speed", 1.0)))
                self._stamp = stamp
            except (OSError, ValueError, KeyError, TypeError):
                return self._state  # half-written or garbled: keep the last good reading
        return self._state

    def now(self) -> dt.datetime:
        state = self._load()
        if state is None:
            return timezone.now()
        origin, origin_wall, speed = state
        return origin + dt.timedelta(seconds=(time.time() - origin_wall) * speed)


def clock_file_write(path: Path | str, *, origin: dt.datetime, speed: float, origin_wall: float | None = None) -> None:
    """Steer every FileClock reading `path`: business time `origin` now, running `speed` times
    faster than wall time. Written atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "origin": origin.isoformat(),
        "origin_wall": time.time() if origin_wall is None else origin_wall,
        "speed": speed,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def clock_from_setting(value: str) -> SystemClock | ScaledClock | FileClock:
    if value in ("", "system"):
        return SystemClock()
    if value.startswith("file:") and value.removeprefix("file:"):
        return FileClock(path=Path(value.removeprefix("file:")))
    if value.startswith("scaled:"):
        try:
            speed, origin = value.removeprefix("scaled:").split("@", 1)
            return ScaledClock(speed=float(speed), origin=dt.datetime.fromisoformat(origin))
        except ValueError:
            pass
    raise ImproperlyConfigured(
        f"PSCSYNC_CLOCK must be 'system', 'scaled:<speed>@<ISO time>' or 'file:<path>', got {value!r}"
    )


_clock: SystemClock | ScaledClock | FrozenClock | FileClock | None = None


def now() -> dt.datetime:
    global _clock
    if _clock is None:
        _clock = clock_from_setting(settings.CLOCK)
    return _clock.now()


def use(clock: SystemClock | ScaledClock | FrozenClock | FileClock | None) -> None:
    """Swap the process clock (tests). None goes back to the configured one."""
    global _clock
    _clock = clock
