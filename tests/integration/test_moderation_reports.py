"""Reports and the auto-ban on one node (PROTOCOL §2.6, §5, §6 D9/D10/D16/D23/D30): duplicates raced,
shared rooms verified against call history, the ban decided once, check-ban, blacklist, review, and
the ban's effect on HTTP, sockets and a call in progress."""

import asyncio
import json

import pytest

from tests.helpers import auth
from tests.moderation_kit import make_moderator, met
from tests.rt import in_call, make_user


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(disconnect_grace_seconds=1.0, timer_poll_seconds=0.05)


async def report(client, reporter, target, reason="rude", room=None):
    body = {"reportedUserId": target["userId"] if isinstance(target, dict) else target, "reason": reason}
    if room:
        body["roomId"] = room
    resp = await client.post("/report/user", json=body, headers=auth(reporter["sessionToken"]))
    return resp.status, await resp.json()


async def test_report_shape_evidence_and_errors(client, db):
    bad, target = await make_user(client, db, "Bad"), await make_user(client, db, "Reporter")
    room = await met(db, bad["userId"], target["userId"],
                     messages=[{"from": bad["userId"], "text": "<b>rude</b> words", "timestamp": 1, "type": "message"}])
    status, body = await report(client, target, bad, "Harassment", room)
    assert status == 200, body
    assert body["success"] is True and body["reportCount"] == 1 and body["autoBanned"] is False
    assert body["reportId"] and body["message"]
    row = await db.fetchrow("SELECT * FROM reports WHERE id = $1", body["reportId"])
    assert row["shared_room"] is True and str(row["room_id"]) == room and row["reason"] == "Harassment"
    assert json.loads(row["transcript"])[0]["text"] == "<b>rude</b> words"  # evidence kept verbatim, rendered as text
    assert str(row["reporter_ip"]) == "127.0.0.1" and row["state"] == "open"

    status, body = await report(client, target, bad)
    assert (status, body["error"], body["alreadyReported"]) == (400, "You have already reported this user", True)
    status, body = await report(client, target, target)
    assert (status, body["error"]) == (400, "Cannot report yourself")
    status, body = await report(client, target, "6d0f6f5e-0000-4000-8000-000000000000")
    assert status == 404
    status, body = await report(client, target, "not-a-uuid")
    assert status == 404
    resp = await client.post("/report/user", json={"reason": "x"}, headers=auth(target["sessionToken"]))
    assert resp.status == 400 and (await resp.json())["error"] == "reportedUserId is required"
    resp = await client.post("/report/user", json={"reportedUserId": bad["userId"]})
    assert resp.status == 401
    assert await db.fetchval("SELECT count(*) FROM reports") == 1


async def test_fifty_concurrent_duplicates_make_one_row(client, db):
    bad, reporter = await make_user(client, db, "Bad"), await make_user(client, db, "Reporter")
    results = await asyncio.gather(*(report(client, reporter, bad) for _ in range(50)))
    statuses = sorted(s for s, _ in results)
    assert statuses.count(200) == 1 and statuses.count(400) == 49
    assert all(b.get("alreadyReported") for s, b in results if s == 400)
    assert await db.fetchval("SELECT count(*) FROM reports WHERE reported_id = $1", bad["userId"]) == 1


async def test_four_concurrent_reporters_who_met_ban_once(client, db, sockets):
    bad = await make_user(client, db, "Bad")
    reporters = [await make_user(client, db, f"R{i}") for i in range(6)]
    for r in reporters:
        await met(db, bad["userId"], r["userId"])
    pb = await sockets(bad, "Bad")
    results = await asyncio.gather(*(report(client, r, bad) for r in reporters))
    assert all(s == 200 for s, _ in results), results
    assert sum(1 for _, b in results if b["autoBanned"]) == 1
    assert await db.fetchval("SELECT ban_status FROM users WHERE id = $1", bad["userId"]) == "temporary"
    rec = await db.fetchrow("SELECT * FROM ban_records WHERE user_id = $1", bad["userId"])
    assert rec["review_status"] == "pending" and rec["source"] == "auto" and rec["report_count"] >= 4
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'auto_ban'") == 1
    assert await db.fetchval("SELECT count(*) FROM ip_bans") == 0  # never automatic (D10)
    assert (await pb.wait("auth:banned"))["banned"] is True
    assert await pb.disconnected(2.0)


async def test_reporters_who_never_met_the_user_do_not_count(client, db):
    bad = await make_user(client, db, "Bad")
    strangers = [await make_user(client, db, f"S{i}") for i in range(5)]
    for s in strangers:
        status, body = await report(client, s, bad)
        assert status == 200 and body["autoBanned"] is False
    assert await db.fetchval("SELECT count(*) FROM reports WHERE NOT shared_room") == 5
    # A room id the reporter was never in does not make a shared room either.
    fake_room = await met(db, bad["userId"], strangers[0]["userId"])
    await db.execute("DELETE FROM call_history WHERE room_id = $1", fake_room)
    met_users = [await make_user(client, db, f"M{i}") for i in range(3)]
    for m in met_users:
        await met(db, bad["userId"], m["userId"])
        assert (await report(client, m, bad))[1]["autoBanned"] is False
    assert await db.fetchval("SELECT ban_status FROM users WHERE id = $1", bad["userId"]) == "none"
    fourth = await make_user(client, db, "M4")
    await met(db, bad["userId"], fourth["userId"])
    status, body = await report(client, fourth, bad)
    assert body["autoBanned"] is True and body["reportCount"] == 9


