"""HTTP: /referral/* (PROTOCOL.md §2.5). `/referral/target-status/:code` of the original is not served
(§6 D23): it exposed a user's presence and media to anyone holding a code, and no client reads it."""

from __future__ import annotations

from aiohttp import web

from server.accounts.sessions import require_user
from server.deps import deps_of
from server.httpio import client_ip, read_json
from server.referrals import notifications, service

routes = web.RouteTableDef()

GENERATE_SCHEMA = {
    "type": "object",
    "required": ["targetUserId"],
    "properties": {"targetUserId": {"type": "string", "minLength": 1, "maxLength": 64,
                                    "x-error": "targetUserId is required"}},
}
DIRECT_MATCH_SCHEMA = {
    "type": "object",
    "required": ["referralCode"],
    "properties": {"referralCode": {"type": "string", "minLength": 1, "maxLength": 64,
                                    "x-error": "referralCode is required"}},
}


@routes.post("/referral/generate")
async def generate(request: web.Request) -> web.Response:
    principal = await require_user(request)
    body = await read_json(request, GENERATE_SCHEMA)
    return web.json_response(await service.generate(deps_of(request), principal, body["targetUserId"]))


@routes.get("/referral/info/{code}")
async def info(request: web.Request) -> web.Response:
    deps = deps_of(request)
    ip = client_ip(request, deps.settings.trusted_proxy_hops)
    return web.json_response(await service.info(deps, ip, request.match_info["code"]))


@routes.post("/referral/direct-match")
async def direct_match(request: web.Request) -> web.Response:
    principal = await require_user(request)
    body = await read_json(request, DIRECT_MATCH_SCHEMA)
    return web.json_response(await service.direct_match(deps_of(request), principal, body["referralCode"]))


@routes.get("/referral/notifications")
async def list_notifications(request: web.Request) -> web.Response:
    principal = await require_user(request)
    return web.json_response(await notifications.listing(deps_of(request), principal.user_id))


@routes.put("/referral/notifications/{id}/read")
async def mark_read(request: web.Request) -> web.Response:
    principal = await require_user(request)
    await notifications.mark_read(deps_of(request), principal.user_id, request.match_info["id"])
    return web.json_response({"success": True})  # also for unknown ids (§2.5)


@routes.get("/referral/my-introductions")
async def my_introductions(request: web.Request) -> web.Response:
    principal = await require_user(request)
    return web.json_response(await service.my_introductions(deps_of(request), principal))
