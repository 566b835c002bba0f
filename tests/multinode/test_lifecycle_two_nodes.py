"""The call lifecycle (PROTOCOL.md §4) with the caller on node 1 and the callee on node 2, two
separate server processes sharing Postgres and Redis."""

from __future__ import annotations

import asyncio
import time

from tests.multinode.conftest import (
    GRACE_S,
    INVITE_GRACE_S,
    INVITE_TTL_S,
    eventually,
    get_json,
)
from tests.rt import Peer

START_KEYS = {"roomId", "agreedSeconds", "isInitiator", "peerUser", "sessionId", "endsAt", "serverNow"}
PEER_KEYS = {"userId", "name", "gender", "selfieUrl"}
NOTIFY_KEYS = {"inviteId", "fromUser", "requestedSeconds", "ttlMs", "expiresAt"}
FROM_USER_KEYS = {"userId", "name", "gender", "selfieUrl", "videoUrl"}


async def _pair(users, peers, n1, n2, caller_name="Caller", callee_name="Callee"):
    a = await users.make(n1, caller_name)
    b = await users.make(n2, callee_name, gender="male")
    pa = await peers(n1, a, "A")
    pb = await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])  # b is in the queue room
    await pa.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == a["userId"])  # a's update crosses nodes
    return a, b, pa, pb


async def _invite(pa: Peer, pb: Peer, seconds: int = 120) -> dict:
    await pa.emit("call:invite", {"toUserId": pb.user_id, "requestedSeconds": seconds})
    return await pb.wait("call:notify")


async def _call(pa: Peer, pb: Peer, seconds: int = 120) -> tuple[dict, dict]:
    notify = await _invite(pa, pb, seconds)
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": seconds})
    return await pa.wait("call:start"), await pb.wait("call:start")


