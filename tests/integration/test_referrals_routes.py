"""Every /referral route (PROTOCOL.md §2.5, §6 D4 D23) with its errors: codes in Postgres, one per
(introducer, target), public info limited to what the onboarding page needs, direct match with the
target's presence and whether a call is possible, guest signup through a code, the deck flags."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from test_media_samples import WEBM_HEAD, form, sample

from server.app import create_app
from tests.helpers import auth, guest
from tests.rt import make_user

CODE = re.compile(r"^[A-Z0-9]{10}$")


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(referral_lookups_per_minute=5, referral_generate_per_hour=20)


async def _generate(client, token, target_id):
    resp = await client.post("/referral/generate", json={"targetUserId": target_id}, headers=auth(token))
    return resp.status, await resp.json()


async def _intro(client, db):
    """A introduces a newcomer to B: returns (A, B, code)."""
    a = await make_user(client, db, "Alice")
    b = await make_user(client, db, "Bob", gender="male")
    status, body = await _generate(client, a["sessionToken"], b["userId"])
    assert status == 200, body
    return a, b, body["referralCode"]


# ---- POST /referral/generate ----
async def test_generate_returns_one_code_per_introducer_and_target(client, db):
    a, b, code = await _intro(client, db)
    assert CODE.match(code)
    status, again = await _generate(client, a["sessionToken"], b["userId"])
    assert status == 200 and again["referralCode"] == code and again["targetUserName"] == "Bob"
    # Many clicks at once still make one row with one code (the pair is unique in Postgres).
    results = await asyncio.gather(*(_generate(client, a["sessionToken"], b["userId"]) for _ in range(10)))
    assert {r[1]["referralCode"] for r in results} == {code}
    assert await db.fetchval("SELECT count(*) FROM referral_codes") == 1
    # Another introducer of the same target gets a code of their own.
    c = await make_user(client, db, "Carol")
    status, other = await _generate(client, c["sessionToken"], b["userId"])
    assert status == 200 and other["referralCode"] != code
    assert await db.fetchval("SELECT count(*) FROM referral_codes") == 2


async def test_generate_errors(client, db):
    a = await make_user(client, db, "Alice")
    tok = a["sessionToken"]
    assert (await _generate(client, tok, "not-a-uuid"))[0] == 400
    status, body = await _generate(client, tok, str(uuid.uuid4()))
    assert status == 404 and body["error"] == "Target user not found"
    status, body = await _generate(client, tok, a["userId"])
    assert status == 400 and "yourself" in body["error"]
    resp = await client.post("/referral/generate", json={}, headers=auth(tok))
    assert resp.status == 400 and (await resp.json())["error"] == "targetUserId is required"
    resp = await client.post("/referral/generate", json={"targetUserId": a["userId"]})
    assert resp.status == 401 and (await resp.json())["error"] == "Authorization required"
    banned = await make_user(client, db, "Mallory")
    await db.execute("UPDATE users SET ban_status = 'permanent' WHERE id = $1", banned["userId"])
    assert (await _generate(client, tok, banned["userId"]))[0] == 404
    assert await db.fetchval("SELECT count(*) FROM referral_codes") == 0


async def test_generate_is_rate_limited_per_user(client, db):
    a = await make_user(client, db, "Alice")
    targets = [await make_user(client, db, f"T{i}") for i in range(3)]
    for i in range(20):
        assert (await _generate(client, a["sessionToken"], targets[i % 3]["userId"]))[0] == 200
    status, body = await _generate(client, a["sessionToken"], targets[0]["userId"])
    assert status == 429 and body["retryAfter"] >= 1


# ---- GET /referral/info/:code (public) ----
async def test_info_is_public_and_shows_only_what_onboarding_needs(client, db):
    _a, _b, code = await _intro(client, db)
    resp = await client.get(f"/referral/info/{code.lower()}")  # typed in lower case still works
    body = await resp.json()
    assert resp.status == 200, body
    assert body["targetUserName"] == "Bob" and body["introducedBy"] == "Alice"
    assert set(body["targetUser"]) == {"name", "gender", "selfieUrl"}  # no id, video, or presence
    assert body["targetUser"]["gender"] == "male" and body["targetUser"]["selfieUrl"].startswith("http")


@pytest.mark.parametrize("code", ["ZZZZZZZZZZ", "short", "ABCDEFGHIJK", "AB%20CDEFGH"])
async def test_info_unknown_or_malformed_code_is_404(client, db, code):
    resp = await client.get(f"/referral/info/{code}")
    assert resp.status == 404 and (await resp.json())["error"] == "Invalid or expired referral code"


async def test_info_expired_code_and_lookup_rate_limit(client, db):
    _a, _b, code = await _intro(client, db)
    await db.execute("UPDATE referral_codes SET expires_at = now() - interval '1 second'")
    assert (await client.get(f"/referral/info/{code}")).status == 404
    for _ in range(4):  # five lookups per minute per IP in this module, bad or good
        await client.get("/referral/info/ZZZZZZZZZZ")
    resp = await client.get(f"/referral/info/{code}")
    body = await resp.json()
    assert resp.status == 429 and body["retryAfter"] >= 1


async def test_codes_live_in_postgres_and_work_on_another_node(client, db, settings, aiohttp_client):
    _a, _b, code = await _intro(client, db)
    other = await aiohttp_client(create_app(settings))  # a second app: nothing shared in memory
    resp = await other.get(f"/referral/info/{code}")
    assert resp.status == 200 and (await resp.json())["targetUserName"] == "Bob"


async def test_target_status_of_the_original_is_not_served(client, db):
    _a, _b, code = await _intro(client, db)
    resp = await client.get(f"/referral/target-status/{code}")
    assert resp.status == 404 and "error" in await resp.json()


# ---- guest signup with a code, and the deck flags ----
async def test_signup_through_a_code_records_the_introduction_and_flags_the_deck(client, db):
    a, b, code = await _intro(client, db)
    c = await guest(client, name="Cleo", referralCode=code.lower())
    assert c["wasReferred"] is True and c["introducedTo"] == b["userId"] and c["referralCode"] == code
    assert c["targetUser"]["userId"] == b["userId"] and c["targetUser"]["name"] == "Bob"
    row = await db.fetchrow("SELECT introduced_to, introduced_by, introduced_via_code FROM users WHERE id = $1",
                            uuid.UUID(c["userId"]))
    assert (str(row["introduced_to"]), str(row["introduced_by"]), row["introduced_via_code"]) == \
        (b["userId"], a["userId"], code)
    # An unknown code is ignored: the signup works, with no introduction.
    d = await guest(client, name="Dan", referralCode="NOPE000000")
    assert d["wasReferred"] is False and d["targetUser"] is None

    await db.execute("UPDATE users SET paid_status = 'paid', selfie_key = 's', video_key = 'v' WHERE id = $1",
                     uuid.UUID(c["userId"]))
    await db.execute("UPDATE users SET paid_status = 'paid', selfie_key = 's', video_key = 'v' WHERE id = $1",
                     uuid.UUID(d["userId"]))
    from tests.rt import Peer

    url = str(client.make_url("/"))
    peers = [await Peer(url, u["sessionToken"], u["userId"]).connect() for u in (c, d)]
    try:
        for p in peers:
            await p.emit("queue:join")
            await p.wait("queue:update", where=lambda d, p=p: d["userId"] == p.user_id)

        async def deck(user):
            resp = await client.get("/room/queue", headers=auth(user["sessionToken"]))
            assert resp.status == 200
            return {u["name"]: u for u in (await resp.json())["users"]}

        bob_deck = await deck(b)
        assert bob_deck["Cleo"]["wasIntroducedToMe"] is True and bob_deck["Cleo"]["introducedBy"] == "Alice"
        assert bob_deck["Dan"]["wasIntroducedToMe"] is False and bob_deck["Dan"]["introducedBy"] is None
        alice_deck = await deck(a)
        assert alice_deck["Cleo"]["wasIntroducedToMe"] is False and alice_deck["Cleo"]["introducedBy"] is None
    finally:
        for p in peers:
            await p.close()


# ---- POST /referral/direct-match ----
async def _match(client, token, code):
    resp = await client.post("/referral/direct-match", json={"referralCode": code}, headers=auth(token))
    return resp.status, await resp.json()


async def test_direct_match_tells_presence_and_whether_a_call_is_possible(client, db, sockets):
    _a, b, code = await _intro(client, db)
    me = await make_user(client, db, "Mia")
    status, body = await _match(client, me["sessionToken"], code.lower())
    assert status == 200, body
    assert body["success"] is True and body["targetUser"]["userId"] == b["userId"]
    assert body["targetUser"]["name"] == "Bob" and body["introducedBy"] == "Alice"
    assert (body["isOnline"], body["isAvailable"], body["canCall"], body["reason"]) == (False, False, False, "offline")
    assert body["wasIntroduced"] is False

    bob = await sockets(b, "bob")
    status, body = await _match(client, me["sessionToken"], code)
    assert (body["isOnline"], body["isAvailable"], body["canCall"], body["reason"]) == (True, False, False, "busy")
    await bob.emit("queue:join")
    await bob.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    status, body = await _match(client, me["sessionToken"], code)
    assert (body["isOnline"], body["isAvailable"], body["canCall"], body["reason"]) == (True, True, True, None)

    # A cooldown between the two, a report either way, or no access make it not callable.
    mia = await sockets(me, "mia")
    await mia.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
    notify = await bob.wait("call:notify")
    await bob.emit("call:decline", {"inviteId": notify["inviteId"], "reason": "user"})
    await mia.wait("call:declined")
    status, body = await _match(client, me["sessionToken"], code)
    assert (body["isAvailable"], body["canCall"], body["reason"]) == (True, False, "cooldown")

    other = await make_user(client, db, "Olga")
    assert (await _match(client, other["sessionToken"], code))[1]["canCall"] is True
    await db.execute("INSERT INTO reports (reporter_id, reported_id) VALUES ($1, $2)",
                     uuid.UUID(b["userId"]), uuid.UUID(other["userId"]))
    status, body = await _match(client, other["sessionToken"], code)
    assert (body["canCall"], body["reason"], body["isAvailable"]) == (False, "unavailable", False)

    unpaid = await make_user(client, db, "Una", paid=False)
    status, body = await _match(client, unpaid["sessionToken"], code)
    assert status == 200 and (body["canCall"], body["reason"]) == (False, "payment_required")

    status, body = await _match(client, b["sessionToken"], code)  # Bob's own code points at himself
    assert (body["canCall"], body["reason"]) == (False, "self")


async def test_direct_match_flags_the_introduction_it_came_from(client, db):
    _a, _b, code = await _intro(client, db)
    c = await guest(client, name="Cleo", referralCode=code)
    status, body = await _match(client, c["sessionToken"], code)
    assert status == 200 and body["wasIntroduced"] is True and body["introducedBy"] == "Alice"


async def test_direct_match_errors(client, db):
    _a, b, code = await _intro(client, db)
    me = await make_user(client, db, "Mia")
    status, body = await _match(client, me["sessionToken"], "ZZZZZZZZZZ")
    assert status == 404 and body["error"] == "Invalid referral code"
    status, body = await _match(client, me["sessionToken"], "not a code")
    assert status == 404 and body["error"] == "Invalid referral code"
    resp = await client.post("/referral/direct-match", json={}, headers=auth(me["sessionToken"]))
    assert resp.status == 400 and (await resp.json())["error"] == "referralCode is required"
    resp = await client.post("/referral/direct-match", json={"referralCode": 12}, headers=auth(me["sessionToken"]))
    assert resp.status == 400
    resp = await client.post("/referral/direct-match", json={"referralCode": code})
    assert resp.status == 401
    await db.execute("UPDATE users SET ban_status = 'temporary' WHERE id = $1", uuid.UUID(b["userId"]))
    status, body = await _match(client, me["sessionToken"], code)
    assert status == 404 and body["error"] == "Target user not found"
    for _ in range(5):  # lookups are rate-limited per user: a code cannot be guessed here either
        await _match(client, me["sessionToken"], "ZZZZZZZZZZ")
    status, body = await _match(client, me["sessionToken"], code)
    assert status == 429 and body["retryAfter"] >= 1


# ---- notifications and my introductions ----
async def _upload_video(client, token):
    resp = await client.post("/media/video", data=form("video", sample(WEBM_HEAD, 4096), "intro.webm", "video/webm"),
                             headers=auth(token))
    assert resp.status == 200, await resp.text()


async def test_notifications_list_and_mark_read(client, db):
    a, b, code = await _intro(client, db)
    tok = b["sessionToken"]
    resp = await client.get("/referral/notifications", headers=auth(tok))
    assert resp.status == 200 and await resp.json() == {"notifications": [], "unreadCount": 0}

    c = await guest(client, name="Cleo", referralCode=code)
    await _upload_video(client, c["sessionToken"])
    body = await (await client.get("/referral/notifications", headers=auth(tok))).json()
    assert body["unreadCount"] == 1
    [n] = body["notifications"]
    assert set(n) == {"id", "forUserId", "referredUserId", "referredName", "introducedBy", "introducedByName",
                      "timestamp", "read"}
    assert (n["forUserId"], n["referredUserId"], n["referredName"], n["introducedBy"], n["introducedByName"],
            n["read"]) == (b["userId"], c["userId"], "Cleo", a["userId"], "Alice", False)
    assert isinstance(n["timestamp"], int)

    # Only the owner can mark it read; unknown or malformed ids answer success and change nothing.
    for who, nid in ((a, n["id"]), (b, str(uuid.uuid4())), (b, "not-a-uuid")):
        resp = await client.put(f"/referral/notifications/{nid}/read", headers=auth(who["sessionToken"]))
        assert resp.status == 200 and await resp.json() == {"success": True}
    assert (await (await client.get("/referral/notifications", headers=auth(tok))).json())["unreadCount"] == 1
    resp = await client.put(f"/referral/notifications/{n['id']}/read", headers=auth(tok))
    assert resp.status == 200
    body = await (await client.get("/referral/notifications", headers=auth(tok))).json()
    assert body["unreadCount"] == 0 and body["notifications"][0]["read"] is True
    # The introducer and the newcomer have none.
    for other in (a, c):
        body = await (await client.get("/referral/notifications", headers=auth(other["sessionToken"]))).json()
        assert body == {"notifications": [], "unreadCount": 0}
    assert (await client.get("/referral/notifications")).status == 401
    assert (await client.put(f"/referral/notifications/{n['id']}/read")).status == 401


async def test_a_user_without_introduction_creates_no_notification(client, db):
    d = await guest(client, name="Dan")
    await _upload_video(client, d["sessionToken"])
    assert await db.fetchval("SELECT count(*) FROM referral_notifications") == 0


async def test_my_introductions(client, db, sockets):
    a, b, code = await _intro(client, db)
    c = await guest(client, name="Cleo", gender="nonbinary", referralCode=code)
    await guest(client, name="Dan")  # not introduced to anyone
    cleo = await sockets(c, "cleo")
    resp = await client.get("/referral/my-introductions", headers=auth(b["sessionToken"]))
    body = await resp.json()
    assert resp.status == 200 and body["count"] == 1
    [i] = body["introductions"]
    assert (i["userId"], i["name"], i["gender"], i["introducedBy"], i["isOnline"], i["isAvailable"]) == \
        (c["userId"], "Cleo", "nonbinary", "Alice", True, False)
    assert isinstance(i["timestamp"], int) and "selfieUrl" in i and "videoUrl" in i
    await cleo.close()
    body = await (await client.get("/referral/my-introductions", headers=auth(a["sessionToken"]))).json()
    assert body == {"introductions": [], "count": 0}
    assert (await client.get("/referral/my-introductions")).status == 401
