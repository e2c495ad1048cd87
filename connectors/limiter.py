"""The shared limiter every vendor call passes (docs/engine.md, "Rate limits").

Per connection, across every worker process and machine, in Redis:

- **Calls per minute.** A sliding-window log: a sorted set of the grants of the last window
  (their Redis server time). A call is granted only while fewer than the connection's
  `rate_limit_per_minute` grants lie in the window, so no window of that length ever holds more.
  A sliding log rather than a fixed window (as the API throttle uses): a fixed window lets twice
  the limit through across a window edge, and vendors count rolling windows.
- **Calls at once.** The vendor's concurrency limit (the connector's `limits.max_concurrency`): a
  sorted set of slots held by calls in flight, each with an expiry, so a worker killed mid-call
  gives its slot back after `slot_seconds` rather than never.
- **Pause.** A 429 or 503 with Retry-After pauses the connection for every worker until then.

One Lua script checks all three and takes both slots or nothing, on Redis's own clock (machines'
clocks differ; Redis's is one). A call that must wait sleeps when its slot comes within
LIMITER_MAX_WAIT_SECONDS; a longer wait raises SlotDeferred, a TransientError the runner treats as
a deferral (the handoff is rescheduled for when the slot frees, its retry budget untouched).

Redis unavailable: the limiter **fails open** with a logged warning (at most one a minute per
process). The vendors still enforce their limits with 429s, which the engine retries; failing
closed would turn a Redis outage into an outage of every integration. Without REDIS_URL (the
embedded single-process set-up) there is nothing shared to limit with and calls are not limited.

Calls and 429s are also counted per connection and minute (kept two hours) for the Integration
health page: Prometheus counters (ops/metrics.py) are per process until scraped, and the page
must show what every worker did.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from redis.exceptions import RedisError

from connectors.errors import TransientError

log = logging.getLogger(__name__)

KEY_PREFIX = "pscsync:limit"
COUNT_TTL_SECONDS = 2 * 3600
# How often a call waiting for a concurrency slot looks again (a slot frees when a call ends,
# which Redis does not announce).
CONCURRENCY_POLL_SECONDS = 0.05
# After a Redis error, calls skip the limiter this long (each try would add a connect timeout
# to every vendor call while Redis is down).
OUTAGE_BACKOFF_SECONDS = 5.0
WARNING_EVERY_SECONDS = 60.0

PAUSED, RATE, CONCURRENCY = 1, 2, 3
REASONS = {
    PAUSED: "the vendor asked us to pause",
    RATE: "the connection's calls-per-minute limit is spent",
    CONCURRENCY: "the vendor's limit on calls at once is reached",
}

# KEYS: pause, window, busy, this minute's call count. ARGV: limit, window_ms, max_concurrency,
# slot_ms, token, count_ttl_s. Returns {granted (0/1), wait_ms, reason, now_ms}. A grant is counted
# for the health page here (a granted call is made), so a vendor call costs one round trip to
# Redis, not a second one after the call to count it.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then
  return {0, paused - now, 1, now}
end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
if limit > 0 then
  -- Grants at or before now - window have left the window: (now - window, now] remains.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, tonumber(oldest[2]) + window - now, 2, now}
  end
end
local maxc = tonumber(ARGV[3])
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= maxc then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {0, tonumber(first[2]) - now, 3, now}
  end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[5])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[4]))
end
if limit > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], window)
end
redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[6]))
return {1, 0, 0, now}
"""

# KEYS: pause. ARGV: pause_ms. Extends the pause, never shortens it (two 429s: the later end wins).
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < untl then
  redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]))
  return untl
