"""Invite codes (PROTOCOL §2.7, §6 D8 D20): validate-code, apply-code and guest signup with a code,
their exact error strings, the shared per-IP attempt budget, redemption races, the QR PNG (decoded
by a real QR reader), moderator code routes (403 for everyone else, audit-logged) and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

from tests.helpers import auth, guest

CODE = "ABCDEFGH12345678"
OTHER = "ZYXWVUTS98765432"


@pytest.fixture
def settings(base_settings):
    # Races sign up many users from one IP; the budget test uses its own, protocol-sized limit.
    return base_settings.with_(code_attempts_per_ip_per_hour=1000, guest_signups_per_ip_per_hour=1000)


async def insert_code(db, code=CODE, kind="user", uses=4, active=True, label="test"):
    max_uses = -1 if kind == "admin" else max(uses, 1)
    remaining = -1 if kind == "admin" else uses
    await db.execute(
        """INSERT INTO invite_codes (code, type, created_by_label, max_uses, uses_remaining, is_active)
           VALUES ($1, $2, $3, $4, $5, $6)""", code, kind, label, max_uses, remaining, active)


async def post(client, path, body, token=None):
    resp = await client.post(path, json=body, headers=auth(token) if token else {})
    return resp.status, await resp.json()


async def status_of(client, token):
    resp = await client.get("/payment/status", headers=auth(token))
    assert resp.status == 200
    return await resp.json()


# ---- validate-code ----

async def test_validate_code_reports_the_code(client, db):
    await insert_code(db, CODE, "user", uses=3, label="Ada")
    await insert_code(db, OTHER, "admin", label="Launch party")
    status, body = await post(client, "/payment/validate-code", {"code": " " + CODE.lower() + " "})
    assert status == 200
    assert (body["valid"], body["type"], body["usesRemaining"], body["createdBy"]) == (True, "user", 3, "Ada")
    status, body = await post(client, "/payment/validate-code", {"code": OTHER})
    assert (status, body["type"], body["usesRemaining"]) == (200, "admin", -1)
    assert await db.fetchval("SELECT uses_remaining FROM invite_codes WHERE code = $1", CODE) == 3  # nothing used


async def test_validate_code_error_strings(client, db):
    await insert_code(db, CODE, uses=4, active=False)
    await insert_code(db, OTHER, uses=0)
    cases = [({}, 400, "Code is required"), ({"code": "short"}, 400, "Invalid code format"),
             ({"code": "QQQQQQQQQQQQQQQQ"}, 404, "Invalid invite code"),
             ({"code": CODE}, 403, "This invite code has been deactivated"),
             ({"code": OTHER}, 403, "This invite code has been fully used")]
    for body, want_status, want_error in cases:
        status, resp = await post(client, "/payment/validate-code", body)
        assert (status, resp["error"]) == (want_status, want_error), body
        assert isinstance(resp["attemptsRemaining"], int)


async def test_one_attempt_budget_across_the_three_code_routes(client, db, base_settings, aiohttp_client):
    """5 attempts per hour per IP, every attempt counts (successes too), whichever route: the sixth on any
    route is refused with §2.7's 429 and changes nothing."""
    from server.app import create_app

    app_client = await aiohttp_client(create_app(base_settings))  # the protocol limit of 5
    await insert_code(db, CODE, "admin")
    user = await guest(app_client, "Eve")
    seen = []
    for kind in ("validate", "apply", "validate", "signup", "apply"):
        if kind == "validate":
            status, body = await post(app_client, "/payment/validate-code", {"code": "QQQQQQQQQQQQQQQQ"})
        elif kind == "apply":
            status, body = await post(app_client, "/payment/apply-code", {"inviteCode": "QQQQQQQQQQQQQQQQ"},
                                      user["sessionToken"])
        else:
            status, body = await post(app_client, "/auth/guest", {"name": "Mallory", "gender": "male",
                                                                  "inviteCode": "QQQQQQQQQQQQQQQQ"})
        assert status in (403, 404), body
        seen.append(body["attemptsRemaining"])
    assert seen == [4, 3, 2, 1, 0]
    users_before = await db.fetchval("SELECT count(*) FROM users")
    # Now even the right code is refused on every route, with the 429 of §2.7 (retryAfter in ms).
    for path, body, token in (("/payment/validate-code", {"code": CODE}, None),
                              ("/payment/apply-code", {"inviteCode": CODE}, user["sessionToken"]),
                              ("/auth/guest", {"name": "Mallory", "gender": "male", "inviteCode": CODE}, None)):
        status, resp = await post(app_client, path, body, token)
        assert status == 429, (path, resp)
        assert resp["error"] == "Too many attempts" and resp["attemptsRemaining"] == 0
        assert 3_500_000 < resp["retryAfter"] <= 3_600_000
        assert resp["message"].startswith("Please wait 60 minutes")
    assert await db.fetchval("SELECT count(*) FROM users") == users_before
    assert await db.fetchval("SELECT count(*) FROM invite_code_redemptions") == 0
    assert (await status_of(app_client, user["sessionToken"]))["paidStatus"] == "unpaid"


