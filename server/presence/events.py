"""presence:join/leave and queue:join/leave (PROTOCOL.md §3.2, §6 D11/D15, §7 E13)."""

from __future__ import annotations

from typing import Any

from server import emit
from server.accounts.access import has_access
from server.accounts.sessions import BANNED_STATUSES
from server.calls import store
from server.calls.departures import cut_user
from server.deps import Deps
from server.events import Sender, on
from server.presence import state

PRESENCE_DEBOUNCE_MS = 2000


@on("presence:join")
async def presence_join(deps: Deps, sender: Sender, _data: dict[str, Any]) -> None:
    # Online is per socket and already true; the broadcast is debounced per user (2 s).
    if await deps.redis.set(f"u:{sender.user_id}:pj", "1", px=PRESENCE_DEBOUNCE_MS, nx=True):
        available = await state.is_available(deps.redis, sender.user_id)
        await emit.to_queue(deps, "presence:update",
                            {"userId": sender.user_id, "online": True, "available": available})


@on("presence:leave")
async def presence_leave(deps: Deps, sender: Sender, _data: dict[str, Any]) -> None:
    # The tab is hidden: out of the deck (the sockets stay, so no disconnect cleanup).
    await state.leave_queue(deps.redis, sender.user_id)
    await deps.sio.leave_room(sender.sid, emit.QUEUE)
    await emit.to_queue(deps, "presence:update", {"userId": sender.user_id, "online": False, "available": False})


@on("queue:join")
async def queue_join(deps: Deps, sender: Sender, _data: dict[str, Any]) -> None:
    me = (await store.users_by_id(deps.db, [sender.user_id])).get(sender.user_id)
    if me is None or me["ban_status"] in BANNED_STATUSES:
        return await cut_user(deps, sender.user_id)
    if not has_access(deps, me["paid_status"]):
        return await emit.call_error(deps, sender.sid, "PAYMENT_REQUIRED", "Payment required")
    await deps.sio.enter_room(sender.sid, emit.QUEUE)
    result = await state.join_queue(deps.redis, sender.user_id)
    if result == -2:
        return await emit.call_error(deps, sender.sid, "BUSY", "You are in a call")
    if result == 1:
        await emit.to_queue(deps, "queue:update", {"userId": sender.user_id, "available": True})
    return None


@on("queue:leave")
async def queue_leave(deps: Deps, sender: Sender, _data: dict[str, Any]) -> None:
    await deps.sio.leave_room(sender.sid, emit.QUEUE)
    if await state.leave_queue(deps.redis, sender.user_id):
        await emit.to_queue(deps, "queue:update", {"userId": sender.user_id, "available": False})
