"""POST /auth/logout, GET /auth/session, GET and PUT /user/me, token storage, secrets in logs."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time

import pytest
import structlog

from server.logs import configure_logging
from tests.helpers import auth, guest, permanent

PASSWORD = "correct horse"
DAY_MS = 86_400_000


async def _get(client, path, token=None, headers=None):
    resp = await client.get(path, headers={**(auth(token) if token else {}), **(headers or {})})
    return resp.status, await resp.json()


# ---- logout (E6, D13) ----

async def test_logout_revokes_only_that_token(client, db):
    g = await guest(client)
    resp = await client.post("/auth/logout", headers=auth(g["sessionToken"]))
    assert (resp.status, await resp.json()) == (200, {"success": True})
    for path in ("/user/me", "/auth/session"):
        status, body = await _get(client, path, g["sessionToken"])
        assert (status, body["error"]) == (401, "Invalid or expired session")
        assert "sessionInvalidated" not in body
    assert await db.fetchval("SELECT revoked_reason FROM sessions") == "logout"
    # Logging out twice: the token is already dead.
    resp = await client.post("/auth/logout", headers=auth(g["sessionToken"]))
    assert (resp.status, (await resp.json())["error"]) == (401, "Invalid or expired session")


async def test_logout_keeps_other_users_signed_in(client):
    a, b = await guest(client, name="A"), await guest(client, name="B")
    await client.post("/auth/logout", headers=auth(a["sessionToken"]))
    assert (await _get(client, "/user/me", b["sessionToken"]))[0] == 200


async def test_logout_without_token_is_401(client):
    resp = await client.post("/auth/logout")
    assert (resp.status, (await resp.json())["error"]) == (401, "Authorization required")


async def test_banned_user_can_still_log_out(client, db):
    g = await guest(client)
    await db.execute("UPDATE users SET ban_status = 'permanent'")
    resp = await client.post("/auth/logout", headers=auth(g["sessionToken"]))
    assert resp.status == 200
    assert await db.fetchval("SELECT revoked_reason FROM sessions") == "logout"


# ---- /auth/session (E6) ----

async def test_session_of_a_guest_expires_in_7_days(client):
    g = await guest(client)
    now = time.time() * 1000
    status, body = await _get(client, "/auth/session", g["sessionToken"])
    assert status == 200
    assert body["userId"] == g["userId"] and body["accountType"] == "guest" and body["role"] == "user"
    assert isinstance(body["expiresAt"], int)
    assert abs(body["expiresAt"] - (now + 7 * DAY_MS)) < 60_000


async def test_session_after_login_expires_in_30_days(client):
    await permanent(client, "ada@x.io", PASSWORD)
    login = await (await client.post("/auth/login", json={"email": "ada@x.io", "password": PASSWORD})).json()
    now = time.time() * 1000
    status, body = await _get(client, "/auth/session", login["sessionToken"])
    assert status == 200 and body["accountType"] == "permanent"
    assert abs(body["expiresAt"] - (now + 30 * DAY_MS)) < 60_000


async def test_session_after_link_expires_in_30_days(client):
    g = await permanent(client, "ada@x.io", PASSWORD)
    status, body = await _get(client, "/auth/session", g["sessionToken"])
    assert status == 200 and abs(body["expiresAt"] - (time.time() * 1000 + 30 * DAY_MS)) < 60_000


async def test_session_without_token_is_401(client):
    status, body = await _get(client, "/auth/session")
    assert (status, body["error"]) == (401, "Authorization required")


# ---- GET /user/me (§2.2, E8) ----

async def test_me_returns_every_documented_field(client, db):
    before = int(time.time() * 1000)
    g = await guest(client, name="Ada", gender="female")
    status, me = await _get(client, "/user/me", g["sessionToken"])
    assert status == 200
    expected = {"userId": g["userId"], "name": "Ada", "gender": "female", "accountType": "guest",
                "email": None, "selfieUrl": None, "videoUrl": None, "socials": {},
                "timerTotalSeconds": 0, "sessionCount": 0, "lastSessions": [], "streakDays": 0,
                "paidStatus": "unpaid", "qrUnlocked": False, "successfulSessions": 0}
    assert {k: me[k] for k in expected} == expected
    assert isinstance(me["createdAt"], int) and before - 5000 <= me["createdAt"] <= time.time() * 1000 + 5000
    assert not any("password" in k.lower() or "hash" in k.lower() for k in me)


async def test_me_never_exposes_the_password_hash(client, db):
    g = await permanent(client, "ada@x.io", PASSWORD)
    resp = await client.get("/user/me", headers=auth(g["sessionToken"]))
    text = await resp.text()
    stored = await db.fetchval("SELECT password_hash FROM users")
    assert stored not in text and "$2b$" not in text and PASSWORD not in text
    assert (await resp.json())["email"] == "ada@x.io"


@pytest.mark.parametrize("header", ["Bearer {t}", "bearer {t}", "BEARER  {t} ", "{t}"])
async def test_bearer_prefix_is_optional_and_case_insensitive(client, header):
    g = await guest(client)
    status, _ = await _get(client, "/user/me", headers={"Authorization": header.format(t=g["sessionToken"])})
    assert status == 200


@pytest.mark.parametrize("header,error", [
    (None, "Authorization required"),
    ("", "Authorization required"),
    ("Bearer ", "Authorization required"),
    ("Bearer nope", "Invalid or expired session"),
    ("Bearer " + "x" * 5000, "Invalid or expired session"),
])
async def test_me_without_a_valid_token_is_401(client, header, error):
    await guest(client)
    status, body = await _get(client, "/user/me", headers={"Authorization": header} if header is not None else {})
    assert (status, body["error"]) == (401, error)
    assert body["code"]


async def test_expired_token_is_401(client, db):
    g = await guest(client)
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    status, body = await _get(client, "/user/me", g["sessionToken"])
    assert (status, body["error"]) == (401, "Invalid or expired session")


async def test_banned_user_gets_account_suspended(client, db):
    g = await guest(client)
    await db.execute("UPDATE users SET ban_status = 'temporary'")
    status, body = await _get(client, "/user/me", g["sessionToken"])
    assert status == 403 and body["error"] == "Account suspended" and body["banned"] is True


async def test_deleted_user_token_is_401(client, db):
    g = await guest(client)
    await db.execute("DELETE FROM users")
    status, body = await _get(client, "/user/me", g["sessionToken"])
    assert (status, body["error"]) == (401, "Invalid or expired session")


# ---- PUT /user/me socials (§2.2) ----

async def _socials(db):
    return json.loads(await db.fetchval("SELECT socials::text FROM users"))


async def _put(client, token, body):
    resp = await client.put("/user/me", json=body, headers=auth(token))
    return resp.status, await resp.json()


async def test_put_socials_saves_and_returns_them(client, db):
    g = await guest(client, name="Ada")
    socials = {"instagram": "ada.l", "tiktok": "ada_l", "twitter": "ada-l", "snapchat": "A1", "discord": "x" * 30}
    status, body = await _put(client, g["sessionToken"], {"socials": socials})
    assert (status, body) == (200, {"success": True, "user": {"userId": g["userId"], "name": "Ada",
                                                              "socials": socials}})
    assert await _socials(db) == socials
    assert (await _get(client, "/user/me", g["sessionToken"]))[1]["socials"] == socials
    # Replacing; an empty handle removes that platform.
    status, body = await _put(client, g["sessionToken"], {"socials": {"instagram": "new", "tiktok": ""}})
    assert status == 200 and body["user"]["socials"] == {"instagram": "new"}
    status, body = await _put(client, g["sessionToken"], {"socials": {}})
    assert status == 200 and body["user"]["socials"] == {}


@pytest.mark.parametrize("body", [
    {"socials": {"myspace": "ada"}},
    {"socials": {"instagram": "x" * 31}},
    {"socials": {"instagram": "bad handle"}},
    {"socials": {"instagram": "<script>"}},
    {"socials": {"instagram": 5}},
    {"socials": {"instagram": None}},
    {"socials": {"instagram": {"nested": "x"}}},
    {"socials": ["instagram", "ada"]},
    {"socials": "instagram:ada"},
    {"socials": None},
    {},
])
async def test_put_invalid_socials_is_400_and_writes_nothing(client, db, body):
    g = await guest(client)
    await _put(client, g["sessionToken"], {"socials": {"twitter": "keep"}})
    status, resp = await _put(client, g["sessionToken"], body)
    assert status == 400 and isinstance(resp["error"], str) and resp["code"]
    assert await _socials(db) == {"twitter": "keep"}


async def test_put_me_requires_auth(client, db):
    g = await guest(client)
    resp = await client.put("/user/me", json={"socials": {"twitter": "x"}})
    assert (resp.status, (await resp.json())["error"]) == (401, "Authorization required")
    resp = await client.put("/user/me", json={"socials": {"twitter": "x"}}, headers=auth(g["sessionToken"] + "x"))
    assert (resp.status, (await resp.json())["error"]) == (401, "Invalid or expired session")
    assert await _socials(db) == {}


# ---- tokens ----

def _bits(token: str) -> int:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return len(raw) * 8


async def test_tokens_are_long_random_and_stored_only_as_hashes(client, db):
    tokens = [(await guest(client, name=f"U{i}"))["sessionToken"] for i in range(5)]
    await permanent(client, "ada@x.io", PASSWORD)
    login = await (await client.post("/auth/login", json={"email": "ada@x.io", "password": PASSWORD})).json()
    tokens.append(login["sessionToken"])
    assert len(set(tokens)) == len(tokens)
    for t in tokens:
        assert _bits(t) >= 128
    hashes = {bytes(r["token_hash"]) for r in await db.fetch("SELECT token_hash FROM sessions")}
    for t in tokens:
        assert t.encode() not in hashes
        assert hashlib.sha256(t.encode()).digest() in hashes
    # The token appears nowhere in the database, in any table, in any form we could think of.
    tables = [r["tablename"] for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")]
    dump = "".join([await db.fetchval(f"SELECT coalesce(string_agg(t::text, '|'), '') FROM {name} t")
                    for name in tables])
    for t in tokens:
        assert t not in dump and t.encode().hex() not in dump
    assert PASSWORD not in dump


# ---- logs never carry tokens or passwords ----

async def test_logs_never_contain_tokens_or_passwords(client, capfd):
    old, root = structlog.get_config(), logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    configure_logging(fmt="json", level="DEBUG")
    try:
        g = await guest(client, name="Logger")
        link = await client.post("/auth/link", json={"sessionToken": g["sessionToken"], "email": "log@x.io",
                                                     "password": PASSWORD})
        assert link.status == 200
        bad = await client.post("/auth/login", json={"email": "log@x.io", "password": "wrong " + PASSWORD})
        assert bad.status == 401
        ok = await (await client.post("/auth/login", json={"email": "log@x.io", "password": PASSWORD})).json()
        await client.get("/user/me", headers=auth(ok["sessionToken"]))
        await client.post("/auth/logout", headers=auth(ok["sessionToken"]))
        await client.get("/user/me", headers=auth(ok["sessionToken"]))
    finally:
        structlog.configure(**old)
        root.handlers[:], root.level = old_handlers, old_level
    out, err = capfd.readouterr()
    logs = out + err
    assert "request" in logs and "login" in logs  # logging did happen
    for secret in (g["sessionToken"], ok["sessionToken"], PASSWORD, "horse", "$2b$"):
        assert secret not in logs
