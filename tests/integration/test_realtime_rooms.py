"""Rooms on one node: membership (D1), buffered partner-addressed signalling (E4), chat and socials
(D22), server deadline (E1/E11), leaving (F13), blips and resume (F14/E3), double end (F16)."""

import asyncio
import json

import pytest

from server.deps import DEPS
from tests.rt import Peer, in_call, make_user


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(disconnect_grace_seconds=1.5, timer_poll_seconds=0.05)


@pytest.fixture
async def call(client, db, sockets):
    a = await make_user(client, db, "Caller")
    b = await make_user(client, db, "Callee", gender="male")
    pa, pb = await sockets(a, "A"), await sockets(b, "B")
    start = await in_call(pa, pb, seconds=120)
    return pa, pb, start["roomId"]


def redis(client):
    return client.app[DEPS].redis


async def age_room(client, room, seconds):
    """Pretend the call started `seconds` ago (history needs >= 5 s of call)."""
    started = int(await redis(client).hget(f"room:{room}", "started"))
    await redis(client).hset(f"room:{room}", "started", started - seconds * 1000)


OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0",
             "sdpMLineIndex": 0, "usernameFragment": "abcd"}


async def test_call_start_fields_and_availability(client, db, sockets, call):
    pa, pb, _room = call
    start_a = pa.all("call:start")[0]
    start_b = pb.all("call:start")[0]
    assert set(start_a) >= {"roomId", "agreedSeconds", "isInitiator", "peerUser", "endsAt", "serverNow"}
    assert start_a["peerUser"]["userId"] == pb.user_id and start_a["peerUser"]["name"] == "Callee"
    assert start_b["isInitiator"] is False and start_b["peerUser"]["userId"] == pa.user_id
    assert start_a["endsAt"] - start_a["serverNow"] > 120_000  # agreed + setup allowance (E1)
    third = await make_user(client, db, "Third")
    resp = await client.get("/room/queue", headers={"Authorization": f"Bearer {third['sessionToken']}"})
    assert (await resp.json())["users"] == []  # both busy: out of the deck


async def test_offer_and_candidates_are_buffered_until_the_partner_joins(call):
    pa, pb, room = call
    await pa.emit("room:join", {"roomId": room})
    joined = await pa.wait("room:joined")
    assert joined == {"roomId": room, "peerPresent": False}
    deadline = await pa.wait("call:deadline")
    assert deadline["roomId"] == room and deadline["endsAt"] > deadline["serverNow"]
    await pa.emit("rtc:offer", {"roomId": room, "offer": OFFER})
    for i in range(3):
        await pa.emit("rtc:ice", {"roomId": room, "candidate": {**CANDIDATE, "candidate": f"c{i}"}})
    await asyncio.sleep(0.2)
    assert pb.all("rtc:offer") == []  # not joined yet: held back (D27)
    await pb.emit("room:join", {"roomId": room})
    assert await pb.wait("rtc:offer") == {"offer": OFFER, "from": pa.user_id}
    got = [(await pb.wait("rtc:ice"))["candidate"]["candidate"] for _ in range(3)]
    assert got == ["c0", "c1", "c2"]
    offer_index = next(i for i, (e, _) in enumerate(pb.events) if e == "rtc:offer")
    first_ice = next(i for i, (e, _) in enumerate(pb.events) if e == "rtc:ice")
    assert offer_index < first_ice
    assert (await pb.wait("room:joined"))["peerPresent"] is True
    # Now live, and only to the partner: the sender never hears its own signalling.
    await pb.emit("rtc:answer", {"roomId": room, "answer": {"type": "answer", "sdp": "v=0 a"}})
    assert (await pa.wait("rtc:answer"))["from"] == pb.user_id
    await pb.emit("rtc:ice", {"roomId": room, "candidate": CANDIDATE})
    assert (await pa.wait("rtc:ice"))["candidate"] == CANDIDATE
    assert pb.all("rtc:answer") == [] and pa.all("rtc:offer") == []