async def test_happy_path_across_nodes(users, peers, n1, n2, db, rds, http):
    a, b, pa, pb = await _pair(users, peers, n1, n2)

    t0 = time.time()
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 100})
    notify = await pb.wait("call:notify")
    assert set(notify) == NOTIFY_KEYS
    assert set(notify["fromUser"]) == FROM_USER_KEYS
    assert notify["fromUser"]["userId"] == a["userId"] and notify["fromUser"]["name"] == "Caller"
    assert notify["requestedSeconds"] == 100 and notify["ttlMs"] == int(INVITE_TTL_S * 1000)
    sent = await pa.wait("call:invite-sent")
    assert sent == {"inviteId": notify["inviteId"], "toUserId": b["userId"], "expiresAt": notify["expiresAt"]}

    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 141})
    sa = await pa.wait("call:start")
    sb = await pb.wait("call:start")
    for s in (sa, sb):
        assert set(s) == START_KEYS, s
        assert set(s["peerUser"]) == PEER_KEYS
        assert s["agreedSeconds"] == 120  # floor((100 + 141) / 2)
        assert s["serverNow"] - 2000 <= t0 * 1000 + 5000 and abs(s["serverNow"] - time.time() * 1000) < 3000
        assert s["endsAt"] > s["serverNow"] + 120_000  # E1: deadline = start + agreed + setup allowance
    assert sa["roomId"] == sb["roomId"] and sa["sessionId"] == sb["sessionId"]
    assert sa["isInitiator"] is True and sb["isInitiator"] is False
    assert sa["peerUser"]["userId"] == b["userId"] and sa["peerUser"]["name"] == "Callee"
    assert sb["peerUser"]["userId"] == a["userId"] and sb["peerUser"]["name"] == "Caller"
    assert sa["peerUser"]["gender"] == "male" and sb["peerUser"]["gender"] == "female"
    room = sa["roomId"]
    assert await rds.get(f"u:{a['userId']}:room") == room == await rds.get(f"u:{b['userId']}:room")
    assert not await rds.exists(f"inv:{notify['inviteId']}")

    # E4: the offer is sent before the callee joins; it is delivered on join, in order with ICE.
    await pa.emit("room:join", {"roomId": room})
    joined = await pa.wait("room:joined")
    assert joined == {"roomId": room, "peerPresent": False}
    deadline_evt = await pa.wait("call:deadline")
    assert deadline_evt["roomId"] == room and deadline_evt["endsAt"] == sa["endsAt"]
    offer = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
    cand = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host", "sdpMid": "0",
            "sdpMLineIndex": 0, "usernameFragment": "abcd"}
    await pa.emit("rtc:offer", {"roomId": room, "offer": offer})
    await pa.emit("rtc:ice", {"roomId": room, "candidate": cand})
    await pb.quiet("rtc:offer", 0.3)  # not in the room yet: nothing delivered, nothing lost
    assert await rds.exists(f"room:{room}:sdp:{b['userId']}:offer")
    await pb.emit("room:join", {"roomId": room})
    assert await pb.wait("rtc:offer") == {"offer": offer, "from": a["userId"]}
    assert await pb.wait("rtc:ice") == {"candidate": cand, "from": a["userId"]}
    assert (await pb.wait("room:joined"))["peerPresent"] is True
    names = [e for e, _ in pb.events]
    assert names.index("rtc:offer") < names.index("rtc:ice") < names.index("room:joined")

    # Live relay both ways now that both joined.
    answer = {"type": "answer", "sdp": "v=0\r\nanswer\r\n"}
    await pb.emit("rtc:answer", {"roomId": room, "answer": answer})
    assert await pa.wait("rtc:answer") == {"answer": answer, "from": b["userId"]}
    await pb.emit("rtc:ice", {"roomId": room, "candidate": {**cand, "sdpMid": "1"}})
    assert (await pa.wait("rtc:ice"))["candidate"]["sdpMid"] == "1"
    assert not pa.all("rtc:offer") and not pb.all("rtc:answer")  # never echoed to the sender

    # Chat echoes to both; socials drop invalid keys and values.
    await pb.emit("room:chat", {"roomId": room, "text": "  <i>hello</i> from node 2 "})
    for p in (pa, pb):
        m = await p.wait("room:chat")
        assert set(m) == {"from", "text", "timestamp", "type", "messageId"}
        assert m["from"] == b["userId"] and m["text"] == "hello from node 2" and m["type"] == "message"
    await pa.emit("room:giveSocial", {"roomId": room, "socials": {
        "instagram": "ada.l", "tiktok": "bad handle!", "myspace": "x", "discord": "ada_99"}})
    for p in (pa, pb):
        s = await p.wait("room:socialShared")
        assert s["from"] == a["userId"] and s["type"] == "social"
        assert s["socials"] == {"instagram": "ada.l", "discord": "ada_99"}

    # /room/history is empty until the end; the call lasts >= 5 s for a history row.
    await asyncio.sleep(max(0.0, 5.2 - (time.time() - t0)))
    await pa.emit("call:end", {"roomId": room})
    fa = await pa.wait("session:finalized")
    fb = await pb.wait("session:finalized")
    assert fa == fb == {"sessionId": sa["sessionId"], "reason": "ended"}
    await pb.emit("call:end", {"roomId": room})  # the usual second call:end: already told, no replay (§3.3)
    for p in (pa, pb):  # sentinel: answered after anything the second call:end caused
        await p.emit("call:end", {"roomId": "sentinel"})
        await p.wait("call:error", where=lambda d: d["code"] == "NOT_PARTICIPANT")
        assert len(p.all("session:finalized")) == 1

    rows = await db.fetch("SELECT user_id::text, partner_id::text, partner_name, duration_seconds, messages "
                          "FROM call_history ORDER BY partner_name")
    assert len(rows) == 2
    assert {(r["user_id"], r["partner_id"]) for r in rows} == {(a["userId"], b["userId"]),
                                                                (b["userId"], a["userId"])}
    assert all(r["duration_seconds"] >= 5 for r in rows)
    assert await rds.get(f"u:{a['userId']}:room") is None and await rds.get(f"u:{b['userId']}:room") is None
    for node, who in ((n1, a), (n2, b)):
        status, hist = await get_json(http, f"{node.url}/room/history", who["sessionToken"])
        assert status == 200 and len(hist["history"]) == 1
        assert hist["history"][0]["sessionId"] == sa["sessionId"]
        texts = [m.get("text") for m in hist["history"][0]["messages"]]
        assert "hello from node 2" in texts
    # 24 h cooldown after a call, durable in Postgres.
    cd = await db.fetchrow("SELECT reason, expires_at - now() AS left FROM cooldowns")
    assert cd["reason"] == "call" and cd["left"].total_seconds() > 23 * 3600


