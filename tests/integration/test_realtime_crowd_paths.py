"""The paths issue 10 added for crowds: rights cached per socket (and dropped by access.changed),
the per-node deck snapshot and its freshness bound, queue:snapshot, and local delivery on one node."""

import asyncio
import json
import time

import pytest
from test_media_samples import JPEG_HEAD, WEBM_HEAD, form, sample

from server import fanout
from server.accounts import access
from server.deps import DEPS
from tests.helpers import auth
from tests.rt import Peer, in_call, make_user

MAX_AGE_S = 0.5


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(timer_poll_seconds=0.05, node_heartbeat_seconds=0.05, node_dead_after_seconds=0.3,
                               deck_max_age_seconds=MAX_AGE_S)


async def _deck(client, user) -> dict:
    resp = await client.get("/room/queue", headers=auth(user["sessionToken"]))
    assert resp.status == 200
    return await resp.json()


async def test_payment_reaches_a_connected_sockets_cached_rights(client, db, sockets):
    u = await make_user(client, db, "Late", paid=False)
    p = await sockets(u)
    await p.emit("queue:join")
    assert (await p.wait("call:error"))["code"] == "PAYMENT_REQUIRED"
    await db.execute("UPDATE users SET paid_status = 'paid' WHERE id = $1", u["userId"])
    await access.changed(client.app[DEPS], u["userId"], "payment")
    await p.emit("queue:join")
    assert await p.wait("queue:update", where=lambda d: d["userId"] == u["userId"] and d["available"])


async def test_lost_access_is_noticed_on_the_next_queue_join(client, db, sockets):
    u = await make_user(client, db, "Refunded")
    p = await sockets(u)
    await p.emit("queue:join")
    await p.wait("queue:update", where=lambda d: d["userId"] == u["userId"])
    await db.execute("UPDATE users SET paid_status = 'unpaid' WHERE id = $1", u["userId"])
    await access.changed(client.app[DEPS], u["userId"], "refund")
    await p.emit("queue:leave")
    await p.emit("queue:join")
    assert (await p.wait("call:error"))["code"] == "PAYMENT_REQUIRED"
    assert not await client.app[DEPS].redis.sismember("available", u["userId"])


async def test_logout_takes_the_socket_and_its_rights_away(client, db, sockets):
    u = await make_user(client, db, "Leaving")
    p = await sockets(u)
    resp = await client.post("/auth/logout", headers=auth(u["sessionToken"]))
    assert resp.status == 200
    assert await p.disconnected(within=3)
    again = Peer(str(client.make_url("/")), None, u["userId"])
    await again.connect()
    await again.emit("auth", {"sessionToken": u["sessionToken"]})
    await again.wait("auth:failed")
    await again.emit("queue:join")  # no rights without a session
    assert (await again.wait("call:error"))["code"] == "NOT_AUTHENTICATED"
    await again.close()


async def test_queue_join_makes_the_user_callable_at_once(client, db, sockets):
    """Lost invites (issue 10 §1): an invite sent right after the callee's queue:join finds it available."""
    a, b = await make_user(client, db, "A"), await make_user(client, db, "B")
    pa, pb = await sockets(a), await sockets(b)
    for _ in range(3):
        await pb.emit("queue:join")
        # no wait: the invite races the queue:join's processing
        await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
        n = await pb.wait("call:notify")
        await pa.emit("call:rescind", {"toUserId": b["userId"]})
        await pb.wait("call:rescinded", where=lambda d, n=n: d["inviteId"] == n["inviteId"])
        await client.app[DEPS].redis.delete(*[k async for k in client.app[DEPS].redis.scan_iter("cd:*")])
    assert pa.all("call:declined") == []


async def test_deck_shows_a_change_once_its_broadcast_arrived(client, db, sockets):
    me, other = await make_user(client, db, "Me"), await make_user(client, db, "Other")
    pm, po = await sockets(me), await sockets(other)
    await pm.emit("queue:join")
    await pm.wait("queue:update", where=lambda d: d["userId"] == me["userId"])
    assert (await _deck(client, me))["users"] == []  # a snapshot is now cached
    await po.emit("queue:join")
    await pm.wait("queue:update", where=lambda d: d["userId"] == other["userId"] and d["available"])
    assert [x["userId"] for x in (await _deck(client, me))["users"]] == [other["userId"]]
    await po.emit("queue:leave")
    await pm.wait("queue:update", where=lambda d: d["userId"] == other["userId"] and not d["available"])
    assert (await _deck(client, me))["users"] == []


async def test_deck_change_without_a_broadcast_shows_within_the_max_age(client, db, sockets):
    me, other = await make_user(client, db, "Me"), await make_user(client, db, "Quiet")
    pm, po = await sockets(me), await sockets(other)
    await po.emit("queue:join")
    await po.wait("queue:update", where=lambda d: d["userId"] == other["userId"])
    assert [x["userId"] for x in (await _deck(client, me))["users"]] == [other["userId"]]
    await client.app[DEPS].redis.srem("available", other["userId"])  # e.g. a node's Lua script, no broadcast
    t0 = time.monotonic()
    while (await _deck(client, me))["users"]:
        assert time.monotonic() - t0 < MAX_AGE_S + 1.5, "stale deck beyond its freshness bound"
        await asyncio.sleep(0.05)
    assert pm.all("call:error") == []


