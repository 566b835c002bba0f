"""Liveness and readiness (PROTOCOL.md §2.10)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from server.db import pending_migrations
from server.deps import SETTINGS, deps_of
from server.ops import metrics
from server.ops.drain import draining
from server.ops.node import pubsub_probe, refresh_cluster_gauges

routes = web.RouteTableDef()


@routes.get("/health")
async def health(_request: web.Request) -> web.Response:
    """Liveness: the process answers. No dependencies, no internal stats."""
    return web.json_response({"status": "ok", "timestamp": int(time.time() * 1000)})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """Readiness: Postgres and Redis reachable, the schema current, the cross-node pub/sub listener
    delivering, and the node not draining."""
    deps = deps_of(request)
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            pending = await pending_migrations(deps.db)
        checks["postgres"] = "ok"
        checks["migrations"] = "ok" if not pending else f"pending: {', '.join(pending)}"
    except Exception as exc:  # any failure means "not ready", reported, never raised
        checks["postgres"] = f"error: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    try:
        async with asyncio.timeout(2):
            await deps.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        checks["pubsub"] = await pubsub_probe(deps)
    except Exception as exc:
        checks["pubsub"] = f"error: {type(exc).__name__}"
    if draining(request.app):
        checks["drain"] = "draining"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ok else "not_ready", "checks": checks},
                             status=200 if ok else 503)


@routes.get("/metrics")
async def metrics_on_main_port(request: web.Request) -> web.Response:
    """Prometheus scrape on the public port only with METRICS_TOKEN (prefer METRICS_PORT, never routed)."""
    return await metrics.protected(request, request.app[SETTINGS].metrics_token,
                                   lambda: refresh_cluster_gauges(deps_of(request)))
