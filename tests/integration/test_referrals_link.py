"""Guest -> permanent linking keeps everything (issue 13 §2): call history, the intro codes the user
created, the introduction they came through and the ones made to them, and their notifications."""

from __future__ import annotations

import json
import uuid

from test_media_samples import WEBM_HEAD, form, sample

from tests.helpers import auth, guest
from tests.rt import make_user


async def test_linking_a_guest_keeps_history_codes_and_introductions(client, db):
    a = await make_user(client, db, "Alice")
    b = await make_user(client, db, "Bob")
    resp = await client.post("/referral/generate", json={"targetUserId": b["userId"]}, headers=auth(a["sessionToken"]))
    code_to_b = (await resp.json())["referralCode"]
    g = await guest(client, name="Gus", referralCode=code_to_b)  # Gus was introduced to Bob by Alice
    tok, gid = g["sessionToken"], uuid.UUID(g["userId"])
    resp = await client.post("/referral/generate", json={"targetUserId": a["userId"]}, headers=auth(tok))
    gus_code = (await resp.json())["referralCode"]
    newcomer = await guest(client, name="Nina", referralCode=gus_code)  # Gus introduced Nina to Alice
    await db.execute(
        """INSERT INTO call_history (session_id, user_id, room_id, partner_id, partner_name, started_at, ended_at,
               duration_seconds, agreed_seconds, end_reason, messages)
           VALUES ($1, $2, $3, $4, 'Alice', now() - interval '1 minute', now(), 42, 60, 'ended', $5)""",
        uuid.uuid4(), gid, uuid.uuid4(), uuid.UUID(a["userId"]), json.dumps([]))
    # Someone introduced to Gus onboards: Gus gets a notification.
    resp = await client.post("/referral/generate", json={"targetUserId": g["userId"]},
                             headers=auth(a["sessionToken"]))
    to_gus = await guest(client, name="Olive", referralCode=(await resp.json())["referralCode"])
    resp = await client.post("/media/video", data=form("video", sample(WEBM_HEAD, 2048), "intro.webm", "video/webm"),
                             headers=auth(to_gus["sessionToken"]))
    assert resp.status == 200

    async def snapshot():
        history = await (await client.get("/room/history", headers=auth(tok))).json()
        intros = await (await client.get("/referral/my-introductions", headers=auth(tok))).json()
        notes = await (await client.get("/referral/notifications", headers=auth(tok))).json()
        again = await (await client.post("/referral/generate", json={"targetUserId": a["userId"]},
                                         headers=auth(tok))).json()
        row = await db.fetchrow("SELECT introduced_to, introduced_by, introduced_via_code FROM users WHERE id = $1",
                                gid)
        return history, intros, notes, again["referralCode"], dict(row)

    before = await snapshot()
    assert before[0]["history"][0]["duration"] == 42 and before[1]["count"] == 1 and before[2]["unreadCount"] == 1
    assert before[3] == gus_code and before[4]["introduced_via_code"] == code_to_b

    resp = await client.post("/auth/link", json={"sessionToken": tok, "email": "gus@example.com",
                                                 "password": "correct horse"})
    assert resp.status == 200
    assert await snapshot() == before
    # Nina's introduction by Gus still names him, and Alice's deck flags come from the same rows.
    row = await db.fetchrow("SELECT introduced_by FROM users WHERE id = $1", uuid.UUID(newcomer["userId"]))
    assert row["introduced_by"] == gid
    # Logging in from elsewhere finds the same account with everything on it.
    resp = await client.post("/auth/login", json={"email": "gus@example.com", "password": "correct horse"})
    login = await resp.json()
    assert login["userId"] == g["userId"]
    intros = await (await client.get("/referral/my-introductions", headers=auth(login["sessionToken"]))).json()
    assert [i["name"] for i in intros["introductions"]] == ["Olive"]
