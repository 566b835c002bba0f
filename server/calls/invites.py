"""Timed call invites (PROTOCOL.md §3.2, §4 rows 1-3, F1-F9, §7 E2): create, accept, decline,
rescind, extend, expire. Every transition is one Redis script (calls/state.py); this module checks
the durable facts (access, bans) and tells each side what happened."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog

from server import emit, ratelimit
from server.accounts.access import has_access
from server.accounts.sessions import BANNED_STATUSES
from server.calls import cooldowns, rooms, state, store
from server.calls.policy import DECLINE_AS_TIMEOUT_MS, clamp_seconds
from server.deps import Deps
from server.events import Sender
from server.ids import canonical_user_id
from server.ops import metrics
from server.presence import gate
from server.timers import now_ms

log = structlog.get_logger(__name__)


def _reason_for(caps: str, reason: str) -> str:
    """`busy` only for clients that announced it (E8/E12); the old client gets `offline`."""
    return reason if reason != "busy" or "busy" in caps.split(",") else "offline"


async def _declined(deps: Deps, sid_or_user: tuple[str, str], invite_id: str, to_user: str, reason: str) -> None:
    kind, target = sid_or_user
    payload = {"inviteId": invite_id, "toUserId": to_user, "reason": reason}
    if kind == "sid":
        await emit.to_sid(deps, target, "call:declined", payload)
    else:
        await emit.to_user(deps, target, "call:declined", payload)


async def invite(deps: Deps, sender: Sender, to_user: str, requested: Any) -> str | None:
    """Invite `to_user`. Returns the acting user's denial verdict ("banned" | "payment", from
    presence/gate.py) when they may not call at all: the handler enforces it (calls/enforce.py)."""
    me = sender.user_id
    invite_id = str(uuid.uuid4())
    caps = ",".join(sorted(sender.caps))

    async def reject(reason: str) -> None:
        metrics.INVITES.labels("refused").inc()
        await _declined(deps, ("sid", sender.sid), invite_id, to_user, _reason_for(caps, reason))

    target_id = canonical_user_id(to_user)  # any spelling of one's own id is oneself (issue 12 §4)
    if target_id == me:
        await reject("invalid_target")
        return None
    if (v := await gate.verdict(deps, sender)) != "ok":
        return v
    cards = await deps.deck.cards_of(deps, [me] + ([target_id] if target_id else []))
    target = cards[target_id].fields if target_id in cards else None
    if target is None:
        await reject("user_not_found")
        return None
    seconds = clamp_seconds(requested)
    if seconds is None:
        await reject("invalid_duration")
        return None
    if target["ban_status"] in BANNED_STATUSES or not has_access(deps, target["paid_status"]):
        await reject("offline")
        return None
    # One wait for both stores, not one after the other: under load each await of the handler costs
    # a lap of the busy event loop (10-35 ms each in slow invites at 200 users). The attempt counts
    # toward the limit even when the report check refuses it.
    reported, window = await asyncio.gather(store.reported_between(deps.db, me, str(target["id"])),
                                            ratelimit.hit(deps.redis, f"invites:{me}", 60))
    if reported:
        await reject("offline")  # a report blocks the pair both ways, by id too (§6 D16)
        return None
    if window.count > deps.settings.invites_per_minute:
        await emit.call_error(deps, sender.sid, "RATE_LIMITED", "Too many invites, slow down",
                              retryAfter=window.retry_after_s)
        return None

    s = deps.settings
    now = now_ms()
    window_end = now + s.invite_ttl_ms
    expires = window_end + s.invite_expiry_grace_ms
    status = await state.create_invite(deps.redis, me, str(target["id"]), invite_id, seconds, now, window_end,
                                       expires, caps)
    if status == "caller_busy":
        await emit.call_error(deps, sender.sid, "BUSY", "You are already in a call")
        return None
    if status == "already_pending":
        await emit.call_error(deps, sender.sid, "INVITE_PENDING",
                              "You already have a pending invite; cancel it first")
        return None
    if status != "ok":
        await reject(status)  # offline | busy | cooldown
        return None
    await emit.to_user(deps, str(target["id"]), "call:notify", {
        "inviteId": invite_id, "fromUser": cards[me].public, "requestedSeconds": seconds,
        "ttlMs": s.invite_ttl_ms, "expiresAt": window_end,
    })
    await emit.to_sid(deps, sender.sid, "call:invite-sent",
                      {"inviteId": invite_id, "toUserId": str(target["id"]), "expiresAt": window_end})
    metrics.INVITES.labels("sent").inc()
    log.info("invite_created", invite_id=invite_id, caller=me, callee=str(target["id"]), seconds=seconds)
    return None


async def accept(deps: Deps, sender: Sender, invite_id: str, requested: Any) -> str | None:
    """Accept an invite; like invite(), returns the acting user's denial verdict, if any."""
    seconds = clamp_seconds(requested)
    if seconds is None:
        await emit.call_error(deps, sender.sid, "INVALID_DURATION", "Invalid call duration",
                              inviteId=invite_id)
        return None
    inv = await state.get_invite(deps.redis, invite_id)
    if not inv or inv.get("to") != sender.user_id:
        await emit.call_error(deps, sender.sid, "INVITE_NOT_FOUND", "Invite not found or expired",
                              inviteId=invite_id)
        return None
    if (v := await gate.verdict(deps, sender)) != "ok":
        return v
    users = await deps.deck.rows(deps, [sender.user_id, inv["from"]])
    caller = users.get(inv["from"])
    if caller is None or caller["ban_status"] in BANNED_STATUSES or not has_access(deps, caller["paid_status"]):
        ended = await state.end_invite(deps.redis, "gone", inv["from"], now_ms(), invite_id=invite_id)
        if isinstance(ended, state.Ended):
            await announce_end(deps, ended)
        await emit.call_error(deps, sender.sid, "CALLER_UNAVAILABLE", "Invite not found or expired",
                              inviteId=invite_id)
        return None

    room_id, session_id, started = str(uuid.uuid4()), str(uuid.uuid4()), now_ms()
    res = await state.accept_invite(deps.redis, invite_id, sender.user_id, room_id, session_id, started, seconds,
                                    deps.settings.call_setup_allowance_ms)
    if res.status in ("not_found", "not_invitee"):
        await emit.call_error(deps, sender.sid, "INVITE_NOT_FOUND", "Invite not found or expired",
                              inviteId=invite_id)
        return None
    if res.status == "callee_busy":
        await emit.call_error(deps, sender.sid, "BUSY", "You are already in a call", inviteId=invite_id)
        return None
    if res.status == "caller_gone":  # F9: fail cleanly for both
        await emit.call_error(deps, sender.sid, "CALLER_UNAVAILABLE", "The caller is no longer available",
                              inviteId=invite_id)
        await _declined(deps, ("user", res.caller), invite_id, sender.user_id, "offline")
        return None
    for other in res.other_invites:
        ended = await state.end_invite(deps.redis, "busy", "", now_ms(), invite_id=other)
        if isinstance(ended, state.Ended):
            await announce_end(deps, ended)
    await rooms.announce_start(deps, room_id, session_id, res.caller, sender.user_id, res.agreed,
                               res.deadline_ms, users, started)
    metrics.INVITES.labels("accepted").inc()
    metrics.INVITE_TO_START.observe(max(now_ms() - int(inv.get("created") or started), 0) / 1000)
    return None


