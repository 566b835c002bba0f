"""SIGKILL a node: its sockets vanish without any cleanup, its heartbeat stops, and the surviving node
reaps them (NODE_DEAD_AFTER_SECONDS). Calls resume on the survivor; timers keep firing there.
The killed node is restarted (same port) before the test returns."""

from __future__ import annotations

import time

from tests.multinode.conftest import GRACE_S, INVITE_GRACE_S, INVITE_TTL_S, eventually


async def _queue(p, uid):
    await p.emit("queue:join")
    await p.wait("queue:update", where=lambda d: d["userId"] == uid)


async def test_kill_callee_node_mid_call_then_resume_on_survivor(users, peers, n1, n2, db, rds):
    a = await users.make(n1, "Survivor")
    b = await users.make(n2, "Victim")
    pa = await peers(n1, a, "A")
    pb = await peers(n2, b, "B")
    await _queue(pb, b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 120})
    notify = await pb.wait("call:notify")
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 120})
    sa = await pa.wait("call:start")
    await pb.wait("call:start")
    room = sa["roomId"]
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    old_sid = next(iter(await rds.smembers(f"u:{b['userId']}:socks")))
    assert await rds.hget(f"sid:{old_sid}", "node")

    try:
        t0 = time.monotonic()
        n2.kill()
        # The survivor's node notices the dead node (stale heartbeat), reaps its sockets, starts the grace.
        # Generous bound: on a loaded machine the survivor's own beat can lag, and it reaps only after
        # a whole window of steady beats (registry.beat); the time it took is printed, not asserted.
        pd = await pa.wait("room:partner-disconnected", timeout=12)
        reaped_after = time.monotonic() - t0
        assert pd["userId"] == b["userId"]
        assert not await rds.sismember(f"u:{b['userId']}:socks", old_sid)
        assert await rds.exists(f"u:{b['userId']}:away")

        # The victim's client reconnects to the surviving node within the grace.
        pb2 = await peers(n1, b, "B2")
        resume = await pb2.wait("call:resume")
        assert resume["roomId"] == room and resume["isInitiator"] is False
        assert resume["peerUser"]["userId"] == a["userId"] and resume["endsAt"] == sa["endsAt"]
        assert await pa.wait("room:partner-reconnected") == {"userId": b["userId"]}
        assert time.monotonic() - t0 < GRACE_S + reaped_after

        await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "after-kill"}})
        assert (await pb2.wait("rtc:offer"))["offer"]["sdp"] == "after-kill"
        await pb2.emit("rtc:ice", {"roomId": room, "candidate": {"candidate": "candidate:2", "sdpMid": "0",
                                                                  "sdpMLineIndex": 0}})
        assert (await pa.wait("rtc:ice"))["from"] == b["userId"]
        await pb2.emit("room:chat", {"roomId": room, "text": "still here"})
        assert (await pa.wait("room:chat"))["text"] == "still here"

        # The grace expires without ending the call.
        await pa.quiet("peer:disconnected", GRACE_S + 0.5)
        assert not pa.all("session:finalized")
        assert await rds.get(f"u:{b['userId']}:room") == room
        assert await rds.hget(f"room:{room}", "state") == "active"
        await pb2.emit("call:end", {"roomId": room})
        assert (await pa.wait("session:finalized"))["sessionId"] == sa["sessionId"]
        await pb2.wait("session:finalized")
    finally:
        n2.start()
    print(f"dead node reaped and partner told after {reaped_after:.2f}s")


async def test_pending_invite_expires_after_caller_node_killed(users, peers, n1, n2, db, rds):
    a = await users.make(n2, "DoomedCaller")
    b = await users.make(n1, "Callee")
    pa = await peers(n2, a, "A")
    pb = await peers(n1, b, "B")
    await _queue(pb, b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 120})
    notify = await pb.wait("call:notify")
    t0 = time.monotonic()
    try:
        n2.kill()  # the node that created the invite and its timer
        rescinded = await pb.wait("call:rescinded", timeout=INVITE_TTL_S + INVITE_GRACE_S + 2)
        took = time.monotonic() - t0
        assert rescinded == {"inviteId": notify["inviteId"], "reason": "expired"}
        assert took <= INVITE_TTL_S + INVITE_GRACE_S + 2
        assert not await rds.exists(f"inv:{notify['inviteId']}")
        assert not await rds.exists(f"u:{a['userId']}:out") and not await rds.exists(f"u:{b['userId']}:in")

        async def cooldown():
            return await db.fetchrow("SELECT reason FROM cooldowns")
        row = await eventually(cooldown)
        assert row is not None and row["reason"] == "timeout"
        # Later, the caller's grace runs out on the survivor: it is offline, nothing else happens to b.
        await eventually(lambda: _offline(rds, a["userId"]), within=GRACE_S + 3)
        assert len(pb.all("call:rescinded")) == 1
    finally:
        n2.start()
    print(f"invite of a dead node's caller ended after {took:.2f}s (ttl {INVITE_TTL_S}s + grace {INVITE_GRACE_S}s)")


async def _offline(rds, uid: str) -> bool:
    return not await rds.sismember("online", uid) and not await rds.exists(f"u:{uid}:away")