# ---- apply-code ----

async def test_apply_code_grants_the_grace_period(client, db):
    await insert_code(db, CODE, uses=4)
    user = await guest(client)
    status, body = await post(client, "/payment/apply-code", {"inviteCode": CODE.lower()}, user["sessionToken"])
    assert status == 200, body
    assert {k: body[k] for k in ("success", "paidStatus", "qrUnlocked", "sessionsNeeded")} == \
        {"success": True, "paidStatus": "qr_grace_period", "qrUnlocked": False, "sessionsNeeded": 4}
    st = await status_of(client, user["sessionToken"])
    assert (st["paidStatus"], st["inviteCodeUsed"], st["hasAccess"]) == ("qr_grace_period", CODE, True)
    # D20: no code of their own before the QR unlock.
    assert (st["myInviteCode"], st["myCodeInfo"], st["inviteCodeUsesRemaining"]) == (None, None, 0)
    assert await db.fetchval("SELECT count(*) FROM invite_codes WHERE owner_user_id IS NOT NULL") == 0
    assert await db.fetchval("SELECT uses_remaining FROM invite_codes WHERE code = $1", CODE) == 3
    status, body = await post(client, "/payment/apply-code", {"inviteCode": CODE}, user["sessionToken"])
    assert (status, body["error"]) == (400, "You already have access")


async def test_apply_code_errors(client, db):
    await insert_code(db, CODE, uses=4, active=False)
    await insert_code(db, OTHER, uses=0)
    user = await guest(client)
    tok = user["sessionToken"]
    assert (await client.post("/payment/apply-code", json={"inviteCode": CODE})).status == 401
    for body, want in (({}, (400, "Invite code is required")), ({"inviteCode": "  "}, (400, "Invite code is required")),
                       ({"inviteCode": "QQQQQQQQQQQQQQQQ"}, (403, "Invalid invite code")),
                       ({"inviteCode": "bad!"}, (403, "Invalid invite code")),
                       ({"inviteCode": CODE}, (403, "This invite code has been deactivated")),
                       ({"inviteCode": OTHER}, (403, "This invite code has been fully used")),
                       ({"inviteCode": 42}, (400, "Invalid invite code"))):
        status, resp = await post(client, "/payment/apply-code", body, tok)
        assert (status, resp["error"]) == want, body
    # Someone whose access was withdrawn cannot use the same code twice.
    await db.execute("UPDATE invite_codes SET is_active = true, uses_remaining = 4 WHERE code = $1", CODE)
    assert (await post(client, "/payment/apply-code", {"inviteCode": CODE}, tok))[0] == 200
    await db.execute("UPDATE users SET paid_status = 'unpaid' WHERE id = $1", uuid.UUID(user["userId"]))
    status, resp = await post(client, "/payment/apply-code", {"inviteCode": CODE}, tok)
    assert (status, resp["error"]) == (403, "You have already used this invite code")
    assert await db.fetchval("SELECT uses_remaining FROM invite_codes WHERE code = $1", CODE) == 3
    assert await db.fetchval("SELECT count(*) FROM invite_code_redemptions") == 1


async def test_50_concurrent_redemptions_of_a_4_use_code(client, db):
    await insert_code(db, CODE, uses=4)
    users = [await guest(client, f"U{i}") for i in range(50)]
    results = await asyncio.gather(*(post(client, "/payment/apply-code", {"inviteCode": CODE}, u["sessionToken"])
                                     for u in users))
    statuses = sorted(s for s, _ in results)
    assert statuses.count(200) == 4, statuses
    assert {b["error"] for s, b in results if s != 200} == {"This invite code has been fully used"}
    assert await db.fetchval("SELECT uses_remaining FROM invite_codes WHERE code = $1", CODE) == 0
    assert await db.fetchval("SELECT count(*) FROM invite_code_redemptions") == 4
    assert await db.fetchval("SELECT count(*) FROM users WHERE paid_status = 'qr_grace_period'") == 4


