"""Handshake and auth (§3.1), scoped presence (E13), /room/queue filters (D16), /stats/live, bans
and invalidated sessions cutting live sockets (D11, D12, D30), abuse limits."""

import asyncio

import pytest
import socketio

from server.accounts import access
from server.calls import cooldowns
from server.deps import DEPS
from tests.helpers import auth
from tests.rt import Peer, in_call, make_user


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(timer_poll_seconds=0.05, invite_ttl_ms=20_000, socket_events_per_second=20,
                               socket_event_burst=40)


async def test_handshake_token_gives_auth_success_with_user_and_clock(client, db, sockets):
    a = await make_user(client, db)
    p = await sockets(a)
    ok = p.all("auth:success")[0]
    assert ok["userId"] == a["userId"] and isinstance(ok["serverNow"], int)
    await p.emit("auth", {"sessionToken": a["sessionToken"]})  # the client re-sends it on every connect
    assert (await p.wait("auth:success"))["userId"] == a["userId"]


async def test_auth_event_without_handshake_token(client, db, sockets):
    a = await make_user(client, db)
    p = await sockets(None)
    await p.emit("auth", {"sessionToken": "nope"})
    await p.wait("auth:failed")
    await p.emit("auth", {"sessionToken": 42})
    await p.wait("auth:failed")
    await p.emit("queue:join")
    assert (await p.wait("call:error"))["code"] == "NOT_AUTHENTICATED"
    await p.emit("auth", {"sessionToken": a["sessionToken"]})
    assert (await p.wait("auth:success"))["userId"] == a["userId"]


async def test_banned_user_is_refused_at_the_handshake(client, db):
    a = await make_user(client, db)
    await db.execute("UPDATE users SET ban_status = 'temporary' WHERE id = $1", a["userId"])
    p = Peer(str(client.make_url("/")), a["sessionToken"])
    with pytest.raises(socketio.exceptions.ConnectionError):
        await p.connect()
    assert p.all("connect_error") == [{"message": "Account suspended"}]


async def test_banned_user_mid_session_is_cut(client, db, sockets):
    a = await make_user(client, db, "A")
    b = await make_user(client, db, "B")
    pa, pb = await sockets(a), await sockets(b)
    start = await in_call(pa, pb)
    await db.execute("UPDATE users SET ban_status = 'temporary' WHERE id = $1", b["userId"])
    await access.changed(client.app[DEPS], b["userId"], "ban")  # the contract: after the commit
    await pb.emit("queue:join")  # the socket's cached rights were dropped: the ban is noticed (D11)
    assert (await pb.wait("auth:banned"))["banned"] is True
    fin = await pa.wait("session:finalized")
    assert fin["reason"] == "banned"
    assert await pb.disconnected()
    assert await client.app[DEPS].redis.hget(f"room:{start['roomId']}", "state") == "final"


