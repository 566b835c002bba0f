"""Redis transitions of invites and rooms: one Lua script per transition, atomic across nodes.

Keys: inv:<id> (hash), u:<uid>:out / u:<uid>:in (the one pending outgoing / incoming invite),
u:<uid>:room (the active room: "busy"), room:<id> (hash), room:<id>:joined (set of users who sent
room:join), room:<id>:sdp:<to>:<offer|answer> and room:<id>:ice:<to> (signalling buffered for a
participant who has not joined yet, §7 E4), room:<id>:chat (transcript), cd:<a>:<b> (pair cooldown,
a < b), invend:<id> (how an invite ended, 2 min: outcome|callee), timers (zset "<kind>:<id>" -> due ms).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from server.calls.policy import COOLDOWN_MS
from server.redis import Script

# ---------------------------------------------------------------- invites

_INVITE_CREATE = Script(
    """
    local caller, callee, id = ARGV[1], ARGV[2], ARGV[3]
    if caller == callee then return 'invalid_target' end  -- ids arrive canonical (server/ids.py)
    if redis.call('EXISTS', 'u:' .. caller .. ':room') == 1 then return 'caller_busy' end
    if redis.call('EXISTS', 'u:' .. caller .. ':out') == 1 then return 'already_pending' end
    if redis.call('SISMEMBER', 'online', callee) == 0 or redis.call('SISMEMBER', 'available', callee) == 0 then
      return 'offline'
    end
    if redis.call('EXISTS', 'u:' .. callee .. ':room') == 1 or redis.call('EXISTS', 'u:' .. callee .. ':in') == 1 then
      return 'busy'
    end
    local a, b = caller, callee
    if b < a then a, b = b, a end
    if redis.call('EXISTS', 'cd:' .. a .. ':' .. b) == 1 then return 'cooldown' end
    redis.call('HSET', 'inv:' .. id, 'id', id, 'from', caller, 'to', callee, 's1', ARGV[4], 'created', ARGV[5],
      'window_end', ARGV[6], 'expires', ARGV[7], 'ext', 0, 'caps', ARGV[8])
    redis.call('SET', 'u:' .. caller .. ':out', id)
    redis.call('SET', 'u:' .. callee .. ':in', id)
    redis.call('ZADD', 'timers', ARGV[7], 'invite:' .. id)
    return 'ok'
    """
)

# Removes an invite and its pointers; shared prelude of the scripts that end invites.
_DROP = """
local function drop(id, from, to)
  redis.call('DEL', 'inv:' .. id)
  redis.call('ZREM', 'timers', 'invite:' .. id)
  if redis.call('GET', 'u:' .. from .. ':out') == id then redis.call('DEL', 'u:' .. from .. ':out') end
  if redis.call('GET', 'u:' .. to .. ':in') == id then redis.call('DEL', 'u:' .. to .. ':in') end
end
local function cooldown(a, b, ms)
  if ms <= 0 then return end
  if b < a then a, b = b, a end
  local key = 'cd:' .. a .. ':' .. b
  local left = redis.call('PTTL', key)
  if left < ms then redis.call('SET', key, '1', 'PX', ms) end
