"""Putting users back into their calls.

* A (re)connected socket (§7 E3): back into its active call with `call:resume`, the partner told the
  user is back, `session:finalized` replayed for a call that ended while the user was away, a pending
  incoming invite re-notified.
* A node that finds Redis lost its data (issue 11 §1): every started call has a durable record in
  Postgres (live_calls, written at call:start, removed once its history is written). Durable cooldowns
  are reloaded and those calls put back; each then ends the usual way (call:end, disconnect, or its
  deadline timer, at once if the deadline has passed), with history, cooldown and session:finalized
  for both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from server import emit
from server.calls import invites, rooms, state, store
from server.calls.cooldowns import rebuild_if_lost
from server.deps import Deps
from server.events import Sender
from server.presence import state as presence
from server.timers import DB_FAILED, now_ms

log = structlog.get_logger(__name__)


# ---- one socket (E3) ----

async def resume_socket(deps: Deps, sender: Sender, arrival: presence.Arrival) -> None:
    """E3: put a (re)connected socket back into its call and replay what it missed."""
    sid, uid = sender.sid, sender.user_id
    if arrival.room_id:
        room = await state.get_room(deps.redis, arrival.room_id)
        if room.get("state") == "active":
            partner = room["b"] if room["a"] == uid else room["a"]
            await deps.sio.enter_room(sid, emit.member_room(arrival.room_id, uid))
            peer = await card(deps, partner)
            await emit.to_sid(deps, sid, "call:resume", {
                "roomId": arrival.room_id, "peerUser": peer, "isInitiator": room["a"] == uid,
                "agreedSeconds": int(room["agreed"]), "endsAt": int(room["deadline"]), "serverNow": now_ms()})
            if arrival.was_away:
                await partner_reconnected(deps, uid, arrival.room_id)
    if arrival.finalized:
        session_id, _, _room = arrival.finalized.partition("|")
        await emit.to_sid(deps, sid, "session:finalized", {"sessionId": session_id})
    if arrival.incoming_invite:
        await renotify(deps, sid, arrival.incoming_invite)


async def partner_reconnected(deps: Deps, user_id: str, room_id: str) -> None:
    room = await state.get_room(deps.redis, room_id)
    if room.get("state") == "active":
        partner = room["b"] if room["a"] == user_id else room["a"]
        await emit.to_member(deps, room_id, partner, "room:partner-reconnected", {"userId": user_id})


async def card(deps: Deps, user_id: str) -> dict[str, Any]:
    c = (await deps.deck.cards_of(deps, [user_id])).get(user_id)
    return c.public if c is not None else {"userId": user_id, "name": ""}


async def renotify(deps: Deps, sid: str, invite_id: str) -> None:
    """E3(d): a callee who reconnects sees the pending invite again if more than 5 s are left."""
    inv = await state.get_invite(deps.redis, invite_id)
    if not inv:
        return
    left = int(inv["window_end"]) - now_ms()
    if left <= 5000:
        return
    await emit.to_sid(deps, sid, "call:notify", {"inviteId": invite_id, "fromUser": await card(deps, inv["from"]),
                                                 "requestedSeconds": int(inv["s1"]), "ttlMs": left,
                                                 "expiresAt": int(inv["window_end"])})


# ---- after a gap in cross-node delivery (issue 11 §7) ----

CALL_STATE_EVENTS = frozenset({"call:start", "call:resume", "session:finalized", "call:invite-sent",
                               "call:declined"})


def note_delivery(room_seen: dict[str, str], local: dict[str, Sender], event: str, data: Any,
                  sids: list[str]) -> None:
    """Per socket of this node, what it was last told: the call (call:start / call:resume name it,
    session:finalized closes it) and its pending outgoing invite ("invite:<id>", from call:invite-sent
    until call:declined or call:start)."""
    if event == "session:finalized" or event == "call:declined":
        closes = "invite:" if event == "call:declined" else ""
        for sid in sids:
            if room_seen.get(sid, "").startswith("invite:") == bool(closes):
                room_seen.pop(sid, None)
        return
    if not isinstance(data, dict):
        return
    if event == "call:invite-sent":
        ident = f"invite:{data.get('inviteId')}"
    elif isinstance(data.get("roomId"), str):
        ident = data["roomId"]
    else:
        return
    for sid in sids:
        if sid in local:
            room_seen[sid] = ident


async def replay_after_gap(deps: Deps, senders: list[Sender], room_seen: dict[str, str]) -> int:
    """This node's listener was down, so events other nodes published meanwhile never reached its
    sockets. Each socket gets the current state of its call instead, once: `call:resume` for a call it
    was not told of (a lost call:start), `session:finalized` for the call it knew that ended meanwhile,
    `call:declined` for its outgoing invite that ended meanwhile (not by its own rescind).
    Returns the number of sockets that got something."""
    replayed = 0
    for sender in senders:
        room_id = await state.user_room(deps.redis, sender.user_id) or ""
        seen = room_seen.get(sender.sid, "")
        if seen.startswith("invite:") and not room_id:
            invite_id = seen.partition(":")[2]
            ended = None if await deps.redis.exists(f"inv:{invite_id}") else await state.invite_end(deps.redis,
                                                                                                   invite_id)
            if ended is not None:  # it ended meanwhile (as a call it would have a room): say how
                reason = invites.caller_reason(ended[0], ",".join(sorted(sender.caps)))
                if reason:
                    await emit.to_sid(deps, sender.sid, "call:declined",
                                      {"inviteId": invite_id, "toUserId": ended[1], "reason": reason})
                    replayed += 1
                room_seen.pop(sender.sid, None)
            continue
        if seen.startswith("invite:"):
            seen = ""
        if room_id and room_id != seen:
            await resume_socket(deps, sender, presence.Arrival(False, False, room_id, None, None))
            replayed += 1
        elif seen and seen != room_id:
            room = await state.get_room(deps.redis, seen)
            if room.get("state") == "final":
                await emit.to_sid(deps, sender.sid, "session:finalized",
                                  {"sessionId": room.get("session"), "reason": room.get("reason") or "ended"})
                replayed += 1
            room_seen.pop(sender.sid, None)
    if replayed:
        log.warning("listener_gap_replayed", sockets=replayed)
    return replayed


# ---- Redis lost its data (issue 11 §1) ----

CALLS_RESTORED = "calls:restored"  # set once live calls were restored into this Redis (gone with its data)


async def recover_after_loss(deps: Deps, lost: bool = False) -> None:
    """Runs before a node's sockets go back into a Redis that lost them (`lost`), and after every beat.

    1. Final records of calls whose history write is pending on this node go back first (Redis only):
       their end must not be undone by the restore below (the double fault: Redis lost while Postgres
       was down). After a loss this runs whatever the marker says, overriding a call restored as live.
    2. Durable cooldowns are reloaded (whoever sees these users online again must see them too).
    3. Live calls come back from their durable records.
    Steps 2 and 3 need Postgres: each sets its marker only once done, so a failure (Postgres down when
    Redis came back) is retried on the next beat; each is bounded so it never holds anything up."""
    await rooms.prune_unwritten(deps)
    if lost or not await deps.redis.exists(CALLS_RESTORED):
        await rooms.restore_unwritten(deps)
    try:
        await asyncio.wait_for(rebuild_if_lost(deps), 2)
    except DB_FAILED as exc:
        log.warning("cooldowns_rebuild_deferred", error=repr(exc))
    if await deps.redis.exists(CALLS_RESTORED):
        return
    try:  # idempotent across nodes: a room that exists is left alone
        await asyncio.wait_for(restore_calls(deps), 5)
    except DB_FAILED as exc:
        log.warning("calls_restore_deferred", error=repr(exc))
        return
    await deps.redis.set(CALLS_RESTORED, "1")


async def restore_calls(deps: Deps) -> int:
    restored = 0
    for row in await store.live_calls(deps.db):
        if await state.restore_room(deps.redis, row["room_id"], row["caller_id"], row["callee_id"],
                                    int(row["started_ms"]), int(row["agreed_seconds"]), int(row["deadline_ms"]),
                                    row["session_id"]):
            restored += 1
    if restored:
        log.warning("calls_restored", count=restored)
    return restored
