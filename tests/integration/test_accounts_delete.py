"""DELETE /user/me (issue 13 §2): the account's S3 objects, sessions and live sockets go, a call in
progress ends normally for the partner, whose history still renders (anonymised); payments, reports
against the user and bans stay, so a banned user cannot wipe the record; idempotent; audit-logged."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis
from test_media_samples import JPEG_HEAD, WEBM_HEAD, form, pending_multipart, sample, user_objects

from server.accounts import access
from server.deps import DEPS
from tests.helpers import auth, guest, permanent
from tests.rt import in_call, make_user


async def _upload(client, token, kind):
    head, name, ctype = (JPEG_HEAD, "selfie.jpg", "image/jpeg") if kind == "selfie" else \
        (WEBM_HEAD, "intro.webm", "video/webm")
    resp = await client.post(f"/media/{kind}", data=form(kind, sample(head, 6 * 1024 * 1024 if kind == "video"
                                                                          else 4096), name, ctype),
                             headers=auth(token))
    assert resp.status == 200, await resp.text()


async def _delete(client, token, **body):
    resp = await client.delete("/user/me", json=body or None, headers=auth(token))
    return resp.status, await resp.json()


async def test_deletion_leaves_no_object_session_or_socket_and_the_partner_history_renders(
        client, db, s3, settings, sockets):
    a = await guest(client, name="Ada")
    await _upload(client, a["sessionToken"], "selfie")
    await _upload(client, a["sessionToken"], "video")
    bucket = settings.s3_bucket
    # Leftovers a deletion must find too: an object nothing references and an unfinished multipart upload.
    s3.put_object(Bucket=bucket, Key=f"users/{a['userId']}/intro-1000000000000.webm", Body=b"x")
    s3.create_multipart_upload(Bucket=bucket, Key=f"users/{a['userId']}/intro-2000000000000.webm")
    assert len(user_objects(s3, bucket, a["userId"])) == 3 and pending_multipart(s3, bucket, a["userId"])
    await db.execute("UPDATE users SET paid_status = 'paid', email = NULL WHERE id = $1", uuid.UUID(a["userId"]))
    await access.changed(client.app[DEPS], a["userId"], "paid")  # as a payment does: nodes drop cached sessions
    b = await make_user(client, db, "Bea")

    # One finished call with chat and shared socials, then a second call in progress.
    pa, pb = await sockets(a, "ada"), await sockets(b, "bea")
    start = await in_call(pa, pb)
    room = start["roomId"]
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
    await pa.emit("room:chat", {"roomId": room, "text": "hi from Ada"})
    await pb.emit("room:chat", {"roomId": room, "text": "hi from Bea"})
    await pa.emit("room:giveSocial", {"roomId": room, "socials": {"instagram": "ada.handle"}})
    await pb.wait("room:socialShared")
    await asyncio.sleep(5.2)  # history is kept for calls of 5 s or more
    await pa.emit("call:end", {"roomId": room})
    await pb.wait("session:finalized")
    await pa.wait("session:finalized")
    # Let them call again at once (a finished call sets a 24 h cooldown).
    await db.execute("DELETE FROM cooldowns")

    r = aioredis.from_url(settings.redis_url)
    try:
        for key in await r.keys("cd:*"):
            await r.delete(key)
    finally:
        await r.aclose()
    second = await in_call(pa, pb)
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": second["roomId"]})
        await p.wait("room:joined")

    status, body = await _delete(client, a["sessionToken"])
    assert status == 200 and body == {"success": True, "deleted": True, "complete": True}

    # Live: the user's socket is told and closed; the partner gets the normal end of the call.
    invalidated = await pa.wait("session:invalidated", timeout=10)
    assert invalidated["reason"] == "account_deleted"
    assert await pa.disconnected(within=10)
    await pb.wait("peer:disconnected", timeout=10)
    fin = await pb.wait("session:finalized", timeout=10)
    assert fin["sessionId"] == second["sessionId"]

    # Storage and sessions: nothing left.
    assert user_objects(s3, bucket, a["userId"]) == [] and pending_multipart(s3, bucket, a["userId"]) == []
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", uuid.UUID(a["userId"])) == 0
    resp = await client.get("/user/me", headers=auth(a["sessionToken"]))
    assert resp.status == 401 and (await resp.json())["error"] == "Invalid or expired session"
    assert (await client.get("/room/queue", headers=auth(b["sessionToken"]))).status == 200
    assert await db.fetchval("SELECT count(*) FROM call_history WHERE user_id = $1", uuid.UUID(a["userId"])) == 0

    # The partner's history still renders: the call and what was said, but not who said it.
    resp = await client.get("/room/history", headers=auth(b["sessionToken"]))
    assert resp.status == 200
    [call] = (await resp.json())["history"]
    assert call["partnerName"] == "Deleted user" and call["partnerId"] is None
    texts = [(m["from"], m.get("text")) for m in call["messages"]]
    assert ("deleted-user", "hi from Ada") in texts and (b["userId"], "hi from Bea") in texts
    assert all(m["from"] != a["userId"] for m in call["messages"])
    assert "ada.handle" not in str(call)

    # The tombstone and the audit trail.
    row = await db.fetchrow("SELECT name, email, selfie_key, video_key, socials, deleted_at FROM users WHERE id = $1",
                            uuid.UUID(a["userId"]))
    assert row["name"] == "Deleted user" and row["selfie_key"] is None and row["video_key"] is None
    assert row["socials"] in ({}, "{}") and row["deleted_at"] is not None
    actions = [r["action"] for r in await db.fetch(
        "SELECT action FROM audit_log WHERE target_user_id = $1 ORDER BY id", uuid.UUID(a["userId"]))]
    assert actions == ["account.deletion_requested", "account.deleted"]


async def test_a_permanent_account_needs_its_password_or_a_fresh_sign_in(client, db):
    u = await permanent(client, "ada@example.com", password="correct horse")
    uid = uuid.UUID(u["userId"])
    await db.execute("UPDATE sessions SET created_at = now() - interval '1 hour' WHERE user_id = $1", uid)
    status, body = await _delete(client, u["sessionToken"])
    assert status == 403 and body["code"] == "reauth_required" and body["error"] == "Password required"
    status, body = await _delete(client, u["sessionToken"], password="wrong horse")
    assert status == 403 and body["error"] == "Invalid credentials"
    resp = await client.delete("/user/me", json={"password": 5}, headers=auth(u["sessionToken"]))
    assert resp.status == 400
    assert (await client.delete("/user/me")).status == 401
    assert await db.fetchval("SELECT deleted_at FROM users WHERE id = $1", uid) is None  # nothing changed
    assert (await client.get("/user/me", headers=auth(u["sessionToken"]))).status == 200

    status, body = await _delete(client, u["sessionToken"], password="correct horse")
    assert status == 200 and body["deleted"] is True
    # The email is free again (the account was not banned) and login no longer finds the old account.
    resp = await client.post("/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
    assert resp.status == 401
    again = await permanent(client, "ada@example.com", password="correct horse")
    assert again["userId"] != u["userId"]

    # Freshly signed in: no password needed.
    resp = await client.post("/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
    fresh = (await resp.json())["sessionToken"]
    status, body = await _delete(client, fresh)
    assert status == 200 and body["deleted"] is True


async def test_a_banned_user_cannot_wipe_the_record(client, db):
    u = await permanent(client, "mal@example.com", password="correct horse", name="Mal")
    other = await guest(client, name="Rita")
    uid, oid = uuid.UUID(u["userId"]), uuid.UUID(other["userId"])
    await db.execute("INSERT INTO reports (reporter_id, reported_id, reason) VALUES ($1, $2, 'rude')", oid, uid)
    await db.execute("INSERT INTO ban_records (user_id, banned_reason, report_count) VALUES ($1, 'rude', 1)", uid)
    await db.execute("UPDATE users SET ban_status = 'permanent' WHERE id = $1", uid)
    await db.execute("INSERT INTO payments (user_id, stripe_checkout_session_id, amount_cents, currency, status) "
                     "VALUES ($1, 'cs_test_1', 50, 'usd', 'completed')", uid)

    status, body = await _delete(client, u["sessionToken"], password="correct horse")
    assert status == 200 and body["deleted"] is True
    assert await db.fetchval("SELECT ban_status FROM users WHERE id = $1", uid) == "permanent"
    assert await db.fetchval("SELECT count(*) FROM ban_records WHERE user_id = $1", uid) == 1
    assert await db.fetchval("SELECT count(*) FROM reports WHERE reported_id = $1", uid) == 1
    assert await db.fetchval("SELECT count(*) FROM payments WHERE user_id = $1", uid) == 1
    assert await db.fetchval("SELECT email FROM users WHERE id = $1", uid) is None
    # Coming back with the same email is refused.
    g = await guest(client, name="Mal again")
    resp = await client.post("/auth/link", json={"sessionToken": g["sessionToken"], "email": "MAL@example.com",
                                                 "password": "correct horse"})
    body = await resp.json()
    assert resp.status == 403 and body["error"] == "Account suspended"
    assert await db.fetchval("SELECT account_type FROM users WHERE id = $1", uuid.UUID(g["userId"])) == "guest"


async def test_deletion_is_idempotent_under_concurrent_requests(client, db, s3, settings):
    a = await guest(client, name="Ada")
    await _upload(client, a["sessionToken"], "selfie")
    results = await asyncio.gather(*(_delete(client, a["sessionToken"]) for _ in range(6)))
    statuses = sorted(s for s, _ in results)
    assert set(statuses) <= {200, 401} and 200 in statuses, results
    assert all(b.get("deleted") for s, b in results if s == 200)
    uid = uuid.UUID(a["userId"])
    job = await db.fetchrow("SELECT completed_at FROM account_deletions WHERE user_id = $1", uid)
    assert job["completed_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE target_user_id = $1 AND action = "
                             "'account.deleted'", uid) == 1
    assert user_objects(s3, settings.s3_bucket, a["userId"]) == []
    # Asking again changes nothing: the token no longer exists.
    status, _body = await _delete(client, a["sessionToken"])
    assert status == 401
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE target_user_id = $1", uid) == 2


async def test_deleting_removes_the_account_from_introductions(client, db):
    a = await make_user(client, db, "Alice")
    b = await make_user(client, db, "Bob")
    resp = await client.post("/referral/generate", json={"targetUserId": b["userId"]}, headers=auth(a["sessionToken"]))
    code = (await resp.json())["referralCode"]
    c = await guest(client, name="Cleo", referralCode=code)
    status, _ = await _delete(client, b["sessionToken"])
    assert status == 200
    assert (await client.get(f"/referral/info/{code}")).status == 404
    assert await db.fetchval("SELECT count(*) FROM referral_codes") == 0
    row = await db.fetchrow("SELECT introduced_to, introduced_by FROM users WHERE id = $1", uuid.UUID(c["userId"]))
    assert row["introduced_to"] is None and str(row["introduced_by"]) == a["userId"]
    status, _body = await _delete(client, a["sessionToken"])
    assert status == 200
    assert await db.fetchval("SELECT introduced_by FROM users WHERE id = $1", uuid.UUID(c["userId"])) is None


@pytest.mark.parametrize("body", ['"x"', "[1]", "{bad"])
async def test_bad_bodies_are_400_and_change_nothing(client, db, body):
    a = await guest(client, name="Ada")
    resp = await client.delete("/user/me", data=body, headers={**auth(a["sessionToken"]),
                                                                "Content-Type": "application/json"})
    assert resp.status == 400
    assert (await client.get("/user/me", headers=auth(a["sessionToken"]))).status == 200


@pytest.mark.parametrize("first_chunk", [128 * 1024, 6 * 1024 * 1024], ids=["one-put", "multipart"])
async def test_an_upload_in_flight_when_the_account_is_deleted_leaves_nothing(client, db, s3, settings, first_chunk):
    a = await guest(client, name="Ada")
    gate = asyncio.Event()

    async def body():
        yield WEBM_HEAD + bytes(first_chunk)  # 6 MB: past one S3 part, so a multipart upload is open
        await gate.wait()
        yield bytes(64 * 1024)

    mp = aiohttp.MultipartWriter("form-data")
    part = mp.append(aiohttp.payload.AsyncIterablePayload(body()), {"Content-Type": "video/webm"})
    part.set_content_disposition("form-data", name="video", filename="intro.webm")
    upload = asyncio.create_task(client.post("/media/video", data=mp, headers=auth(a["sessionToken"])))
    r = aioredis.from_url(settings.redis_url)
    try:
        for _ in range(200):  # the upload was authenticated (it counted against the upload rate)
            if await r.exists(f"rl:media:{a['userId']}") and (
                    first_chunk < 5 * 1024 * 1024 or pending_multipart(s3, settings.s3_bucket, a["userId"])):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the upload never started")
    finally:
        await r.aclose()
    status, body_ = await _delete(client, a["sessionToken"])
    assert status == 200 and body_["complete"] is True
    gate.set()
    resp = await upload
    # Refused, never stored: the object it wrote is removed (401) or its multipart upload was aborted (503).
    assert resp.status == (401 if first_chunk < 5 * 1024 * 1024 else 503), await resp.text()
    assert user_objects(s3, settings.s3_bucket, a["userId"]) == []
    assert pending_multipart(s3, settings.s3_bucket, a["userId"]) == []
    assert await db.fetchval("SELECT video_key FROM users WHERE id = $1", uuid.UUID(a["userId"])) is None
