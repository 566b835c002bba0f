"""Presence in Redis, per socket (§3.5): a user is online while at least one authenticated socket
of theirs exists on any live node.

Keys: u:<uid>:socks (set of sids), sid:<sid> (hash uid/node/sess), node:<node>:sids,
sess:<sessionId>:sids, nodes (hash node -> last heartbeat ms), nodes:unbeaten (hash node -> ms of its
first socket registered while it was not in `nodes`: before its first heartbeat, or since Redis lost
its data; its next heartbeat removes it), online (set of uids), available (set of uids in the deck).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from server.redis import Script


def sockets_key(user_id: str) -> str:
    return f"u:{user_id}:socks"


_SOCKET_ADD = Script(
    """
    local uid, sid, node, sess = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
    local socks = 'u:' .. uid .. ':socks'
    -- A node not in the registry (no heartbeat yet, or Redis lost its data since its last one) that
    -- dies before it beats must still be reaped: note since when it holds sockets.
    if redis.call('HEXISTS', 'nodes', node) == 0 then redis.call('HSETNX', 'nodes:unbeaten', node, ARGV[5]) end
    local fresh = redis.call('SCARD', socks) == 0
    redis.call('SADD', socks, sid)
    redis.call('HSET', 'sid:' .. sid, 'uid', uid, 'node', node, 'sess', sess)
    redis.call('SADD', 'node:' .. node .. ':sids', sid)
    redis.call('SADD', 'sess:' .. sess .. ':sids', sid)
    redis.call('SADD', 'online', uid)
    local was_away = redis.call('DEL', 'u:' .. uid .. ':away')
    redis.call('ZREM', 'timers', 'grace:' .. uid)
    local room = redis.call('GET', 'u:' .. uid .. ':room') or ''
    local final = redis.call('GET', 'u:' .. uid .. ':final') or ''
    if final ~= '' then redis.call('DEL', 'u:' .. uid .. ':final') end
    local incoming = redis.call('GET', 'u:' .. uid .. ':in') or ''
    return {fresh and 1 or 0, was_away, room, final, incoming}
    """
)

# ARGV: sid, explicit ('1' = the client closed the socket itself), grace due (ms)
_SOCKET_REMOVE = Script(
    """
    local sid = ARGV[1]
    local uid = redis.call('HGET', 'sid:' .. sid, 'uid')
    if not uid then return {} end
    local info = redis.call('HMGET', 'sid:' .. sid, 'node', 'sess')
    redis.call('DEL', 'sid:' .. sid)
    redis.call('SREM', 'node:' .. info[1] .. ':sids', sid)
    redis.call('SREM', 'sess:' .. info[2] .. ':sids', sid)
    local socks = 'u:' .. uid .. ':socks'
    redis.call('SREM', socks, sid)
    if redis.call('SCARD', socks) > 0 then return {uid, 0, '', 0, 'none'} end
    redis.call('SREM', 'online', uid)
    local was_available = redis.call('SREM', 'available', uid)
    local room = redis.call('GET', 'u:' .. uid .. ':room') or ''
    local pending = redis.call('EXISTS', 'u:' .. uid .. ':out') + redis.call('EXISTS', 'u:' .. uid .. ':in')
    if room == '' and pending == 0 then return {uid, 1, room, was_available, 'none'} end
    if ARGV[2] == '1' then return {uid, 1, room, was_available, 'now'} end
    redis.call('SET', 'u:' .. uid .. ':away', '1')
    redis.call('ZADD', 'timers', ARGV[3], 'grace:' .. uid)
    return {uid, 1, room, was_available, 'grace'}
    """
)

# Only a user who is online, has access (checked by the caller) and is not in a call can be available.
# Joining and leaving the deck also open the user's announcement window (ARGV[2] ms; 0: none) in the
# same round trip: 1 = changed, announce now (the window opened); 2 = changed inside an open window
# (announce at its end); 0 = no change. Joining: -1 = offline, -2 = in a call.
_ANNOUNCE = """
    if tonumber(ARGV[2]) > 0 and not redis.call('SET', 'u:' .. ARGV[1] .. ':qb', '1', 'PX', ARGV[2], 'NX') then
      return 2
    end
    return 1
