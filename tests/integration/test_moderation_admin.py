"""Moderator sign-in and authorisation (PROTOCOL §2.6 note, §2.9, §6 D3, §7 E7): /admin/login|verify|
logout with hashed admin sessions in Redis, the 1 s delay and throttling, TOTP enrolled from the CLI
(replays refused), REQUIRE_MODERATOR_TOTP, the original admin page's call pattern, and every moderator
route refused for everyone else."""

import asyncio
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import time

import pyotp
import pytest

from server.deps import DEPS
from server.moderation import admin
from tests.helpers import auth
from tests.moderation_kit import make_moderator
from tests.rt import make_user

PUBLIC = {"/report/user", "/report/check-ban", "/report/blacklist"}


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(admin_login_failure_delay_seconds=0.05)


def moderator_routes(app):
    """Every moderator route the app serves (so a new one cannot be left out of the checks)."""
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if route.method in ("HEAD", "OPTIONS") or path in PUBLIC:
            continue
        if path.startswith(("/report/", "/mod/", "/payment/admin/")):
            found.add((route.method, path))
    return sorted(found)


def concrete(path, uid):
    return (path.replace("{userId}", uid).replace("{reportId}", "6d0f6f5e-0000-4000-8000-000000000000")
            .replace("{ip}", "192.0.2.7"))


async def login(client, username, password, **extra):
    resp = await client.post("/admin/login", json={"username": username, "password": password, **extra})
    return resp.status, await resp.json()