async def test_banned_user_is_refused_everywhere_but_check_ban(client, db, sockets):
    bad = await make_user(client, db, "Bad")
    await db.execute("UPDATE users SET ban_status = 'temporary' WHERE id = $1", bad["userId"])
    await db.execute("INSERT INTO ban_records (user_id, banned_reason, report_count) VALUES ($1, 'reports', 4)",
                     bad["userId"])
    for method, path in (("GET", "/user/me"), ("GET", "/room/queue"), ("GET", "/turn/credentials"),
                         ("POST", "/report/user")):
        resp = await client.request(method, path, headers=auth(bad["sessionToken"]), json={})
        body = await resp.json()
        assert resp.status == 403 and body["error"] == "Account suspended" and body["banned"] is True, (path, body)
    resp = await client.get("/report/check-ban", headers=auth(bad["sessionToken"]))
    body = await resp.json()
    assert resp.status == 200 and body["isBanned"] is True and body["banStatus"] == "temporary"
    rec = body["banRecord"]
    assert rec["banStatus"] == "temporary" and rec["reviewStatus"] == "pending" and rec["reportCount"] == 4
    assert rec["bannedReason"] == "reports" and isinstance(rec["bannedAt"], int) and "ipAddresses" not in rec
    # Sockets: the handshake is refused; an unauthenticated socket's auth event gets auth:banned.
    from tests.rt import Peer

    p = Peer(str(client.make_url("/")), None, bad["userId"], "late")
    await p.connect()
    await p.emit("auth", {"sessionToken": bad["sessionToken"]})
    assert (await p.wait("auth:banned"))["banned"] is True
    assert await p.disconnected()
    await p.close()
    clean = await make_user(client, db, "Clean")
    body = await (await client.get("/report/check-ban", headers=auth(clean["sessionToken"]))).json()
    assert body == {"isBanned": False, "banStatus": "none", "banRecord": None, "warning": None}


async def test_auto_ban_mid_call_cuts_the_user_and_finalises_the_partners_call(client, db, sockets):
    bad, partner = await make_user(client, db, "Bad"), await make_user(client, db, "Partner", gender="male")
    reporters = [await make_user(client, db, f"R{i}") for i in range(4)]
    pb, pp = await sockets(bad, "Bad"), await sockets(partner, "Partner")
    start = await in_call(pp, pb)
    for r in reporters:
        await met(db, bad["userId"], r["userId"])
    for r in reporters:
        await report(client, r, bad)
    banned = await pb.wait("auth:banned")
    assert banned == {"message": "Your account has been suspended.", "banned": True}
    fin = await pp.wait("session:finalized")
    assert fin["reason"] == "banned"
    assert await pb.disconnected(1.0)
    assert pp.sio.connected  # the partner stays, on the normal end screen
    from server.calls import state
    from server.deps import DEPS

    assert await state.user_room(client.app[DEPS].redis, partner["userId"]) is None
    assert start["roomId"]


async def test_report_blocks_invites_both_ways_by_id(client, db, sockets):
    a, b = await make_user(client, db, "A"), await make_user(client, db, "B", gender="male")
    pa, pb = await sockets(a, "A"), await sockets(b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == a["userId"])
    assert (await report(client, a, b))[0] == 200
    for caller, callee in ((pa, pb), (pb, pa)):
        await caller.emit("call:invite", {"toUserId": callee.user_id, "requestedSeconds": 120})
        declined = await caller.wait("call:declined")
        assert declined["reason"] == "offline" and declined["toUserId"] == callee.user_id
    assert pa.all("call:notify") == [] and pb.all("call:notify") == []
    deck = await (await client.get("/room/queue", headers=auth(b["sessionToken"]))).json()
    assert a["userId"] not in [u["userId"] for u in deck["users"]]


