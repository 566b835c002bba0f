"""GET /user/me/export (issue 13 §2): everything held about the user, short-lived links to their media,
no secrets, and nothing private about anyone else."""

from __future__ import annotations

import json
import uuid

from test_media_samples import JPEG_HEAD, fetch, form, sample

from tests.helpers import auth, guest, permanent


async def test_export_has_everything_about_the_user_and_nothing_else(client, db):
    a = await permanent(client, "ada@example.com", password="correct horse", name="Ada")
    b = await permanent(client, "bea-secret@example.com", password="another horse", name="Bea")
    aid, bid = uuid.UUID(a["userId"]), uuid.UUID(b["userId"])
    selfie = sample(JPEG_HEAD, 5000, random=True)
    resp = await client.post("/media/selfie", data=form("selfie", selfie, "selfie.jpg", "image/jpeg"),
                             headers=auth(a["sessionToken"]))
    assert resp.status == 200
    await db.execute("UPDATE sessions SET ip = '10.9.8.7', user_agent = 'BeaBrowser/1' WHERE user_id = $1", bid)
    # A call both had; reports both ways; a payment; codes; an introduction; an audit entry each.
    sid, room = uuid.uuid4(), uuid.uuid4()
    for me, other, name in ((aid, bid, "Bea"), (bid, aid, "Ada")):
        await db.execute(
            """INSERT INTO call_history (session_id, user_id, room_id, partner_id, partner_name, started_at, ended_at,
                   duration_seconds, agreed_seconds, end_reason, messages)
               VALUES ($1, $2, $3, $4, $5, now() - interval '2 minutes', now(), 60, 60, 'ended', $6)""",
            sid, me, room, other, name, json.dumps([{"from": str(bid), "text": "hello Ada", "type": "message",
                                                     "timestamp": 1}]))
    await db.execute("INSERT INTO reports (reporter_id, reported_id, reason, reporter_ip) "
                     "VALUES ($1, $2, 'spam', '10.1.1.1')", aid, bid)
    await db.execute("INSERT INTO reports (reporter_id, reported_id, reason, reporter_ip) "
                     "VALUES ($1, $2, 'rude', '10.9.8.7')", bid, aid)
    await db.execute("INSERT INTO payments (user_id, stripe_checkout_session_id, amount_cents, currency, status) "
                     "VALUES ($1, 'cs_ada', 50, 'usd', 'completed'), ($2, 'cs_bea_secret', 50, 'usd', 'completed')",
                     aid, bid)
    await db.execute("INSERT INTO audit_log (actor_user_id, actor_label, action, target_user_id, details, before, "
                     "after, ip) VALUES ($1, 'moderator:Bea', 'user.ban', $2, $3, '\"none\"', '\"temporary\"', "
                     "'10.9.8.7')", bid, aid, json.dumps({"note": "Bea's private note"}))
    resp = await client.post("/referral/generate", json={"targetUserId": b["userId"]}, headers=auth(a["sessionToken"]))
    code = (await resp.json())["referralCode"]
    await guest(client, name="Cleo", referralCode=code)
    resp = await client.post("/referral/generate", json={"targetUserId": a["userId"]}, headers=auth(b["sessionToken"]))
    await guest(client, name="Dan", referralCode=(await resp.json())["referralCode"])

    resp = await client.get("/user/me/export", headers=auth(a["sessionToken"]))
    assert resp.status == 200
    assert "attachment" in resp.headers["Content-Disposition"] and resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    text = json.dumps(body)

    assert body["profile"]["userId"] == a["userId"] and body["profile"]["email"] == "ada@example.com"
    assert [s["current"] for s in body["sessions"]] == [True] and "ip" in body["sessions"][0]
    [call] = body["callHistory"]
    assert call["partnerName"] == "Bea" and call["messages"][0]["text"] == "hello Ada"
    [made] = body["reportsMade"]
    assert made["reportedName"] == "Bea" and made["reason"] == "spam" and made["yourIp"] == "10.1.1.1"
    assert [p["checkoutSessionId"] for p in body["payments"]] == ["cs_ada"]
    assert [c["code"] for c in body["introductions"]["codesCreated"]] == [code]
    assert [i["name"] for i in body["introductions"]["introducedToYou"]] == ["Dan"]
    [entry] = [e for e in body["auditLog"] if e["action"] == "user.ban"]
    assert entry == {"action": "user.ban", "by": "moderator", "before": "none", "after": "temporary",
                     "at": entry["at"]}
    [obj] = body["media"]["objects"]
    assert obj["current"] == "selfie" and f"X-Amz-Expires={body['media']['linksExpireInSeconds']}" in obj["url"]
    status, _ctype, data = await fetch(obj["url"])
    assert status == 200 and data == selfie

    # No secrets, and nothing private of Bea's: her email, IP, browser, payment, or that she reported Ada.
    for secret in ("password", "token", "hash", "bea-secret@example.com", "10.9.8.7", "BeaBrowser", "cs_bea_secret",
                   "rude", "private note"):
        assert secret not in text.lower(), secret


async def test_export_errors_and_limit(client, db, settings):
    assert (await client.get("/user/me/export")).status == 401
    a = await guest(client, name="Ada")
    for _ in range(settings.exports_per_hour):
        assert (await client.get("/user/me/export", headers=auth(a["sessionToken"]))).status == 200
    resp = await client.get("/user/me/export", headers=auth(a["sessionToken"]))
    assert resp.status == 429 and (await resp.json())["retryAfter"] >= 1
