"""The moderator queue API under /mod (issue 9 §4): reports by state with paging, claims raced by two
moderators, notes, resolutions with actions (dismiss, warn, timed/permanent ban, IP ban by decision
honouring TRUSTED_PROXY_HOPS), user lookup, unban, the audit log and stats with the median time to
decision."""

import asyncio

import pytest

from server.deps import DEPS
from server.moderation import service
from tests.helpers import auth
from tests.moderation_kit import make_moderator, met
from tests.rt import make_user


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(admin_login_failure_delay_seconds=0.05)


async def report(client, reporter, target, reason="rude"):
    resp = await client.post("/report/user", json={"reportedUserId": target["userId"], "reason": reason},
                             headers=auth(reporter["sessionToken"]))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["reportId"]


async def get(client, path, who):
    resp = await client.get(path, headers=auth(who["sessionToken"]))
    return resp.status, await resp.json()


async def post(client, path, who, body=None):
    resp = await client.post(path, json=body or {}, headers=auth(who["sessionToken"]))
    return resp.status, await resp.json()


async def test_list_by_state_with_paging(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    bad = await make_user(client, db, "Bad")
    ids = [await report(client, await make_user(client, db, f"R{i}"), bad) for i in range(5)]
    status, body = await get(client, "/mod/reports?state=open&limit=2", mod)
    assert status == 200 and body["total"] == 5 and len(body["reports"]) == 2
    assert [r["reportId"] for r in body["reports"]] == ids[::-1][:2]  # newest first
    status, body = await get(client, "/mod/reports?state=open&limit=2&offset=4", mod)
    assert [r["reportId"] for r in body["reports"]] == [ids[0]]
    assert "reporterIp" not in body["reports"][0]  # moderators see no addresses (D23)
    await post(client, f"/mod/reports/{ids[0]}/resolve", mod, {"action": "dismiss"})
    assert (await get(client, "/mod/reports?state=resolved", mod))[1]["total"] == 1
    assert (await get(client, "/mod/reports?state=open", mod))[1]["total"] == 4
    assert (await get(client, "/mod/reports?state=all", mod))[1]["total"] == 5
    for bad_query in ("state=nope", "limit=0", "limit=abc", "offset=-1", "limit=201"):
        status, body = await get(client, f"/mod/reports?{bad_query}", mod)
        assert status == 400, bad_query


async def test_two_moderators_racing_for_a_claim(client, db):
    m1 = await make_moderator(client, db, "m1@example.com", name="One")
    m2 = await make_moderator(client, db, "m2@example.com", name="Two")
    rid = await report(client, await make_user(client, db, "R"), await make_user(client, db, "Bad"))
    results = await asyncio.gather(*(post(client, f"/mod/reports/{rid}/claim", m) for m in (m1, m2) * 10))
    winners = {b.get("assignedTo") for s, b in results if s == 200}
    assert len(winners) == 1
    loser = m2 if winners == {m1["userId"]} else m1
    assert all(s == 409 and b["code"] == "claimed_by_other" for (s, b), m in zip(results, (m1, m2) * 10, strict=True)
               if m is loser)
    status, _ = await post(client, f"/mod/reports/{rid}/release", loser)
    assert status == 409
    status, body = await post(client, f"/mod/reports/{rid}/claim", loser, {"force": True})
    assert status == 200 and body["assignedTo"] == loser["userId"]
    status, body = await get(client, f"/mod/reports/{rid}", loser)
    assert body["report"]["state"] == "claimed" and body["report"]["assignedTo"] == loser["userId"]
    assert (await post(client, f"/mod/reports/{rid}/release", loser))[0] == 200
    assert (await get(client, f"/mod/reports/{rid}", loser))[1]["report"]["state"] == "open"
    assert (await post(client, "/mod/reports/6d0f6f5e-0000-4000-8000-000000000000/claim", m1))[0] == 404


async def test_notes_and_evidence(client, db):
    mod = await make_moderator(client, db, "mod@example.com", name="Mod")
    bad, reporter = await make_user(client, db, "Bad"), await make_user(client, db, "Reporter")
    await met(db, bad["userId"], reporter["userId"],
              messages=[{"from": bad["userId"], "text": "hello <script>x</script>", "timestamp": 1, "type": "message"}])
    rid = await report(client, reporter, bad, "Said awful things")
    status, body = await post(client, f"/mod/reports/{rid}/notes", mod, {"body": "Checked the transcript"})
    assert status == 200 and body["noteId"]
    assert (await post(client, f"/mod/reports/{rid}/notes", mod, {"body": ""}))[0] == 400
    status, body = await get(client, f"/mod/reports/{rid}", mod)
    rep = body["report"]
    assert rep["sharedRoom"] is True and rep["reason"] == "Said awful things" and rep["roomId"]
    assert rep["transcript"][0]["text"] == "hello <script>x</script>"
    assert rep["reporterName"] == "Reporter" and rep["reportedUserSelfie"].startswith("http")
    assert [(n["body"], n["author"]) for n in body["notes"]] == [("Checked the transcript", "Mod")]


async def test_resolve_actions(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    users = {n: await make_user(client, db, n) for n in ("Warned", "Timed", "Perma", "Dismissed")}
    reporter = await make_user(client, db, "Reporter")
    rids = {n: await report(client, reporter, u) for n, u in users.items()}

    assert (await post(client, f"/mod/reports/{rids['Dismissed']}/resolve", mod, {"action": "dismiss"}))[0] == 200
    status, body = await post(client, f"/mod/reports/{rids['Dismissed']}/resolve", mod, {"action": "warn"})
    assert status == 409
    assert (await post(client, f"/mod/reports/{rids['Warned']}/resolve", mod,
                       {"action": "warn", "reason": "Be kind"}))[0] == 200
    check = await get(client, "/report/check-ban", users["Warned"])
    assert check[1]["isBanned"] is False and check[1]["warning"]["reason"] == "Be kind"

    status, body = await post(client, f"/mod/reports/{rids['Timed']}/resolve", mod, {"action": "temporary_ban"})
    assert status == 400 and body["code"] == "duration_required"
    status, body = await post(client, f"/mod/reports/{rids['Timed']}/resolve", mod,
                              {"action": "temporary_ban", "durationHours": 2, "note": "first offence"})
    assert status == 200
    check = (await get(client, "/report/check-ban", users["Timed"]))[1]
    assert check["isBanned"] is True and check["banRecord"]["expiresAt"] > 0
    assert check["banRecord"]["reviewStatus"] == "reviewed_ban"
    # The ban runs out: any node's sweep lifts it, once.
    await db.execute("UPDATE ban_records SET expires_at = now() - interval '1 second' WHERE user_id = $1",
                     users["Timed"]["userId"])
    deps = client.app[DEPS]
    assert sorted(await asyncio.gather(*(service.lift_expired(deps) for _ in range(4)))) == [0, 0, 0, 1]
    assert (await get(client, "/user/me", users["Timed"]))[0] == 200

    assert (await post(client, f"/mod/reports/{rids['Perma']}/resolve", mod, {"action": "permanent_ban"}))[0] == 200
    blacklist = await (await client.get("/report/blacklist")).json()
    assert [b["userName"] for b in blacklist["blacklist"]] == ["Perma"]
    assert (await post(client, f"/mod/reports/{rids['Perma']}/resolve", mod, {"action": "ip_ban"}))[0] == 403
    status, body = await post(client, f"/mod/reports/{rids['Perma']}/resolve", mod, {"action": "explode"})
    assert status == 400
    resolutions = dict(await db.fetch("SELECT reported_id::text, resolution FROM reports"))
    assert resolutions == {users["Dismissed"]["userId"]: "dismiss", users["Warned"]["userId"]: "warn",
                           users["Timed"]["userId"]: "temporary_ban", users["Perma"]["userId"]: "permanent_ban"}
    assert await db.fetchval("SELECT count(*) FROM report_notes") == 1


async def test_user_lookup_and_unban(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    boss = await make_moderator(client, db, "boss@example.com", role="admin")
    bad, other = await make_user(client, db, "Bad"), await make_user(client, db, "Other")
    await met(db, bad["userId"], other["userId"])
    await report(client, other, bad)
    await report(client, bad, other)
    status, body = await post(client, f"/mod/users/{bad['userId']}/ban", mod, {"status": "permanent",
                                                                                "reason": "spam"})
    assert status == 200 and body["banStatus"] == "permanent"
    status, body = await get(client, f"/mod/users/{bad['userId']}", mod)
    assert status == 200
    assert body["user"]["name"] == "Bad" and body["user"]["banStatus"] == "permanent"
    assert body["user"]["selfieUrl"].startswith("http") and "email" not in body["user"]
    assert len(body["reportsReceived"]) == 1 and len(body["reportsMade"]) == 1 and len(body["calls"]) == 1
    assert body["ban"]["bannedReason"] == "spam" and "ipAddresses" not in body
    assert (await get(client, f"/mod/users/{bad['userId']}", boss))[1]["ipAddresses"] == ["127.0.0.1"]
    assert (await get(client, "/mod/users/6d0f6f5e-0000-4000-8000-000000000000", mod))[0] == 404

    status, body = await post(client, f"/mod/users/{bad['userId']}/unban", mod, {"reason": "appeal"})
    assert status == 200 and body["banStatus"] == "vindicated"
    assert (await get(client, "/user/me", bad))[0] == 200
    assert (await post(client, f"/mod/users/{bad['userId']}/unban", mod))[0] == 409
    assert (await post(client, f"/mod/users/{bad['userId']}/ban", mod, {"status": "forever"}))[0] == 400


async def test_ip_ban_by_decision_honours_the_trusted_proxy_hop(db, base_settings, aiohttp_client):
    from server.app import create_app

    client = await aiohttp_client(create_app(base_settings.with_(trusted_proxy_hops=1)))
    boss = await make_moderator(client, db, "boss@example.com", role="admin")
    via_proxy = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}  # the left entry is the client's own claim
    resp = await client.post("/auth/guest", json={"name": "Bad", "gender": "male"}, headers=via_proxy)
    bad = await resp.json()
    reporter = await make_user(client, db, "Reporter")
    rid = await report(client, reporter, bad)
    status, body = await post(client, f"/mod/reports/{rid}/resolve", boss, {"action": "ip_ban", "reason": "x"})
    assert status == 200, body
    assert [r["ip"] for r in await db.fetch("SELECT host(ip) AS ip FROM ip_bans")] == ["203.0.113.9"]
    assert await db.fetchval("SELECT ban_status FROM users WHERE id = $1", bad["userId"]) == "permanent"
    for xff, expected in (("1.1.1.1, 203.0.113.9", 403), ("203.0.113.9", 403), ("203.0.113.9, 198.51.100.1", 200)):
        resp = await client.get("/stats/live", headers={"X-Forwarded-For": xff})
        assert resp.status == expected, xff
        if expected == 403:
            body = await resp.json()
            assert body["error"] == "Access denied" and body["banned"] is True and body["reason"] == "x"
    assert (await client.get("/health", headers={"X-Forwarded-For": "203.0.113.9"})).status == 200
    status, body = await get(client, "/mod/ip-bans", boss)
    assert [b["ip"] for b in body["ipBans"]] == ["203.0.113.9"]
    resp = await client.delete("/mod/ip-bans/203.0.113.9", headers=auth(boss["sessionToken"]))
    assert resp.status == 200
    assert (await client.get("/stats/live", headers={"X-Forwarded-For": "203.0.113.9"})).status == 200
    status, body = await post(client, "/mod/ip-bans", boss, {"ip": "not an ip"})
    assert status == 400
    status, body = await post(client, "/mod/ip-bans", boss, {"ip": "2001:db8::1", "reason": "abuse"})
    assert status == 200 and body["ip"] == "2001:db8::1"


async def test_audit_log_and_stats(client, db):
    mod = await make_moderator(client, db, "mod@example.com")
    boss = await make_moderator(client, db, "boss@example.com", role="admin")
    bad = await make_user(client, db, "Bad")
    rids = [await report(client, await make_user(client, db, f"R{i}"), bad) for i in range(3)]
    await post(client, f"/mod/reports/{rids[0]}/claim", mod)
    await post(client, f"/mod/reports/{rids[1]}/resolve", mod, {"action": "dismiss"})
    await post(client, f"/mod/users/{bad['userId']}/ban", mod, {"status": "temporary", "durationHours": 1})
    await db.execute("UPDATE reports SET created_at = resolved_at - interval '10 seconds' WHERE id = $1", rids[1])
    await db.execute("UPDATE reports SET created_at = resolved_at - interval '30 seconds' WHERE id = $1", rids[0])
    await db.execute("UPDATE reports SET created_at = resolved_at - interval '100 seconds' WHERE id = $1", rids[2])
    status, stats = await get(client, "/mod/stats", mod)
    assert status == 200
    assert (stats["totalReports"], stats["openReports"], stats["claimedReports"], stats["resolvedReports"]) \
        == (3, 0, 0, 3)
    assert stats["temporaryBans"] == 1 and stats["medianDecisionSeconds"] == 30.0
    original = (await get(client, "/report/stats", mod))[1]
    assert {"totalReports", "totalBans", "pendingReviews", "permanentBans", "temporaryBans",
            "vindicated"} <= set(original)

    assert (await get(client, "/mod/audit", mod))[0] == 403  # admins only
    status, page1 = await get(client, "/mod/audit?limit=2", boss)
    assert status == 200 and len(page1["entries"]) == 2 and page1["next"]
    ban = page1["entries"][0]
    assert ban["action"] == "ban_temporary" and ban["targetUserId"] == bad["userId"] and ban["ip"] == "127.0.0.1"
    assert ban["before"] == {"banStatus": "none"} and ban["after"]["banStatus"] == "temporary"
    assert ban["actor"] == f"moderator:{mod['userId']}"
    status, page2 = await get(client, f"/mod/audit?limit=50&before={page1['next']}", boss)
    actions = [e["action"] for e in page1["entries"] + page2["entries"]]
    assert actions[:3] == ["ban_temporary", "report_dismiss", "report_claim"]
    status, only = await get(client, f"/mod/audit?action=report_claim&userId={bad['userId']}", boss)
    assert only["entries"] == []  # a claim names the report, not the user
