"""The QR unlock (PROTOCOL §2.7 grace-period rule, §3.3 qr:unlocked, §6 D18 D20, §7 E11): a call counts
for both participants when it lasted >= 30 s measured from media connect; the 4th such call unlocks
(qr_grace_period -> qr_verified), mints the user's own 4-use code exactly once and tells their sockets.
Call length is simulated by moving the room's timestamps back, never by waiting."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from server.deps import DEPS
from tests.helpers import auth
from tests.rt import in_call, make_user


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(timer_poll_seconds=0.05, guest_signups_per_ip_per_hour=1000)


async def call_lasting(client, sockets, pa, partner_user, connected_s: int, started_s: int | None = None) -> None:
    """One finished call between pa and a new socket of partner_user: media connected on both sides
    `connected_s` ago (accepted `started_s` ago), then ended by pa."""
    r = client.app[DEPS].redis
    pb = await sockets(partner_user, partner_user["name"])
    start = await in_call(pa, pb, seconds=120)
    room = start["roomId"]
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined", where=lambda d: d["roomId"] == room)
        await p.emit("call:connected", {"roomId": room})
    for _ in range(100):  # both sides' reports recorded
        if await r.hget(f"room:{room}", "ca") and await r.hget(f"room:{room}", "cb"):
            break
        await asyncio.sleep(0.02)
    now = int(await r.hget(f"room:{room}", "ca"))
    await r.hset(f"room:{room}", mapping={"ca": now - connected_s * 1000, "cb": now - connected_s * 1000,
                                          "started": now - (started_s or connected_s) * 1000})
    await pa.emit("call:end", {"roomId": room})
    await pa.wait("session:finalized", where=lambda d: d["sessionId"] == start["sessionId"])
    await pa.wait("metrics:update")  # after the durable write and any qr:unlocked
    await pb.close()


async def grace_user(client, db, name="Quinn"):
    u = await make_user(client, db, name)
    await db.execute("UPDATE users SET paid_status = 'qr_grace_period' WHERE id = $1", uuid.UUID(u["userId"]))
    u["name"] = name
    return u


async def partners(client, db, n):
    out = []
    for i in range(n):
        p = await make_user(client, db, f"Partner{i}", gender="male")
        p["name"] = f"Partner{i}"
        out.append(p)
    return out


async def test_four_calls_of_30_seconds_unlock_and_mint_once(client, db, sockets):
    q = await grace_user(client, db)
    pq = await sockets(q, "Q")
    others = await partners(client, db, 5)
    for p in others[:3]:
        await call_lasting(client, sockets, pq, p, connected_s=31)
    row = await db.fetchrow("SELECT successful_sessions, qr_unlocked_at, paid_status FROM users WHERE id = $1",
                            uuid.UUID(q["userId"]))
    assert (row["successful_sessions"], row["qr_unlocked_at"], row["paid_status"]) == (3, None, "qr_grace_period")
    assert pq.all("qr:unlocked") == []
    assert await db.fetchval("SELECT count(*) FROM invite_codes") == 0

    await call_lasting(client, sockets, pq, others[3], connected_s=31)
    unlocked = await pq.wait("qr:unlocked")
    assert unlocked["sessionsCompleted"] == 4
    status = await (await client.get("/payment/status", headers=auth(q["sessionToken"]))).json()
    assert (status["paidStatus"], status["qrUnlocked"], status["successfulSessions"]) == ("qr_verified", True, 4)
    assert status["qrUnlockedAt"] is not None
    code = status["myInviteCode"]
    assert code and status["myCodeInfo"] == {"code": code, "usesRemaining": 4, "maxUses": 4, "totalUsed": 0,
                                             "type": "user", "isActive": True}
    assert status["inviteCodeUsesRemaining"] == 4
    # A fifth qualifying call neither unlocks again nor mints another code (D18 ">= 4 and not yet", D20).
    await call_lasting(client, sockets, pq, others[4], connected_s=40)
    await pq.quiet("qr:unlocked", 0.2)
    assert await db.fetchval("SELECT count(*) FROM invite_codes WHERE owner_user_id = $1", uuid.UUID(q["userId"])) == 1
    assert await db.fetchval("SELECT successful_sessions FROM users WHERE id = $1", uuid.UUID(q["userId"])) == 5
    # The partners each had one qualifying call: counted, not unlocked, no code.
    assert await db.fetchval("SELECT count(*) FROM users WHERE successful_sessions = 1 AND qr_unlocked_at IS NULL") \
        == 5
    # The minted code works for a newcomer.
    resp = await client.post("/auth/guest", json={"name": "Friend", "gender": "female", "inviteCode": code})
    assert resp.status == 200 and (await resp.json())["paidStatus"] == "qr_grace_period"


async def test_short_calls_do_not_count_even_when_accepted_long_ago(client, db, sockets):
    """Duration runs from media connect when both sides reported it (E11): idling in an unconnected
    room for minutes earns nothing (D18)."""
    q = await grace_user(client, db)
    pq = await sockets(q, "Q")
    for p in await partners(client, db, 4):
        await call_lasting(client, sockets, pq, p, connected_s=20, started_s=600)
    row = await db.fetchrow("SELECT successful_sessions, session_count, qr_unlocked_at FROM users WHERE id = $1",
                            uuid.UUID(q["userId"]))
    assert (row["successful_sessions"], row["session_count"], row["qr_unlocked_at"]) == (0, 4, None)
    assert pq.all("qr:unlocked") == []
    assert await db.fetchval("SELECT count(*) FROM invite_codes") == 0
