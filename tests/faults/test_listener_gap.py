"""A gap in cross-node delivery (issue 11 §7): a node's Redis listener is down while another node sends
its sockets call-critical events. When the listener is back, each of its sockets gets the current
state of its call once: call:resume for a call:start it missed, session:finalized for the end of
its call. The gap: SUBSCRIBE is refused (Redis ACL) and the subscribed connections are killed, so
the listeners retry while everything else works."""

from __future__ import annotations

import contextlib

from tests.multinode.conftest import eventually

CHANNEL_WAIT = 10  # the listener backoff is capped at 2 s


@contextlib.asynccontextmanager
async def _listeners_down(rds):
    await rds.execute_command("ACL", "SETUSER", "default", "-subscribe")
    try:
        await rds.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

        async def nobody_listening() -> bool:
            return (await rds.pubsub_numsub("napalm:sio"))[0][1] == 0
        assert await eventually(nobody_listening, within=5)
        yield
    finally:
        await rds.execute_command("ACL", "SETUSER", "default", "+subscribe")

    async def both_listening() -> bool:
        return (await rds.pubsub_numsub("napalm:sio"))[0][1] >= 2
    assert await eventually(both_listening, within=CHANNEL_WAIT), "the listeners did not come back"


async def test_call_state_is_replayed_once_after_a_listener_gap(users, peers, n1, n2, rds):
    a, b = await users.make(n1, "A"), await users.make(n2, "B")
    pa, pb = await peers(n1, a, "A"), await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 120})
    notify = await pb.wait("call:notify")

    # Gap 1: B accepts; A's call:start (published by n2) is lost for n1.
    async with _listeners_down(rds):
        await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 120})
        start = await pb.wait("call:start")
    resumed = await pa.wait("call:resume", timeout=10)
    assert pa.all("call:start") == []  # it really was lost
    assert resumed["roomId"] == start["roomId"] and resumed["peerUser"]["userId"] == b["userId"]
    assert resumed["isInitiator"] is True and resumed["endsAt"] == start["endsAt"]
    room = start["roomId"]
    for p in (pa, pb):  # the call works for A from there
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "v=0 after the gap"}})
    assert (await pb.wait("rtc:offer"))["offer"]["sdp"] == "v=0 after the gap"

    # Gap 2: B ends the call; A's session:finalized is lost for n1, then replayed.
    async with _listeners_down(rds):
        await pb.emit("call:end", {"roomId": room})
        fb = await pb.wait("session:finalized")
    fa = await pa.wait("session:finalized", timeout=10)
    assert fa["sessionId"] == fb["sessionId"] == start["sessionId"]

    # Sentinel: a cross-node broadcast after both gaps (n1 -> n2) has arrived.
    mark = pb.mark()
    await pa.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == a["userId"], since=mark)
    assert len(pa.all("call:resume")) == 1 and len(pa.all("session:finalized")) == 1
    assert pb.all("call:resume") == [] and len(pb.all("session:finalized")) == 1


async def test_a_decline_lost_in_a_listener_gap_is_replayed_once(users, peers, n1, n2, rds):
    a, b = await users.make(n1, "A"), await users.make(n2, "B")
    pa, pb = await peers(n1, a, "A"), await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 120})
    sent = await pa.wait("call:invite-sent")
    notify = await pb.wait("call:notify")

    async with _listeners_down(rds):  # B declines; A's call:declined (published by n2) is lost for n1
        await pb.emit("call:decline", {"inviteId": notify["inviteId"]})

        async def ended() -> bool:
            return not await rds.exists(f"inv:{notify['inviteId']}")
        assert await eventually(ended, within=5)
    declined = await pa.wait("call:declined", timeout=10)
    assert declined["inviteId"] == sent["inviteId"] and declined["toUserId"] == b["userId"]
    assert declined["reason"] in ("user_declined", "timeout")  # the test window (2 s) makes it a timeout (E2)

    mark = pb.mark()  # sentinel: a cross-node broadcast after the gap (n1 -> n2) has arrived
    await pa.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == a["userId"], since=mark)
    assert len(pa.all("call:declined")) == 1
