"""Named fault points for the fault tests (the FoundationDB BUGGIFY idea, minus the simulator).

PSCSYNC_FAULTS is JSON: {"<point>": {"keys": ["poison-*"], "probability": 0.5, "seed": 7,
"once": true}}. A point fires for a key matching one of the patterns, with the given probability
(decided by a seeded hash, so a run is reproducible), at most once per key when "once" is set
(remembered in files, across worker restarts). Firing kills this process with SIGKILL, exactly
as the kernel's OOM killer or `kill -9` would. Refused unless PSCSYNC_ALLOW_FAULTS is on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import signal
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

POINTS = frozenset(
    {
        "before_target_call",  # a step is about to call the target
        "after_target_call_before_commit",  # the target applied the write; we have not stored it
        "after_commit_before_publish",  # the intake committed; the task is not yet published
    }
)


@cache
def _config() -> dict[str, dict[str, Any]]:
    if not settings.FAULTS or settings.FAULTS.strip() in ("{}", "null"):
        return {}  # nothing to inject
    if not settings.FAULTS_ALLOWED:
        raise ImproperlyConfigured("PSCSYNC_FAULTS is set but PSCSYNC_ALLOW_FAULTS is not: refusing to inject faults")
    config = json.loads(settings.FAULTS)
    unknown = set(config) - POINTS
    if unknown:
        raise ImproperlyConfigured(f"unknown fault points: {sorted(unknown)}")
    return config


def _fires(rule: dict[str, Any], point: str, key: str) -> bool:
    if not any(fnmatch.fnmatchcase(key, pattern) for pattern in rule.get("keys", ["*"])):
        return False
    digest = hashlib.sha256(f"{rule.get('seed', 0)}:{point}:{key}".encode()).digest()
    if int.from_bytes(digest[:8], "big") / 2**64 >= rule.get("probability", 1.0):
        return False
    if rule.get("once", False):
        marker_dir = settings.FAULTS_DIR / point
        marker_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(key.encode()).hexdigest()
        try:
            os.close(os.open(marker_dir / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
    return True


def fault_point(point: str, key: str) -> None:
    rule = _config().get(point)
    if rule is not None and _fires(rule, point, key):
        os.kill(os.getpid(), signal.SIGKILL)
