"""Fixed-window counters in Redis, shared by every node (login throttling, code attempts, signups...)."""

from __future__ import annotations

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
