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
from server.presence import state as presence
from server.redis import Script

log = structlog.get_logger(__name__)

# Redis or Postgres unreachable or too slow: expected during outages, logged without a traceback.
STORE_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, asyncpg.PostgresConnectionError,
              asyncpg.InterfaceError)
LEASE_MS = 30_000
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

Handler = Callable[[Deps, str], Awaitable[None]]


def now_ms() -> int:
    return int(time.time() * 1000)


async def schedule(deps: Deps, kind: str, ident: str, due_ms: int) -> None:
    await deps.redis.zadd("timers", {f"{kind}:{ident}": due_ms})


async def cancel(deps: Deps, kind: str, ident: str) -> None:
    await deps.redis.zrem("timers", f"{kind}:{ident}")


class Sweeper:
    def __init__(self, deps: Deps, handlers: dict[str, Handler],
                 on_dead_sid: Callable[[Deps, str], Awaitable[None]],
                 on_registry_lost: Callable[[], Awaitable[None]],
                 on_nodes: Callable[[str, set[str]], None] = lambda _me, _alive: None,
                 on_reconcile: Callable[[], Awaitable[None]] | None = None) -> None:
        self.deps = deps
        self.handlers = handlers
        self.on_dead_sid = on_dead_sid
        self.on_registry_lost = on_registry_lost
        self.on_nodes = on_nodes
        self.on_reconcile = on_reconcile
        self._reconciled = time.monotonic()
        self._reconciler: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._last_beat = 0.0
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="timer-sweeper")
        # The heartbeat has its own task: slow timer work (a persist waiting on Postgres, a large reap)
        # must never make the other nodes declare this live node dead (issue 11 §2).
        self._beat_task = asyncio.create_task(self._beat_loop(), name="node-heartbeat")

    async def stop(self) -> None:
        # A flag as well as cancel(): a cancellation swallowed inside a client library must not
        # keep the loop (and the shutdown waiting on it) alive.
        self._stopping = True
        tasks = [t for t in (self._task, self._beat_task, self._reaper, self._reconciler) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)

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

    async def _beat_loop(self) -> None:
        s = self.deps.settings
        while not self._stopping:
            try:  # each Redis call is bounded by the client's timeout (store_timeout_seconds)
                await self.beat()
            except asyncio.CancelledError:
                raise
            except STORE_DOWN as exc:
                log.warning("heartbeat_store_unavailable", error=repr(exc))
            except Exception:
                log.exception("heartbeat_failed")
            await asyncio.sleep(s.node_heartbeat_seconds)

    async def beat(self) -> None:
        s, redis = self.deps.settings, self.deps.redis
        # Re-register before announcing the beat, so anyone who sees this node alive also sees its sockets.
        if not await presence.known_node(redis, s.node_id):
            await self.on_registry_lost()
        await presence.heartbeat(redis, s.node_id, now_ms())
        self._last_beat = time.monotonic()
        stale_before = now_ms() - int(s.node_dead_after_seconds * 1000)
        seen = await presence.nodes_seen(redis)
        self.on_nodes(s.node_id, {n for n, at in seen.items() if at >= stale_before})
        dead = [n for n, at in seen.items() if at < stale_before]
        if dead and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.create_task(self._reap(dead, stale_before), name="node-reaper")
        mono = time.monotonic()
        if self.on_reconcile is not None and mono - self._reconciled >= s.reconcile_seconds \
                and (self._reconciler is None or self._reconciler.done()):
            self._reconciled = mono
            self._reconciler = asyncio.create_task(self._reconcile(), name="ghost-reconciler")

    async def _reconcile(self) -> None:
        assert self.on_reconcile is not None
        try:
            await self.on_reconcile()
        except STORE_DOWN as exc:
            log.warning("reconcile_store_unavailable", error=repr(exc))
        except Exception:
            log.exception("reconcile_failed")

    async def _reap(self, dead: list[str], stale_before: int) -> None:
        for node in dead:
            try:
                sids = await presence.reap_node(self.deps.redis, node, stale_before)
            except Exception:
                log.exception("node_reap_failed", node=node)
                continue
            if sids:
                log.warning("node_reaped", node=node, sockets=len(sids))
            for sid in sids:
                try:  # one failure must not leave the node's other sockets behind as ghosts
                    await self.on_dead_sid(self.deps, sid)
                except Exception:
                    log.exception("reaped_socket_cleanup_failed", node=node, sid=sid)

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
            except Exception:
                log.exception("timer_handler_failed", timer=member)  # retried after the lease
                continue
            await _DONE(redis, [], [member, lease])