async def test_strangers_cannot_join_signal_chat_or_end(client, db, sockets, call):
    pa, pb, room = call
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    mallory = await sockets(await make_user(client, db, "Mallory"))
    await mallory.emit("room:join", {"roomId": room})
    assert (await mallory.wait("call:error"))["code"] == "NOT_PARTICIPANT"
    await mallory.emit("rtc:offer", {"roomId": room, "offer": OFFER})
    await mallory.emit("rtc:ice", {"roomId": room, "candidate": CANDIDATE})
    await mallory.emit("room:chat", {"roomId": room, "text": "pwned"})
    await mallory.emit("room:giveSocial", {"roomId": room, "socials": {"instagram": "mal"}})
    await mallory.emit("call:end", {"roomId": room})
    await asyncio.sleep(0.3)
    for p in (pa, pb):
        assert p.all("rtc:offer") == [] and p.all("rtc:ice") == [] and p.all("room:chat") == []
        assert p.all("room:socialShared") == [] and p.all("session:finalized") == []
    assert len(mallory.all("call:error")) == 6
    assert await redis(client).hget(f"room:{room}", "state") == "active"
    await pa.emit("room:chat", {"roomId": room, "text": "still here"})
    assert (await pb.wait("room:chat"))["text"] == "still here"


async def test_chat_is_sanitised_and_echoed_to_both(call):
    pa, pb, room = call
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await pa.emit("room:chat", {"roomId": room, "text": "  <script>alert(1)</script>hello  "})
    msg = await pb.wait("room:chat")
    assert msg["text"] == "alert(1)hello" and msg["from"] == pa.user_id and msg["type"] == "message"
    assert await pa.wait("room:chat") == msg  # the sender renders its message from the echo
    await pa.emit("room:chat", {"roomId": room, "text": "x" * 600})
    assert len((await pb.wait("room:chat"))["text"]) == 500
    await pa.emit("room:chat", {"roomId": room, "text": "   <b></b>  "})  # empty after cleaning: dropped
    await pa.emit("room:chat", {"roomId": room, "text": "y" * 3000})  # over 2 KB: rejected
    assert (await pa.wait("call:error"))["code"] == "INVALID_PAYLOAD"
    await pb.quiet("room:chat", 0.3)


async def test_socials_are_validated(call):
    pa, pb, room = call
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await pa.emit("room:giveSocial", {"roomId": room, "socials": {
        "instagram": "ada.l", "tiktok": "<img src=x>", "myspace": "tom", "discord": "ada_99"}})
    shared = await pb.wait("room:socialShared")
    assert shared["socials"] == {"instagram": "ada.l", "discord": "ada_99"}
    assert shared["type"] == "social" and shared["from"] == pa.user_id
    await pa.wait("room:socialShared")
    await pa.emit("room:giveSocial", {"roomId": room, "socials": {"myspace": "tom"}})
    assert (await pa.wait("call:error"))["code"] == "INVALID_PAYLOAD"


