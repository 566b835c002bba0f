"""Redis restarts without persistence in the middle of a call (issue 11 §1): the call is restored from
its durable record and ends properly (history, cooldown, session:finalized to both); users in the deck
are listed again without re-joining (§4)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.exceptions import RedisError

from tests.faults.conftest import both_beating, call_across, listeners_back, restart_redis_empty, stop_redis
from tests.multinode.conftest import eventually, get_json


async def test_redis_restart_mid_call_restores_the_call(stack, users, peers, n1, n2, db, rds, http):
    q = await users.make(n1, "Queued")
    pq = await peers(n2, q, "Q")
    await pq.emit("queue:join")
    await pq.wait("queue:update", where=lambda d: d["userId"] == q["userId"])
    a, _b, pa, pb, start = await call_across(users, peers, n1, n2, join=True)
    room = start["roomId"]
    assert await db.fetchval("SELECT count(*) FROM live_calls WHERE room_id = $1", room) == 1

    t0 = await restart_redis_empty(stack, rds)

    async def restored() -> bool:
        return await rds.hget(f"room:{room}", "state") == "active"
    assert await eventually(restored, within=10), "the call was not restored"
    recovered_s = time.monotonic() - t0

    async def listed() -> bool:
        return bool(await rds.sismember("available", q["userId"]))
    assert await eventually(listed, within=5), "the queued user vanished from the deck"
    status, deck = await get_json(http, f"{n1.url}/room/queue", a["sessionToken"])
    assert status == 200 and q["userId"] in [u["userId"] for u in deck["users"]]

    # Signalling goes on across the nodes (once both listeners have resubscribed), and the end is the usual one.
    assert await listeners_back(http, n1, n2), "a node's cross-node listener did not come back"
    await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "v=0 after redis"}})
    assert (await pb.wait("rtc:offer", timeout=5))["offer"]["sdp"] == "v=0 after redis"
    await asyncio.sleep(max(0.0, 5.3 - (time.time() * 1000 - start["serverNow"]) / 1000))
    await pa.emit("call:end", {"roomId": room})
    fa, fb = await pa.wait("session:finalized"), await pb.wait("session:finalized")
    assert fa["sessionId"] == fb["sessionId"] == start["sessionId"]
    assert await db.fetchval("SELECT count(*) FROM call_history WHERE session_id = $1", start["sessionId"]) == 2
    assert await db.fetchval("SELECT count(*) FROM cooldowns") == 1
    assert await db.fetchval("SELECT count(*) FROM live_calls") == 0
    print(f"call restored {recovered_s:.2f} s after the Redis restart")


async def test_while_redis_is_down_routes_answer_503_json(stack, n1, http, rds):
    try:
        await rds.shutdown(nosave=True)
    except Exception:
        pass
    try:
        for _ in range(100):
            if stack.pid("redis") is None:
                break
            await asyncio.sleep(0.05)
        async with http.post(f"{n1.url}/auth/guest", json={"name": "Ada", "gender": "female"}) as resp:
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["code"] == "unavailable" and resp.headers["Retry-After"] == "2"
    finally:
        stack.up()
        await rds.connection_pool.disconnect()

    async def signs_up() -> bool:  # back to normal once the node reconnects to the restarted Redis
        async with http.post(f"{n1.url}/auth/guest", json={"name": "Ada", "gender": "female"}) as resp:
            return resp.status == 200
    assert await eventually(signs_up, within=10, step=0.2)


async def test_redis_restart_with_persistence_mid_call_keeps_the_call(stack, users, peers, n1, n2, db, rds, http):
    """Redis saves, stops for longer than the dead-node window and comes back with its data: nobody
    is reaped, the call goes on without a partner-disconnected notice, and ends the usual way."""
    a, b, pa, pb, start = await call_across(users, peers, n1, n2, join=True)
    room = start["roomId"]
    dump = stack.root / "redis" / "dump.rdb"
    t0 = time.monotonic()
    try:
        await stop_redis(stack, rds, save=True)
        assert dump.exists()
        await asyncio.sleep(2.5)  # down for longer than the dead-node window (1.5 s): every beat is stale
    finally:
        stack.up()
        await rds.connection_pool.disconnect()
        # Redis listens before it has read its dump: removing the file earlier can make it start empty.
        async def loaded() -> bool:
            with contextlib.suppress(RedisError):
                return (await rds.info("persistence"))["loading"] == 0
            return False
        assert await eventually(loaded, within=10), "Redis did not finish loading its dump"
        dump.unlink(missing_ok=True)  # later restarts in this session start empty again
    assert await rds.hget(f"room:{room}", "state") == "active"  # the data came back

    # Both nodes beat again (the sentinel for "the heartbeat has seen the outage").
    await both_beating(rds, start["serverNow"] + 2500)
    recovered_s = time.monotonic() - t0

    assert await listeners_back(http, n1, n2), "a node's cross-node listener did not come back"
    for p in (pa, pb):  # signalling flows across the nodes
        other = pb if p is pa else pa
        await p.emit("rtc:ice", {"roomId": room, "candidate": {"candidate": f"candidate:{p.name}",
                                                               "sdpMid": "0", "sdpMLineIndex": 0}})
        assert (await other.wait("rtc:ice", timeout=5))["candidate"]["candidate"] == f"candidate:{p.name}"
    await asyncio.sleep(max(0.0, 5.3 - (time.time() * 1000 - start["serverNow"]) / 1000))
    await pb.emit("call:end", {"roomId": room})
    fa, fb = await pa.wait("session:finalized"), await pb.wait("session:finalized")
    assert fa["sessionId"] == fb["sessionId"] == start["sessionId"]
    await pa.wait("metrics:update")
    await pb.wait("metrics:update")  # the sentinel: everything of the call has arrived
    for p in (pa, pb):
        assert p.all("room:partner-disconnected") == [] and p.all("peer:disconnected") == [], p.events
        assert len(p.all("session:finalized")) == 1
    assert await db.fetchval("SELECT count(*) FROM call_history WHERE session_id = $1", start["sessionId"]) == 2
    assert await db.fetchval("SELECT count(*) FROM live_calls") == 0
    assert await rds.scard(f"u:{a['userId']}:socks") == 1 and await rds.scard(f"u:{b['userId']}:socks") == 1
    print(f"Redis back with its data; both nodes beating {recovered_s:.2f} s after the shutdown")
