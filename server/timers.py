"""Timers in Redis (invite expiry, call deadline, disconnect grace, crash-safe persistence), claimed
atomically by whichever node sweeps first: a node crash loses no timer.

A claim moves the timer's score to now + lease instead of deleting it; the handler removes it when
done. If the claiming node dies mid-handler, the timer comes due again after the lease and another
node runs the (idempotent) handler.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.deps import Deps
from server.ops import metrics
from server.redis import Script

log = structlog.get_logger(__name__)

# Redis or Postgres unreachable or too slow: expected during outages, logged without a traceback.
STORE_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, asyncpg.PostgresConnectionError,
              asyncpg.InterfaceError)
# A Postgres write that failed for any database reason (not only a lost connection): deferred and retried.
DB_FAILED = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
LEASE_MS = 30_000
RETRY_MS = 2_000  # a handler that failed because a store is down runs again this soon (not after the lease)
BATCH = 50

_CLAIM = Script(
    """
    local due = redis.call('ZRANGEBYSCORE', 'timers', '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
    local lease = tonumber(ARGV[1]) + tonumber(ARGV[2])
    for i = 1, #due, 2 do redis.call('ZADD', 'timers', lease, due[i]) end
    table.insert(due, 1, tostring(lease))
    return due  -- lease, then member, due score pairs
    """
)
# Removes the timer only if nobody re-armed it since it was claimed.
_DONE = Script(
    """
    local score = redis.call('ZSCORE', 'timers', ARGV[1])
    if score and tonumber(score) == tonumber(ARGV[2]) then return redis.call('ZREM', 'timers', ARGV[1]) end
    return 0
    """
)

# Re-arms a claimed timer sooner, only if nobody re-armed it since it was claimed.
_RETRY = Script(
    """
    local score = redis.call('ZSCORE', 'timers', ARGV[1])
    if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
    return redis.call('ZADD', 'timers', 'XX', ARGV[3], ARGV[1])
    """
)

Handler = Callable[[Deps, str], Awaitable[None]]


def now_ms() -> int:
    return int(time.time() * 1000)


async def schedule(deps: Deps, kind: str, ident: str, due_ms: int) -> None:
    await deps.redis.zadd("timers", {f"{kind}:{ident}": due_ms})


async def cancel(deps: Deps, kind: str, ident: str) -> None:
    await deps.redis.zrem("timers", f"{kind}:{ident}")


class Sweeper:
    """The timer loop: claims due timers in batches and runs their handlers (the node heartbeat,
    reaping and reconciliation live in presence/registry.py)."""

    def __init__(self, deps: Deps, handlers: dict[str, Handler]) -> None:
        self.deps = deps
        self.handlers = handlers
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="timer-sweeper")

    async def stop(self) -> None:
        # A flag as well as cancel(): a cancellation swallowed inside a client library must not
        # keep the loop (and the shutdown waiting on it) alive.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2)

    async def _run(self) -> None:
        s = self.deps.settings
        while not self._stopping:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except STORE_DOWN as exc:  # an outage, not a bug: the next tick retries
                log.warning("sweeper_store_unavailable", error=repr(exc))
            except Exception:
                log.exception("sweeper_tick_failed")
            # Jitter spreads the nodes' sweeps; correctness never depends on who sweeps.
            await asyncio.sleep(s.timer_poll_seconds * (0.75 + random.random() / 2))

    async def tick(self) -> None:
        redis = self.deps.redis
        now = now_ms()
        claimed = await _CLAIM(redis, [], [now, LEASE_MS, BATCH])
        lease, pairs = claimed[0], claimed[1:]
        for member, due in zip(pairs[::2], pairs[1::2], strict=True):
            kind, _, ident = member.partition(":")
            metrics.TIMER_LAG.labels(kind).observe(max(now - float(due), 0) / 1000)
            handler = self.handlers.get(kind)
            if handler is None:
                log.error("unknown_timer", member=member)
                await _DONE(redis, [], [member, lease])
                continue
            try:
                await handler(self.deps, ident)
            except STORE_DOWN as exc:  # an outage (Postgres down, say): retried soon, without a traceback
                log.warning("timer_handler_deferred", timer=member, error=repr(exc))
                await _RETRY(redis, [], [member, lease, now_ms() + RETRY_MS])
                continue
            except Exception:
                log.exception("timer_handler_failed", timer=member)  # retried after the lease
                continue
            await _DONE(redis, [], [member, lease])