def run_cli(stack, *args):
    env = {**os.environ, **stack.env(), "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_login_verify_logout_with_a_hashed_shared_session(client, db):
    mod = await make_moderator(client, db, "Mod@Example.com", role="admin")
    status, body = await login(client, "mod@example.com", mod["password"])
    assert status == 200, body
    token = body["adminToken"]
    assert body["username"] == "mod@example.com" and body["role"] == "admin" and len(token) >= 16
    redis = client.app[DEPS].redis
    keys = await redis.keys("adm:*")
    assert f"adm:s:{hashlib.sha256(token.encode()).hexdigest()}" in keys
    values = [await redis.get(k) for k in keys if k.startswith("adm:s:")]
    assert not any(token in k for k in keys) and not any(token in v for v in values)  # only its hash is kept
    assert 86000 < await redis.ttl(f"adm:s:{hashlib.sha256(token.encode()).hexdigest()}") <= 86400
    resp = await client.get("/admin/verify", headers=auth(token))
    assert resp.status == 200
    verified = await resp.json()
    assert (verified["valid"], verified["username"], verified["role"]) == (True, "mod@example.com", "admin")
    row = await db.fetchrow("SELECT actor_user_id, host(ip) AS ip FROM audit_log WHERE action = 'admin_login'")
    assert str(row["actor_user_id"]) == mod["userId"] and row["ip"] == "127.0.0.1"

    resp = await client.post("/admin/logout", headers=auth(token))
    assert resp.status == 200 and await resp.json() == {"success": True}
    resp = await client.get("/admin/verify", headers=auth(token))
    assert resp.status == 401 and (await resp.json())["valid"] is False
    assert (await client.post("/admin/logout", headers=auth(token))).status == 200  # always 200
    rows = await db.fetch("SELECT actor_label, actor_user_id, target_user_id, host(ip) AS ip FROM audit_log "
                          "WHERE action = 'admin_logout'")
    assert [(r["actor_label"], str(r["actor_user_id"]), str(r["target_user_id"]), r["ip"]) for r in rows] \
        == [(f"moderator:{mod['userId']}", mod["userId"], mod["userId"], "127.0.0.1")]  # one row: the real logout
    assert (await client.get("/admin/verify")).status == 401


async def test_verify_reads_role_and_ban_now_not_at_sign_in(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    _, body = await login(client, "mod@example.com", mod["password"])
    token = body["adminToken"]
    resp = await client.get("/admin/verify", headers={"X-Admin-Token": token})
    assert resp.status == 200 and (await resp.json())["role"] == "moderator"
    invalid = {"valid": False, "error": "Invalid or expired session", "code": "unauthorized"}
    await db.execute("UPDATE users SET role = 'user' WHERE id = $1", mod["userId"])
    resp = await client.get("/admin/verify", headers={"X-Admin-Token": token})
    assert resp.status == 401 and await resp.json() == invalid
    await db.execute("UPDATE users SET role = 'admin', ban_status = 'temporary' WHERE id = $1", mod["userId"])
    resp = await client.get("/admin/verify", headers=auth(token))
    assert resp.status == 401 and await resp.json() == invalid
    await db.execute("UPDATE users SET ban_status = 'vindicated' WHERE id = $1", mod["userId"])
    resp = await client.get("/admin/verify", headers=auth(token))
    assert resp.status == 200 and (await resp.json())["role"] == "admin"


async def test_bad_credentials_and_non_moderators_get_invalid_credentials(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    plain = await make_moderator(client, db, "plain@example.com", role="user")
    for username, password in (("mod@example.com", "wrong password"), ("nobody@example.com", "whatever1"),
                               ("plain@example.com", plain["password"])):
        status, body = await login(client, username, password)
        assert status == 401 and body["error"] == "Invalid credentials", (username, body)
        assert "adminToken" not in body
    resp = await client.post("/admin/login", json={"username": "mod@example.com"})
    assert resp.status == 400
    await db.execute("UPDATE users SET ban_status = 'permanent' WHERE id = $1", mod["userId"])
    status, body = await login(client, "mod@example.com", mod["password"])
    assert status == 403 and body["error"] == "Account suspended"


async def test_a_failed_login_is_answered_after_one_second(client, db, base_settings, aiohttp_client):
    from server.app import create_app

    slow = await aiohttp_client(create_app(base_settings))  # the protocol's 1 s delay
    await make_moderator(slow, db, "mod@example.com")
    t0 = time.monotonic()
    status, _ = await login(slow, "mod@example.com", "wrong password")
    assert status == 401 and time.monotonic() - t0 >= 1.0


async def test_admin_login_is_throttled_even_in_parallel(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    results = await asyncio.gather(*(login(client, "mod@example.com", f"wrong {i}") for i in range(20)))
    statuses = [s for s, _ in results]
    assert statuses.count(401) == 6 and statuses.count(429) == 14, statuses  # 6 failures per IP (§2)
    assert all("Too many" in b["error"] and b["retryAfter"] >= 1 for s, b in results if s == 429)
    status, _ = await login(client, "mod@example.com", mod["password"])
    assert status == 429  # the right password too, until the window ends


async def test_totp_enrolled_from_the_cli_is_required_and_never_replayed(client, db, stack):
    mod = await make_moderator(client, db, "mod@example.com")
    done = run_cli(stack, "user", "totp-enroll", "mod@example.com")
    assert done.returncode == 0, done.stderr
    uri = re.search(r"otpauth://totp/\S+", done.stdout).group(0)
    assert "issuer=Napalm" in uri
    assert "\u2580" in done.stdout or "\u2588" in done.stdout  # a QR drawn in the terminal
    secret = re.search(r"secret: ([A-Z2-7]+)", done.stdout).group(1)
    totp = pyotp.TOTP(secret)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'totp_enroll'") == 1

    status, body = await login(client, "mod@example.com", mod["password"])
    assert status == 401 and body["error"] == "Invalid credentials"
    status, _ = await login(client, "mod@example.com", mod["password"], totp="000000" if totp.now() != "000000"
                            else "111111")
    assert status == 401
    now = time.time()
    previous = totp.at(now - 30)
    status, body = await login(client, "mod@example.com", mod["password"], totp=previous)
    assert status == 200, body
    status, body = await login(client, "mod@example.com", mod["password"], totp=previous)
    assert status == 401 and "used already" in body["message"]  # the same code twice: refused
    # The original admin page sends only username and password: the code follows the password.
    status, body = await login(client, "mod@example.com", mod["password"] + totp.at(now))
    assert status == 200, body
    status, body = await login(client, "mod@example.com", mod["password"] + totp.at(now))
    assert status == 401
    missing = run_cli(stack, "user", "totp-enroll", "nobody@example.com")
    assert missing.returncode == 2 and "no user" in missing.stderr
    plain = await make_user(client, db)
    refused = run_cli(stack, "user", "totp-enroll", plain["userId"])
    assert refused.returncode == 2 and "moderator" in refused.stderr


async def test_totp_removed_from_the_cli_by_user_id(client, db, stack):
    mod = await make_moderator(client, db, "mod@example.com")
    assert run_cli(stack, "user", "totp-enroll", mod["userId"]).returncode == 0
    status, _ = await login(client, "mod@example.com", mod["password"])
    assert status == 401  # a code is needed now
    done = run_cli(stack, "user", "totp-remove", mod["userId"])
    assert done.returncode == 0 and "second factor removed for mod@example.com" in done.stdout, done.stderr
    status, body = await login(client, "mod@example.com", mod["password"])
    assert status == 200 and body["totp"] is False
    again = run_cli(stack, "user", "totp-remove", "mod@example.com")
    assert again.returncode == 0 and "has no second factor" in again.stdout
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'totp_remove'") == 1


async def test_require_totp_setting(db, base_settings, aiohttp_client, stack):
    from server.app import create_app

    client = await aiohttp_client(create_app(base_settings.with_(require_moderator_totp=True,
                                                                 admin_login_failure_delay_seconds=0.05)))
    mod = await make_moderator(client, db, "mod@example.com")
    status, body = await login(client, "mod@example.com", mod["password"])
    assert status == 403 and body["code"] == "totp_enrolment_required"
    # The role alone no longer opens the moderator routes: the user session needs a TOTP sign-in too.
    resp = await client.get("/report/stats", headers=auth(mod["sessionToken"]))
    assert resp.status == 403 and (await resp.json())["code"] == "admin_login_required"
    done = run_cli(stack, "user", "totp-enroll", "mod@example.com")
    secret = re.search(r"secret: ([A-Z2-7]+)", done.stdout).group(1)
    status, body = await login(client, "mod@example.com", mod["password"], code=pyotp.TOTP(secret).now())
    assert status == 200, body
    assert (await client.get("/report/stats", headers=auth(mod["sessionToken"]))).status == 200
    await client.post("/admin/logout", headers=auth(body["adminToken"]))
    assert (await client.get("/report/stats", headers=auth(mod["sessionToken"]))).status == 403


async def test_the_original_admin_page_pattern_works_for_a_role_holder(client, db):
    """admin-login/page: POST /admin/login -> adminToken; admin/page: GET /admin/verify with the admin
    token, then every /report and /payment/admin call with the *user* session token."""
    mod = await make_moderator(client, db, "mod@example.com")
    resp = await client.post("/auth/login", json={"email": "mod@example.com", "password": mod["password"]})
    session = (await resp.json())["sessionToken"]
    _, body = await login(client, "mod@example.com", mod["password"])
    assert (await client.get("/admin/verify", headers=auth(body["adminToken"]))).status == 200
    for path in ("/report/pending", "/report/all", "/report/stats", "/payment/admin/codes"):
        resp = await client.get(path, headers=auth(session))
        assert resp.status == 200, (path, await resp.text())
    resp = await client.post("/payment/admin/generate-code", json={"label": "Admin QR Code"}, headers=auth(session))
    assert resp.status == 200 and len((await resp.json())["code"]) == 16
    # The admin token works on the same routes, as the bearer or in X-Admin-Token.
    assert (await client.get("/report/stats", headers=auth(body["adminToken"]))).status == 200
    resp = await client.get("/mod/me", headers={"X-Admin-Token": body["adminToken"]})
    assert (await resp.json())["via"] == "admin_token"


async def test_every_moderator_route_refuses_everyone_else(client, db):
    app = client.app
    routes = moderator_routes(app)
    assert len(routes) >= 20 and ("POST", "/payment/admin/generate-code") in routes
    plain = await make_user(client, db, "Plain")
    banned = await make_moderator(client, db, "banned@example.com")
    _, b = await login(client, "banned@example.com", banned["password"])
    banned_admin_token = b["adminToken"]
    await db.execute("UPDATE users SET ban_status = 'temporary' WHERE id = $1", banned["userId"])
    mod = await make_moderator(client, db, "mod@example.com")
    _, r = await login(client, "mod@example.com", mod["password"])
    revoked = r["adminToken"]
    await client.post("/admin/logout", headers=auth(revoked))
    deps = app[DEPS]
    short = dataclasses.replace(deps, settings=deps.settings.with_(admin_session_seconds=1))
    expired, _ = await admin.create_session(short, mod["userId"])
    key = f"adm:s:{hashlib.sha256(expired.encode()).hexdigest()}"
    # One read of the key's remaining life and one sleep past it, instead of polling Redis every 50 ms:
    # the wait is the same, the round trips (each one a chance to stall on a loaded machine) are not.
    # Redis never serves a key past its expiry, so it is gone once the sleep ends.
    ttl_ms = await deps.redis.pttl(key)
    assert 0 < ttl_ms <= 1000
    await asyncio.sleep(ttl_ms / 1000 + 0.05)
    assert not await deps.redis.exists(key)

    cases = [("no credentials", {}, 401), ("plain user", auth(plain["sessionToken"]), 403),
             ("banned moderator", auth(banned["sessionToken"]), 403),
             ("banned moderator's admin token", auth(banned_admin_token), 403),
             ("expired admin token", auth(expired), 401), ("revoked admin token", auth(revoked), 401),
             ("revoked token in X-Admin-Token", {"X-Admin-Token": revoked}, 401)]
    for method, path in routes:
        url = concrete(path, plain["userId"])
        for what, headers, expected in cases:
            resp = await client.request(method, url, headers=headers, json={"decision": "permanent"})
            body = await resp.json()
            assert resp.status == expected, (method, path, what, body)
            if what.startswith("banned"):
                assert body["error"] == "Account suspended"
    assert await db.fetchval("SELECT count(*) FROM invite_codes") == 0
    assert await db.fetchval("SELECT count(*) FROM ban_records") == 0
    # Admin-only routes refuse a moderator.
    _, r = await login(client, "mod@example.com", mod["password"])
    for method, path in (("GET", "/mod/audit"), ("GET", "/mod/ip-bans"), ("GET", "/report/check-ip/192.0.2.7")):
        resp = await client.request(method, path, headers=auth(r["adminToken"]))
        assert resp.status == 403, path
