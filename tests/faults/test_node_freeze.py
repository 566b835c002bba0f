"""A node frozen (SIGSTOP) past the dead-node window but within the disconnect grace, then resumed
(SIGCONT): the partner on the other node heard room:partner-disconnected, and must now hear
room:partner-reconnected; the call goes on (issue 11 §6)."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.multinode.conftest import GRACE_S


async def test_partner_reconnected_after_a_freeze(users, peers, n1, n2, rds):
    a, b = await users.make(n1, "A"), await users.make(n2, "B")
    pa, pb = await peers(n1, a, "A"), await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 120})
    await pb.emit("call:accept", {"inviteId": (await pb.wait("call:notify"))["inviteId"], "requestedSeconds": 120})
    room = (await pa.wait("call:start"))["roomId"]
    await pb.wait("call:start")
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")

    assert n2.proc is not None
    n2.proc.send_signal(signal.SIGSTOP)
    try:
        gone = await pa.wait("room:partner-disconnected", timeout=8)  # n1 reaped the frozen node (1.5 s + load)
        assert gone["userId"] == b["userId"]
    finally:
        n2.proc.send_signal(signal.SIGCONT)
    t0 = time.monotonic()
    back = await pa.wait("room:partner-reconnected", timeout=GRACE_S)
    assert back == {"userId": b["userId"]}
    print(f"partner-reconnected {time.monotonic() - t0:.2f} s after SIGCONT")
    await asyncio.sleep(GRACE_S)  # past the grace that was running: the call must still be alive
    assert await rds.hget(f"room:{room}", "state") == "active"
    assert pa.all("session:finalized") == [] and pa.all("peer:disconnected") == []
    await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "v=0 after the freeze"}})
    assert (await pb.wait("rtc:offer", timeout=5))["offer"]["sdp"] == "v=0 after the freeze"
