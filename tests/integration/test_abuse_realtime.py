"""Issue 12, realtime half: abuse through the Socket.IO edge (one node, real Postgres and Redis)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from server.deps import DEPS
from tests.rt import make_user


def spellings(user_id: str) -> list[str]:
    u = uuid.UUID(user_id)
    return [user_id.upper(), u.urn, u.hex, "{" + user_id + "}", "{" + u.hex.upper() + "}", f" {user_id} "]


@pytest.fixture
async def pair(client, db, sockets):
    a = await make_user(client, db, "Caller")
    b = await make_user(client, db, "Callee", gender="male")
    pa, pb = await sockets(a, "A"), await sockets(b, "B")
    for p in (pb, pa):
        await p.emit("queue:join")
        await pb.wait("queue:update", where=lambda d, p=p: d["userId"] == p.user_id)
    return pa, pb


async def test_self_invite_in_any_spelling_is_refused_and_makes_no_room(client, pair):
    """Item 4: one's own id in upper case, as a URN, without hyphens or in braces is oneself."""
    pa, pb = pair
    redis = client.app[DEPS].redis
    for spelling in spellings(pa.user_id):
        await pa.emit("call:invite", {"toUserId": spelling, "requestedSeconds": 300})
        declined = await pa.wait("call:declined")
        assert declined["reason"] == "invalid_target", spelling
    assert pa.all("call:notify") == [] and pa.all("call:invite-sent") == []
    assert await redis.keys("inv:*") == [] and await redis.keys("room:*") == []
    assert await redis.get(f"u:{pa.user_id}:out") is None and await redis.get(f"u:{pa.user_id}:in") is None
    # The partner's id in another spelling is the partner: one invite, canonical everywhere.
    await pa.emit("call:invite", {"toUserId": pb.user_id.upper().replace("-", ""), "requestedSeconds": 300})
    notify = await pb.wait("call:notify")
    sent = await pa.wait("call:invite-sent")
    assert sent["toUserId"] == pb.user_id and notify["fromUser"]["userId"] == pa.user_id
    # ... and rescinding it by another spelling finds it.
    await pa.emit("call:rescind", {"toUserId": uuid.UUID(pb.user_id).urn})
    rescinded = await pb.wait("call:rescinded")
    assert rescinded["inviteId"] == notify["inviteId"]


async def test_invite_script_refuses_caller_equal_to_callee(client, pair):
    """The Lua guard holds even if a caller of the script forgot to normalise."""
    from server.calls import state

    pa, _pb = pair
    redis = client.app[DEPS].redis
    status = await state.create_invite(redis, pa.user_id, pa.user_id, str(uuid.uuid4()), 300, 0, 1, 2, "")
    assert status == "invalid_target"
    assert await redis.keys("inv:*") == []


# ---- items 1 and 2: sockets per address, authentication deadline, no half-open sockets ----

def realtime(client):
    from server.realtime import REALTIME

    return client.app[REALTIME]


async def idle_socket(client, forwarded_for: str):
    """A socket that connects and never authenticates, from `forwarded_for` (one trusted hop)."""
    from tests.rt import Peer

    p = Peer(str(client.make_url("/")), None, name=forwarded_for)
    await p.connect(headers={"X-Forwarded-For": forwarded_for})
    return p


async def refused(client, forwarded_for: str, token: str | None = None) -> bool:
    import socketio

    from tests.rt import Peer

    p = Peer(str(client.make_url("/")), token)
    try:
        await p.connect(headers={"X-Forwarded-For": forwarded_for})
    except socketio.exceptions.ConnectionError:
        return True
    await p.close()
    return False


