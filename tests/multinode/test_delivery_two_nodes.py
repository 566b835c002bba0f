"""Local vs cross-node delivery (issue 10 §2) and cached rights dropped on every node (access.changed)."""

from __future__ import annotations

import json
import time

from server import fanout
from server.accounts import access
from server.deps import Deps
from tests.multinode.conftest import eventually


async def _until_sentinel(sub, kind: str = "sentinel") -> list[dict]:
    """Every message published on the Socket.IO channel before our sentinel control message."""
    seen = []
    deadline = time.monotonic() + 5
    while True:
        assert time.monotonic() < deadline, "the sentinel never arrived"
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=1)
        if msg is None:
            continue
        body = json.loads(msg["data"])
        if body.get("kind") == kind:
            return seen
        seen.append(body)


async def test_emits_to_a_local_socket_are_not_published(users, peers, n1, n2, rds, settings):
    a = await users.make(n1, "Local")
    pa = await peers(n1, a, "A")
    sub = rds.pubsub()
    await sub.subscribe(fanout.CHANNEL)
    try:
        await pa.emit("call:end", {"roomId": "no-such-room"})  # answered to this socket only
        assert (await pa.wait("call:error"))["code"] == "NOT_PARTICIPANT"
        await fanout.signal(Deps(settings, None, rds, None), "sentinel")  # type: ignore[arg-type]
        seen = await _until_sentinel(sub)
        sid = pa.sio.get_sid()
        assert [m for m in seen if m.get("room") == sid] == []
    finally:
        await sub.aclose()


async def test_cross_node_signalling_still_arrives_in_order(users, peers, n1, n2):
    a, b = await users.make(n1, "A"), await users.make(n2, "B")
    pa, pb = await peers(n1, a, "A"), await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 120})
    n = await pb.wait("call:notify")
    await pb.emit("call:accept", {"inviteId": n["inviteId"], "requestedSeconds": 120})
    room = (await pa.wait("call:start"))["roomId"]
    await pb.wait("call:start")
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    for k in range(30):
        await pa.emit("rtc:ice", {"roomId": room, "candidate": {"candidate": f"c{k}", "sdpMid": "0",
                                                                "sdpMLineIndex": 0}})
    await pb.wait("rtc:ice", where=lambda d: d["candidate"]["candidate"] == "c29")
    assert [d["candidate"]["candidate"] for d in pb.all("rtc:ice")] == [f"c{k}" for k in range(30)]


async def test_access_change_from_another_process_reaches_every_node(users, peers, n1, n2, db, rds, settings):
    """A payment committed elsewhere (a webhook on any node, a CLI) drops the cached rights of the
    user's sockets on both nodes."""
    u = await users.make(n1, "Payer", paid=False)
    p1, p2 = await peers(n1, u, "on-n1"), await peers(n2, u, "on-n2")
    for p in (p1, p2):
        await p.emit("queue:join")
        assert (await p.wait("call:error"))["code"] == "PAYMENT_REQUIRED"
    await db.execute("UPDATE users SET paid_status = 'paid' WHERE id = $1", u["userId"])
    await access.changed(Deps(settings, None, rds, None), u["userId"], "payment")  # type: ignore[arg-type]

    async def joined(p) -> bool:
        # The signal reaches a node through Redis and the event through the socket, in no set order:
        # ask until the node has heard. Each round ends with a sentinel it answers after queue:join.
        mark = p.mark()
        await p.emit("queue:join")
        await p.emit("call:end", {"roomId": "sentinel"})
        await p.wait("call:error", where=lambda d: d["code"] == "NOT_PARTICIPANT", since=mark)
        codes = [d["code"] for e, d in p.events[mark:] if e == "call:error"]
        assert codes in (["NOT_PARTICIPANT"], ["PAYMENT_REQUIRED", "NOT_PARTICIPANT"]), codes
        return codes == ["NOT_PARTICIPANT"]

    for p in (p1, p2):  # the rights would otherwise stay cached until the 30 s recheck
        assert await eventually(lambda p=p: joined(p), within=5), f"{p.name} still refused after the payment"
    assert await rds.sismember("available", u["userId"])
