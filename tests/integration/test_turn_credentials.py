"""GET /turn/credentials: shape (PROTOCOL.md §2.8), coturn's HMAC scheme, expiry, per-user limit (§6 D24)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import asyncpg
import pytest
from structlog.testing import capture_logs

from server.ice import credentials
from tests.helpers import auth, grant_access, guest

RATE = 3


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(turn_rate_per_hour=RATE)


async def _creds(client, token):
    return await client.get("/turn/credentials", headers=auth(token))


async def test_shape_matches_protocol(client, settings):
    g = await grant_access(client, await guest(client))
    resp = await _creds(client, g["sessionToken"])
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"iceServers", "expiresAt", "provider"}
    assert body["provider"] == "coturn"
    servers = body["iceServers"]
    assert isinstance(servers, list) and len(servers) == 2
    stun, turn = servers
    assert stun == {"urls": list(settings.stun_urls)}
    assert all(u.startswith("stun:") for u in stun["urls"])
    assert set(turn) == {"urls", "username", "credential"}
    assert turn["urls"] == list(settings.turn_urls)
    assert any(u.endswith("transport=udp") for u in turn["urls"])
    assert any(u.endswith("transport=tcp") for u in turn["urls"])


async def test_credential_is_coturn_hmac_of_username_and_expires_after_ttl(client, settings):
    g = await grant_access(client, await guest(client))
    before = int(time.time())
    body = await (await _creds(client, g["sessionToken"])).json()
    after = int(time.time())
    turn = body["iceServers"][1]
    expiry, user_id = turn["username"].split(":")
    assert user_id == g["userId"]
    assert before + settings.turn_ttl_seconds <= int(expiry) <= after + settings.turn_ttl_seconds
    assert body["expiresAt"] == int(expiry) * 1000
    # Computed independently of server code: what coturn computes with its static-auth-secret.
    expected = base64.b64encode(
        hmac.new(settings.turn_secret.encode(), turn["username"].encode(), hashlib.sha1).digest()).decode()
    assert turn["credential"] == expected
    assert len(base64.b64decode(turn["credential"], validate=True)) == 20


async def test_secret_never_in_response_or_logs(client, settings):
    g = await grant_access(client, await guest(client))
    with capture_logs() as logs:
        resp = await _creds(client, g["sessionToken"])
        text = await resp.text()
    assert resp.status == 200
    assert settings.turn_secret not in text
    credential = (await resp.json())["iceServers"][1]["credential"]
    dumped = repr(logs)
    assert settings.turn_secret not in dumped and credential not in dumped
    assert any(e.get("event") == "turn_credentials_issued" for e in logs)


async def test_tls_urls_are_included_when_configured(aiohttp_client, base_settings):
    from server.app import create_app
    from tests.conftest import reset_state

    s = base_settings.with_(turns_urls=("turns:turn.example.com:443?transport=tcp",))
    await reset_state(s)
    client = await aiohttp_client(create_app(s))
    g = await grant_access(client, await guest(client))
    body = await (await _creds(client, g["sessionToken"])).json()
    urls = body["iceServers"][1]["urls"]
    assert urls[-1] == "turns:turn.example.com:443?transport=tcp"
    assert len(urls) == len(s.turn_urls) + 1


async def test_per_user_limit_and_users_are_independent(client):
    a = await grant_access(client, await guest(client, name="A"))
    b = await grant_access(client, await guest(client, name="B"))
    for _ in range(RATE):
        assert (await _creds(client, a["sessionToken"])).status == 200
    resp = await _creds(client, a["sessionToken"])
    assert resp.status == 429
    body = await resp.json()
    assert "Too many" in body["error"]
    assert isinstance(body["retryAfter"], int) and 0 < body["retryAfter"] <= 3600
    assert body["message"] and resp.headers["Retry-After"] == str(body["retryAfter"])
    # Same IP (the test client), different user: unaffected (the original limited per IP).
    for _ in range(RATE):
        assert (await _creds(client, b["sessionToken"])).status == 200
    assert (await _creds(client, b["sessionToken"])).status == 429


async def test_requires_a_valid_session(client):
    resp = await client.get("/turn/credentials")
    assert resp.status == 401
    assert (await resp.json())["error"] == "Authorization required"
    resp = await _creds(client, "not-a-real-token")
    assert resp.status == 401


async def test_banned_user_gets_403(client, settings):
    g = await guest(client)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("UPDATE users SET ban_status = 'permanent' WHERE id = $1", g["userId"])
    finally:
        await conn.close()
    resp = await _creds(client, g["sessionToken"])
    assert resp.status == 403
    body = await resp.json()
    assert body["error"] == "Account suspended" and body["banned"] is True
    assert "iceServers" not in body


def test_issue_rejects_separator_in_user_id():
    with pytest.raises(ValueError):
        credentials.issue("s", "a:b", 60)


def test_issue_is_deterministic_for_a_given_time():
    c = credentials.issue("secret", "u1", 600, now=1_000_000)
    assert c.username == "1000600:u1" and c.expires_at_ms == 1_000_600_000
    assert c.credential == credentials.sign("secret", "1000600:u1")


async def test_users_without_access_get_no_relay(client, db):
    g = await guest(client)  # unpaid, paywall on
    resp = await _creds(client, g["sessionToken"])
    assert resp.status == 402
    body = await resp.json()
    assert body["code"] == "payment_required" and body["requiresPayment"] is True
    assert "iceServers" not in body
    await grant_access(client, g)
    assert (await _creds(client, g["sessionToken"])).status == 200


async def test_without_a_paywall_every_user_gets_a_relay(aiohttp_client, base_settings):
    from server.app import create_app
    from tests.conftest import reset_state

    s = base_settings.with_(require_payment=False)
    await reset_state(s)
    client = await aiohttp_client(create_app(s))
    g = await guest(client)
    assert (await _creds(client, g["sessionToken"])).status == 200

