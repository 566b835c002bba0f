"""presence:join/leave and queue:join/leave (PROTOCOL.md §3.2, §6 D11/D15, §7 E13)."""

from __future__ import annotations

import json
from typing import Any

from server import emit
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
    # The tab is hidden: out of the deck (the sockets stay, so no disconnect cleanup).
    await state.leave_queue(deps.redis, sender.user_id)
    await deps.sio.leave_room(sender.sid, emit.QUEUE)
    await emit.to_queue(deps, "presence:update", {"userId": sender.user_id, "online": False, "available": False})


@on("queue:join")
async def queue_join(deps: Deps, sender: Sender, _data: dict[str, Any]) -> None:
    # Available as soon as this event is processed (issue 10 §1): the rights come from the socket's
    # cache, so an invite racing this event finds the user callable.
    v = await gate.verdict(deps, sender)
    if v != "ok":
        return await gate.deny(deps, sender, v)
    await deps.sio.enter_room(sender.sid, emit.QUEUE)
    result = await state.join_queue(deps.redis, sender.user_id)
    if result == -2:
        return await emit.call_error(deps, sender.sid, "BUSY", "You are in a call")
    if result == 1:
        await emit.to_queue(deps, "queue:update", {"userId": sender.user_id, "available": True})
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
        await gate.deny(deps, sender, v)


@on("queue:leave")
async def queue_leave(deps: Deps, sender: Sender, _data: dict[str, Any]) -> None:
    await deps.sio.leave_room(sender.sid, emit.QUEUE)
    if await state.leave_queue(deps.redis, sender.user_id):
        await emit.to_queue(deps, "queue:update", {"userId": sender.user_id, "available": False})
