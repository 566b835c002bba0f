"""POST /auth/link (PROTOCOL.md §2.1, §7 E6, §6 D12/D25)."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers import auth, guest

PASSWORD = "correct horse"


async def _link(client, body, headers=None):
    resp = await client.post("/auth/link", json=body, headers=headers or {})
    return resp.status, await resp.json()


async def test_link_with_body_token_makes_the_account_permanent(client, db):
    g = await guest(client)
    status, body = await _link(client, {"sessionToken": g["sessionToken"], "email": "Ada@Example.COM",
                                        "password": PASSWORD})
    assert (status, body) == (200, {"success": True, "accountType": "permanent"})
    row = await db.fetchrow("SELECT account_type, email, password_hash FROM users WHERE id = $1",
                            uuid.UUID(g["userId"]))
    assert row["account_type"] == "permanent"
    assert row["email"] == "ada@example.com"  # stored lowercase
    # bcrypt with the configured cost (4 in tests, 12 by default)
    assert row["password_hash"].startswith("$2b$04$") and PASSWORD not in row["password_hash"]
    me = await (await client.get("/user/me", headers=auth(g["sessionToken"]))).json()
    assert me["accountType"] == "permanent" and me["email"] == "ada@example.com"
    # The linking session now lives 30 days.
    session = await (await client.get("/auth/session", headers=auth(g["sessionToken"]))).json()
    assert session["accountType"] == "permanent"
    kind = await db.fetchval("SELECT kind FROM sessions WHERE user_id = $1", uuid.UUID(g["userId"]))
    assert kind == "link"


async def test_link_with_bearer_header(client, db):
    g = await guest(client)
    status, body = await _link(client, {"email": "h@x.io", "password": PASSWORD}, auth(g["sessionToken"]))
    assert (status, body) == (200, {"success": True, "accountType": "permanent"})
    assert await db.fetchval("SELECT email FROM users") == "h@x.io"


async def test_linked_account_can_log_in(client):
    g = await guest(client)
    await _link(client, {"sessionToken": g["sessionToken"], "email": "a@x.io", "password": PASSWORD})
    resp = await client.post("/auth/login", json={"email": "A@X.IO", "password": PASSWORD})
    assert resp.status == 200
    assert (await resp.json())["userId"] == g["userId"]


@pytest.mark.parametrize("body,error", [
    ({"password": PASSWORD}, "A valid email is required"),
    ({"email": "a@x.io"}, "Password is required"),
    ({"email": "", "password": PASSWORD}, "A valid email is required"),
    ({"email": "not-an-email", "password": PASSWORD}, "A valid email is required"),
    ({"email": 5, "password": PASSWORD}, "A valid email is required"),
    ({"email": "a@x.io", "password": ""}, "Password is required"),
    ({"email": "a@x.io", "password": 12345678}, "Password is required"),
])
async def test_missing_or_malformed_fields_are_400(client, db, body, error):
    g = await guest(client)
    status, resp = await _link(client, {"sessionToken": g["sessionToken"], **body})
    assert (status, resp["error"]) == (400, error)
    assert await db.fetchval("SELECT account_type FROM users") == "guest"


async def test_missing_session_token_is_400(client, db):
    await guest(client)
    status, resp = await _link(client, {"email": "a@x.io", "password": PASSWORD})
    assert status == 400 and "sessionToken" in resp["error"]
    assert await db.fetchval("SELECT account_type FROM users") == "guest"


@pytest.mark.parametrize("password", ["1234567", "é" * 3 + "a", "x" * 73, "é" * 37, "😀" * 19])
async def test_password_outside_8_to_72_bytes_is_400_never_500(client, db, password):
    g = await guest(client)
    status, resp = await _link(client, {"sessionToken": g["sessionToken"], "email": "a@x.io",
                                        "password": password})
    assert status == 400 and resp["code"] == "weak_password"
    assert "Password" in resp["error"]
    assert await db.fetchval("SELECT account_type FROM users") == "guest"


@pytest.mark.parametrize("password", ["12345678", "x" * 72, "é" * 36, "😀" * 18])
async def test_password_of_8_to_72_bytes_is_accepted(client, password):
    g = await guest(client)
    status, _ = await _link(client, {"sessionToken": g["sessionToken"], "email": "a@x.io", "password": password})
    assert status == 200
    resp = await client.post("/auth/login", json={"email": "a@x.io", "password": password})
    assert resp.status == 200


@pytest.mark.parametrize("token", ["nope", "x" * 300, "3f2b8c1e-6a47-4d3e-9f0a-2b7c5d9e1a64"])
async def test_unknown_session_is_401(client, db, token):
    await guest(client)
    status, resp = await _link(client, {"sessionToken": token, "email": "a@x.io", "password": PASSWORD})
    assert (status, resp["error"]) == (401, "Invalid or expired session")
    assert await db.fetchval("SELECT account_type FROM users") == "guest"


async def test_expired_session_is_401(client, db):
    g = await guest(client)
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    status, resp = await _link(client, {"sessionToken": g["sessionToken"], "email": "a@x.io",
                                        "password": PASSWORD})
    assert (status, resp["error"]) == (401, "Invalid or expired session")


async def test_logged_out_session_is_401(client, db):
    g = await guest(client)
    assert (await client.post("/auth/logout", headers=auth(g["sessionToken"]))).status == 200
    status, resp = await _link(client, {"sessionToken": g["sessionToken"], "email": "a@x.io",
                                        "password": PASSWORD})
    assert (status, resp["error"]) == (401, "Invalid or expired session")
    assert await db.fetchval("SELECT account_type FROM users") == "guest"


async def test_invalidated_session_cannot_link_d12(client, db):
    # A session replaced by a newer login (D12) is refused by /auth/link too.
    g = await guest(client)
    await _link(client, {"sessionToken": g["sessionToken"], "email": "a@x.io", "password": PASSWORD})
    await client.post("/auth/login", json={"email": "a@x.io", "password": PASSWORD})
    other = await guest(client, name="Bob")
    status, resp = await _link(client, {"sessionToken": g["sessionToken"], "email": "b@x.io",
                                        "password": PASSWORD})
    assert status == 401 and resp["sessionInvalidated"] is True
    assert await db.fetchval("SELECT account_type FROM users WHERE id = $1", uuid.UUID(other["userId"])) \
        == "guest"


async def test_banned_guest_cannot_link(client, db):
    g = await guest(client)
    await db.execute("UPDATE users SET ban_status = 'temporary'")
    status, resp = await _link(client, {"sessionToken": g["sessionToken"], "email": "a@x.io",
                                        "password": PASSWORD})
    assert status == 403 and resp["error"] == "Account suspended" and resp["banned"] is True
    assert await db.fetchval("SELECT email FROM users") is None


async def test_taken_email_is_409_case_insensitively(client, db):
    a = await guest(client, name="A")
    b = await guest(client, name="B")
    assert (await _link(client, {"sessionToken": a["sessionToken"], "email": "A@x.io",
                                 "password": PASSWORD}))[0] == 200
    status, resp = await _link(client, {"sessionToken": b["sessionToken"], "email": "a@X.io",
                                        "password": PASSWORD})
    assert (status, resp["error"]) == (409, "Email already registered")
    row = await db.fetchrow("SELECT account_type, email, password_hash FROM users WHERE id = $1",
                            uuid.UUID(b["userId"]))
    assert dict(row) == {"account_type": "guest", "email": None, "password_hash": None}


async def test_linking_twice_is_409(client, db):
    g = await guest(client)
    assert (await _link(client, {"sessionToken": g["sessionToken"], "email": "a@x.io",
                                 "password": PASSWORD}))[0] == 200
    for email in ("a@x.io", "other@x.io"):
        status, resp = await _link(client, {"sessionToken": g["sessionToken"], "email": email,
                                            "password": "another password"})
        assert status == 409 and resp["error"] and resp["code"]
    assert await db.fetchval("SELECT email FROM users") == "a@x.io"
    # The first password still works; the second was never stored.
    assert (await client.post("/auth/login", json={"email": "a@x.io", "password": PASSWORD})).status == 200


async def test_concurrent_links_of_one_email_have_one_winner(client, db):
    import asyncio

    gs = [await guest(client, name=f"G{i}") for i in range(4)]
    results = await asyncio.gather(*[
        _link(client, {"sessionToken": g["sessionToken"], "email": "race@x.io", "password": PASSWORD})
        for g in gs])
    assert sorted(s for s, _ in results) == [200, 409, 409, 409]
    assert await db.fetchval("SELECT count(*) FROM users WHERE email = 'race@x.io'") == 1


@pytest.mark.parametrize("email", ["a\u0000b@x.io", "\ud800@x.io"])
async def test_unstorable_email_is_400_never_500(client, db, email):
    g = await guest(client)
    # json.dumps escapes NUL as \u0000 and a lone surrogate as \ud800: valid JSON, unstorable text.
    raw = json.dumps({"sessionToken": g["sessionToken"], "email": email, "password": PASSWORD})
    resp = await client.post("/auth/link", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["code"]
    assert await db.fetchval("SELECT account_type FROM users") == "guest"


async def test_unicode_email_that_grows_when_lowercased_is_not_a_500(client, db):
    # 'İ'.lower() is two code points: a 254-character address becomes 255 once normalised.
    g = await guest(client)
    email = "İ" * 60 + "@" + "d" * 189 + ".io"
    assert len(email) == 253
    status, resp = await _link(client, {"sessionToken": g["sessionToken"], "email": email + "x",
                                        "password": PASSWORD})
    assert (status, resp["error"]) == (400, "A valid email is required")
    assert await db.fetchval("SELECT account_type FROM users") == "guest"
