"""This node's sockets in the cluster's presence (Redis): registering a bound socket, the node
heartbeat, re-registering everything after Redis lost its data, reaping dead nodes, and the periodic
reconciliation that takes out ghosts (issue 11 §2, §3).

The heartbeat has its own task and its own Redis connection: slow timer work (a persist waiting on
Postgres, a large reap) and a burst that keeps every pooled connection busy (a crowd's fan-out on a
saturated node waited 10 s for one) must never make the other nodes declare this live node dead.
Reaping and reconciling run in tasks of their own too, so neither holds the heartbeat up.

What other domains do around these steps (reload cooldowns and restore calls before re-registering,
tell a partner the call goes on, clean up a dead socket's call) comes in as hooks from realtime.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from server import emit
from server.deps import Deps
from server.events import Sender
from server.presence import state as presence
from server.redis import create_redis
from server.timers import STORE_DOWN, now_ms

log = structlog.get_logger(__name__)

SidHook = Callable[[Deps, str], Awaitable[None]]


class Registry:
    def __init__(self, deps: Deps, sio: Any, local: dict[str, Sender], *,
                 on_dead_sid: SidHook,
                 before_reregister: Callable[[], Awaitable[None]],
                 on_returned: Callable[[str, str], Awaitable[None]],
                 on_nodes: Callable[[str, set[str]], None] = lambda _me, _alive: None,
                 on_reconcile: Callable[[], Awaitable[None]] | None = None,
                 on_beat: Callable[[], Awaitable[None]] | None = None) -> None:
        self.deps = deps
        self.sio = sio
        self.local = local  # authenticated sockets of this node (owned by realtime.Realtime)
        self.on_dead_sid = on_dead_sid  # a socket of a dead node (or a ghost) is gone
        self.before_reregister = before_reregister  # Redis lost its data: durable state first
        self.on_returned = on_returned  # (user, room): a user reaped while frozen is back in its call
        self.on_nodes = on_nodes  # (me, nodes alive) after each beat
        self.on_reconcile = on_reconcile  # extra periodic work of the reconcile period
        self.on_beat = on_beat  # after each beat, in a task of its own (retries of deferred recoveries)
        self._after_beat: asyncio.Task[None] | None = None
        self._reconciled = time.monotonic()
        self._reconciler: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._last_beat = 0.0
        # Since when this node's own beats have gone through without a gap longer than the dead-node
        # window: before that, the others' beats may be stale only because Redis (or this node) was
        # unavailable, not because they died (see beat()).
        self._steady_since = 0.0
        self._stopping = False
        self._beat_redis = create_redis(deps.settings.redis_url, deps.settings.store_timeout_seconds or None,
                                        max_connections=1)

    # ---- public state ----
    @property
    def last_beat(self) -> float:
        """time.monotonic() of this node's last successful heartbeat (0.0 before the first)."""
        return self._last_beat

    def heartbeat_age(self) -> float | None:
        """Seconds since the last successful heartbeat; None before the first."""
        return time.monotonic() - self._last_beat if self._last_beat else None

    # ---- lifecycle ----
    def start(self) -> None:
        self._beat_task = asyncio.create_task(self._beat_loop(), name="node-heartbeat")

    async def stop(self) -> None:
        # A flag as well as cancel(): a cancellation swallowed inside a client library must not
        # keep the loop (and the shutdown waiting on it) alive.
        self._stopping = True
        tasks = [t for t in (self._beat_task, self._reaper, self._reconciler, self._after_beat) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        await self._beat_redis.aclose()

    # ---- one socket ----
    async def register(self, sender: Sender) -> presence.Arrival:
        """The socket is bound to its user on this node: count it in presence (cluster-wide)."""
        return await presence.add_socket(self.deps.redis, sender.user_id, sender.sid, self.deps.settings.node_id,
                                         sender.session_id, now_ms())

    # ---- heartbeat ----
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
        s, redis = self.deps.settings, self._beat_redis
        # Re-register before announcing the beat, so anyone who sees this node alive also sees its sockets.
        if not await presence.known_node(redis, s.node_id):
            await self.reregister()
        await presence.heartbeat(redis, s.node_id, now_ms())
        mono = time.monotonic()
        if not self._last_beat or mono - self._last_beat > s.node_dead_after_seconds:
            self._steady_since = mono  # first beat, or the first after an outage (Redis down, a freeze)
        self._last_beat = mono
        stale_before = now_ms() - int(s.node_dead_after_seconds * 1000)
        seen = await presence.nodes_seen(redis)
        self.on_nodes(s.node_id, {n for n, at in seen.items() if at >= stale_before})
        # After Redis was unreachable for longer than the dead-node window (a restart that kept its
        # data), every node's last beat is stale: the first node back must not reap the others before
        # they had a whole window to beat again.
        steady = mono - self._steady_since >= s.node_dead_after_seconds
        dead = [n for n, at in seen.items() if at < stale_before] if steady else []
        if dead and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.create_task(self._reap(dead, stale_before), name="node-reaper")
        if mono - self._reconciled >= s.reconcile_seconds and (self._reconciler is None or self._reconciler.done()):
            self._reconciled = mono
            self._reconciler = asyncio.create_task(self._reconcile(), name="ghost-reconciler")
        if self.on_beat is not None and (self._after_beat is None or self._after_beat.done()):
            self._after_beat = asyncio.create_task(self._run_after_beat(self.on_beat), name="after-beat")

    async def _run_after_beat(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except STORE_DOWN as exc:
            log.warning("after_beat_store_unavailable", error=repr(exc))
        except Exception:
            log.exception("after_beat_failed")

    # ---- dead nodes ----
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

    # ---- ghosts ----
    async def _reconcile(self) -> None:
        try:
            if self.on_reconcile is not None:
                await self.on_reconcile()
            await self.reconcile()
        except STORE_DOWN as exc:
            log.warning("reconcile_store_unavailable", error=repr(exc))
        except Exception:
            log.exception("reconcile_failed")

    async def reconcile(self) -> None:
        """A sid registered in Redis for this node that this node does not hold is a ghost (a cleanup
        that failed halfway, a Redis error after the local pop): take it out, so its user goes offline
        within one period (issue 11 §3)."""
        registered = await presence.node_sids(self.deps.redis, self.deps.settings.node_id)
        ghosts = [sid for sid in registered if sid not in self.local and not self.sio.manager.is_connected(sid, "/")]
        for sid in ghosts:
            try:
                await self.on_dead_sid(self.deps, sid)
            except Exception:
                log.exception("ghost_cleanup_failed", sid=sid)
        if ghosts:
            log.warning("ghosts_removed", sockets=len(ghosts))

    # ---- Redis lost this node ----
    async def reregister(self) -> None:
        """Redis has no record of this node (start-up, or Redis lost its data): durable state comes back
        first (`before_reregister`: cooldowns, live calls; whoever sees these users online again must
        also see their cooldowns and calls), then this node's live sockets go back into presence."""
        await self.before_reregister()
        readded = []
        for sender in list(self.local.values()):
            if sender.sid in self.local:
                arrival = await self.register(sender)
                readded.append(sender.sid)
                if arrival.was_away and arrival.room_id:
                    # This node was frozen long enough to be reaped (SIGSTOP, a long pause): the partner
                    # was told we were gone; the call goes on (issue 11 §6).
                    await self.on_returned(sender.user_id, arrival.room_id)
        # Users whose sockets are in the queue room were in the deck: put them back (not if in a call).
        queued = self.sio.manager.rooms.get("/", {}).get(emit.QUEUE, {})
        for uid in {self.local[sid].user_id for sid in readded if sid in queued and sid in self.local}:
            await presence.join_queue(self.deps.redis, uid)
        # A socket that disconnected while we re-added it was removed before our add: undo it.
        for sid in readded:
            if sid not in self.local:
                await presence.remove_socket(self.deps.redis, sid, explicit=True, grace_due_ms=0)
        if readded:
            log.warning("presence_rebuilt", sockets=len(readded))
