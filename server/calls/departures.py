"""Sockets going away (§3.5, §4 F5/F13/F14, §7 E3): the disconnect grace and the cleanup after it.
Cutting users on purpose (ban, logout, deletion) is calls/enforce.py."""

from __future__ import annotations

import structlog

from server import emit
from server.calls import enforce, rooms, state
from server.deps import Deps
from server.presence import state as presence
from server.timers import now_ms

log = structlog.get_logger(__name__)


async def socket_gone(deps: Deps, sid: str, explicit: bool) -> None:
    """A socket disconnected (or died with its node). Only a user's last socket matters."""
    grace_ms = int(deps.settings.disconnect_grace_seconds * 1000)
    dep = await presence.remove_socket(deps.redis, sid, explicit, now_ms() + grace_ms)
    if dep is None or not dep.last_socket:
        return
    await emit.to_queue(deps, "presence:update", {"userId": dep.user_id, "online": False, "available": False})
    if dep.action == "now":
        await user_gone(deps, dep.user_id)
    elif dep.action == "grace" and dep.room_id:
        room = await state.get_room(deps.redis, dep.room_id)
        partner = room.get("b") if room.get("a") == dep.user_id else room.get("a")
        if partner:
            await emit.to_member(deps, dep.room_id, partner, "room:partner-disconnected",
                                 {"userId": dep.user_id, "gracePeriodSeconds": deps.settings.disconnect_grace_seconds})


async def user_gone(deps: Deps, user_id: str) -> None:
    """The §3.5 cleanup, run at once for an explicit disconnect or when the grace timer fires."""
    if await deps.redis.scard(presence.sockets_key(user_id)):
        return  # came back in time (the grace timer is normally cancelled already)
    await deps.redis.delete(f"u:{user_id}:away")
    await enforce.end_invites(deps, user_id)
    room_id = await state.user_room(deps.redis, user_id)
    if room_id:
        await rooms.finalize(deps, room_id, "disconnect", leaver=user_id)


async def on_grace(deps: Deps, user_id: str) -> None:
    await user_gone(deps, user_id)
