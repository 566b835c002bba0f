"""Call rooms (PROTOCOL.md §4 rows 4-11, §6 D1/D6/D17/D22/D27, §7 E1/E4/E11): start, join,
partner-addressed signalling with a buffer, chat, socials, the server deadline, and finalisation
exactly once with one durable history row per participant."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from server import emit, timers
from server.accounts import access
from server.calls import cooldowns, state, store
from server.calls.policy import (
    CONNECTED_ALLOWANCE_MS,
    COOLDOWN_MS,
    FINAL_MEMORY_MS,
    HISTORY_MIN_SECONDS,
    QR_SESSION_MIN_SECONDS,
    QR_SESSIONS_TO_UNLOCK,
)
from server.deps import Deps
from server.events import Sender
from server.media.urls import media_url
from server.ops import metrics

log = structlog.get_logger(__name__)

SOCIAL_KEYS = ("instagram", "tiktok", "twitter", "snapchat", "discord")
_HANDLE = re.compile(r"^[A-Za-z0-9._-]{0,30}$")
_TAGS = re.compile(r"<[^>]*>")
# NUL and lone surrogates pass JSON and Redis but Postgres text/jsonb refuses them: the history insert
# of the whole call would fail (and its persist timer retry forever).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CHAT_MAX = 500
# member room of a sender -> its partner, for rooms where both sides joined (see relay); per node, bounded.
_relay_ready: dict[str, str] = {}
_RELAY_READY_MAX = 100_000


def _ms_to_dt(ms: str | int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


async def announce_start(deps: Deps, room_id: str, session_id: str, caller: str, callee: str, agreed: int,
                         deadline_ms: int, users: dict[str, Any], started_ms: int) -> None:
    # The match's durable record, before anyone hears of it: a Redis that loses its data restores the
    # call from here (calls/resume.py). Without Postgres the call still goes ahead on Redis alone.
    try:
        await store.start_live_call(deps.db, room_id, session_id, caller, callee, started_ms, agreed, deadline_ms)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        log.warning("live_call_record_failed", room_id=room_id, error=repr(exc))
    now = timers.now_ms()
    for uid, peer, initiator in ((caller, callee, True), (callee, caller, False)):
        p = users[peer]
        await emit.to_user(deps, uid, "call:start", {
            "roomId": room_id, "agreedSeconds": agreed, "isInitiator": initiator,
            "peerUser": {"userId": peer, "name": p["name"], "gender": p["gender"],
                         "selfieUrl": media_url(deps, p["selfie_key"])},
            "sessionId": session_id, "endsAt": deadline_ms, "serverNow": now,
        })
    for uid in (caller, callee):
        await emit.to_queue(deps, "queue:update", {"userId": uid, "available": False})
    metrics.CALL_SETUPS.inc()
    log.info("call_started", room_id=room_id, caller=caller, callee=callee, agreed=agreed)


async def join(deps: Deps, sender: Sender, room_id: str) -> None:
    # Enter the Socket.IO room before the script marks us joined, so a relay racing this join
    # is either buffered (and flushed below) or delivered to a socket already in the room.
    member = emit.member_room(room_id, sender.user_id)
    await deps.sio.enter_room(sender.sid, member)
    status, _partner, partner_joined, deadline, buffered = await state.join_room(deps.redis, room_id, sender.user_id)
    if status != "ok":
        await deps.sio.leave_room(sender.sid, member)
        return await emit.call_error(deps, sender.sid, "NOT_PARTICIPANT", "Not a participant of this room",
                                     roomId=room_id)
    for item in buffered:
        msg = json.loads(item)
        await emit.to_sid(deps, sender.sid, msg["event"], msg["data"])
    await emit.to_sid(deps, sender.sid, "call:deadline",
                      {"roomId": room_id, "endsAt": deadline, "serverNow": timers.now_ms()})
    # Last: a client waiting for room:joined has everything the join delivers.
    await emit.to_sid(deps, sender.sid, "room:joined", {"roomId": room_id, "peerPresent": partner_joined})
    return None


async def relay(deps: Deps, sender: Sender, room_id: str, kind: str, field: str, value: Any) -> None:
    """rtc:offer / rtc:answer / rtc:ice, only from a participant and only to the partner (D1)."""
    received = time.perf_counter()
    event = {"offer": "rtc:offer", "answer": "rtc:answer", "ice": "rtc:ice"}[kind]
    data = {field: value, "from": sender.user_id}
    member = emit.member_room(room_id, sender.user_id)
    partner = _relay_ready.get(member)
    if partner is not None:
        # Both sides joined (nothing to buffer any more) and this socket is still in its member room,
        # which finalisation closes on every node: relay without a Redis round trip.
        if emit.in_room(deps, sender.sid, member):
            await emit.to_member(deps, room_id, partner, event, data)
            return metrics.RELAY_LATENCY.observe(time.perf_counter() - received)
        _relay_ready.pop(member, None)
    status, partner = await state.signal(deps.redis, room_id, sender.user_id, kind,
                                         json.dumps({"event": event, "data": data}))
    if status == "deliver":
        if emit.in_room(deps, sender.sid, member):
            if len(_relay_ready) >= _RELAY_READY_MAX:
                _relay_ready.clear()
            _relay_ready[member] = partner
        await emit.to_member(deps, room_id, partner, event, data)
        metrics.RELAY_LATENCY.observe(time.perf_counter() - received)
    elif status == "denied":
        await emit.call_error(deps, sender.sid, "NOT_PARTICIPANT", "Not a participant of this room", roomId=room_id)


def sanitize_chat(text: str) -> str:
    return _TAGS.sub("", _UNSTORABLE.sub("", text))[:CHAT_MAX].strip()


def sanitize_socials(socials: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in socials.items()
            if k in SOCIAL_KEYS and isinstance(v, str) and v and _HANDLE.match(v)}


async def _broadcast(deps: Deps, sender: Sender, room_id: str, event: str, message: dict[str, Any]) -> None:
    status, partner = await state.chat(deps.redis, room_id, sender.user_id, json.dumps(message))
    if status != "ok":
        return await emit.call_error(deps, sender.sid, "NOT_PARTICIPANT", "Not a participant of this room",
                                     roomId=room_id)
    # The whole room including the sender: the old client shows its own message from the echo.
    await deps.sio.emit(event, message, to=[emit.member_room(room_id, sender.user_id),
                                            emit.member_room(room_id, partner)])
    return None


async def chat(deps: Deps, sender: Sender, room_id: str, text: str) -> None:
    clean = sanitize_chat(text)
    if not clean:
        return
    await _broadcast(deps, sender, room_id, "room:chat", {
        "from": sender.user_id, "text": clean, "timestamp": timers.now_ms(), "type": "message",
        "messageId": str(uuid.uuid4())})


async def give_social(deps: Deps, sender: Sender, room_id: str, socials: dict[str, Any]) -> None:
    clean = sanitize_socials(socials)
    if not clean:
        return await emit.call_error(deps, sender.sid, "INVALID_PAYLOAD", "No valid socials to share",
                                     roomId=room_id)
    await _broadcast(deps, sender, room_id, "room:socialShared", {
        "from": sender.user_id, "timestamp": timers.now_ms(), "type": "social", "socials": clean})
    return None


async def connected(deps: Deps, sender: Sender, room_id: str) -> None:
    """E11: media connected on this side; both sides -> the deadline tightens to agreed + 5 s."""
    status, deadline, changed = await state.connected(deps.redis, room_id, sender.user_id, timers.now_ms(),
                                                      CONNECTED_ALLOWANCE_MS)
    if status != "ok":
        return await emit.call_error(deps, sender.sid, "NOT_PARTICIPANT", "Not a participant of this room",
                                     roomId=room_id)
    if changed:
        room = await state.get_room(deps.redis, room_id)
        payload = {"roomId": room_id, "endsAt": deadline, "serverNow": timers.now_ms()}
        for uid in (room.get("a", ""), room.get("b", "")):
            await emit.to_member(deps, room_id, uid, "call:deadline", payload)
    return None


async def end(deps: Deps, sender: Sender, room_id: str) -> None:
    room = await state.get_room(deps.redis, room_id)
    if sender.user_id not in (room.get("a"), room.get("b")):
        return await emit.call_error(deps, sender.sid, "NOT_PARTICIPANT", "Not a participant of this room",
                                     roomId=room_id)
    if not await finalize(deps, room_id, "ended"):
        # Already finalised (the partner's call:end, the deadline, a disconnect). The finaliser tells
        # every socket of both users; replay (F13) only to a socket bound after that broadcast, so the
        # side whose call:end lost the race gets session:finalized once (§3.3).
        room = await state.get_room(deps.redis, room_id) or room
        told = room.get("told")
        if told and sender.bound_ms > int(told):
            await emit.to_sid(deps, sender.sid, "session:finalized",
                              {"sessionId": room.get("session"), "reason": room.get("reason") or "ended"})
    return None


async def finalize(deps: Deps, room_id: str, reason: str, leaver: str = "") -> bool:
    """Ends the room if it is still active. True only for the one caller that ended it."""
    status, session_id = await state.finalize(deps.redis, room_id, reason, timers.now_ms(), COOLDOWN_MS["call"],
                                              leaver, FINAL_MEMORY_MS, HISTORY_MIN_SECONDS * 1000)
    if status != "ok":
        return False
    metrics.CALL_FINALISED.labels(reason).inc()
    # Durable first, so the end screen's history fetch already sees this call. If Postgres fails,
    # the persist:<room> timer scheduled by the script retries; the clients are told regardless.
    room = await state.get_room(deps.redis, room_id)
    persisted = True
    try:
        unlocked = await persist(deps, room_id, room)
    except timers.STORE_DOWN as exc:  # an outage: expected, no traceback
        log.warning("call_persist_deferred", room_id=room_id, error=repr(exc))
        unlocked, persisted = [], False
    except Exception:
        log.exception("call_persist_failed", room_id=room_id)
        unlocked, persisted = [], False
    a, b = room["a"], room["b"]
    if leaver:
        survivor = b if leaver == a else a
        await emit.to_member(deps, room_id, survivor, "peer:disconnected", {"userId": leaver})
    for uid in (a, b):  # no more relaying through this room, on any node
        await deps.sio.close_room(emit.member_room(room_id, uid))
    await _tell_finalized(deps, room_id, (a, b), session_id, reason)
    if persisted:  # else the persist timer stays armed: it retries the write, then sends the counters
        await announce_metrics(deps, (a, b), unlocked)
        await timers.cancel(deps, "persist", room_id)
    else:
        await _remember_unwritten(deps, room_id)
    log.info("call_finalized", room_id=room_id, reason=reason)
    return True


# Finalised calls whose history write failed on this node (Postgres down), kept in this process until
# the write is done (by any node). Redis holds the only other record of their end: if Redis loses its
# data meanwhile (the double fault), this copy puts the final record back before anyone restores the
# call from its durable live_calls row as if it were still running (calls/resume.py).
_unwritten: dict[str, tuple[float, dict[str, str], list[str]]] = {}  # room -> (monotonic, room, chat json)
_UNWRITTEN_MAX = 10_000
_UNWRITTEN_MAX_AGE_S = 24 * 3600.0


async def _remember_unwritten(deps: Deps, room_id: str) -> None:
    if len(_unwritten) >= _UNWRITTEN_MAX:
        _unwritten.pop(next(iter(_unwritten)))
    room = await state.get_room(deps.redis, room_id)
    chat = [str(m) for m in await deps.redis.lrange(f"room:{room_id}:chat", 0, -1)]
    _unwritten[room_id] = (time.monotonic(), room, chat)


async def restore_unwritten(deps: Deps) -> int:
    """After Redis lost its data: put back the final records of this node's unwritten calls (each with
    its persist timer and the pair's cooldown), overriding a room restored as live meanwhile. Entries
    whose write is known to be done are dropped instead: Postgres has no live record of the call any
    more (the write ends it in the same transaction). Only when Postgres cannot say (the double fault)
    does the copy go back unchecked; put back after its write, a record would live on without expiry
    until its persist timer wrote it again."""
    put = 0
    for room_id, (at, room, chat) in list(_unwritten.items()):
        if time.monotonic() - at > _UNWRITTEN_MAX_AGE_S:
            _unwritten.pop(room_id, None)
            continue
        if await _written(deps, room_id):
            _unwritten.pop(room_id, None)
            continue
        if await state.refinalize(deps.redis, room_id, room, chat, timers.now_ms(), timers.now_ms() + timers.RETRY_MS):
            put += 1
    if put:
        log.warning("final_records_restored", count=put)
    return put


async def prune_unwritten(deps: Deps) -> None:
    """Forget unwritten calls whose history was written meanwhile (maybe by another node): the record
    has its post-write expiry, or it is gone and Postgres has no live record of the call any more (the
    write also ends that record). Without the second check, an entry whose record expired before a
    beat saw its expiry stayed, and a later restore put an ended, written call back without expiry."""
    for room_id in list(_unwritten):
        ttl = await deps.redis.ttl(f"room:{room_id}")
        if ttl >= 0:  # mark_persisted set its expiry (TTL rounds: 0 is under half a second left)
            _unwritten.pop(room_id, None)
        elif ttl == -2 and await _written(deps, room_id):  # gone: written and expired, or Redis lost it
            _unwritten.pop(room_id, None)


async def _written(deps: Deps, room_id: str) -> bool:
    """Is the call's history written? Its durable live record is gone (the write ends it in the same
    transaction). False while Postgres cannot say."""
    try:
        return not await store.is_live_call(deps.db, room_id)
    except timers.DB_FAILED:
        return False


async def _tell_finalized(deps: Deps, room_id: str, users: tuple[str, str], session_id: str, reason: str) -> None:
    for uid in users:
        await emit.to_user(deps, uid, "session:finalized", {"sessionId": session_id, "reason": reason})
    await state.mark_told(deps.redis, room_id, timers.now_ms())


async def persist(deps: Deps, room_id: str, room: dict[str, str] | None = None) -> list[str]:
    """Durable record of a finalised call; idempotent, also run by the persist:<room> timer after a crash.
    `room`: its Redis record, when the caller has just read it. Returns the users whose QR access this
    call unlocked."""
    if room is None:
        room = await state.get_room(deps.redis, room_id)
    if room.get("state") != "final":
        await timers.cancel(deps, "persist", room_id)
        return []
    a, b, started, ended = room["a"], room["b"], int(room["started"]), int(room["ended"])
    media_start = max(int(room["ca"]), int(room["cb"])) if room.get("ca") and room.get("cb") else started
    duration = max(0, (ended - media_start) // 1000)
    cooldown = cooldowns.row(a, b, int(room.get("cd", COOLDOWN_MS["call"])), "call")
    unlocked: list[str] = []
    participants: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    if duration >= HISTORY_MIN_SECONDS:
        users = await deps.deck.rows(deps, [a, b])
        messages = await state.transcript(deps.redis, room_id)
        if room.get("reason") == "disconnect":
            messages.append({"from": "system", "text": "Call ended because a participant disconnected",
                             "timestamp": ended, "type": "message"})
        participants = [
            {"user_id": uid, "partner_id": other, "partner_name": users[other]["name"] if other in users else ""}
            for uid, other in ((a, b), (b, a)) if uid in users
        ]
    # History, cooldown and the end of the live record in one transaction: a restore after Redis lost
    # its data never finds a live record of a call whose history exists (issue 11, the double fault).
    # A call too short for history needs no transaction: the last statement alone is atomic.
    if participants:
        async with deps.db.acquire() as conn, conn.transaction():
            unlocked = await store.record_call(
                conn, uuid.UUID(room["session"]), uuid.UUID(room_id), _ms_to_dt(started), _ms_to_dt(ended),
                duration, int(room["agreed"]), room.get("reason", "ended"), participants, messages,
                duration >= QR_SESSION_MIN_SECONDS, QR_SESSIONS_TO_UNLOCK)
            await store.end_live_call(conn, room_id, cooldown)
    else:
        await store.end_live_call(deps.db, room_id, cooldown)
    await state.mark_persisted(deps.redis, room_id, deps.settings.room_keep_seconds)
    _unwritten.pop(room_id, None)
    return unlocked


async def announce_metrics(deps: Deps, user_ids: tuple[str, str], unlocked: list[str]) -> None:
    for uid, m in (await store.metrics(deps.db, list(user_ids))).items():
        await emit.to_user(deps, uid, "metrics:update", {
            "timerTotalSeconds": m["timer_total_seconds"], "sessionCount": m["session_count"],
            "successfulSessions": m["successful_sessions"]})
    for uid in unlocked:
        await access.changed(deps, uid, "qr_unlocked")
        await emit.to_user(deps, uid, "qr:unlocked", {"message": "You unlocked your own invite code!",
                                                     "sessionsCompleted": QR_SESSIONS_TO_UNLOCK})


async def on_deadline(deps: Deps, room_id: str) -> None:
    await finalize(deps, room_id, "deadline")


async def on_persist(deps: Deps, room_id: str) -> None:
    """Timer: the finalising node died (or Postgres failed) before the durable write, or before both
    sides were told. Writes the record (idempotent) and sends what was not sent yet."""
    room = await state.get_room(deps.redis, room_id)
    unlocked = await persist(deps, room_id)  # raises while Postgres is down: retried after the lease
    if room.get("a") and room.get("state") == "final":
        users = (room["a"], room["b"])
        if not room.get("told"):
            await _tell_finalized(deps, room_id, users, room["session"], room.get("reason", "ended"))
        # The counters now include this call (finalize sent none when its own write failed).
        await announce_metrics(deps, users, unlocked)
    await timers.cancel(deps, "persist", room_id)