end
return current
"""


class SlotDeferred(TransientError):
    """The call would wait longer than LIMITER_MAX_WAIT_SECONDS for its slot: nothing was sent.
    The runner reschedules the handoff for `retry_after` without spending a retry."""

    deferred = True


@dataclass(frozen=True)
class Slot:
    """A granted call: release it when the call ends (frees its concurrency slot)."""

    connection_id: int | None
    token: str
    holds_concurrency: bool
    granted_at_ms: int  # Redis server time of the grant (0 when the limiter was skipped)
    counted: bool = False  # the grant counted the call for the health page (record_call need not)

    def release(self) -> None:
        if not self.holds_concurrency or self.connection_id is None:
            return
        client = _client()
        if client is None:
            return
        try:
            client.zrem(_key(self.connection_id, "busy"), self.token)
        except (RedisError, OSError):
            _outage("could not free a concurrency slot (it expires by itself)")


_OPEN = Slot(None, "", False, 0)


@dataclass(frozen=True)
class _Redis:
    client: redis.Redis
    acquire: Any  # redis.commands.core.Script: EVALSHA, loading the script when Redis lacks it
    pause: Any


_clients: dict[str, _Redis] = {}
_state_lock = threading.Lock()
_state: dict[str, float] = {"down_until": 0.0, "warned_at": 0.0}


def _key(connection_id: int, part: str) -> str:
    # The braces are a Redis Cluster hash tag: one connection's keys stay on one shard, which a
    # script touching several of them needs.
    return f"{KEY_PREFIX}:{{{connection_id}}}:{part}"


def _redis() -> _Redis | None:
    url = settings.LIMITER_REDIS_URL
    if not url:
        return None
    if time.monotonic() < _state["down_until"]:
        return None
    with _state_lock:
        found = _clients.get(url)
        if found is None:
            # Short timeouts: the limiter sits in front of every vendor call.
            client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
            found = _Redis(client, client.register_script(_ACQUIRE), client.register_script(_PAUSE))
            _clients[url] = found
    return found


def _client() -> redis.Redis | None:
    found = _redis()
    return found.client if found else None


def _outage(what: str) -> None:
    now = time.monotonic()
    with _state_lock:
        _state["down_until"] = now + OUTAGE_BACKOFF_SECONDS
        warn = now - _state["warned_at"] >= WARNING_EVERY_SECONDS or not _state["warned_at"]
        if warn:
            _state["warned_at"] = now
    if warn:
        log.warning("vendor call limiter: Redis unavailable, %s; calls go out unlimited until it answers", what)


def reset_outage() -> None:
    """Forget a past Redis outage (tests; a process that knows Redis is back)."""
    with _state_lock:
        _state["down_until"] = 0.0
        _state["warned_at"] = 0.0


def _slot_ms(timeout: float | None) -> int:
    from connectors.http import READ_TIMEOUT

    # A slot outlives the longest the call can take, plus a margin for the connect and the body.
    return int((max(timeout or 0.0, READ_TIMEOUT) + 30.0) * 1000)


def acquire(
    *,
    connection_id: int | None,
    per_minute: int,
    max_concurrency: int = 0,
    name: str = "",
    timeout: float | None = None,
    max_wait: float | None = None,
) -> Slot:
    """Wait for a slot to call the connection's vendor, or raise SlotDeferred.

    `per_minute` calls per LIMITER_WINDOW_SECONDS (60 but in tests); `max_concurrency` calls at
    once (0: no limit). Returns a Slot to release when the call has ended."""
    if connection_id is None or (per_minute <= 0 and max_concurrency <= 0):
        return _OPEN
    found = _redis()
    if found is None:
        return _OPEN
    budget = settings.LIMITER_MAX_WAIT_SECONDS if max_wait is None else max_wait
    deadline = time.monotonic() + budget
    token = uuid.uuid4().hex
    window_ms, slot_ms = int(settings.LIMITER_WINDOW_SECONDS * 1000), _slot_ms(timeout)
    while True:
        # The minute of the grant, as record_call would take it (a wait may cross into the next).
        keys = [
            _key(connection_id, "pause"),
            _key(connection_id, "window"),
            _key(connection_id, "busy"),
            _key(connection_id, f"calls:{_minute()}"),
        ]
        args = [per_minute, window_ms, max_concurrency, slot_ms, token, COUNT_TTL_SECONDS]
        try:
            granted, wait_ms, reason, now_ms = found.acquire(keys=keys, args=args)
        except (RedisError, OSError):
            _outage("a call was not limited")
            return _OPEN
        if granted:
            return Slot(connection_id, token, max_concurrency > 0, int(now_ms), counted=True)
        wait = max(int(wait_ms), 1) / 1000
        if reason == CONCURRENCY:
            wait = min(wait, CONCURRENCY_POLL_SECONDS)
        left = deadline - time.monotonic()
        if wait > left:
            # Longer than a step may sit holding its worker: the step is retried when the slot
            # frees (a concurrency slot: soon, so in a second).
            later = 1.0 if reason == CONCURRENCY else max(wait, 1.0)
            who = name or f"connection {connection_id}"
            raise SlotDeferred(
                f"{who}: {REASONS[int(reason)]}; the call waits its turn, about {later:.0f} s",
                retry_after=later,
            )
        # A little jitter so workers woken by the same free slot do not all ask at once.
        time.sleep(wait + random.uniform(0, 0.01))  # nosec B311  # jitter, not a secret


def pause(connection_id: int | None, seconds: float) -> None:
    """Hold every worker's calls to this connection for `seconds` (a vendor's Retry-After)."""
    if connection_id is None or seconds <= 0:
        return
    found = _redis()
    if found is None:
        return
    try:
        found.pause(keys=[_key(connection_id, "pause")], args=[int(seconds * 1000)])
    except (RedisError, OSError):
        _outage("a vendor's Retry-After was not shared with the other workers")


def _minute(at: float | None = None) -> int:
    return int((time.time() if at is None else at) // 60)


def record_call(connection_id: int | None, status: str, *, counted: bool = False) -> None:
    """Count one call (and a 429) in this minute's bucket, for the health page; `counted`: the
    call's grant counted it already (Slot.counted), so only a 429 is left to count."""
    if connection_id is None or (counted and status != "429"):
        return
    client = _client()
    if client is None:
        return
    minute = _minute()
    try:
        with client.pipeline(transaction=False) as pipe:
            if not counted:
                pipe.incr(_key(connection_id, f"calls:{minute}"))
                pipe.expire(_key(connection_id, f"calls:{minute}"), COUNT_TTL_SECONDS)
            if status == "429":
                pipe.incr(_key(connection_id, f"429:{minute}"))
                pipe.expire(_key(connection_id, f"429:{minute}"), COUNT_TTL_SECONDS)
            pipe.execute()
    except (RedisError, OSError):
        _outage("a call was not counted")