end
"""

# ARGV: id ('' = the actor's outgoing invite), kind (decline|rescind|expire|gone|busy), actor,
# now ms, expected counterpart ('' = any), cooldowns json, decline-as-timeout window ms.
# Returns {status, outcome, from, to, cooldown_ms, caps, id}.
_INVITE_END = Script(
    _DROP
    + """
    local id, kind, actor, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
    if id == '' then id = redis.call('GET', 'u:' .. actor .. ':out') or '' end
    if id == '' or redis.call('EXISTS', 'inv:' .. id) == 0 then return {'not_found'} end
    local f = redis.call('HMGET', 'inv:' .. id, 'from', 'to', 'window_end', 'expires', 'caps')
    local from, to, window_end, expires, caps = f[1], f[2], tonumber(f[3]), tonumber(f[4]), f[5]
    local outcome = kind
    if kind == 'decline' then
      if to ~= actor then return {'not_invitee'} end
      if now >= window_end - tonumber(ARGV[7]) then outcome = 'timeout' end
    elseif kind == 'rescind' then
      if from ~= actor or (ARGV[5] ~= '' and to ~= ARGV[5]) then return {'not_found'} end
    elseif kind == 'expire' then
      if now < expires then return {'not_due'} end
    elseif kind == 'gone' then
      if actor == from then outcome = 'caller_gone' else outcome = 'callee_gone' end
    end
    local ms = tonumber(cjson.decode(ARGV[6])[outcome] or 0)
    drop(id, from, to)
    cooldown(from, to, ms)
    -- how it ended, for a caller whose call:declined was lost in a cross-node delivery gap
    redis.call('SET', 'invend:' .. id, outcome .. '|' .. to, 'PX', 120000)
    return {'ok', outcome, from, to, ms, caps, id}
    """
)

# ARGV: caller, expected callee, extension ms, max extensions. Returns {status, id, window_end, expires}.
_INVITE_EXTEND = Script(
    """
    local caller, to = ARGV[1], ARGV[2]
    local id = redis.call('GET', 'u:' .. caller .. ':out')
    if not id or redis.call('HGET', 'inv:' .. id, 'to') ~= to then return {'not_found'} end
    if tonumber(redis.call('HGET', 'inv:' .. id, 'ext')) >= tonumber(ARGV[4]) then return {'max_extensions', id} end
    redis.call('HINCRBY', 'inv:' .. id, 'ext', 1)
    local window_end = redis.call('HINCRBY', 'inv:' .. id, 'window_end', ARGV[3])
    local expires = redis.call('HINCRBY', 'inv:' .. id, 'expires', ARGV[3])
    redis.call('ZADD', 'timers', expires, 'invite:' .. id)
    return {'ok', id, window_end, expires}
    """
)

# ARGV: invite id, callee, room id, session id, now ms, callee seconds, setup allowance ms.
# Accept is decided here and only here: at most once, never leaving a user in two rooms (§4 F9).
_INVITE_ACCEPT = Script(
    _DROP
    + """
    local id, callee, room, session, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
    if redis.call('EXISTS', 'inv:' .. id) == 0 then return {'not_found'} end
    local f = redis.call('HMGET', 'inv:' .. id, 'from', 'to', 's1', 'caps')
    local from, to = f[1], f[2]
    if to ~= callee then return {'not_invitee'} end
    if redis.call('EXISTS', 'u:' .. to .. ':room') == 1 then return {'callee_busy', from, f[4]} end
    if redis.call('SCARD', 'u:' .. from .. ':socks') == 0 or redis.call('EXISTS', 'u:' .. from .. ':room') == 1 then
      drop(id, from, to)
      return {'caller_gone', from, f[4]}
    end
    drop(id, from, to)
    local agreed = math.floor((tonumber(f[3]) + tonumber(ARGV[6])) / 2)
    local deadline = now + agreed * 1000 + tonumber(ARGV[7])
    redis.call('HSET', 'room:' .. room, 'id', room, 'a', from, 'b', to, 'started', now, 'agreed', agreed,
      'deadline', deadline, 'session', session, 'state', 'active')
    redis.call('SET', 'u:' .. from .. ':room', room)
    redis.call('SET', 'u:' .. to .. ':room', room)
    redis.call('SREM', 'available', from, to)
    redis.call('ZADD', 'timers', deadline, 'deadline:' .. room)
    local others = {}
    for _, u in ipairs({from, to}) do
      for _, dir in ipairs({'out', 'in'}) do
        local other = redis.call('GET', 'u:' .. u .. ':' .. dir)
        if other then table.insert(others, other) end
      end
    end
    return {'ok', from, f[4], agreed, deadline, cjson.encode(others)}
    """
)


@dataclass(frozen=True)
class Ended:
    outcome: str
    invite_id: str
    caller: str
    callee: str
    cooldown_ms: int
    caller_caps: str


@dataclass(frozen=True)
class Accepted:
    status: str
    caller: str = ""
    caller_caps: str = ""
    agreed: int = 0
    deadline_ms: int = 0
    other_invites: tuple[str, ...] = ()


async def create_invite(r: aioredis.Redis, caller: str, callee: str, invite_id: str, s1: int, now: int,
                        window_end: int, expires: int, caps: str) -> str:
    return str(await _INVITE_CREATE(r, [], [caller, callee, invite_id, s1, now, window_end, expires, caps]))


async def end_invite(r: aioredis.Redis, kind: str, actor: str, now: int, invite_id: str = "",
                     counterpart: str = "", timeout_window_ms: int = 2000) -> Ended | str:
    res = await _INVITE_END(r, [], [invite_id, kind, actor, now, counterpart, json.dumps(COOLDOWN_MS),
                                    timeout_window_ms])
    if res[0] != "ok":
        return str(res[0])
    _, outcome, caller, callee, ms, caps, iid = res
    return Ended(outcome, iid, caller, callee, int(ms), caps or "")


async def extend_invite(r: aioredis.Redis, caller: str, to: str, ext_ms: int, max_ext: int) -> list[Any]:
    return list(await _INVITE_EXTEND(r, [], [caller, to, ext_ms, max_ext]))


async def accept_invite(r: aioredis.Redis, invite_id: str, callee: str, room_id: str, session_id: str, now: int,
                        s2: int, allowance_ms: int) -> Accepted:
    res = await _INVITE_ACCEPT(r, [], [invite_id, callee, room_id, session_id, now, s2, allowance_ms])
    if res[0] != "ok":
        return Accepted(res[0], *(res[1:3] if len(res) >= 3 else ()))
    _, caller, caps, agreed, deadline, others = res
    return Accepted("ok", caller, caps or "", int(agreed), int(deadline), tuple(json.loads(others) or ()))


async def invite_end(r: aioredis.Redis, invite_id: str) -> tuple[str, str] | None:
    """(outcome, callee) of an invite that ended in the last 2 minutes; None if it did not (or longer ago)."""
    raw = await r.get(f"invend:{invite_id}")
    if not raw:
        return None
    outcome, _, callee = str(raw).partition("|")
    return outcome, callee


async def get_invite(r: aioredis.Redis, invite_id: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in (await r.hgetall(f"inv:{invite_id}")).items()}


async def cooldown_left_ms(r: aioredis.Redis, me: str, others: list[str]) -> dict[str, int]:
    if not others:
        return {}
    async with r.pipeline(transaction=False) as pipe:
        for o in others:
            a, b = (me, o) if me < o else (o, me)
            pipe.pttl(f"cd:{a}:{b}")
        ttls = await pipe.execute()
    return {o: int(t) for o, t in zip(others, ttls, strict=True) if int(t) > 0}


# ---------------------------------------------------------------- rooms

_MEMBER = """
local room, uid = ARGV[1], ARGV[2]
local r = 'room:' .. room
local m = redis.call('HMGET', r, 'a', 'b', 'state')
if m[3] ~= 'active' or (uid ~= m[1] and uid ~= m[2]) then return {'denied'} end
local partner = m[1]
if uid == m[1] then partner = m[2] end
"""

# Marks `uid` as joined and hands back what was buffered for it (offer, answer, candidates in order).
_ROOM_JOIN = Script(
    _MEMBER
    + """
    redis.call('SADD', r .. ':joined', uid)
    local out = {'ok', partner, redis.call('SISMEMBER', r .. ':joined', partner), redis.call('HGET', r, 'deadline')}
    for _, kind in ipairs({'offer', 'answer'}) do
      local k = r .. ':sdp:' .. uid .. ':' .. kind
      local v = redis.call('GET', k)
      if v then table.insert(out, v); redis.call('DEL', k) end
    end
    local ice = r .. ':ice:' .. uid
    for _, v in ipairs(redis.call('LRANGE', ice, 0, -1)) do table.insert(out, v) end
    redis.call('DEL', ice)
    return out
    """
)

# ARGV: room, sender, kind (offer|answer|ice), relayed event json, max buffered candidates.
_SIGNAL = Script(
    _MEMBER
    + """
    if redis.call('SISMEMBER', r .. ':joined', partner) == 1 then return {'deliver', partner} end
    if ARGV[3] == 'ice' then
      local k = r .. ':ice:' .. partner
      if redis.call('LLEN', k) < tonumber(ARGV[5]) then redis.call('RPUSH', k, ARGV[4]) end
      redis.call('EXPIRE', k, 3600)
    else
      redis.call('SET', r .. ':sdp:' .. partner .. ':' .. ARGV[3], ARGV[4], 'EX', 3600)
    end
    return {'buffered', partner}
    """
)

# ARGV: room, sender, message json, transcript cap.
_CHAT = Script(
    _MEMBER
    + """
    local k = r .. ':chat'
    redis.call('RPUSH', k, ARGV[3])
    redis.call('LTRIM', k, -tonumber(ARGV[4]), -1)
    redis.call('EXPIRE', k, 7200)
    return {'ok', partner}
    """
)

# ARGV: room, uid, now, connected allowance ms. Returns {status, deadline, changed}.
_CONNECTED = Script(
    _MEMBER
    + """
    local field = 'ca'
    if uid ~= redis.call('HGET', r, 'a') then field = 'cb' end
    redis.call('HSETNX', r, field, ARGV[3])
    local c = redis.call('HMGET', r, 'ca', 'cb', 'agreed', 'deadline')
    local deadline = tonumber(c[4])
    if c[1] and c[2] then
      local candidate = math.max(tonumber(c[1]), tonumber(c[2])) + tonumber(c[3]) * 1000 + tonumber(ARGV[4])
      if candidate < deadline then
        redis.call('HSET', r, 'deadline', candidate)
        redis.call('ZADD', 'timers', candidate, 'deadline:' .. room)
        return {'ok', candidate, 1}
      end
    end
    return {'ok', deadline, 0}
    """
)

# Finalises a room exactly once, whichever of call:end, deadline, disconnect or ban comes first.
# ARGV: room, reason, now, cooldown ms, leaver ('' = none), final memory ms, short-disconnect ms.
# A call ended by a disconnect before it ran short-disconnect ms gets no cooldown (§3.5).
# Schedules a persist:<room> timer so the durable write survives a node crash; the record is kept
# (no expiry) until that write succeeded (mark_persisted), however long Postgres is down.
_FINALIZE = Script(
    """
    local room, reason, now = ARGV[1], ARGV[2], ARGV[3]
    local r = 'room:' .. room
    local m = redis.call('HMGET', r, 'a', 'b', 'state', 'session', 'started')
    if m[3] ~= 'active' then return {m[3] or 'missing', m[4] or ''} end
    local ms = tonumber(ARGV[4])
    if reason == 'disconnect' and tonumber(now) - tonumber(m[5]) < tonumber(ARGV[7]) then ms = 0 end
    redis.call('HSET', r, 'state', 'final', 'reason', reason, 'ended', now, 'leaver', ARGV[5], 'cd', ms)
    for _, u in ipairs({m[1], m[2]}) do
      if redis.call('GET', 'u:' .. u .. ':room') == room then redis.call('DEL', 'u:' .. u .. ':room') end
      if redis.call('SCARD', 'u:' .. u .. ':socks') == 0 then
        redis.call('SET', 'u:' .. u .. ':final', m[4] .. '|' .. room, 'PX', ARGV[6])
      end
    end
    redis.call('ZREM', 'timers', 'deadline:' .. room)
    redis.call('ZADD', 'timers', tonumber(now) + 10000, 'persist:' .. room)
    local a, b = m[1], m[2]
    if b < a then a, b = b, a end
    if ms > 0 and redis.call('PTTL', 'cd:' .. a .. ':' .. b) < ms then
      redis.call('SET', 'cd:' .. a .. ':' .. b, '1', 'PX', ms)
    end
    redis.call('PERSIST', r .. ':chat')
    return {'ok', m[4]}
    """
)


# Puts back a started call that Redis lost (restart without persistence), from its durable record.
# ARGV: room, caller, callee, started ms, agreed s, deadline ms, session. Both sides count as joined (the
# call was running); its deadline timer finalises it as usual, at once if the deadline has passed.
_RESTORE = Script(
    """
    local room, a, b = ARGV[1], ARGV[2], ARGV[3]
    local r = 'room:' .. room
    if redis.call('EXISTS', r) == 1 then return 0 end
    redis.call('HSET', r, 'id', room, 'a', a, 'b', b, 'started', ARGV[4], 'agreed', ARGV[5], 'deadline', ARGV[6],
      'session', ARGV[7], 'state', 'active', 'restored', 1)
    redis.call('SADD', r .. ':joined', a, b)
    redis.call('SET', 'u:' .. a .. ':room', room, 'NX')
    redis.call('SET', 'u:' .. b .. ':room', room, 'NX')
    redis.call('SREM', 'available', a, b)
    redis.call('ZADD', 'timers', 'NX', ARGV[6], 'deadline:' .. room)
    return 1
    """
)


# Puts back the final record of a call whose end only Redis knew (its history write pending) after Redis
# lost its data; overrides the same room restored as live from its durable record meanwhile.
# ARGV: room, fields json, chat json list, now ms, persist due ms.
_REFINAL = Script(
    """
    local room = ARGV[1]
    local r = 'room:' .. room
    local st = redis.call('HGET', r, 'state')
    if st == 'final' then return 0 end
    if st == 'active' and redis.call('HGET', r, 'restored') ~= '1' then return 0 end
    local f = cjson.decode(ARGV[2])
    redis.call('DEL', r)
    for k, v in pairs(f) do redis.call('HSET', r, k, v) end
    redis.call('HSET', r, 'state', 'final')
    if redis.call('EXISTS', r .. ':chat') == 0 then
      for _, m in ipairs(cjson.decode(ARGV[3])) do redis.call('RPUSH', r .. ':chat', m) end
    end
    for _, u in ipairs({f['a'], f['b']}) do
      if redis.call('GET', 'u:' .. u .. ':room') == room then redis.call('DEL', 'u:' .. u .. ':room') end
    end
    redis.call('ZREM', 'timers', 'deadline:' .. room)
    redis.call('ZADD', 'timers', ARGV[5], 'persist:' .. room)
    local left = tonumber(f['ended'] or '0') + tonumber(f['cd'] or '0') - tonumber(ARGV[4])
    local a, b = f['a'], f['b']
    if b < a then a, b = b, a end
    if left > 0 then redis.call('SET', 'cd:' .. a .. ':' .. b, '1', 'PX', left, 'NX') end
    return 1
    """
)


async def refinalize(r: aioredis.Redis, room_id: str, room: dict[str, str], chat: list[str], now: int,
                     persist_due: int) -> bool:
    return bool(await _REFINAL(r, [], [room_id, json.dumps(room), json.dumps(chat), now, persist_due]))


async def restore_room(r: aioredis.Redis, room_id: str, caller: str, callee: str, started_ms: int, agreed: int,
                       deadline_ms: int, session_id: str) -> bool:
    return bool(await _RESTORE(r, [], [room_id, caller, callee, started_ms, agreed, deadline_ms, session_id]))


def _member_result(res: list[Any]) -> tuple[str, str]:
    return str(res[0]), str(res[1]) if len(res) > 1 else ""


async def join_room(r: aioredis.Redis, room_id: str, uid: str) -> tuple[str, str, bool, int, list[str]]:
    """(status, partner, partner_joined, deadline_ms, buffered events json in delivery order)."""
    res = await _ROOM_JOIN(r, [], [room_id, uid])
    if res[0] != "ok":
        return str(res[0]), "", False, 0, []
    return "ok", res[1], bool(res[2]), int(res[3]), list(res[4:])


async def signal(r: aioredis.Redis, room_id: str, uid: str, kind: str, event_json: str,
                 max_candidates: int = 64) -> tuple[str, str]:
    return _member_result(await _SIGNAL(r, [], [room_id, uid, kind, event_json, max_candidates]))


async def chat(r: aioredis.Redis, room_id: str, uid: str, message_json: str, cap: int = 200) -> tuple[str, str]:
    return _member_result(await _CHAT(r, [], [room_id, uid, message_json, cap]))


async def connected(r: aioredis.Redis, room_id: str, uid: str, now: int, allowance_ms: int) -> tuple[str, int, bool]:
    res = await _CONNECTED(r, [], [room_id, uid, now, allowance_ms])
    if res[0] != "ok":
        return str(res[0]), 0, False
    return "ok", int(res[1]), bool(res[2])


async def finalize(r: aioredis.Redis, room_id: str, reason: str, now: int, cooldown_ms: int, leaver: str,
                   final_memory_ms: int, short_disconnect_ms: int) -> tuple[str, str]:
    """('ok', sessionId) for the one caller that finalised; otherwise the room's state and session."""
    res = await _FINALIZE(r, [], [room_id, reason, now, cooldown_ms, leaver, final_memory_ms, short_disconnect_ms])
    return str(res[0]), str(res[1])