async def decline(deps: Deps, sender: Sender, invite_id: str, reason: str | None) -> None:
    # New clients may say the decline was their countdown running out (E2).
    window = 1 << 50 if reason == "timeout" else DECLINE_AS_TIMEOUT_MS
    ended = await state.end_invite(deps.redis, "decline", sender.user_id, now_ms(), invite_id=invite_id,
                                   timeout_window_ms=window)
    if isinstance(ended, state.Ended):  # unknown or foreign invites are ignored, as in the original
        await announce_end(deps, ended)


async def rescind(deps: Deps, sender: Sender, to_user: str) -> None:
    ended = await state.end_invite(deps.redis, "rescind", sender.user_id, now_ms(), counterpart=to_user)
    if isinstance(ended, state.Ended):
        await announce_end(deps, ended)


async def extend_wait(deps: Deps, sender: Sender, to_user: str) -> None:
    s = deps.settings
    res = await state.extend_invite(deps.redis, sender.user_id, to_user, s.invite_extension_ms,
                                    s.invite_max_extensions)
    if res[0] == "not_found":
        return await emit.call_error(deps, sender.sid, "INVITE_NOT_FOUND", "No pending invite to that user")
    if res[0] == "max_extensions":
        return await emit.call_error(deps, sender.sid, "MAX_EXTENSIONS", "The invite cannot be extended again",
                                     inviteId=res[1])
    await emit.to_user(deps, to_user, "call:wait-extended", {
 "extraSeconds": s.invite_extension_ms // 1000, "inviteId": res[1], "expiresAt": int(res[2])})
    return None


async def expire(deps: Deps, invite_id: str) -> None:
    """Timer: the invite outlived its window plus grace (E2)."""
    ended = await state.end_invite(deps.redis, "expire", "", now_ms(), invite_id=invite_id)
    if isinstance(ended, state.Ended):
        await announce_end(deps, ended)


def caller_reason(outcome: str, caps: str) -> str | None:
    """The call:declined reason the caller gets for an invite that ended this way (None: not told)."""
    return {"decline": "user_declined", "timeout": "timeout", "expire": "timeout",
            "callee_gone": "offline", "busy": _reason_for(caps, "busy")}.get(outcome)


_ENDED_AS = {"decline": "declined", "timeout": "declined", "expire": "expired", "busy": "busy"}  # else cancelled


async def announce_end(deps: Deps, e: state.Ended) -> None:
    """Make the invite's cooldown durable, then tell each side how it ended. The Redis script already
    set the cooldown, so a Postgres failure defers the durable copy (a timer retries it) instead of
    leaving the outcome unannounced (issue 11 §4)."""
    await cooldowns.persist_or_defer(deps, e.caller, e.callee, e.cooldown_ms, e.outcome)
    to_caller = caller_reason(e.outcome, e.caller_caps)
    if to_caller:
        await _declined(deps, ("user", e.caller), e.invite_id, e.callee, to_caller)
    to_callee = {"rescind": {}, "caller_gone": {}, "expire": {"reason": "expired"},
                 "busy": {"reason": "busy"}}.get(e.outcome)
    if to_callee is not None:
        await emit.to_user(deps, e.callee, "call:rescinded", {"inviteId": e.invite_id, **to_callee})
    metrics.INVITES.labels(_ENDED_AS.get(e.outcome, "cancelled")).inc()
    log.info("invite_ended", invite_id=e.invite_id, outcome=e.outcome, cooldown_ms=e.cooldown_ms)