async def test_concurrent_guest_signups_with_one_code(client, db):
    await insert_code(db, CODE, uses=4)
    results = await asyncio.gather(*(post(client, "/auth/guest", {"name": f"G{i}", "gender": "male",
                                                                  "inviteCode": CODE}) for i in range(20)))
    ok = [b for s, b in results if s == 200]
    assert len(ok) == 4 and all(b["paidStatus"] == "qr_grace_period" for b in ok)
    assert {(s, b["error"], b["requiresPayment"]) for s, b in results if s != 200} == \
        {(403, "This invite code has been fully used", True)}
    assert await db.fetchval("SELECT count(*) FROM users") == 4  # refused signups leave no user behind
    assert await db.fetchval("SELECT count(*) FROM invite_codes WHERE owner_user_id IS NOT NULL") == 0  # D20


async def test_one_user_redeeming_two_codes_at_once_gets_in_once(client, db):
    await insert_code(db, CODE, uses=10)
    await insert_code(db, OTHER, uses=10)
    for _ in range(5):  # a few rounds: the interleaving differs from run to run
        user = await guest(client)
        results = await asyncio.gather(*(post(client, "/payment/apply-code", {"inviteCode": c}, user["sessionToken"])
                                         for c in (CODE, OTHER)))
        assert sorted(s for s, _ in results) == [200, 400], results
        assert [b["error"] for s, b in results if s == 400] == ["You already have access"]
        assert await db.fetchval("SELECT count(*) FROM invite_code_redemptions WHERE user_id = $1",
                                 uuid.UUID(user["userId"])) == 1
    assert await db.fetchval("SELECT sum(10 - uses_remaining) FROM invite_codes") == 5


# ---- status and the paywall switch ----

async def test_status_of_a_new_user(client):
    user = await guest(client)
    assert await status_of(client, user["sessionToken"]) == {
        "paidStatus": "unpaid", "paidAt": None, "myInviteCode": None, "inviteCodeUsesRemaining": 0,
        "myCodeInfo": None, "inviteCodeUsed": None, "qrUnlocked": False, "qrUnlockedAt": None,
        "successfulSessions": 0, "sessionsNeeded": 4, "hasAccess": False, "requiresPayment": True,
        "paywall": True, "accountPaidStatus": "unpaid"}
    assert (await client.get("/payment/status")).status == 401


async def test_paywall_off_reports_provisional_access(base_settings, aiohttp_client, db):
    """REQUIRE_PAYMENT=false: the original client must go from onboarding to the deck, so an unpaid user
    is reported as qr_grace_period (never as paid); the stored truth stays unpaid."""
    from server.app import create_app

    open_client = await aiohttp_client(create_app(base_settings.with_(require_payment=False)))
    user = await guest(open_client)
    assert (user["paidStatus"], user["accountPaidStatus"], user["requiresPayment"], user["paywall"]) == \
        ("qr_grace_period", "unpaid", False, False)
    st = await status_of(open_client, user["sessionToken"])
    assert (st["paidStatus"], st["accountPaidStatus"], st["hasAccess"]) == ("qr_grace_period", "unpaid", True)
    me = await (await open_client.get("/user/me", headers=auth(user["sessionToken"]))).json()
    assert (me["paidStatus"], me["accountPaidStatus"]) == ("qr_grace_period", "unpaid")
    assert await db.fetchval("SELECT paid_status FROM users") == "unpaid"


# ---- QR PNG ----

