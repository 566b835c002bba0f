"""HTTP: /room/queue and /room/history (PROTOCOL.md §2.4, §6 D16)."""

from __future__ import annotations

import time

from aiohttp import web

from server.accounts.access import has_access
from server.accounts.profile import card, ms
from server.accounts.sessions import BANNED_STATUSES, require_user
from server.calls import state, store
from server.deps import deps_of
from server.errors import ApiError
from server.presence import state as presence

routes = web.RouteTableDef()


@routes.get("/room/queue")
async def queue(request: web.Request) -> web.Response:
    principal = await require_user(request)
    deps = deps_of(request)
    if not has_access(deps, principal.paid_status):
        raise ApiError(402, "payment_required", "Payment required", requiresPayment=True,
                       message="Unlock access with a payment or an invite code.")
    me = str(principal.user_id)
    candidates = sorted((await presence.available_users(deps.redis)) - {me})
    users = await store.users_by_id(deps.db, candidates)
    reported_by_me, reported_me = await store.blocked_ids(deps.db, principal.user_id)
    visible = [
        u for uid, u in users.items()
        if u["ban_status"] not in BANNED_STATUSES and has_access(deps, u["paid_status"])
        and u["selfie_key"] and u["video_key"] and uid not in reported_me
    ]
    total = len(visible)  # counted before the "reported by me" filter (§2.4)
    visible = [u for u in visible if str(u["id"]) not in reported_by_me]
    cooldown = await state.cooldown_left_ms(deps.redis, me, [str(u["id"]) for u in visible])
    now = int(time.time() * 1000)
    result = []
    for u in visible:
        uid = str(u["id"])
        left = cooldown.get(uid)
        result.append({
            **card(deps, u),
            "hasCooldown": left is not None,
            "cooldownExpiry": (now + left) if left is not None else None,
            "wasIntroducedToMe": str(u["introduced_to"]) == me if u["introduced_to"] else False,
            "introducedBy": u["introduced_by_name"] if u["introduced_to"] and str(u["introduced_to"]) == me else None,
        })
    return web.json_response({"users": result, "totalAvailable": total})


@routes.get("/room/history")
async def history(request: web.Request) -> web.Response:
    principal = await require_user(request)
    rows = await store.history(deps_of(request).db, principal.user_id)
    return web.json_response({"history": [
        {"sessionId": str(r["session_id"]), "roomId": str(r["room_id"]),
         "partnerId": str(r["partner_id"]) if r["partner_id"] else None, "partnerName": r["partner_name"],
         "startedAt": ms(r["started_at"]), "duration": r["duration_seconds"], "endReason": r["end_reason"],
         "messages": r["messages"]}
        for r in rows
    ]})