class TestAddressCap:
    @pytest.fixture
    def settings(self, base_settings):
        return base_settings.with_(trusted_proxy_hops=1, max_sockets_per_address=3, max_sockets=4,
                                   max_sockets_per_user=3, socket_auth_deadline_seconds=60)

    async def test_one_address_cannot_hold_the_node(self, client, db, sockets):
        held = [await idle_socket(client, "203.0.113.7") for _ in range(3)]
        try:
            assert await refused(client, "203.0.113.7")
            # IPv6 by /64: two addresses of one /64 are one client, the next /64 another.
            v6 = [await idle_socket(client, f"2001:db8:0:1::{i}") for i in (1, 2, 3)]
            held += v6
            assert await refused(client, "2001:db8:0:1:ffff::9")
            held.append(await idle_socket(client, "2001:db8:0:2::1"))
            # The node cap (4) counts authenticated sockets only: 7 idle sockets do not lock out a user.
            user = await make_user(client, db, "Legit")
            p = await sockets(user, "legit", headers={"X-Forwarded-For": "198.51.100.9"})
            assert p.sio.connected and p.all("auth:success")
            rt = realtime(client)
            assert rt.per_scope["203.0.113.7"] == 3 and rt.per_scope["2001:db8:0:1::/64"] == 3
            # A socket that leaves gives its place back.
            await held[0].close()
            for _ in range(100):
                if rt.per_scope.get("203.0.113.7") == 2:
                    break
                await asyncio.sleep(0.02)
            held.append(await idle_socket(client, "203.0.113.7"))
        finally:
            for p in held:
                await p.close()

    async def test_per_user_cap(self, client, db, sockets):
        from tests.rt import Peer

        user = await make_user(client, db, "Tabs")
        url = str(client.make_url("/"))
        tabs = []
        try:
            for i in range(3):
                tabs.append(await Peer(url, user["sessionToken"], user["userId"]).connect(
                    headers={"X-Forwarded-For": f"198.51.100.{i + 1}"}))
            extra = Peer(url, None, user["userId"])
            await extra.connect(headers={"X-Forwarded-For": "198.51.100.50"})
            await extra.emit("auth", {"sessionToken": user["sessionToken"]})
            failed = await extra.wait("auth:failed")
            assert "Too many connections" in failed["message"]
            assert await extra.disconnected(5)
            assert all(t.sio.connected for t in tabs)
        finally:
            for t in tabs:
                await t.close()


class TestAuthDeadline:
    @pytest.fixture
    def settings(self, base_settings):
        return base_settings.with_(socket_auth_deadline_seconds=0.5)

    async def test_idle_unauthenticated_sockets_are_cut(self, client, db, sockets):
        user = await make_user(client, db, "Late")
        idle = await idle_socket(client, "203.0.113.8")
        late = await idle_socket(client, "203.0.113.9")  # authenticates with the event, in time
        await late.emit("auth", {"sessionToken": user["sessionToken"]})
        await late.wait("auth:success")
        assert await idle.disconnected(10)
        rt = realtime(client)
        for _ in range(100):
            if list(rt.buckets) == [late.sio.get_sid()]:
                break
            await asyncio.sleep(0.02)
        assert list(rt.buckets) == [late.sio.get_sid()] and "203.0.113.8" not in rt.per_scope
        # The authenticated socket outlived the deadline and still works.
        await late.emit("queue:join")
        await late.wait("queue:update")
        assert late.sio.connected
        await late.close()


async def test_database_failure_during_connects_leaves_no_half_open_socket(client, db, sockets):
    """Item 2: with Postgres failing, connects are refused and nothing is kept; afterwards, connects work."""
    users = [await make_user(client, db, f"U{i}") for i in range(5)]
    rt = realtime(client)
    await db.execute("ALTER TABLE sessions RENAME TO sessions_away")
    try:
        results = await asyncio.gather(*(refused(client, "203.0.113.10", u["sessionToken"]) for u in users))
        assert results == [True] * 5
    finally:
        await db.execute("ALTER TABLE sessions_away RENAME TO sessions")
    assert rt.buckets == {} and rt.per_scope == {} and rt.deadlines == {} and rt.local == {}
    assert client.app[DEPS].sio.eio.sockets == {} or all(
        not s.connected for s in client.app[DEPS].sio.eio.sockets.values())
    p = await sockets(users[0], "after")
    assert p.all("auth:success") and list(rt.local) == [p.sio.get_sid()]


# ---- item 7: a socket does not outlive its session; item 3: `auth` is rate-limited, sessions cached ----

class TestSessionOnTheSocket:
    @pytest.fixture
    def settings(self, base_settings):
        return base_settings.with_(session_recheck_seconds=0, session_cache_seconds=0, socket_event_burst=3,
                                   socket_events_per_second=1)

    async def test_expired_session_refuses_the_next_event_and_cuts_the_socket(self, client, db, sockets):
        a = await make_user(client, db, "Expired")
        b = await make_user(client, db, "Other", gender="male")
        pa, pb = await sockets(a, "A"), await sockets(b, "B")
        await pb.emit("queue:join")
        await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
        await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1",
                         uuid.UUID(a["userId"]))
        await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 300})
        err = await pa.wait("call:error")
        assert err["code"] == "NOT_AUTHENTICATED"
        assert await pa.disconnected(5)
        assert pb.all("call:notify") == [] and await client.app[DEPS].redis.keys("inv:*") == []
        # The same token cannot open a socket again (HTTP already says 401).
        assert await refused_or_unauthenticated(client, a["sessionToken"])

    async def test_auth_events_spend_the_socket_bucket(self, client, db, sockets):
        """1,000 bogus `auth` events answered in 2.9 s before; now the bucket (burst 3) bounds them."""
        from tests.rt import Peer

        p = Peer(str(client.make_url("/")), None, name="flood")
        await p.connect()
        try:
            for _ in range(10):
                await p.emit("auth", {"sessionToken": "bogus"})
            limited = await p.wait("call:error", where=lambda d: d["code"] == "RATE_LIMITED")
            assert limited["code"] == "RATE_LIMITED"
            assert len(p.all("auth:failed")) <= 4  # the burst (3) plus at most one refill
        finally:
            await p.close()


