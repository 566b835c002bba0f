"""The per-node session cache (issue 10 §5): an authenticated request reads Postgres once per
session per SESSION_CACHE_SECONDS, and a logout, a newer login, a ban, a deletion or an access
change is seen by the very next request. Two nodes: tests/multinode/test_session_cache_two_nodes.py."""

import pytest

from server.accounts import access
from server.deps import DEPS
from tests.helpers import auth
from tests.rt import make_user


def _cache(client):
    cache = client.app[DEPS].sessions
    assert cache is not None
    return cache


async def _me(client, token) -> int:
    return (await client.get("/user/me", headers=auth(token))).status


async def test_repeated_requests_read_the_session_once(client, db):
    u = await make_user(client, db, "Often")
    cache = _cache(client)
    misses, hits = cache.misses, cache.hits
    for _ in range(5):
        assert await _me(client, u["sessionToken"]) == 200
    assert (cache.misses - misses, cache.hits - hits) == (1, 4)


async def test_logout_is_refused_on_the_next_request(client, db):
    u = await make_user(client, db, "Out")
    assert await _me(client, u["sessionToken"]) == 200
    assert (await client.post("/auth/logout", headers=auth(u["sessionToken"]))).status == 200
    assert await _me(client, u["sessionToken"]) == 401


async def test_access_change_drops_the_users_cached_sessions(client, db):
    u = await make_user(client, db, "Refund")
    assert (await client.get("/room/queue", headers=auth(u["sessionToken"]))).status == 200
    await db.execute("UPDATE users SET paid_status = 'unpaid' WHERE id = $1", u["userId"])
    await access.changed(client.app[DEPS], u["userId"], "refunded")
    assert (await client.get("/room/queue", headers=auth(u["sessionToken"]))).status == 402


async def test_ban_is_refused_on_the_next_request(client, db):
    u = await make_user(client, db, "Banned")
    assert await _me(client, u["sessionToken"]) == 200
    await db.execute("UPDATE users SET ban_status = 'permanent' WHERE id = $1", u["userId"])
    await access.changed(client.app[DEPS], u["userId"], "ban")
    resp = await client.get("/user/me", headers=auth(u["sessionToken"]))
    assert resp.status == 403 and (await resp.json())["error"] == "Account suspended"


async def test_a_banned_session_is_served_where_bans_are_allowed(client, db):
    """Cached with its ban: /report/check-ban still answers the banned user; other routes refuse."""
    u = await make_user(client, db, "Appeal")
    await db.execute("UPDATE users SET ban_status = 'permanent' WHERE id = $1", u["userId"])
    for _ in range(2):
        resp = await client.get("/report/check-ban", headers=auth(u["sessionToken"]))
        assert resp.status == 200, await resp.text()
        assert await _me(client, u["sessionToken"]) == 403


async def test_cache_is_bounded(client, db):
    cache = _cache(client)
    cache.max_entries = 2
    users = [await make_user(client, db, f"B{i}") for i in range(4)]
    for u in users:
        assert await _me(client, u["sessionToken"]) == 200
    assert len(cache.entries) <= 2
    assert sum(len(v) for v in cache.by_user.values()) == len(cache.entries)
    assert await _me(client, users[0]["sessionToken"]) == 200  # evicted: read again


@pytest.fixture
def settings(base_settings, request):
    return base_settings.with_(session_cache_seconds=getattr(request, "param", 5.0))


@pytest.mark.parametrize("settings", [0.0], indirect=True)
async def test_cache_off_reads_every_time(client, db, settings):
    u = await make_user(client, db, "Uncached")
    assert client.app[DEPS].sessions is None
    assert await _me(client, u["sessionToken"]) == 200