async def test_end_finalises_once_with_history_for_both(client, db, call):
    pa, pb, room = call
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await pa.emit("room:chat", {"roomId": room, "text": "nice to meet you"})
    await pb.wait("room:chat")
    await age_room(client, room, 42)
    await asyncio.gather(pa.emit("call:end", {"roomId": room}), pb.emit("call:end", {"roomId": room}))
    fa = await pa.wait("session:finalized")
    fb = await pb.wait("session:finalized")
    assert fa["sessionId"] == fb["sessionId"] and fa["reason"] == "ended"
    await asyncio.sleep(0.3)
    rows = await db.fetch("SELECT * FROM call_history ORDER BY user_id")
    assert len(rows) == 2 and {str(r["user_id"]) for r in rows} == {pa.user_id, pb.user_id}
    assert {str(r["session_id"]) for r in rows} == {fa["sessionId"]}
    assert all(42 <= r["duration_seconds"] <= 44 and r["agreed_seconds"] == 120 for r in rows)
    assert json.loads(rows[0]["messages"])[0]["text"] == "nice to meet you"
    users = await db.fetch("SELECT timer_total_seconds, session_count, successful_sessions FROM users")
    assert all(u["session_count"] == 1 and u["successful_sessions"] == 1 for u in users)
    metrics = await pa.wait("metrics:update")
    assert metrics["sessionCount"] == 1 and metrics["timerTotalSeconds"] >= 42
    cd = await db.fetchval("SELECT expires_at - now() FROM cooldowns")
    assert 24 * 3600 - 60 < cd.total_seconds() <= 24 * 3600 + 1
    # A late call:end from a socket that was told: nothing more (§3.3). From a socket that came later
    # (a reloaded room page): a replay to that socket only (F13).
    await pa.emit("call:end", {"roomId": room})
    await pa.emit("call:end", {"roomId": "sentinel"})
    await pa.wait("call:error", where=lambda d: d["code"] == "NOT_PARTICIPANT")
    assert len(pa.all("session:finalized")) == 1
    reloaded = await Peer(str(client.make_url("/")), pa.token, pa.user_id).connect()
    try:
        await reloaded.emit("call:end", {"roomId": room})
        assert (await reloaded.wait("session:finalized"))["sessionId"] == fa["sessionId"]
        await reloaded.emit("call:end", {"roomId": "sentinel"})
        await reloaded.wait("call:error", where=lambda d: d["code"] == "NOT_PARTICIPANT")
        assert len(reloaded.all("session:finalized")) == 1
        assert len(pa.all("session:finalized")) == 1 and len(pb.all("session:finalized")) == 1
    finally:
        await reloaded.close()
    assert len(await db.fetch("SELECT 1 FROM call_history")) == 2
    resp = await client.get("/room/history", headers={"Authorization": f"Bearer {pa.token}"})
    hist = (await resp.json())["history"]
    assert len(hist) == 1 and hist[0]["partnerName"] == "Callee" and hist[0]["roomId"] == room
    assert hist[0]["messages"][0]["from"] == pa.user_id


async def test_short_calls_leave_no_history_but_a_cooldown(db, call):
    pa, pb, room = call
    await pa.emit("call:end", {"roomId": room})
    await pb.wait("session:finalized")
    await asyncio.sleep(0.2)
    assert await db.fetchval("SELECT count(*) FROM call_history") == 0
    assert await db.fetchval("SELECT count(*) FROM cooldowns") == 1


async def test_after_a_call_nobody_is_available_until_queue_join(client, db, sockets, call):
    pa, pb, room = call
    await pa.emit("call:end", {"roomId": room})
    await pb.wait("session:finalized")
    third = await make_user(client, db, "Third")
    headers = {"Authorization": f"Bearer {third['sessionToken']}"}
    assert (await (await client.get("/room/queue", headers=headers)).json())["users"] == []  # D14
    await pa.emit("queue:join")
    await asyncio.sleep(0.2)
    users = (await (await client.get("/room/queue", headers=headers)).json())["users"]
    assert [u["userId"] for u in users] == [pa.user_id]


async def test_explicit_leave_ends_the_call_for_the_survivor(db, call):
    pa, pb, room = call
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await pb.leave()  # the room page unmounts: explicit disconnect, no grace (F13)
    assert (await pa.wait("peer:disconnected", timeout=2))["userId"] == pb.user_id
    fin = await pa.wait("session:finalized", timeout=2)
    assert fin["reason"] == "disconnect"


async def test_a_call_cut_by_a_disconnect_within_5_s_leaves_no_cooldown(client, db, call):
    """§3.5: the 24 h cooldown only for a disconnect after the call ran 5 s (it is written before the
    survivor is told, so session:finalized is the sentinel)."""
    pa, pb, _room = call
    await pb.leave()
    assert (await pa.wait("session:finalized", timeout=2))["reason"] == "disconnect"
    assert await db.fetchval("SELECT count(*) FROM cooldowns") == 0
    x, y = sorted([pa.user_id, pb.user_id])
    assert not await redis(client).exists(f"cd:{x}:{y}")


