"""HTTP: GET /turn/credentials (PROTOCOL.md §2.8, §6 D24).

Per-user rate limit (the original's 10/h per IP sent whole NATed offices to STUN-only, which breaks
iOS relay-only calls). Banned users get 403 from require_user, users without access 402: relays
are only for those who may call. coturn's user-quota counts the allocations of the user id part of
the username (it strips the "<expiry>:" stamp), so it bounds the relays of a user whatever number of
credentials the user holds (tests/e2e/test_coturn_quota.py).
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from server import ratelimit
from server.accounts.access import has_access
from server.accounts.sessions import require_user
from server.deps import deps_of
from server.errors import payment_required
from server.ice import credentials

routes = web.RouteTableDef()
log = structlog.get_logger(__name__)

RATE_WINDOW_S = 3600


@routes.get("/turn/credentials")
async def turn_credentials(request: web.Request) -> web.Response:
    principal = await require_user(request)  # banned users: 403
    deps = deps_of(request)
    s = deps.settings
    user_id = str(principal.user_id)
    if not has_access(deps, principal.paid_status):
        # Relays are for calls, and only users with access can call (the client then falls back to
        # STUN, which is all it could use anyway).
        raise payment_required()

    w = await ratelimit.hit(deps.redis, f"turn:user:{user_id}", RATE_WINDOW_S)
    if w.count > s.turn_rate_per_hour:
        log.info("turn_credentials_rate_limited", user_id=user_id, count=w.count)
        # §1.3 shape: {error:"Too many …", message, retryAfter (seconds)}, plus a Retry-After header.
        return web.json_response(
            {"error": "Too many TURN credential requests", "code": "turn_rate_limited",
             "message": "Too many requests for call credentials, please try again later.",
             "retryAfter": w.retry_after_s},
            status=429, headers={"Retry-After": str(w.retry_after_s), "Cache-Control": "no-store"})

    body: dict[str, object]
    if credentials.turn_configured(s):
        cred = credentials.issue(s.turn_secret, user_id, s.turn_ttl_seconds)
        body = {"iceServers": credentials.ice_servers(s, cred), "expiresAt": cred.expires_at_ms,
                "provider": credentials.PROVIDER}
        # The username carries only the expiry and the user id; the credential is never logged.
        log.info("turn_credentials_issued", user_id=user_id, expires_at=cred.expires_at)
    else:
        # No TURN on this deployment: STUN only, and say so (relay-only clients cannot call).
        ttl_ms = s.turn_ttl_seconds * 1000
        body = {"iceServers": credentials.ice_servers(s, None), "expiresAt": int(time.time() * 1000) + ttl_ms,
                "provider": "stun-only", "warning": "TURN is not configured on this server"}
        log.warning("turn_not_configured", user_id=user_id)
    return web.json_response(body, headers={"Cache-Control": "no-store"})
