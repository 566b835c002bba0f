"""HTTP: /room/queue and /room/history (PROTOCOL.md §2.4, §6 D16)."""

from __future__ import annotations

from aiohttp import web

from server.accounts.access import has_access
from server.accounts.profile import ms
from server.accounts.sessions import require_user
from server.calls import store
from server.deps import deps_of
from server.errors import ApiError, bad_request
from server.presence import deck

routes = web.RouteTableDef()


@routes.get("/room/queue")
async def queue(request: web.Request) -> web.Response:
    principal = await require_user(request)
    deps = deps_of(request)
    if not has_access(deps, principal.paid_status):
        raise ApiError(402, "payment_required", "Payment required", requiresPayment=True,
                       message="Unlock access with a payment or an invite code.")
    cards, total = await deps.deck.for_user(deps, str(principal.user_id), _limit(request))
    return web.Response(text=deck.body(cards, total), content_type="application/json")


def _limit(request: web.Request) -> int | None:
    """Optional `?limit=N` (1-1000): fewer cards than the server's DECK_MAX_CARDS, never more."""
    raw = request.query.get("limit")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= 1000):
        raise bad_request("limit must be a whole number from 1 to 1000", code="invalid_limit")
    return int(raw)


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
