"""Enforcement that cuts users, in one place (ARCHITECTURE "Where things go"): a ban (§6 D11/D30),
account deletion, a newer login or a logout (§6 D12), and a socket refused for its rights. Domains
decide (a verdict, a committed ban or deletion) and call this module to act on live state: the call is
ended, invites dropped, sockets told and disconnected on every node.

Imports only downwards (rooms, invites, state, presence): nothing it uses imports it back, which removes
the old departures <-> invites circle (presence/gate.py imported cut_user lazily)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from server import emit
from server.accounts import sessions
from server.calls import invites, rooms, state
from server.deps import Deps
from server.events import Sender
from server.presence import state as presence
from server.timers import now_ms

log = structlog.get_logger(__name__)


async def cut_user(deps: Deps, user_id: str, message: str = "Your account has been suspended.", *,
                   event: str = "auth:banned", payload: dict[str, Any] | None = None,
                   end_reason: str = "banned", leaver: bool = False) -> None:
    """Enforce a ban on live state at once (§6 D11/D30): end the call, drop invites, disconnect.
    Account deletion passes its own event and ends the call as the user leaving it."""
    await emit.to_user(deps, user_id, event, payload or {"message": message, "banned": True})
    room_id = await state.user_room(deps.redis, user_id)
    if room_id:
        await rooms.finalize(deps, room_id, end_reason, leaver=user_id if leaver else "")
    await end_invites(deps, user_id)
    await presence.leave_queue(deps.redis, user_id)
    for sid in await presence.user_sids(deps.redis, user_id):
        await deps.sio.disconnect(sid)  # crosses nodes through the Redis manager
    log.warning("user_cut", user_id=user_id)


async def deny(deps: Deps, sender: Sender, verdict: str) -> None:
    """Tell a socket it may not do what it asked (presence/gate.py's verdict); a ban also ends the
    user's live presence."""
    if verdict == "banned":
        await cut_user(deps, sender.user_id)
    else:
        await emit.call_error(deps, sender.sid, "PAYMENT_REQUIRED", "Payment required")


async def end_invites(deps: Deps, user_id: str) -> None:
    """Outgoing invite -> rescinded (1 h cooldown); incoming -> declined as offline (no cooldown)."""
    incoming = str(await deps.redis.get(f"u:{user_id}:in") or "")
    for invite_id in ("", incoming) if incoming else ("",):
        ended = await state.end_invite(deps.redis, "gone", user_id, now_ms(), invite_id=invite_id)
        if isinstance(ended, state.Ended):
            await invites.announce_end(deps, ended)


async def invalidate_sessions(deps: Deps, session_ids: list[str], delay_s: float = 1.0) -> None:
    """A newer login replaced these sessions: notify their sockets, then disconnect them (§6 D12)."""
    await sessions.revoked(deps, session_ids)
    # To each socket of these sessions, wherever it is (presence keeps them per session: a Socket.IO room
    # per session cost every socket a room's memory for this rare message).
    for sess in session_ids:
        for sid in await presence.session_sids(deps.redis, sess):
            await emit.to_sid(deps, sid, "session:invalidated", {
                "message": "You signed in on another device. This session has ended.", "reason": "new_login"})
    await disconnect_sessions(deps, session_ids, delay_s)


async def disconnect_sessions(deps: Deps, session_ids: list[str], delay_s: float) -> None:
    """Disconnect every socket authenticated with these sessions, on any node, after `delay_s`."""
    if not session_ids:
        return

    async def _cut() -> None:
        await asyncio.sleep(delay_s)
        for sess in session_ids:
            for sid in await presence.session_sids(deps.redis, sess):
                with contextlib.suppress(Exception):
                    await deps.sio.disconnect(sid)

    if delay_s <= 0:
        await _cut()
        return
    task = asyncio.create_task(_cut())
    _pending.add(task)
    task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task[None]] = set()
