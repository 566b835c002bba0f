"""Per-process ops wiring: drain state, the metrics listener, scrape-time node gauges, and the
cross-node pub/sub listener probe used by /ready."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from server.calls import store as calls_store
from server.deps import DEPS, SETTINGS, Deps
from server.ops import metrics
from server.ops.drain import DRAIN, Drain
from server.realtime import REALTIME

log = structlog.get_logger(__name__)
PROBE_TIMEOUT = 2.0


def setup(app: web.Application) -> None:
    app[DRAIN] = Drain()
    app.cleanup_ctx.append(_metrics_listener)
    app.on_startup.append(_expose_node_state)


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    runner: web.AppRunner | None = None
    if s.metrics_port:
        runner = web.AppRunner(metrics.metrics_app(lambda: refresh_cluster_gauges(app[DEPS])), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, s.metrics_host, s.metrics_port).start()
    try:
        yield
    finally:
        if runner is not None:
            await runner.cleanup()


async def _expose_node_state(app: web.Application) -> None:
    metrics.NODE_STATE.source = lambda: node_values(app)


async def refresh_cluster_gauges(deps: Deps) -> None:
    """Cluster-wide values read at scrape time (the dashboard takes max() over the nodes). Calls in
    progress are the durable live_calls records: from call:start until the history write. A slow or
    failing Postgres leaves the last value (the scrape itself must not fail)."""
    try:
        async with asyncio.timeout(1):
            metrics.ACTIVE_ROOMS.set(await calls_store.count_live_calls(deps.db))
    except Exception as exc:  # any store failure: keep the last value, say why
        log.warning("active_rooms_unavailable", error=type(exc).__name__)


def node_values(app: web.Application) -> dict[str, float]:
    values: dict[str, float] = {"draining": float(app[DRAIN].draining)}
    deps = app.get(DEPS)
    if deps is not None and deps.sio is not None:
        values["sockets_connected"] = float(sum(1 for _ in deps.sio.manager.get_participants("/", None)))
    rt: Any = app.get(REALTIME)
    if rt is not None:
        values["sockets_authenticated"] = float(len(getattr(rt, "local", ())))
        registry = getattr(rt, "registry", None)
        age = registry.heartbeat_age() if registry is not None else None
        if age is not None:
            values["heartbeat_age_seconds"] = age
    return values


async def pubsub_probe(deps: Deps) -> str:
    """Round trip through the Socket.IO manager's own Redis channel: publish a callback message addressed
    to this process and wait for its listener to deliver it. Catches a listener task that died, a
    subscription that was lost, or a connection that hangs."""
    manager: Any = getattr(deps.sio, "manager", None)
    channel = getattr(manager, "channel", None)
    if manager is None or channel is None:
        return "ok"  # a single-node manager has no listener to lose
    if not deps.sio.manager_initialized:
        return "ok"  # python-socketio starts the listener with the first socket: nothing to deliver to yet
    thread = getattr(manager, "thread", None)
    if thread is None or thread.done():
        return "error: listener not running"
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bool] = loop.create_future()
    probe_sid = f"ready-probe-{uuid.uuid4().hex}"

    def delivered(*_args: Any) -> None:
        if not got.done():
            got.set_result(True)

    ack_id = manager._generate_ack_id(probe_sid, delivered)
    message = json.dumps({"method": "callback", "host_id": manager.host_id, "sid": probe_sid, "namespace": "/",
                          "id": ack_id, "args": []})
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            while True:  # re-sent while the listener may still be subscribing (a message before that is lost)
                await deps.redis.publish(channel, message)
                done, _ = await asyncio.wait([got], timeout=0.25)
                if done:
                    return "ok"
    except TimeoutError:
        return "error: listener did not deliver the probe"
    finally:
        manager.callbacks.pop(probe_sid, None)