"""
_QUEUE_JOIN = Script(
    """
    local uid = ARGV[1]
    if redis.call('SCARD', 'u:' .. uid .. ':socks') == 0 then return -1 end
    if redis.call('EXISTS', 'u:' .. uid .. ':room') == 1 then return -2 end
    if redis.call('SADD', 'available', uid) == 0 then return 0 end
    """ + _ANNOUNCE
)
_QUEUE_LEAVE = Script(
    """
    if redis.call('SREM', 'available', ARGV[1]) == 0 then return 0 end
    """ + _ANNOUNCE
)
# The end of an announcement window: the next one opens (ARGV[2] ms); returns whether the user is
# available now (what the trailing announcement says).
_WINDOW_END = Script(
    """
    redis.call('SET', 'u:' .. ARGV[1] .. ':qb', '1', 'PX', ARGV[2])
    return redis.call('SISMEMBER', 'available', ARGV[1])
    """
)

# A node whose heartbeat is older than ARGV[1] is dead: claim its sids once (first sweeper wins).
_REAP_NODE = Script(
    """
    local node, stale_before = ARGV[1], tonumber(ARGV[2])
    local seen = tonumber(redis.call('HGET', 'nodes', node) or redis.call('HGET', 'nodes:unbeaten', node) or '0')
    if seen >= stale_before then return {} end
    redis.call('HDEL', 'nodes', node)
    redis.call('HDEL', 'nodes:unbeaten', node)
    local sids = redis.call('SMEMBERS', 'node:' .. node .. ':sids')
    redis.call('DEL', 'node:' .. node .. ':sids')
    return sids
    """
)


@dataclass(frozen=True)
class Arrival:
    first_socket: bool  # the user just came online
    was_away: bool  # a disconnect grace was running and is now cancelled
    room_id: str | None
    finalized: str | None  # "<sessionId>|<roomId>" of a call that ended while the user was away
    incoming_invite: str | None


@dataclass(frozen=True)
class Departure:
    user_id: str
    last_socket: bool
    room_id: str | None
    was_available: bool
    action: str  # none | now (explicit disconnect) | grace (timer scheduled)


async def add_socket(redis: aioredis.Redis, user_id: str, sid: str, node: str, session_id: str,
                     now_ms: int) -> Arrival:
    fresh, away, room, final, incoming = await _SOCKET_ADD(redis, [], [user_id, sid, node, session_id, now_ms])
    return Arrival(bool(fresh), bool(away), room or None, final or None, incoming or None)


async def remove_socket(redis: aioredis.Redis, sid: str, explicit: bool, grace_due_ms: int) -> Departure | None:
    res = await _SOCKET_REMOVE(redis, [], [sid, "1" if explicit else "0", grace_due_ms])
    if not res:
        return None
    uid, last, room, was_available, action = res
    return Departure(uid, bool(last), room or None, bool(was_available), action)


ANNOUNCE_NOW, ANNOUNCE_LATER = 1, 2


async def join_queue(redis: aioredis.Redis, user_id: str, window_ms: int = 0) -> int:
    """ANNOUNCE_NOW / ANNOUNCE_LATER = now available (see _ANNOUNCE), 0 = already was, -1 = offline,
    -2 = in a call."""
    return int(await _QUEUE_JOIN(redis, [], [user_id, window_ms]))


async def leave_queue(redis: aioredis.Redis, user_id: str, window_ms: int = 0) -> int:
    """ANNOUNCE_NOW / ANNOUNCE_LATER = no longer available (see _ANNOUNCE), 0 = was not."""
    return int(await _QUEUE_LEAVE(redis, [], [user_id, window_ms]))


async def window_left_ms(redis: aioredis.Redis, user_id: str) -> int:
    """How long the user's announcement window stays open (negative: none is)."""
    return int(await redis.pttl(f"u:{user_id}:qb"))


async def end_window(redis: aioredis.Redis, user_id: str, window_ms: int) -> bool:
    """Open the next announcement window; True if the user is available."""
    return bool(await _WINDOW_END(redis, [], [user_id, window_ms]))


async def is_online(redis: aioredis.Redis, user_id: str) -> bool:
    return bool(await redis.sismember("online", user_id))


async def is_available(redis: aioredis.Redis, user_id: str) -> bool:
    return bool(await redis.sismember("available", user_id))


async def available_users(redis: aioredis.Redis) -> set[str]:
    return {str(u) for u in await redis.smembers("available")}


async def online_count(redis: aioredis.Redis) -> int:
    return int(await redis.scard("online"))


async def user_sids(redis: aioredis.Redis, user_id: str) -> set[str]:
    return {str(s) for s in await redis.smembers(sockets_key(user_id))}


async def known_node(redis: aioredis.Redis, node: str) -> bool:
    """False on a node's first beat, or after Redis lost its data: its sockets must be re-registered."""
    return bool(await redis.hexists("nodes", node))


async def heartbeat(redis: aioredis.Redis, node: str, now_ms: int) -> None:
    async with redis.pipeline(transaction=True) as tx:
        tx.hset("nodes", node, now_ms)
        tx.hdel("nodes:unbeaten", node)
        await tx.execute()


async def session_sids(redis: aioredis.Redis, session_id: str) -> set[str]:
    """The sockets authenticated with one session, on any node."""
    return {str(s) for s in await redis.smembers(f"sess:{session_id}:sids")}


async def node_sids(redis: aioredis.Redis, node: str) -> set[str]:
    return {str(s) for s in await redis.smembers(f"node:{node}:sids")}


async def nodes_seen(redis: aioredis.Redis) -> dict[str, int]:
    """Every node's last heartbeat (ms); for a node holding sockets that has not beaten since it
    registered them (nodes:unbeaten), when it registered the first: it is reaped if it never beats."""
    async with redis.pipeline(transaction=True) as tx:
        tx.hgetall("nodes:unbeaten")
        tx.hgetall("nodes")
        unbeaten, beaten = await tx.execute()
    return {str(n): int(seen) for n, seen in (*unbeaten.items(), *beaten.items())}


async def reap_node(redis: aioredis.Redis, node: str, stale_before_ms: int) -> list[str]:
    return list(await _REAP_NODE(redis, [], [node, stale_before_ms]))