async def test_decline_sets_24h_cooldown_then_reinvite_is_cooldown(users, peers, n1, n2, db, rds):
    a, b, pa, pb = await _pair(users, peers, n1, n2)
    notify = await _invite(pa, pb)
    # With a 2 s test TTL every decline falls in the last-2-s "auto-decline = timeout" window (E2), so the
    # caller first keeps waiting: the window grows by 20 s and the callee's decline is a real one.
    await pa.emit("call:extend-wait", {"toUserId": b["userId"]})
    ext = await pb.wait("call:wait-extended")
    assert ext["extraSeconds"] == 20 and ext["inviteId"] == notify["inviteId"]
    assert ext["expiresAt"] == notify["expiresAt"] + 20_000
    await pb.emit("call:decline", {"inviteId": notify["inviteId"]})
    d = await pa.wait("call:declined")
    assert d == {"inviteId": notify["inviteId"], "toUserId": b["userId"], "reason": "user_declined"}
    row = await _wait_row(db, "SELECT user_a::text, user_b::text, reason, expires_at - now() AS left FROM cooldowns")
    assert {row["user_a"], row["user_b"]} == {a["userId"], b["userId"]}
    assert row["reason"] == "declined" and 23.9 * 3600 < row["left"].total_seconds() <= 24 * 3600
    assert not await rds.exists(f"inv:{notify['inviteId']}")
    await pb.quiet("call:rescinded", 0.2)

    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 120})
    d2 = await pa.wait("call:declined")
    assert d2["reason"] == "cooldown" and d2["toUserId"] == b["userId"] and d2["inviteId"] != notify["inviteId"]
    await pb.quiet("call:notify", 0.3)
    assert len(pb.all("call:notify")) == 1


async def test_rescind_across_nodes(users, peers, n1, n2, db, rds):
    a, b, pa, pb = await _pair(users, peers, n1, n2)
    notify = await _invite(pa, pb)
    await pa.emit("call:rescind", {"toUserId": b["userId"]})
    r = await pb.wait("call:rescinded")
    assert r == {"inviteId": notify["inviteId"]}
    row = await _wait_row(db, "SELECT reason, expires_at - now() AS left FROM cooldowns")
    assert row["reason"] == "rescinded" and 3500 < row["left"].total_seconds() <= 3600
    assert not await rds.keys("inv:*") and not await rds.exists(f"u:{a['userId']}:out")
    # Accepting the rescinded invite fails cleanly.
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 120})
    err = await pb.wait("call:error")
    assert err["code"] == "INVITE_NOT_FOUND"
    assert (await pb.wait("error"))["message"] == "Invite not found or expired"
    await pa.quiet("call:start", 0.2)


async def test_invite_expires_across_nodes(users, peers, n1, n2, db, rds):
    _a, b, pa, pb = await _pair(users, peers, n1, n2)
    t0 = time.monotonic()
    notify = await _invite(pa, pb)
    d = await pa.wait("call:declined", timeout=INVITE_TTL_S + INVITE_GRACE_S + 2)
    r = await pb.wait("call:rescinded", timeout=2)
    took = time.monotonic() - t0
    assert d == {"inviteId": notify["inviteId"], "toUserId": b["userId"], "reason": "timeout"}
    assert r == {"inviteId": notify["inviteId"], "reason": "expired"}
    assert INVITE_TTL_S + INVITE_GRACE_S - 0.2 <= took <= INVITE_TTL_S + INVITE_GRACE_S + 1.0, took
    row = await _wait_row(db, "SELECT reason, expires_at - now() AS left FROM cooldowns")
    assert row["reason"] == "timeout" and 3500 < row["left"].total_seconds() <= 3600  # 1 h, not 24 h
    assert not await rds.keys("inv:*")
    assert not [m for m in await rds.zrange("timers", 0, -1) if m.startswith("invite:")]


async def test_disconnect_grace_resume_on_other_node(users, peers, n1, n2, rds):
    a, b, pa, pb = await _pair(users, peers, n1, n2)
    sa, _sb = await _call(pa, pb)
    room = sa["roomId"]
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")

    await pb.drop()  # the callee (node 2) loses its network
    pd = await pa.wait("room:partner-disconnected", timeout=3)
    assert pd == {"userId": b["userId"], "gracePeriodSeconds": GRACE_S}
    assert await rds.exists(f"u:{b['userId']}:away")

    # The callee's client reconnects, this time through node 1 (the caller's node).
    pb2 = await peers(n1, b, "B2")
    resume = await pb2.wait("call:resume")
    assert set(resume) == {"roomId", "peerUser", "isInitiator", "agreedSeconds", "endsAt", "serverNow"}
    assert resume["roomId"] == room and resume["isInitiator"] is False
    assert resume["peerUser"]["userId"] == a["userId"] and resume["agreedSeconds"] == sa["agreedSeconds"]
    assert resume["endsAt"] == sa["endsAt"]
    assert await pa.wait("room:partner-reconnected") == {"userId": b["userId"]}
    assert not await rds.exists(f"u:{b['userId']}:away")

    # Signalling flows both ways with the new socket, without a new room:join (the old room page).
    await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "restart"}})
    assert (await pb2.wait("rtc:offer"))["offer"]["sdp"] == "restart"
    await pb2.emit("rtc:answer", {"roomId": room, "answer": {"type": "answer", "sdp": "ok"}})
    assert (await pa.wait("rtc:answer"))["answer"]["sdp"] == "ok"
    await pb2.emit("room:chat", {"roomId": room, "text": "back"})
    assert (await pa.wait("room:chat"))["text"] == "back"
    assert (await pb2.wait("room:chat"))["text"] == "back"

    # The grace timer was cancelled: nothing ends the call after the grace period.
    await asyncio.sleep(GRACE_S + 0.5)
    assert not pa.all("peer:disconnected") and not pa.all("session:finalized")
    assert await rds.get(f"u:{b['userId']}:room") == room
    await pa.emit("call:end", {"roomId": room})
    await pb2.wait("session:finalized")


