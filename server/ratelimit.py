"""Fixed-window counters in Redis, shared by every node (login throttling, code attempts, signups...)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from server.redis import Script

# KEYS[1] counter; ARGV[1] window ms; ARGV[2] increment (0 = peek). Returns {count, ttl_ms}.
_HIT = Script(
    """
    local n
    if tonumber(ARGV[2]) > 0 then
      n = redis.call('INCRBY', KEYS[1], ARGV[2])
      if n == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
    else
      n = tonumber(redis.call('GET', KEYS[1]) or '0')
    end
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl < 0 and n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
    return {n, ttl}
    """
)


@dataclass(frozen=True)
class Window:
    count: int
    retry_after_ms: int

    @property
    def retry_after_s(self) -> int:
        return max(1, -(-self.retry_after_ms // 1000))


async def hit(redis: aioredis.Redis, key: str, window_s: float, amount: int = 1) -> Window:
    count, ttl = await _HIT(redis, [f"rl:{key}"], [int(window_s * 1000), amount])
    return Window(int(count), max(int(ttl), 0))


async def peek(redis: aioredis.Redis, key: str, window_s: float) -> Window:
    return await hit(redis, key, window_s, amount=0)


async def clear(redis: aioredis.Redis, key: str) -> None:
    await redis.delete(f"rl:{key}")


# ---- failure-limited attempts (login) ----
#
# A plain "peek, verify, count the failure" lets a burst of parallel guesses all be verified before the
# first failure is counted. Instead each attempt first takes an in-flight slot, atomically, and only
# while failures + attempts in flight stay below the limit. Attempts beyond that wait for the slots
# to resolve: successes hand theirs back, failures turn theirs into counted failures, and once the
# failures reach the limit everyone waiting is throttled. Parallel legitimate attempts all go through.

# KEYS: (failures, in-flight) per scope. ARGV[1] in-flight TTL ms, ARGV[2] window ms, ARGV[3..] limits.
# Returns {1, 0} = go, {0, 0} = wait, {-1, ttl_ms} = throttled.
_BEGIN = Script(
    """
    local n = #KEYS / 2
    local wait = 0
    for i = 1, n do
      local f = tonumber(redis.call('GET', KEYS[2*i-1]) or '0')
      if f >= tonumber(ARGV[i+2]) then
        local t = redis.call('PTTL', KEYS[2*i-1])
        if t < 0 then t = tonumber(ARGV[2]); redis.call('PEXPIRE', KEYS[2*i-1], t) end
        if t > wait then wait = t end
      end
    end
    if wait > 0 then return {-1, wait} end
    for i = 1, n do
      local f = tonumber(redis.call('GET', KEYS[2*i-1]) or '0')
      local p = tonumber(redis.call('GET', KEYS[2*i]) or '0')
      if f + p >= tonumber(ARGV[i+2]) then return {0, 0} end
    end
    for i = 1, n do
      redis.call('INCR', KEYS[2*i])
      redis.call('PEXPIRE', KEYS[2*i], ARGV[1])
    end
    return {1, 0}
    """
)

# KEYS as above. ARGV[1] 1 = failed, ARGV[2] window ms, ARGV[3..] 1 = clear this scope's failures on success.
_END = Script(
    """
    local n = #KEYS / 2
    for i = 1, n do
      if tonumber(redis.call('GET', KEYS[2*i]) or '0') > 0 then redis.call('DECR', KEYS[2*i]) end
      if ARGV[1] == '1' then
        if redis.call('INCR', KEYS[2*i-1]) == 1 then redis.call('PEXPIRE', KEYS[2*i-1], ARGV[2]) end
      elseif ARGV[i+2] == '1' then
        redis.call('DEL', KEYS[2*i-1])
      end
    end
    return 1
    """
)


def _attempt_keys(scopes: Sequence[tuple[str, int]]) -> list[str]:
    return [k for key, _ in scopes for k in (f"rl:{key}", f"rl:{key}:inflight")]


async def begin_attempt(redis: aioredis.Redis, scopes: Sequence[tuple[str, int]], window_s: float, *,
                        max_wait_s: float = 10.0, inflight_ttl_s: float = 30.0) -> int | None:
    """Take an attempt slot in every scope (key, max failures per window). None: go ahead, and call
    `end_attempt` exactly once afterwards. Otherwise: throttled, the seconds until the window ends."""
    deadline = time.monotonic() + max_wait_s
    delay = 0.01
    keys = _attempt_keys(scopes)
    args = [int(inflight_ttl_s * 1000), int(window_s * 1000), *[limit for _, limit in scopes]]
    while True:
        state, ttl = await _BEGIN(redis, keys, args)
        if int(state) == 1:
            return None
        if int(state) == -1:
            return max(1, -(-int(ttl) // 1000))
        if time.monotonic() >= deadline:
            return 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def end_attempt(redis: aioredis.Redis, scopes: Sequence[tuple[str, int]], window_s: float, *,
                      failed: bool, clear_on_success: Sequence[bool] = ()) -> None:
    """Hand the slot back: a failure is counted in every scope; a success clears the failures of the
    scopes flagged in `clear_on_success`."""
    flags = [1 if i < len(clear_on_success) and clear_on_success[i] else 0 for i in range(len(scopes))]
    await _END(redis, _attempt_keys(scopes), [1 if failed else 0, int(window_s * 1000), *flags])


# ---- concurrency caps (work in flight per key, across nodes) ----
#
# A counter of slots held, with a TTL as a backstop: a node that dies while holding a slot cannot leak
# it for longer than `ttl_s` (set it above the longest the guarded work can take).

# KEYS[1] counter; ARGV[1] limit; ARGV[2] TTL ms. Returns 1 = taken, 0 = all slots are held.
_ACQUIRE = Script(
    """
    local n = redis.call('INCR', KEYS[1])
    if n > tonumber(ARGV[1]) then
      if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
      return 0
    end
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
    """
)
_RELEASE = Script(
    """
    local n = tonumber(redis.call('GET', KEYS[1]) or '0')
    if n <= 1 then redis.call('DEL', KEYS[1]) else redis.call('DECR', KEYS[1]) end
    return 1
    """
)


async def acquire_slot(redis: aioredis.Redis, key: str, limit: int, ttl_s: float) -> bool:
    """Take one of `limit` slots under `key`; False if all are held. Call `release_slot` once after."""
    return bool(await _ACQUIRE(redis, [f"slots:{key}"], [limit, int(ttl_s * 1000)]))


async def release_slot(redis: aioredis.Redis, key: str) -> None:
    await _RELEASE(redis, [f"slots:{key}"], [])


async def give_back(redis: aioredis.Redis, key: str) -> None:
    """Undo one `hit` on `key` (a reserved use that did not happen, e.g. a login that failed)."""
    await _GIVE_BACK(redis, [f"rl:{key}"], [])


_GIVE_BACK = Script("if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end return 1")


# ---- per-socket token bucket (in process: a socket lives on one node) ----

class TokenBucket:
    """Events of one socket: `rate` per second, bursts up to `burst`. take() answers "ok" (spend one),
    "drop" (over the limit), or "warn" (over the limit, and the first refusal this second: tell the
    client once, not per dropped event)."""

    __slots__ = ("last", "tokens", "warned")

    def __init__(self, burst: int) -> None:
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.warned = 0.0

    def take(self, rate: float, burst: int) -> str:
        now = time.monotonic()
        self.tokens = min(float(burst), self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return "ok"
        if now - self.warned >= 1:
            self.warned = now
            return "warn"
        return "drop"
