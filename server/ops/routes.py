"""Liveness and readiness (PROTOCOL.md §2.10)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from server.db import pending_migrations
from server.deps import deps_of

routes = web.RouteTableDef()


@routes.get("/health")
async def health(_request: web.Request) -> web.Response:
    """Liveness: the process answers. No dependencies, no internal stats."""
    return web.json_response({"status": "ok", "timestamp": int(time.time() * 1000)})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """Readiness: Postgres and Redis reachable and the schema current."""
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
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ok else "not_ready", "checks": checks},
                             status=200 if ok else 503)