async def test_new_login_invalidates_the_other_sessions_sockets(client, db, sockets):
    a = await make_user(client, db)
    resp = await client.post("/auth/link", json={"sessionToken": a["sessionToken"], "email": "ada@example.com",
                                                 "password": "correct horse"})
    assert resp.status == 200
    p = await sockets(a)
    resp = await client.post("/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
    body = await resp.json()
    assert body["sessionInvalidated"] is True
    inv = await p.wait("session:invalidated")
    assert inv["reason"] == "new_login" and inv["message"]
    assert await p.disconnected()
    fresh = await sockets({"sessionToken": body["sessionToken"], "userId": a["userId"]})
    assert fresh.sio.connected


async def test_logout_disconnects_that_sessions_sockets(client, db, sockets):
    a = await make_user(client, db)
    p = await sockets(a)
    resp = await client.post("/auth/logout", headers=auth(a["sessionToken"]))
    assert resp.status == 200
    assert await p.disconnected()


async def test_presence_goes_only_to_the_queue_room(client, db, sockets):
    a = await make_user(client, db, "A")
    b = await make_user(client, db, "B")
    c = await make_user(client, db, "C")
    pa, pb = await sockets(a), await sockets(b)
    await pa.emit("queue:join")
    await pa.wait("queue:update", where=lambda d: d["userId"] == a["userId"])
    pc = await sockets(c)
    await pa.wait("presence:update", where=lambda d: d == {"userId": c["userId"], "online": True, "available": False})
    await pc.emit("queue:join")
    assert await pa.wait("queue:update", where=lambda d: d["userId"] == c["userId"]) == \
        {"userId": c["userId"], "available": True}
    await pc.close()
    await pa.wait("presence:update", where=lambda d: d == {"userId": c["userId"], "online": False, "available": False})
    await asyncio.sleep(0.2)
    assert pb.all("presence:update") == [] and pb.all("queue:update") == []  # E13: b never joined the queue


async def test_online_is_per_socket(client, db, sockets):
    a = await make_user(client, db)
    p1 = await sockets(a)
    p2 = await sockets(a)
    live = await (await client.get("/stats/live")).json()
    assert live["onlineUsers"] == 1 and isinstance(live["timestamp"], int)
    await p1.close()
    await asyncio.sleep(0.1)
    assert (await (await client.get("/stats/live")).json())["onlineUsers"] == 1
    await p2.close()
    await asyncio.sleep(0.1)
    assert (await (await client.get("/stats/live")).json())["onlineUsers"] == 0


async def test_queue_lists_only_callable_users(client, db, sockets):
    me = await make_user(client, db, "Me")
    ok = await make_user(client, db, "Ok")
    unpaid = await make_user(client, db, "Unpaid", paid=False)
    nomedia = await make_user(client, db, "NoMedia", media=False)
    banned = await make_user(client, db, "Banned")
    reported_by_me = await make_user(client, db, "IReported")
    reported_me = await make_user(client, db, "ReportedMe")
    cooled = await make_user(client, db, "Cooled")
    for u in (ok, unpaid, nomedia, banned, reported_by_me, reported_me, cooled):
        p = await sockets(u)
        await p.emit("queue:join")
    await asyncio.sleep(0.3)
    deps = client.app[DEPS]
    await db.execute("UPDATE users SET ban_status = 'permanent' WHERE id = $1", banned["userId"])
    await access.changed(deps, banned["userId"], "ban")  # what moderation calls after its commit
    await db.execute("INSERT INTO reports (reporter_id, reported_id) VALUES ($1, $2), ($3, $1)",
                     me["userId"], reported_by_me["userId"], reported_me["userId"])
    await cooldowns.persist(deps, me["userId"], cooled["userId"], 3_600_000, "rescind")
    resp = await client.get("/room/queue", headers=auth(me["sessionToken"]))
    assert resp.status == 200
    body = await resp.json()
    names = sorted(u["name"] for u in body["users"])
    assert names == ["Cooled", "Ok"]
    assert body["totalAvailable"] == 3  # counted before the "reported by me" filter
    by_name = {u["name"]: u for u in body["users"]}
    assert by_name["Ok"]["hasCooldown"] is False and by_name["Ok"]["cooldownExpiry"] is None
    assert by_name["Cooled"]["hasCooldown"] is True and by_name["Cooled"]["cooldownExpiry"] > 0
    assert set(by_name["Ok"]) == {"userId", "name", "gender", "selfieUrl", "videoUrl", "hasCooldown",
                                  "cooldownExpiry", "wasIntroducedToMe", "introducedBy"}


async def test_queue_requires_access(client, db):
    unpaid = await make_user(client, db, paid=False)
    resp = await client.get("/room/queue", headers=auth(unpaid["sessionToken"]))
    assert resp.status == 402
    body = await resp.json()
    assert body["error"] == "Payment required" and body["requiresPayment"] is True
    assert (await client.get("/room/queue")).status == 401


async def test_free_mode_lets_unpaid_users_in(client, db, base_settings, aiohttp_client):
    from server.app import create_app

    free = await aiohttp_client(create_app(base_settings.with_(require_payment=False)))
    unpaid = await make_user(free, db, paid=False)
    assert (await free.get("/room/queue", headers=auth(unpaid["sessionToken"]))).status == 200
    me = await (await free.get("/user/me", headers=auth(unpaid["sessionToken"]))).json()
    # README "REQUIRE_PAYMENT=false (decision)": reported as provisional access, the truth kept apart.
    assert me["hasAccess"] is True and me["paidStatus"] == "qr_grace_period"
    assert me["accountPaidStatus"] == "unpaid" and me["paywall"] is False


async def test_malformed_events_change_nothing(client, db, sockets):
    a = await make_user(client, db, "A")
    b = await make_user(client, db, "B")
    pa, pb = await sockets(a), await sockets(b)
    bad = [
        ("call:invite", None), ("call:invite", "x"), ("call:invite", {"toUserId": 5}),
        ("call:invite", {"toUserId": "x" * 100}), ("call:accept", {"inviteId": ["a"]}),
        ("room:join", {}), ("rtc:offer", {"roomId": "r", "offer": {"type": "answer", "sdp": "x"}}),
        ("rtc:ice", {"roomId": "r", "candidate": {"candidate": "x" * 5000}}),
        ("room:chat", {"roomId": "r", "text": 7}), ("room:giveSocial", {"roomId": "r", "socials": []}),
        ("call:end", [1, 2]), ("call:decline", {"inviteId": "i", "reason": "because"}),
    ]
    for event, payload in bad:
        await pa.emit(event, payload)
        err = await pa.wait("call:error")
        assert err["code"] in {"INVALID_PAYLOAD", "NOT_PARTICIPANT"}, (event, err)
    await pa.emit("room:chat", {"roomId": "r", "text": "x", "pad": "y" * 70_000})
    assert (await pa.wait("call:error"))["code"] == "PAYLOAD_TOO_LARGE"
    r = client.app[DEPS].redis
    assert await r.keys("inv:*") == [] and await r.keys("room:*") == []
    assert (await client.get("/health")).status == 200
    start = await in_call(pa, pb)  # the node and these users still work
    assert start["roomId"]


async def test_event_flood_is_rate_limited_per_socket(client, db, sockets):
    a = await make_user(client, db, "A")
    b = await make_user(client, db, "B")
    pa, pb = await sockets(a), await sockets(b)
    for _ in range(200):
        await pa.emit("presence:join")
    err = await pa.wait("call:error", where=lambda e: e["code"] == "RATE_LIMITED")
    assert "slow down" in err["message"]
    await pb.emit("queue:join")  # another user's socket is unaffected
    await pb.wait("queue:update")
    assert all(e["code"] != "RATE_LIMITED" for e in pb.all("call:error"))


async def test_invites_per_minute_are_limited(client, db, sockets):
    a = await make_user(client, db, "A")
    pa = await sockets(a)
    target = await make_user(client, db, "Gone")
    for _ in range(21):
        await pa.emit("call:invite", {"toUserId": target["userId"], "requestedSeconds": 300})
    err = await pa.wait("call:error", where=lambda e: e["code"] == "RATE_LIMITED")
    assert err["retryAfter"] > 0


async def test_second_tab_of_callee_sees_the_pending_invite(client, db, sockets):
    a = await make_user(client, db, "A")
    b = await make_user(client, db, "B")
    pa, pb = await sockets(a), await sockets(b)
    await pb.emit("queue:join")
    await pb.wait("queue:update")
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 300})
    first = await pb.wait("call:notify")
    tab2 = await sockets(b)
    again = await tab2.wait("call:notify")  # E3(d)
    assert again["inviteId"] == first["inviteId"] and 5000 < again["ttlMs"] <= 20_000