async def test_disconnect_grace_expires_finalises_for_survivor(users, peers, n1, n2, db, rds):
    a, b, pa, pb = await _pair(users, peers, n1, n2)
    sa, _ = await _call(pa, pb)
    room = sa["roomId"]
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    t0 = time.monotonic()
    await pa.drop()  # this time the caller (node 1) vanishes for good
    await pb.wait("room:partner-disconnected", timeout=3)
    gone = await pb.wait("peer:disconnected", timeout=GRACE_S + 3)
    took = time.monotonic() - t0
    assert gone == {"userId": a["userId"]}
    assert GRACE_S - 0.3 <= took <= GRACE_S + 1.5, took
    fin = await pb.wait("session:finalized")
    assert fin == {"sessionId": sa["sessionId"], "reason": "disconnect"}
    names = [e for e, _ in pb.events]
    assert names.index("peer:disconnected") < names.index("session:finalized")
    # The survivor's own call:end (the old client sends it on peer:disconnected): it was told already.
    await pb.emit("call:end", {"roomId": room})
    await pb.emit("call:end", {"roomId": "sentinel"})
    await pb.wait("call:error", where=lambda d: d["code"] == "NOT_PARTICIPANT")
    assert len(pb.all("session:finalized")) == 1
    assert await rds.get(f"u:{b['userId']}:room") is None
    assert await rds.hget(f"room:{room}", "state") == "final"
    # The caller comes back within the replay window (E3 c): told the session was finalised.
    pa2 = await peers(n2, a, "A2")
    assert (await pa2.wait("session:finalized"))["sessionId"] == sa["sessionId"]
    await pa2.quiet("call:resume", 0.2)


async def test_stats_live_counts_on_both_nodes(users, peers, n1, n2, http):
    a = await users.make(n1, "One")
    b = await users.make(n2, "Two")
    c = await users.make(n2, "Three")

    async def counts() -> tuple[int, int]:
        out = []
        for node in (n1, n2):
            status, body = await get_json(http, f"{node.url}/stats/live")
            assert status == 200 and set(body) == {"onlineUsers", "timestamp"}
            out.append(body["onlineUsers"])
        return out[0], out[1]

    assert await counts() == (0, 0)
    pa = await peers(n1, a)
    pb = await peers(n2, b)
    pb_again = await peers(n1, b)  # a second tab of the same user, on the other node
    _unauth = await peers(n2, None)  # unauthenticated sockets are not users
    assert await counts() == (2, 2)
    pc = await peers(n2, c)
    assert await counts() == (3, 3)
    await pb.close()  # one of b's two sockets: b stays online
    await asyncio.sleep(0.2)
    assert await counts() == (3, 3)
    await pb_again.close()  # b's last socket, explicit disconnect, no call: offline at once
    await pc.close()
    await _until(lambda: counts(), (1, 1))
    await pa.close()
    await _until(lambda: counts(), (0, 0))