async def refused_or_unauthenticated(client, token: str) -> bool:
    from tests.rt import Peer

    p = Peer(str(client.make_url("/")), None)
    await p.connect()
    try:
        await p.emit("auth", {"sessionToken": token})
        failed = await p.wait("auth:failed")
        return "session" in failed["message"].lower() or "expired" in failed["message"].lower()
    finally:
        await p.close()


async def test_a_valid_token_costs_one_session_query(client, db, sockets, monkeypatch):
    """Repeated `auth` events and reconnects with one token read the session once per cache period."""
    from server.accounts import store

    user = await make_user(client, db, "Cached")
    reads = []
    original = store.find_session

    async def counted(conn, token_hash):
        reads.append(token_hash)
        return await original(conn, token_hash)

    monkeypatch.setattr(store, "find_session", counted)
    p = await sockets(user, "cached")
    for _ in range(5):
        await p.emit("auth", {"sessionToken": user["sessionToken"]})
        await p.wait("auth:success")
    assert len(reads) == 1
    # A logout is forgotten at once: the next `auth` reads the session and is refused.
    r = await client.post("/auth/logout", headers={"Authorization": f"Bearer {user['sessionToken']}"})
    assert r.status in (200, 204)
    assert await refused_or_unauthenticated(client, user["sessionToken"])


# ---- item 5: presence spam ----

async def test_queue_toggling_is_debounced_per_user(client, db, sockets):
    import time

    from server.presence.events import PRESENCE_DEBOUNCE_MS

    watcher = await sockets(await make_user(client, db, "Watcher"), "W")
    toggler = await sockets(await make_user(client, db, "Toggler", gender="male"), "T")
    await watcher.emit("queue:join")
    await watcher.wait("queue:update", where=lambda d: d["userId"] == watcher.user_id)
    started = time.monotonic()
    for _ in range(20):
        await toggler.emit("queue:join")
        await toggler.emit("queue:leave")
    # Sentinel: the final state (not available) reaches the watcher.
    await watcher.wait("queue:update", timeout=10,
                       where=lambda d: d["userId"] == toggler.user_id and d["available"] is False)
    windows = (time.monotonic() - started) / (PRESENCE_DEBOUNCE_MS / 1000)
    updates = [d for d in watcher.all("queue:update") if d["userId"] == toggler.user_id]
    assert len(updates) <= 2 + int(windows) + 1, updates  # 40 before
    assert updates[-1]["available"] is False
    # The toggling socket itself got its echo for every join (clients wait for it).
    own = [d for d in toggler.all("queue:update") if d["userId"] == toggler.user_id and d["available"]]
    assert len(own) >= 20


async def test_presence_leave_is_announced_only_for_a_real_change(client, db, sockets):
    watcher = await sockets(await make_user(client, db, "Watcher"), "W")
    spammer = await sockets(await make_user(client, db, "Unpaid", paid=False), "S")
    await watcher.emit("queue:join")
    await watcher.wait("queue:update", where=lambda d: d["userId"] == watcher.user_id)
    for _ in range(30):
        await spammer.emit("presence:leave")
    # Sentinel: a later user's arrival in the deck reaches the watcher after every spammed event.
    late = await sockets(await make_user(client, db, "Late"), "L")
    await late.emit("queue:join")
    await watcher.wait("queue:update", where=lambda d: d["userId"] == late.user_id)
    assert [d for d in watcher.all("presence:update") if d["userId"] == spammer.user_id and not d["online"]] == []
    # A user who was in the deck and hides the tab is announced once.
    await late.emit("presence:leave")
    gone = await watcher.wait("presence:update", where=lambda d: d["userId"] == late.user_id and not d["online"])
    assert gone["available"] is False


class TestIdleSocketAtExpiry:
    @pytest.fixture
    def settings(self, base_settings):
        # No sliding refresh, so the session keeps the short expiry set below; reconcile often.
        return base_settings.with_(session_refresh_minutes=10**6, reconcile_seconds=0.2, session_cache_seconds=0)

    async def test_an_idle_socket_is_cut_when_its_session_expires(self, client, db, sockets):
        user = await make_user(client, db, "Idle")
        other = await sockets(await make_user(client, db, "Other"), "O")
        await db.execute("UPDATE sessions SET expires_at = now() + interval '1 second' WHERE user_id = $1",
                         uuid.UUID(user["userId"]))
        idle = await sockets(user, "idle")
        assert await idle.disconnected(10)
        assert idle.all("auth:failed")
        assert other.sio.connected  # a live session is untouched
