"""Sliding session refresh (PROTOCOL.md §5 "add sliding refresh"; README "Account lifecycle"): a session
in use is extended to a full lifetime, written at most once per SESSION_REFRESH_MINUTES; an idle one
expires; login sessions end SESSION_MAX_DAYS after sign-in however active."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import auth, guest, permanent


@pytest.fixture
def settings(base_settings):
    """These tests move a session's expiry in the database, standing in for time passing: a node's HTTP
    session cache would keep the copy it read before (the cache: test_session_cache.py)."""
    return base_settings.with_(session_cache_seconds=0)


async def _expiry(db, user_id):
    return await db.fetchval("SELECT expires_at FROM sessions WHERE user_id = $1 AND revoked_at IS NULL",
                             uuid.UUID(user_id))


def _near(a: datetime, b: datetime, seconds: float = 120) -> bool:
    return abs((a - b).total_seconds()) < seconds


async def test_an_active_guest_session_slides_at_most_once_per_interval(client, db, settings):
    g = await guest(client)
    now = datetime.now(UTC)
    assert _near(await _expiry(db, g["userId"]), now + timedelta(days=settings.guest_session_days))
    # Last extended a day ago: the next request extends it to a full lifetime from now.
    await db.execute("UPDATE sessions SET expires_at = now() + interval '6 days' WHERE user_id = $1",
                     uuid.UUID(g["userId"]))
    resp = await client.get("/auth/session", headers=auth(g["sessionToken"]))
    body = await resp.json()
    assert resp.status == 200
    new = await _expiry(db, g["userId"])
    assert _near(new, now + timedelta(days=7)) and body["expiresAt"] == int(new.timestamp() * 1000)
    # Within the refresh interval nothing is written (a request costs no write).
    recent = new - timedelta(minutes=settings.session_refresh_minutes - 5)
    await db.execute("UPDATE sessions SET expires_at = $2 WHERE user_id = $1", uuid.UUID(g["userId"]), recent)
    assert (await client.get("/user/me", headers=auth(g["sessionToken"]))).status == 200
    assert await _expiry(db, g["userId"]) == recent


async def test_an_idle_session_expires(client, db):
    g = await guest(client)
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1",
                     uuid.UUID(g["userId"]))
    resp = await client.get("/user/me", headers=auth(g["sessionToken"]))
    assert resp.status == 401 and (await resp.json())["error"] == "Invalid or expired session"
    assert await _expiry(db, g["userId"]) < datetime.now(UTC)  # not revived


async def test_a_login_session_is_capped_at_the_maximum_age(client, db, settings):
    await permanent(client, "ada@example.com", password="correct horse")
    resp = await client.post("/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
    login = await resp.json()
    uid = uuid.UUID(login["userId"])
    created = datetime.now(UTC) - timedelta(days=settings.session_max_days) + timedelta(hours=5)
    await db.execute("UPDATE sessions SET created_at = $2, expires_at = now() + interval '1 hour' "
                     "WHERE user_id = $1 AND revoked_at IS NULL", uid, created)
    assert (await client.get("/user/me", headers=auth(login["sessionToken"]))).status == 200
    capped = await _expiry(db, login["userId"])
    assert _near(capped, created + timedelta(days=settings.session_max_days), 2)
    # Once past the cap the session ends, however active.
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1", uid)
    assert (await client.get("/user/me", headers=auth(login["sessionToken"]))).status == 401


async def test_socket_authentication_slides_the_session_too(client, db, sockets):
    g = await guest(client)
    await db.execute("UPDATE sessions SET expires_at = now() + interval '2 days' WHERE user_id = $1",
                     uuid.UUID(g["userId"]))
    await sockets(g, "ada")
    assert _near(await _expiry(db, g["userId"]), datetime.now(UTC) + timedelta(days=7))
