"""Cross-cutting HTTP middleware: request context + access log, and CORS (PROTOCOL.md §1.1)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from aiohttp import web

from server.httpio import USER_ID

log = structlog.get_logger("access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

CORS_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-Admin-Token, X-Request-ID"


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    if request.path not in ("/health", "/ready", "/metrics"):
        user_id = request.get(USER_ID)
        log.info("request", method=request.method, path=request.path, status=response.status,
                 ms=round((time.perf_counter() - started) * 1000, 1),
                 **({"user_id": str(user_id)} if user_id else {}))
    return response


def cors_middleware(allowed_origins: tuple[str, ...]) -> Any:
    allowed = frozenset(allowed_origins)

    @web.middleware
    async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/socket.io/"):
            return await handler(request)  # python-socketio applies its own CORS allow-list
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            if origin not in allowed:
                return web.json_response({"error": "Origin not allowed", "code": "cors_rejected"}, status=403)
            response: web.StreamResponse = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": "600",
            })
        else:
            response = await handler(request)
        if response.prepared:
            return response
        if origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = "X-Request-ID, Retry-After"
        if origin is not None:
            # The answer depends on the Origin either way: a shared cache must not hand a response
            # made for one origin (with or without Allow-Origin) to another.
            response.headers.add("Vary", "Origin")
        return response

    return cors


def proxy_hops_check(trusted_hops: int) -> Any:
    """With no trusted proxy hop X-Forwarded-For is ignored, so behind a load balancer every client
    has the balancer's address and each per-IP limit becomes one limit for everybody. Say so once per
    process, on the first request that shows a proxy (the deployment must set TRUSTED_PROXY_HOPS)."""
    warned = trusted_hops > 0

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal warned
        if not warned and "X-Forwarded-For" in request.headers:
            warned = True
            structlog.get_logger(__name__).warning(
                "proxy_hops_not_configured", trusted_proxy_hops=0, remote=request.remote,
                hint="requests carry X-Forwarded-For but TRUSTED_PROXY_HOPS=0: every client behind the proxy "
                     "counts as one address for per-IP limits. Set TRUSTED_PROXY_HOPS to the number of "
                     "proxies in front of the app.")
        return await handler(request)

    return check