def decode_qr(zbarimg: str, png: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(png)
        f.flush()
        out = subprocess.run([zbarimg, "--quiet", "--raw", f.name], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def test_qr_png_decodes_to_the_onboarding_url(client, db, settings):
    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        pytest.fail("zbarimg not found: deploy/bootstrap.sh test installs zbar-tools")
    await insert_code(db, CODE, "admin")
    resp = await client.get(f"/payment/qr/{CODE}")
    assert resp.status == 200 and resp.content_type == "image/png"
    assert resp.headers["Cache-Control"] == "public, max-age=86400"
    png = await resp.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    assert 250 <= width <= 300
    assert decode_qr(zbarimg, png) == f"{settings.frontend_url}/onboarding?inviteCode={CODE}"
    again = await client.get(f"/payment/qr/{CODE}")  # served from the cache, same bytes
    assert await again.read() == png


@pytest.mark.parametrize("code", ["QQQQQQQQQQQQQQQQ", "short", "abcdefgh12345678"])
async def test_qr_for_unknown_code_is_404_text(client, code):
    resp = await client.get(f"/payment/qr/{code}")
    assert resp.status == 404 and resp.content_type == "text/plain"
    assert await resp.text() == "Code not found"


# ---- moderator routes ----

ADMIN_ROUTES = [("POST", "/payment/admin/generate-code", {"label": "x"}), ("GET", "/payment/admin/codes", None),
                ("POST", "/payment/admin/deactivate-code", {"code": CODE})]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
async def test_admin_routes_refuse_everyone_but_moderators(client, db, method, path, body):
    await insert_code(db, CODE, "admin")
    user = await guest(client)
    await db.execute("UPDATE users SET paid_status = 'paid' WHERE id = $1", uuid.UUID(user["userId"]))
    anon = await client.request(method, path, json=body)
    assert anon.status == 401
    resp = await client.request(method, path, json=body, headers=auth(user["sessionToken"]))
    assert resp.status == 403 and (await resp.json())["error"] == "Moderator access required"
    assert await db.fetchval("SELECT count(*) FROM invite_codes") == 1
    assert await db.fetchval("SELECT is_active FROM invite_codes") is True
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_moderator_generates_lists_and_deactivates_codes(client, db):
    mod = await guest(client, "Mod")
    await db.execute("UPDATE users SET role = 'moderator' WHERE id = $1", uuid.UUID(mod["userId"]))
    h = auth(mod["sessionToken"])
    resp = await client.post("/payment/admin/generate-code", headers=h)  # no body: default label
    body = await resp.json()
    assert resp.status == 200 and body["qrCodeUrl"] == f"/payment/qr/{body['code']}"
    code = body["code"]
    listed = await (await client.get("/payment/admin/codes", headers=h)).json()
    assert listed["total"] == 1
    row = listed["codes"][0]
    assert {k: row[k] for k in ("code", "type", "createdBy", "maxUses", "usesRemaining", "totalUsed", "isActive")} \
        == {"code": code, "type": "admin", "createdBy": "Admin QR Code", "maxUses": -1, "usesRemaining": -1,
            "totalUsed": 0, "isActive": True}
    newcomer = await guest(client, "New", inviteCode=code)
    assert newcomer["paidStatus"] == "qr_grace_period"
    resp = await client.post("/payment/admin/deactivate-code", json={"code": code.lower()}, headers=h)
    assert resp.status == 200 and (await resp.json())["success"] is True
    late = await client.post("/auth/guest", json={"name": "Late", "gender": "male", "inviteCode": code})
    assert late.status == 403 and (await late.json())["error"] == "This invite code has been deactivated"
    for body, want in (({"code": "QQQQQQQQQQQQQQQQ"}, 404), ({}, 400), ({"code": 5}, 400)):
        assert (await client.post("/payment/admin/deactivate-code", json=body, headers=h)).status == want
    audit = await db.fetch("SELECT actor_label, actor_user_id::text AS actor, action, details FROM audit_log "
                           "ORDER BY id")
    assert [a["action"] for a in audit] == ["invite_code_created", "invite_codes_listed", "invite_code_deactivated"]
    assert all(a["actor_label"] == f"moderator:{mod['userId']}" and a["actor"] == mod["userId"] for a in audit)
    assert json.loads(audit[2]["details"]) == {"code": code, "wasActive": True}


# ---- operator CLI ----

def run_cli(stack, *args):
    env = {**os.environ, **stack.env(), "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_codes_cli(client, db, stack):
    made = run_cli(stack, "codes", "create", "--label", "Campus fair", "--uses", "10")
    assert made.returncode == 0, made.stderr
    code = made.stdout.split()[0]
    row = await db.fetchrow("SELECT type, max_uses, uses_remaining, created_by_label, is_active FROM invite_codes")
    assert dict(row) == {"type": "user", "max_uses": 10, "uses_remaining": 10, "created_by_label": "Campus fair",
                         "is_active": True}
    unlimited = run_cli(stack, "codes", "create", "--label", "Staff")
    assert unlimited.returncode == 0 and "unlimited" in unlimited.stdout
    listed = run_cli(stack, "codes", "list")
    assert listed.returncode == 0 and code in listed.stdout and "Campus fair" in listed.stdout
    off = run_cli(stack, "codes", "deactivate", code)
    assert off.returncode == 0 and f"deactivated {code}" in off.stdout
    assert await db.fetchval("SELECT is_active FROM invite_codes WHERE code = $1", code) is False
    missing = run_cli(stack, "codes", "deactivate", "QQQQQQQQQQQQQQQQ")
    assert missing.returncode == 2 and "no invite code" in missing.stderr
    assert [r["action"] for r in await db.fetch("SELECT action FROM audit_log WHERE actor_label = 'cli' ORDER BY id")] \
        == ["invite_code_created", "invite_code_created", "invite_code_deactivated"]