def record_throttled(connection_id: int | None) -> None:
    """Count a 429 found inside an answer (a part of an OData $batch) that `record_call` counted
    as one call answered 200: the vendor throttled us all the same, and the health page says so."""
    if connection_id is None:
        return
    client = _client()
    if client is None:
        return
    key = _key(connection_id, f"429:{_minute()}")
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, COUNT_TTL_SECONDS)
            pipe.execute()
    except (RedisError, OSError):
        _outage("a 429 was not counted")


@dataclass(frozen=True)
class Usage:
    """A connection's use of its vendor over the last hour, and whether it is paused now."""

    calls: int
    rate_limited: int
    paused_seconds: float


def usage(connection_ids: list[int]) -> dict[int, Usage] | None:
    """Calls and 429s over the last 60 minutes (this one included) per connection, and any
    pause in force; None when the counts cannot be read (no Redis, or Redis down)."""
    client = _client()
    if client is None or not connection_ids:
        return None if client is None else {}
    now = _minute()
    minutes = range(now - 59, now + 1)
    try:
        with client.pipeline(transaction=False) as pipe:
            for cid in connection_ids:
                pipe.mget([_key(cid, f"calls:{m}") for m in minutes])
                pipe.mget([_key(cid, f"429:{m}") for m in minutes])
                pipe.pttl(_key(cid, "pause"))
            answers: list[Any] = pipe.execute()
    except (RedisError, OSError):
        _outage("the health page could not read the call counts")
        return None
    out = {}
    for i, cid in enumerate(connection_ids):
        calls, limited, pause_ms = answers[3 * i : 3 * i + 3]
        out[cid] = Usage(
            calls=sum(int(v) for v in calls if v is not None),
            rate_limited=sum(int(v) for v in limited if v is not None),
            paused_seconds=max(int(pause_ms), 0) / 1000,
        )
    return out


def resume(connection_id: int) -> None:
    """End a vendor's pause before its time: a person who knows the vendor is back, or a test whose
    business clock jumps past a Retry-After (the pause runs on Redis's clock, which does not)."""
    client = _client()
    if client is None:
        return
    try:
        client.delete(_key(connection_id, "pause"))
    except (RedisError, OSError):
        _outage("a pause could not be ended")


def forget_all() -> int:
    """Delete every limiter key (tests: a test's calls must not spend the next one's minute)."""
    client = _client()
    if client is None:
        return 0
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000))
    return int(client.delete(*keys)) if keys else 0
