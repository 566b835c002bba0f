"""POST /auth/login (PROTOCOL.md §2.1, §1.3, §6 D12/D25): single-session rule, bans, throttling."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.helpers import auth, permanent

PASSWORD = "correct horse"


@pytest.fixture
def settings(base_settings):
    # Small limits; the failure window is 2 s in the test settings. The client IP comes from
    # X-Forwarded-For (one trusted proxy) so tests can act from several networks.
    return base_settings.with_(login_max_failures_per_ip=3, login_max_failures_per_account=5,
                               trusted_proxy_hops=1)


def _ip(n: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"10.1.0.{n}"}


async def _login(client, email, password, ip=1):
    resp = await client.post("/auth/login", json={"email": email, "password": password}, headers=_ip(ip))
    return resp.status, await resp.json()


async def test_login_returns_session_and_user(client, db):
    g = await permanent(client, "ada@x.io", PASSWORD, name="Ada")
    status, body = await _login(client, "ada@x.io", PASSWORD)
    assert status == 200
    assert body["userId"] == g["userId"]
    assert body["accountType"] == "permanent"
    assert isinstance(body["sessionToken"], str) and body["sessionToken"] != g["sessionToken"]
    assert body["sessionInvalidated"] is True and body["invalidatedCount"] == 1
    assert body["user"] == {"userId": g["userId"], "name": "Ada", "gender": "female", "selfieUrl": None,
                            "videoUrl": None, "email": "ada@x.io"}
    me = await client.get("/user/me", headers=auth(body["sessionToken"]))
    assert me.status == 200 and (await me.json())["userId"] == g["userId"]
    kinds = await db.fetch("SELECT kind, revoked_reason FROM sessions ORDER BY created_at")
    assert [(r["kind"], r["revoked_reason"]) for r in kinds] == [("link", "new_login"), ("login", None)]


async def test_login_invalidates_the_previous_session(client):
    g = await permanent(client, "ada@x.io", PASSWORD)
    _, first = await _login(client, "ada@x.io", PASSWORD)
    _, second = await _login(client, "ada@x.io", PASSWORD)
    assert second["invalidatedCount"] == 1
    for old in (g["sessionToken"], first["sessionToken"]):
        resp = await client.get("/user/me", headers=auth(old))
        body = await resp.json()
        assert resp.status == 401
        assert body["sessionInvalidated"] is True and body["error"] == "Session invalidated"
    assert (await client.get("/user/me", headers=auth(second["sessionToken"]))).status == 200


async def test_first_login_with_no_other_session_invalidates_nothing(client, db):
    await permanent(client, "ada@x.io", PASSWORD)
    await db.execute("UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout'")
    status, body = await _login(client, "ada@x.io", PASSWORD)
    assert status == 200 and body["sessionInvalidated"] is False and body["invalidatedCount"] == 0


async def test_email_is_case_insensitive(client):
    g = await permanent(client, "ada@x.io", PASSWORD)
    status, body = await _login(client, "  ADA@X.IO ", PASSWORD)
    assert status == 200 and body["userId"] == g["userId"]


async def test_wrong_password_and_unknown_email_get_the_same_401(client, db):
    await permanent(client, "ada@x.io", PASSWORD)
    s1, wrong = await _login(client, "ada@x.io", "wrong password", ip=1)
    s2, unknown = await _login(client, "nobody@x.io", PASSWORD, ip=2)
    assert s1 == s2 == 401
    assert "Invalid credentials" in wrong["error"] and "Invalid credentials" in unknown["error"]
    assert wrong == unknown  # no account enumeration (D25)
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE kind = 'login'") == 0


async def test_guest_accounts_cannot_log_in(client):
    # A guest has no email/password; the generic message explains how to link.
    status, body = await _login(client, "guest@x.io", PASSWORD)
    assert status == 401 and "Invalid credentials" in body["error"]
    assert "Guest" in body["message"]


@pytest.mark.parametrize("body,error", [
    ({"password": PASSWORD}, "A valid email is required"),
    ({"email": "ada@x.io"}, "Password is required"),
    ({"email": "ada", "password": PASSWORD}, "A valid email is required"),
    ({"email": ["ada@x.io"], "password": PASSWORD}, "A valid email is required"),
    ({"email": "ada@x.io", "password": None}, "Password is required"),
])
async def test_missing_or_malformed_fields_are_400(client, body, error):
    resp = await client.post("/auth/login", json=body)
    assert resp.status == 400 and (await resp.json())["error"] == error


async def test_73_byte_password_is_400_not_500(client):
    await permanent(client, "ada@x.io", PASSWORD)
    status, body = await _login(client, "ada@x.io", "x" * 73)
    assert status == 400 and body["code"] == "password_too_long"


async def _ban(db, email, status="temporary"):
    uid = await db.fetchval("SELECT id FROM users WHERE email = $1", email)
    await db.execute("UPDATE users SET ban_status = $2 WHERE id = $1", uid, status)
    # users.ban_status is the one ban status (0003); ban_records holds the case around it.
    await db.execute("INSERT INTO ban_records (user_id, banned_reason) VALUES ($1, 'test')", uid)


@pytest.mark.parametrize("ban", ["temporary", "permanent"])
async def test_banned_user_with_right_password_is_403(client, db, ban):
    await permanent(client, "ada@x.io", PASSWORD)
    await _ban(db, "ada@x.io", ban)
    status, body = await _login(client, "ada@x.io", PASSWORD)
    assert status == 403
    assert body["error"] == "Account suspended" and body["banned"] is True
    assert body["banStatus"] == ban and body["reviewStatus"] == "pending" and body["message"]
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE kind = 'login'") == 0


async def test_banned_user_with_wrong_password_gets_invalid_credentials(client, db):
    await permanent(client, "ada@x.io", PASSWORD)
    await _ban(db, "ada@x.io")
    status, body = await _login(client, "ada@x.io", "wrong password")
    assert status == 401 and "Invalid credentials" in body["error"]


async def test_vindicated_user_can_log_in(client, db):
    await permanent(client, "ada@x.io", PASSWORD)
    await _ban(db, "ada@x.io", "vindicated")
    assert (await _login(client, "ada@x.io", PASSWORD))[0] == 200


async def test_ip_throttle_429_after_n_failures_and_clears_after_window(client):
    await permanent(client, "ada@x.io", PASSWORD)
    for i in range(3):
        status, _ = await _login(client, f"nobody{i}@x.io", "wrong password", ip=7)
        assert status == 401
    status, body = await _login(client, "ada@x.io", PASSWORD, ip=7)  # even the right password
    assert status == 429
    assert body["error"] == "Too many login attempts" and "Too many" in body["error"]
    assert body["retryAfter"] in (1, 2) and body["code"] == "login_rate_limited"
    # Other networks are unaffected.
    assert (await _login(client, "ada@x.io", PASSWORD, ip=8))[0] == 200
    await asyncio.sleep(2.1)
    assert (await _login(client, "ada@x.io", PASSWORD, ip=7))[0] == 200


async def test_account_throttle_429_after_n_failures_from_many_ips(client):
    await permanent(client, "ada@x.io", PASSWORD)
    for ip in range(20, 25):  # 5 failures, one per network
        assert (await _login(client, "ada@x.io", "wrong password", ip=ip))[0] == 401
    status, body = await _login(client, "ADA@x.io", PASSWORD, ip=30)
    assert status == 429 and body["error"] == "Too many login attempts" and body["retryAfter"] >= 1
    # Other accounts are unaffected from the same network.
    await permanent(client, "bob@x.io", PASSWORD, name="Bob")
    assert (await _login(client, "bob@x.io", PASSWORD, ip=30))[0] == 200
    await asyncio.sleep(2.1)
    assert (await _login(client, "ada@x.io", PASSWORD, ip=30))[0] == 200


async def test_success_resets_the_account_counter(client):
    await permanent(client, "ada@x.io", PASSWORD)
    for ip in range(40, 44):
        await _login(client, "ada@x.io", "wrong password", ip=ip)
    assert (await _login(client, "ada@x.io", PASSWORD, ip=50))[0] == 200
    for ip in range(60, 64):
        assert (await _login(client, "ada@x.io", "wrong password", ip=ip))[0] == 401
    assert (await _login(client, "ada@x.io", PASSWORD, ip=70))[0] == 200


async def test_concurrent_logins_leave_exactly_one_active_session(client, db):
    g = await permanent(client, "ada@x.io", PASSWORD)
    results = await asyncio.gather(*[_login(client, "ada@x.io", PASSWORD, ip=100 + i) for i in range(20)])
    assert [s for s, _ in results] == [200] * 20
    active = await db.fetch(
        "SELECT token_hash FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()",
        uuid.UUID(g["userId"]))
    assert len(active) == 1
    ok = [b["sessionToken"] for _, b in results
          if (await client.get("/user/me", headers=auth(b["sessionToken"]))).status == 200]
    assert len(ok) == 1
    # Every session that lost was told why.
    assert sum(b["invalidatedCount"] for _, b in results) == 20  # the link session + 19 losers


async def test_concurrent_guesses_cannot_outrun_the_ip_throttle(client, db):
    # A burst of parallel guesses must not all be checked before the first failure is counted.
    await permanent(client, "ada@x.io", PASSWORD)
    results = await asyncio.gather(*[_login(client, f"u{i}@x.io", f"guess {i}", ip=9) for i in range(20)])
    statuses = sorted(s for s, _ in results)
    assert statuses == [401] * 3 + [429] * 17


async def test_concurrent_guesses_cannot_outrun_the_account_throttle(client):
    await permanent(client, "ada@x.io", PASSWORD)
    results = await asyncio.gather(*[_login(client, "ada@x.io", f"guess {i}", ip=150 + i) for i in range(20)])
    assert sorted(s for s, _ in results) == [401] * 5 + [429] * 15


async def test_successful_logins_do_not_use_up_the_ip_budget(client):
    await permanent(client, "ada@x.io", PASSWORD)
    for _ in range(6):
        assert (await _login(client, "ada@x.io", PASSWORD, ip=11))[0] == 200
    for i in range(3):
        assert (await _login(client, f"n{i}@x.io", "wrong password", ip=11))[0] == 401
    assert (await _login(client, "ada@x.io", PASSWORD, ip=11))[0] == 429