async def test_session_invalidated_reaches_other_node(users, peers, n1, n2, http):
    u = await users.make(n1, "Linked")
    async with http.post(f"{n1.url}/auth/link", json={"sessionToken": u["sessionToken"],
                                                      "email": "linked@example.com",
                                                      "password": "correct horse"}) as resp:
        assert resp.status == 200, await resp.text()
    old = await peers(n2, u, "old")
    bystander = await peers(n2, await users.make(n2, "Other"), "other")
    t0 = time.monotonic()
    async with http.post(f"{n1.url}/auth/login", json={"email": "linked@example.com",
                                                       "password": "correct horse"}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["sessionInvalidated"] is True
    inv = await old.wait("session:invalidated", timeout=3)
    assert inv["reason"] == "new_login" and isinstance(inv["message"], str) and inv["message"]
    for _ in range(100):
        if not old.sio.connected:
            break
        await asyncio.sleep(0.05)
    took = time.monotonic() - t0
    assert not old.sio.connected, "the invalidated socket was not disconnected"
    assert 0.7 <= took <= 3.0, took
    assert bystander.sio.connected and not bystander.all("session:invalidated")
    # The old token no longer authenticates a socket; the new one does, on either node.
    stale = Peer(n1.url, u["sessionToken"], u["userId"])
    peers.made.append(stale)
    await stale.sio.connect(stale.url, auth={"token": u["sessionToken"]}, transports=["websocket"])
    await stale.emit("auth", {"sessionToken": u["sessionToken"]})
    await stale.wait("auth:failed")
    assert not stale.all("auth:success")
    fresh = await peers(n2, {"sessionToken": body["sessionToken"], "userId": body["userId"]}, "new")
    assert fresh.sio.connected


async def _until(fn, expected) -> None:
    async def probe():
        return await fn() == expected

    await eventually(probe)
    assert await fn() == expected


async def _wait_row(db, sql: str):
    async def probe():
        return await db.fetchrow(sql)

    row = await eventually(probe)
    assert row is not None, f"no row for {sql}"
    return row


async def test_explicit_leave_finalises_at_once_for_partner_on_other_node(users, peers, n1, n2, db):
    """F13: the room page unmounts (explicit disconnect): no grace, the survivor is told at once."""
    _a, b, pa, pb = await _pair(users, peers, n1, n2)
    sa, _ = await _call(pa, pb)
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": sa["roomId"]})
        await p.wait("room:joined")
    t0 = time.monotonic()
    await pb.leave()
    assert await pa.wait("peer:disconnected", timeout=2) == {"userId": b["userId"]}
    fin = await pa.wait("session:finalized", timeout=2)
    assert time.monotonic() - t0 < 1.5
    assert fin == {"sessionId": sa["sessionId"], "reason": "disconnect"}
    assert not pa.all("room:partner-disconnected")
    # Cut by a disconnect before it ran 5 s: no cooldown (§3.5; written before the survivor is told).
    assert await db.fetchval("SELECT count(*) FROM cooldowns") == 0


async def test_caller_lost_while_pending_rescinds_after_grace(users, peers, n1, n2, db, rds):
    """F5: the caller's network goes while the invite is pending (kept alive with extend-wait, so the
    expiry does not come first): after the grace the callee, on the other node, gets call:rescinded."""
    _a, b, pa, pb = await _pair(users, peers, n1, n2)
    notify = await _invite(pa, pb)
    await pa.emit("call:extend-wait", {"toUserId": b["userId"]})
    await pb.wait("call:wait-extended")
    t0 = time.monotonic()
    await pa.drop()
    await pb.quiet("call:rescinded", GRACE_S - 0.5)  # not before the grace ends
    r = await pb.wait("call:rescinded", timeout=2.5)
    assert r == {"inviteId": notify["inviteId"]}
    assert GRACE_S - 0.3 <= time.monotonic() - t0 <= GRACE_S + 2
    row = await _wait_row(db, "SELECT reason, expires_at - now() AS left FROM cooldowns")
    assert row["reason"] == "rescinded" and 3500 < row["left"].total_seconds() <= 3600
    assert not await rds.keys("inv:*")


async def test_callee_reconnecting_on_other_node_is_notified_again(users, peers, n1, n2):
    """E3(d): a callee whose socket drops while an invite with more than 5 s left is pending sees the
    invite again on its new socket (other node), with the remaining time."""
    a, b, pa, pb = await _pair(users, peers, n1, n2)
    notify = await _invite(pa, pb)
    await pa.emit("call:extend-wait", {"toUserId": b["userId"]})
    ext = await pb.wait("call:wait-extended")
    await pb.drop()
    pb2 = await peers(n1, b, "B2")
    again = await pb2.wait("call:notify")
    assert again["inviteId"] == notify["inviteId"] and again["expiresAt"] == ext["expiresAt"]
    assert 5000 < again["ttlMs"] <= notify["ttlMs"] + 20_000
    assert again["fromUser"]["userId"] == a["userId"] and set(again["fromUser"]) == FROM_USER_KEYS
    await pb2.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 120})
    assert (await pa.wait("call:start"))["peerUser"]["userId"] == b["userId"]
    assert (await pb2.wait("call:start"))["isInitiator"] is False