async def test_history_requires_auth_and_lists_newest_first(client, db):
    a = await make_user(client, db, "A")
    b = await make_user(client, db, "B")
    assert (await client.get("/room/history")).status == 401
    assert await (await client.get("/room/history", headers=auth(a["sessionToken"]))).json() == {"history": []}
    for minutes_ago, partner_name in ((30, "older"), (5, "newer")):
        await db.execute(
            """INSERT INTO call_history (session_id, user_id, room_id, partner_id, partner_name, started_at,
                   ended_at, duration_seconds, agreed_seconds, end_reason, messages)
               VALUES (gen_random_uuid(), $1, gen_random_uuid(), $2, $3, now() - make_interval(mins => $4),
                       now() - make_interval(mins => $4) + interval '40 seconds', 40, 60, 'ended', '[]')""",
            a["userId"], b["userId"], partner_name, minutes_ago)
    hist = (await (await client.get("/room/history", headers=auth(a["sessionToken"]))).json())["history"]
    assert [h["partnerName"] for h in hist] == ["newer", "older"]
    assert hist[0]["partnerId"] == b["userId"] and hist[0]["duration"] == 40 and hist[0]["messages"] == []
    assert hist[0]["startedAt"] > hist[1]["startedAt"]


async def test_handshake_from_a_foreign_origin_is_refused(client, db):
    a = await make_user(client, db)
    evil = Peer(str(client.make_url("/")), a["sessionToken"])
    with pytest.raises(socketio.exceptions.ConnectionError):
        await evil.connect(headers={"Origin": "https://evil.example"})
    ok = Peer(str(client.make_url("/")), a["sessionToken"])
    await ok.connect(headers={"Origin": "http://localhost:3000"})  # on the allow-list
    assert ok.sio.connected
    await ok.close()


async def test_presence_and_cooldowns_are_rebuilt_after_redis_loses_its_data(client, db, sockets):
    a = await make_user(client, db, "A")
    b = await make_user(client, db, "B")
    pa, pb = await sockets(a), await sockets(b)
    await pb.emit("queue:join")
    await pb.wait("queue:update")
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 300})
    await pb.emit("call:decline", {"inviteId": (await pb.wait("call:notify"))["inviteId"]})
    await pa.wait("call:declined")
    r = client.app[DEPS].redis
    await r.flushdb()  # Redis restarted empty
    for _ in range(60):
        if (await (await client.get("/stats/live")).json())["onlineUsers"] == 2:
            break
        await asyncio.sleep(0.05)
    assert (await (await client.get("/stats/live")).json())["onlineUsers"] == 2
    x, y = sorted([a["userId"], b["userId"]])
    assert await r.pttl(f"cd:{x}:{y}") > 23 * 3600 * 1000  # the decline's cooldown, from Postgres
    assert await r.sismember("available", b["userId"])  # back in the deck without re-joining
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 300})
    assert (await pa.wait("call:declined"))["reason"] == "cooldown"