async def mark_persisted(r: aioredis.Redis, room_id: str, keep_seconds: float) -> None:
    """The durable write is done: the finalised room's record now only serves replays, for
    `keep_seconds` (settings.room_keep_seconds)."""
    async with r.pipeline(transaction=False) as pipe:
        for suffix in ("", ":joined", ":chat"):
            pipe.expire(f"room:{room_id}{suffix}", max(1, int(keep_seconds)))
        await pipe.execute()


# Only on a record that still exists: a plain HSET after the record expired (a slow finaliser on a
# loaded node) would create a record of one field that never expires.
_TOLD = Script(
    """
    local r = 'room:' .. ARGV[1]
    if redis.call('EXISTS', r) == 1 then redis.call('HSET', r, 'told', ARGV[2]) end
    return 0
    """
)


async def mark_told(r: aioredis.Redis, room_id: str, now: int) -> None:
    """Both sides were sent session:finalized at `now` (only sockets bound later get a replay)."""
    await _TOLD(r, [], [room_id, now])


async def get_room(r: aioredis.Redis, room_id: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in (await r.hgetall(f"room:{room_id}")).items()}


async def transcript(r: aioredis.Redis, room_id: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in await r.lrange(f"room:{room_id}:chat", 0, -1)]


async def user_room(r: aioredis.Redis, uid: str) -> str | None:
    room = await r.get(f"u:{uid}:room")
    return str(room) if room else None
