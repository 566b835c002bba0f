"""Sockets going away (§3.5, §4 F5/F13/F14, §7 E3), bans and session invalidation cutting live sockets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from server import emit
from server.accounts import sessions
from server.calls import invites, rooms, state
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
    await _end_invites(deps, user_id)
    room_id = await state.user_room(deps.redis, user_id)
    if room_id:
        await rooms.finalize(deps, room_id, "disconnect", leaver=user_id)


async def _end_invites(deps: Deps, user_id: str) -> None:
    """Outgoing invite -> rescinded (1 h cooldown); incoming -> declined as offline (no cooldown)."""
    incoming = str(await deps.redis.get(f"u:{user_id}:in") or "")
    for invite_id in ("", incoming) if incoming else ("",):
        ended = await state.end_invite(deps.redis, "gone", user_id, now_ms(), invite_id=invite_id)
        if isinstance(ended, state.Ended):
            await invites.announce_end(deps, ended)


async def on_grace(deps: Deps, user_id: str) -> None:
    await user_gone(deps, user_id)


async def cut_user(deps: Deps, user_id: str, message: str = "Your account has been suspended.", *,
                   event: str = "auth:banned", payload: dict[str, Any] | None = None,
                   end_reason: str = "banned", leaver: bool = False) -> None:
    """Enforce a ban on live state at once (§6 D11/D30): end the call, drop invites, disconnect.
    Account deletion passes its own event and ends the call as the user leaving it."""
    await emit.to_user(deps, user_id, event, payload or {"message": message, "banned": True})
    room_id = await state.user_room(deps.redis, user_id)
    if room_id:
        await rooms.finalize(deps, room_id, end_reason, leaver=user_id if leaver else "")
    await _end_invites(deps, user_id)
    await presence.leave_queue(deps.redis, user_id)
    for sid in await presence.user_sids(deps.redis, user_id):
        await deps.sio.disconnect(sid)  # crosses nodes through the Redis manager
    log.warning("user_cut", user_id=user_id)


async def invalidate_sessions(deps: Deps, session_ids: list[str], delay_s: float = 1.0) -> None:
    """A newer login replaced these sessions: notify their sockets, then disconnect them (§6 D12)."""
    await sessions.revoked(deps, session_ids)
    for sess in session_ids:
        await deps.sio.emit("session:invalidated", {
            "message": "You signed in on another device. This session has ended.", "reason": "new_login"},
            to=emit.session_room(sess))
    await disconnect_sessions(deps, session_ids, delay_s)


async def disconnect_sessions(deps: Deps, session_ids: list[str], delay_s: float) -> None:
    """Disconnect every socket authenticated with these sessions, on any node, after `delay_s`."""
    if not session_ids:
        return

    async def _cut() -> None:
        await asyncio.sleep(delay_s)
        for sess in session_ids:
            for sid in await deps.redis.smembers(f"sess:{sess}:sids"):
                with contextlib.suppress(Exception):
                    await deps.sio.disconnect(sid)

    if delay_s <= 0:
        await _cut()
        return
    task = asyncio.create_task(_cut())
    _pending.add(task)
    task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task[None]] = set()
