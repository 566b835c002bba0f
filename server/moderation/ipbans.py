"""IP bans, enforced on every route (PROTOCOL §1.3 "Access denied"). They exist only by moderator
decision (§6 D10); the address is the one `client_ip` derives with TRUSTED_PROXY_HOPS, so a client
cannot dodge a ban by prepending X-Forwarded-For entries.

Each node keeps the (small) set of banned addresses in memory for IP_BAN_CACHE_SECONDS, so a request
costs no query; the node that changes a ban reloads at once, the others within that time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from server.deps import DEPS, Deps
from server.httpio import client_ip
from server.moderation import store

EXEMPT = ("/health", "/ready", "/metrics")


class _Cache:
    def __init__(self, pool: Any) -> None:
        self.pool = pool  # held, so its id cannot be reused by another app's pool while cached
        self.bans: dict[str, str] = {}
        self.loaded = 0.0
        self.lock = asyncio.Lock()


_caches: dict[int, _Cache] = {}  # per app (its pool), so test apps in one process never share


def _cache(deps: Deps) -> _Cache:
    cache = _caches.get(id(deps.db))
    if cache is None:
        for key in [k for k, c in _caches.items() if c.pool.is_closing()]:
            del _caches[key]
        cache = _caches[id(deps.db)] = _Cache(deps.db)
    return cache


def invalidate(deps: Deps | None = None) -> None:
    for key, cache in _caches.items():
        if deps is None or key == id(deps.db):
            cache.loaded = 0.0


async def banned(deps: Deps, ip: str | None) -> str | None:
    """The ban reason if `ip` is banned, else None."""
    if ip is None:
        return None
    cache = _cache(deps)
    if time.monotonic() - cache.loaded > deps.settings.ip_ban_cache_seconds:
        async with cache.lock:
            if time.monotonic() - cache.loaded > deps.settings.ip_ban_cache_seconds:
                cache.bans = await store.active_ip_bans(deps.db)
                cache.loaded = time.monotonic()
    return cache.bans.get(ip)


@web.middleware
async def ip_ban_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    deps = request.app.get(DEPS)
    if deps is not None and request.path not in EXEMPT:
        reason = await banned(deps, client_ip(request, deps.settings.trusted_proxy_hops))
        if reason is not None:
            return web.json_response({"error": "Access denied", "code": "ip_banned", "banned": True,
                                      "message": "Access from your network has been blocked.",
                                      "reason": reason}, status=403)
    return await handler(request)