async def test_a_profile_finished_in_the_queue_is_listed_at_once(client, db, sockets, s3):
    """A guest joins the queue before her selfie and intro exist (the stub does: sign-up, lobby, then
    the camera). Her card, cached without media by a deck read, must not keep her unlisted once she
    uploads them: the lobby is told to refetch, and the refetch lists her."""
    me, late = await make_user(client, db, "Me"), await make_user(client, db, "Late", media=False)
    pm, pl = await sockets(me), await sockets(late)
    await pm.emit("queue:join")
    await pm.wait("queue:update", where=lambda d: d["userId"] == me["userId"])
    await pl.emit("queue:join")
    await pm.wait("queue:update", where=lambda d: d["userId"] == late["userId"] and d["available"])
    assert (await _deck(client, me))["users"] == []  # her card, without media, is now cached
    token = late["sessionToken"]
    for kind, data, name, mime in (("selfie", sample(JPEG_HEAD, 2000), "s.jpg", "image/jpeg"),
                                   ("video", sample(WEBM_HEAD, 2000), "i.webm", "video/webm")):
        resp = await client.post(f"/media/{kind}", data=form(kind, data, name, mime), headers=auth(token))
        assert resp.status == 200, await resp.text()
    await pm.wait("queue:update", where=lambda d: d["userId"] == late["userId"] and d["available"])
    assert [x["userId"] for x in (await _deck(client, me))["users"]] == [late["userId"]]


async def test_queue_snapshot_goes_to_clients_that_ask(client, db, sockets):
    listed, me = await make_user(client, db, "Listed"), await make_user(client, db, "New")
    pl = await sockets(listed)
    await pl.emit("queue:join")
    await pl.wait("queue:update", where=lambda d: d["userId"] == listed["userId"])
    new = await sockets(me, capabilities=["queue-snapshot"])
    old = await sockets(await make_user(client, db, "Old"))
    await new.emit("queue:join")
    snap = await new.wait("queue:snapshot")
    assert [u["userId"] for u in snap["users"]] == [listed["userId"]] and snap["totalAvailable"] == 1
    assert snap["users"][0]["hasCooldown"] is False and snap["users"][0]["name"] == "Listed"
    await old.emit("queue:join")
    await old.wait("queue:update", where=lambda d: d["userId"] == old.user_id)
    await new.wait("queue:update", where=lambda d: d["userId"] == old.user_id)  # sentinel for the old client
    assert old.all("queue:snapshot") == []


async def test_a_lone_node_publishes_nothing(db, settings, aiohttp_client):
    """With no other node alive, a whole call is delivered without one Redis PUBLISH. (Its own Redis
    database: other nodes of the test session heartbeat in database 0. Pub/sub spans databases, so
    only messages about this test's users count.)"""
    from server.app import create_app

    lone = settings.with_(redis_url=settings.redis_url.rsplit("/", 1)[0] + "/1")
    client = await aiohttp_client(create_app(lone))
    deps = client.app[DEPS]
    await deps.redis.flushdb()
    sub = deps.redis.pubsub()
    await sub.subscribe(fanout.CHANNEL)
    made: list[Peer] = []
    try:
        await asyncio.sleep(settings.node_dead_after_seconds + 4 * settings.node_heartbeat_seconds)
        a, b = await make_user(client, db, "A"), await make_user(client, db, "B")
        pa, pb = [await Peer(str(client.make_url("/")), u["sessionToken"], u["userId"]).connect() for u in (a, b)]
        made += [pa, pb]
        start = await in_call(pa, pb)
        await pa.emit("room:join", {"roomId": start["roomId"]})
        await pb.emit("room:join", {"roomId": start["roomId"]})
        await pa.wait("room:joined")
        await pb.wait("room:joined")
        await pa.emit("rtc:offer", {"roomId": start["roomId"], "offer": {"type": "offer", "sdp": "v=0"}})
        await pb.wait("rtc:offer")
        await pa.emit("call:end", {"roomId": start["roomId"]})
        await pa.wait("session:finalized")
        await pb.wait("session:finalized")
        await fanout.signal(deps, "sentinel")  # the one message expected on the channel
        seen = []
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "the sentinel never arrived"
            msg = await sub.get_message(ignore_subscribe_messages=True, timeout=1)
            if msg is None:  # a subscribe confirmation, or nothing yet
                continue
            body = json.loads(msg["data"])
            if body.get("kind") == "sentinel":
                break
            if a["userId"] in msg["data"] or b["userId"] in msg["data"]:
                seen.append(body)
        assert seen == []
    finally:
        for p in made:
            await p.close()
        await sub.aclose()


async def test_a_burst_beyond_the_redis_pool_waits_instead_of_failing(db, settings, aiohttp_client):
    """Issue 10 §2: more concurrent events than pooled Redis connections (2 here) all succeed."""
    from server.app import create_app

    client = await aiohttp_client(create_app(settings.with_(redis_pool_max=2)))
    users = [await make_user(client, db, f"U{i}") for i in range(12)]
    peers = [await Peer(str(client.make_url("/")), u["sessionToken"], u["userId"]).connect() for u in users]
    try:
        await asyncio.gather(*(p.emit("queue:join") for p in peers))
        for p in peers:
            await p.wait("queue:update", where=lambda d, p=p: d["userId"] == p.user_id)
            assert p.all("call:error") == []
        assert await client.app[DEPS].redis.scard("available") == len(users)
    finally:
        for p in peers:
            await p.close()
