"""Throttling per API token (per user for session requests), rate read from settings at request time.

Counts live in the "throttle" cache: Redis whenever Redis is configured (pscsync/settings.py), so
every gunicorn worker and every web machine adds to the same count; process memory otherwise
(the embedded set-up). A count is one atomic increment per request in a one-minute window (fixed
windows: INCR is atomic across processes, where DRF's read-modify-write history list is not)."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from api.models import ApiToken

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60


def _now() -> float:
    return time.time()  # wall time: windows are shared with other processes, not the business clock


def throttle_cache() -> BaseCache:
    return caches["throttle"]


class PerTokenRateThrottle(BaseThrottle):
    """At most API_RATE_PER_MINUTE requests per token per clock minute; over it, 429 and Retry-After."""

    def __init__(self) -> None:
        self.retry_after: float | None = None

    def ident(self, request: Request) -> str:
        # The token's random prefix, not its row id: ids restart with a new database, keys must not.
        if isinstance(request.auth, ApiToken):
            return f"token:{request.auth.prefix}"
        if request.user and request.user.is_authenticated:
            return f"user:{request.user.pk}"
        return f"ip:{self.get_ident(request)}"

    def allow_request(self, request: Request, view: Any) -> bool:
        now = _now()
        window = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
        key = f"api:{self.ident(request)}:{window}"
        cache = throttle_cache()
        try:
            cache.add(key, 0, timeout=WINDOW_SECONDS + 5)
            try:
                count = cache.incr(key)
            except ValueError:  # the key expired between add and incr: this request starts a window
                cache.add(key, 1, timeout=WINDOW_SECONDS + 5)
                count = 1
        except (RedisError, OSError):
            # A throttle outage must not become an API outage: let the request through, loudly.
            log.warning("API throttle cache unavailable; request not counted", exc_info=True)
            return True
        if count > settings.API_RATE_PER_MINUTE:
            self.retry_after = window + WINDOW_SECONDS - now
            return False
        return True

    def wait(self) -> float | None:
        return self.retry_after