async def test_blip_then_resume_on_reconnect(client, sockets, call):
    pa, pb, room = call
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await pb.drop()  # network loss: grace starts (F14)
    gone = await pa.wait("room:partner-disconnected", timeout=3)
    assert gone == {"userId": pb.user_id, "gracePeriodSeconds": 1.5}
    back = await sockets({"sessionToken": pb.token, "userId": pb.user_id}, "B2")
    resume = await back.wait("call:resume")
    assert resume["roomId"] == room and resume["isInitiator"] is False
    assert resume["peerUser"]["userId"] == pa.user_id and resume["agreedSeconds"] == 120
    assert (await pa.wait("room:partner-reconnected"))["userId"] == pb.user_id
    await pa.emit("rtc:offer", {"roomId": room, "offer": OFFER})  # signalling reaches the new socket
    assert (await back.wait("rtc:offer"))["from"] == pa.user_id
    await asyncio.sleep(2.0)  # well past the grace: the call must still be alive
    assert await redis(client).hget(f"room:{room}", "state") == "active"
    await pa.quiet("session:finalized", 0.1)


async def test_grace_expiry_finalises_and_tells_the_survivor(client, db, call):
    pa, pb, room = call
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await age_room(client, room, 10)
    await pb.drop()
    await pa.wait("room:partner-disconnected", timeout=3)
    assert (await pa.wait("peer:disconnected", timeout=4))["userId"] == pb.user_id
    assert (await pa.wait("session:finalized", timeout=2))["reason"] == "disconnect"
    rows = await db.fetch("SELECT messages FROM call_history")
    assert len(rows) == 2 and json.loads(rows[0]["messages"])[-1]["from"] == "system"
    assert await db.fetchval("SELECT count(*) FROM cooldowns") == 1  # it ran over 5 s: the 24 h cooldown


async def test_user_away_at_finalisation_hears_about_it_on_return(client, sockets, call):
    pa, pb, room = call
    await pb.drop()
    await asyncio.sleep(0.2)
    await pa.emit("call:end", {"roomId": room})
    fin = await pa.wait("session:finalized")
    back = await sockets({"sessionToken": pb.token, "userId": pb.user_id}, "B2")
    assert (await back.wait("session:finalized"))["sessionId"] == fin["sessionId"]  # E3(c)
    await back.quiet("call:resume", 0.2)


async def test_server_deadline_ends_a_silent_call(client, db, sockets):
    a = await make_user(client, db, "A")
    b = await make_user(client, db, "B")
    pa, pb = await sockets(a), await sockets(b)
    start = await in_call(pa, pb, seconds=60)
    key = f"room:{start['roomId']}"
    r = redis(client)
    # Bring the deadline to now through the timer the server armed (what E1 does at its time).
    await r.zadd("timers", {f"deadline:{start['roomId']}": 0})
    fa = await pa.wait("session:finalized", timeout=3)
    fb = await pb.wait("session:finalized", timeout=3)
    assert fa["reason"] == fb["reason"] == "deadline"
    assert await r.hget(key, "state") == "final"
    assert await r.zscore("timers", f"deadline:{start['roomId']}") is None


async def test_media_connected_reports_tighten_the_deadline(client, call):
    pa, pb, room = call
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    before = int(await redis(client).hget(f"room:{room}", "deadline"))
    await pa.emit("call:connected", {"roomId": room})
    await pb.emit("call:connected", {"roomId": room})
    tight = await pa.wait("call:deadline", where=lambda d: d["endsAt"] < before)
    assert tight["endsAt"] - tight["serverNow"] <= 120_000 + 5_000
    assert (await pb.wait("call:deadline", where=lambda d: d["endsAt"] < before))["endsAt"] == tight["endsAt"]
