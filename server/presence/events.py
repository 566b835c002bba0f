"""presence:join/leave and queue:join/leave (PROTOCOL.md §3.2, §6 D11/D15, §7 E13)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from server import emit
from server.calls import enforce
from server.deps import Deps
from server.events import Sender, on
from server.presence import gate, state

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
    # The tab is hidden: out of the deck (the sockets stay, so no disconnect cleanup). Only a user who
    # was in the deck is announced (issue 12 §5: it was a broadcast to the whole queue per event, by
    # anyone), and at most once per debounce window.
    await deps.sio.leave_room(sender.sid, emit.QUEUE)
    left = await state.leave_queue(deps.redis, sender.user_id, PRESENCE_DEBOUNCE_MS)
    if not left:
        return
    if await deps.redis.set(f"u:{sender.user_id}:pl", "1", px=PRESENCE_DEBOUNCE_MS, nx=True):
        await emit.to_queue(deps, "presence:update", {"userId": sender.user_id, "online": False, "available": False})
    await announce_queue(deps, sender.user_id, False, left)


@on("queue:join")
async def queue_join(deps: Deps, sender: Sender, _data: dict[str, Any]) -> None:
    # Available as soon as this event is processed (issue 10 §1): the rights come from the socket's
    # cache, so an invite racing this event finds the user callable.
    v = await gate.verdict(deps, sender)
    if v != "ok":
        return await enforce.deny(deps, sender, v)
    await deps.sio.enter_room(sender.sid, emit.QUEUE)
    result = await state.join_queue(deps.redis, sender.user_id, PRESENCE_DEBOUNCE_MS)
    if result == -2:
        return await emit.call_error(deps, sender.sid, "BUSY", "You are in a call")
    if result > 0 and not await announce_queue(deps, sender.user_id, True, result):
        # Debounced for everyone else; the joining socket still gets its echo (clients wait for it).
        await emit.to_sid(deps, sender.sid, "queue:update", {"userId": sender.user_id, "available": True})
    if "queue-snapshot" in sender.caps:
        cards, total = await deps.deck.for_user(deps, sender.user_id)
        await emit.to_sid(deps, sender.sid, "queue:snapshot",
                          {"users": [json.loads(c) for c in cards], "totalAvailable": total})
    if gate.stale(sender):
        gate.spawn(_recheck(deps, sender))
    return None


async def _recheck(deps: Deps, sender: Sender) -> None:
    """Rights older than gate.RECHECK_S are re-read after the fact; lost rights take the user out."""
    v = await gate.refresh(deps, sender)
    if v != "ok":
        await queue_leave(deps, sender, {})
        await enforce.deny(deps, sender, v)


@on("queue:leave")
async def queue_leave(deps: Deps, sender: Sender, _data: dict[str, Any]) -> None:
    await deps.sio.leave_room(sender.sid, emit.QUEUE)
    if left := await state.leave_queue(deps.redis, sender.user_id, PRESENCE_DEBOUNCE_MS):
        await announce_queue(deps, sender.user_id, False, left)


_trailing: set[str] = set()  # users with a trailing announcement scheduled on this node


async def announce_queue(deps: Deps, user_id: str, available: bool, when: int) -> bool:
    """queue:update for a real change of a user's availability, debounced per user (issue 12 §5):
    the first change in a window goes out at once (`when` is state.ANNOUNCE_NOW: the change opened the
    window, in the same script); later ones in that window are folded into one trailing update with
    the state at the window's end (always sent: other paths, a call start or a disconnect, change and
    announce availability too). Toggling queue:join/leave thus costs every client at most two updates
    per window, not one each. True if it went out now."""
    if when == state.ANNOUNCE_NOW:
        await emit.to_queue(deps, "queue:update", {"userId": user_id, "available": available})
        return True
    if user_id not in _trailing:
        _trailing.add(user_id)
        gate.spawn(_trail(deps, user_id))
    return False


async def _trail(deps: Deps, user_id: str) -> None:
    try:
        await asyncio.sleep(max(await state.window_left_ms(deps.redis, user_id), 1) / 1000)
    finally:
        _trailing.discard(user_id)
    available = await state.end_window(deps.redis, user_id, PRESENCE_DEBOUNCE_MS)
    await emit.to_queue(deps, "queue:update", {"userId": user_id, "available": available})