async def test_review_permanent_puts_the_user_on_the_blacklist_and_vindicated_lets_them_back(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    bad, other = await make_user(client, db, "<img src=x onerror=alert(1)>"), await make_user(client, db, "Other")
    for u in (bad, other):
        await db.execute("UPDATE users SET ban_status = 'temporary' WHERE id = $1", u["userId"])
        await db.execute("INSERT INTO ban_records (user_id, banned_reason, report_count) VALUES ($1, 'auto', 4)",
                         u["userId"])
    h = auth(mod["sessionToken"])
    pending = await (await client.get("/report/pending", headers=h)).json()
    assert {p["userId"] for p in pending["pending"]} == {bad["userId"], other["userId"]}
    assert all("ipAddresses" not in p for p in pending["pending"])  # moderators see no addresses (D23)

    resp = await client.post(f"/report/review/{bad['userId']}", json={"decision": "permanent"}, headers=h)
    assert resp.status == 200 and (await resp.json())["decision"] == "permanent"
    resp = await client.post(f"/report/review/{other['userId']}", json={"decision": "vindicated"}, headers=h)
    assert resp.status == 200
    bl = await (await client.get("/report/blacklist")).json()  # public
    assert bl["count"] == 1 and bl["blacklist"][0]["userName"] == "<img src=x onerror=alert(1)>"
    assert set(bl["blacklist"][0]) == {"userName", "userSelfie", "userVideo", "bannedAt", "bannedReason",
                                       "reportCount"}
    assert (await client.get("/user/me", headers=auth(other["sessionToken"]))).status == 200
    assert (await client.get("/user/me", headers=auth(bad["sessionToken"]))).status == 403
    body = await (await client.get("/report/check-ban", headers=auth(other["sessionToken"]))).json()
    assert body["isBanned"] is False and body["banStatus"] == "vindicated"
    assert body["banRecord"]["reviewStatus"] == "reviewed_vindicate"

    resp = await client.post(f"/report/review/{bad['userId']}", json={"decision": "maybe"}, headers=h)
    assert resp.status == 400 and "Invalid decision" in (await resp.json())["error"]
    resp = await client.post(f"/report/review/{mod['userId']}", json={"decision": "permanent"}, headers=h)
    assert resp.status == 404 and (await resp.json())["error"] == "Ban record not found"
    stats = await (await client.get("/report/stats", headers=h)).json()
    assert (stats["permanentBans"], stats["vindicated"], stats["pendingReviews"]) == (1, 1, 0)
    actions = [r["action"] for r in await db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["ban_permanent", "unban"]


async def test_vindicated_user_is_auto_banned_again_only_by_new_reports(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    bad = await make_user(client, db, "Bad")
    first = [await make_user(client, db, f"R{i}") for i in range(4)]
    for r in first:
        await met(db, bad["userId"], r["userId"])
        await report(client, r, bad)
    assert await db.fetchval("SELECT ban_status FROM users WHERE id = $1", bad["userId"]) == "temporary"
    await client.post(f"/report/review/{bad['userId']}", json={"decision": "vindicated"},
                      headers=auth(mod["sessionToken"]))
    late = await make_user(client, db, "Late")
    await met(db, bad["userId"], late["userId"])
    assert (await report(client, late, bad))[1]["autoBanned"] is False  # old reports no longer count
    assert await db.fetchval("SELECT ban_status FROM users WHERE id = $1", bad["userId"]) == "vindicated"


async def test_report_rate_limit_per_ip(client, db, settings, aiohttp_client):
    from server.app import create_app

    limited = await aiohttp_client(create_app(settings.with_(reports_per_ip_per_hour=2)))
    reporter = await make_user(limited, db, "Reporter")
    targets = [await make_user(limited, db, f"T{i}") for i in range(3)]
    codes = [(await report(limited, reporter, t))[0] for t in targets]
    assert codes == [200, 200, 429]


async def test_a_ban_drops_pending_invites_both_ways_and_leaves_every_deck(client, db, sockets):
    mod = await make_moderator(client, db, "mod@example.com")
    bad = await make_user(client, db, "Bad")
    callee, caller, watcher = [await make_user(client, db, n) for n in ("Callee", "Caller", "Watcher")]
    pbad, pcallee, pcaller, pwatch = [await sockets(u, u["userId"][:4]) for u in (bad, callee, caller, watcher)]
    for p in (pwatch, pcallee, pbad):
        await p.emit("queue:join")
        await pwatch.wait("queue:update", where=lambda d, p=p: d["userId"] == p.user_id and d["available"])
    await pbad.emit("call:invite", {"toUserId": callee["userId"], "requestedSeconds": 120})
    outgoing = await pcallee.wait("call:notify")
    await pcaller.emit("call:invite", {"toUserId": bad["userId"], "requestedSeconds": 120})
    incoming = await pbad.wait("call:notify")
    deck = await (await client.get("/room/queue", headers=auth(watcher["sessionToken"]))).json()
    assert bad["userId"] in [u["userId"] for u in deck["users"]]

    resp = await client.post(f"/mod/users/{bad['userId']}/ban", json={"status": "permanent"},
                             headers=auth(mod["sessionToken"]))
    assert resp.status == 200
    assert (await pcallee.wait("call:rescinded"))["inviteId"] == outgoing["inviteId"]
    declined = await pcaller.wait("call:declined")
    assert declined["inviteId"] == incoming["inviteId"] and declined["reason"] == "offline"
    gone = await pwatch.wait("presence:update", where=lambda d: d["userId"] == bad["userId"])
    assert gone == {"userId": bad["userId"], "online": False, "available": False}
    deck = await (await client.get("/room/queue", headers=auth(watcher["sessionToken"]))).json()
    assert bad["userId"] not in [u["userId"] for u in deck["users"]]
    assert await pbad.disconnected(1.0)
