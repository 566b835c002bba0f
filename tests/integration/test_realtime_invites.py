"""Invites on one node: every pre-invite rejection (F1), decline (F2/F3), rescind (F4), caller gone
(F5/F9), expiry (F6/E2), unknown accept (F7), clamped durations (F8), extend-wait and ownership (D2)."""

import asyncio
import time

import pytest

from tests.rt import make_user

HOUR = 3600


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(invite_ttl_ms=2500, invite_expiry_grace_ms=300, disconnect_grace_seconds=1.0,
                               timer_poll_seconds=0.05, invite_extension_ms=1000)


@pytest.fixture
async def pair(client, db, sockets):
    a = await make_user(client, db, "Caller")
    b = await make_user(client, db, "Callee", gender="male")
    pa, pb = await sockets(a, "A"), await sockets(b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == a["userId"])
    return pa, pb


async def invite(pa, pb, seconds=300):
    await pa.emit("call:invite", {"toUserId": pb.user_id, "requestedSeconds": seconds})
    return await pb.wait("call:notify")


async def redis_keys(client, pattern):
    from server.deps import DEPS

    return sorted(await client.app[DEPS].redis.keys(pattern))


async def cooldown_row(db, x, y):
    a, b = sorted([x, y])
    return await db.fetchrow(
        "SELECT reason, expires_at - now() AS left FROM cooldowns WHERE user_a = $1 AND user_b = $2", a, b)


async def test_notify_and_ack_carry_the_protocol_fields(pair):
    pa, pb = pair
    notify = await invite(pa, pb, 120)
    assert set(notify) == {"inviteId", "fromUser", "requestedSeconds", "ttlMs", "expiresAt"}
    assert notify["fromUser"]["userId"] == pa.user_id and notify["fromUser"]["name"] == "Caller"
    assert notify["fromUser"]["selfieUrl"].startswith("http") and notify["fromUser"]["videoUrl"].startswith("http")
    assert notify["requestedSeconds"] == 120 and notify["ttlMs"] == 2500
    sent = await pa.wait("call:invite-sent")
    assert sent["inviteId"] == notify["inviteId"] and sent["toUserId"] == pb.user_id


@pytest.mark.parametrize(("seconds", "expected"), [(5, 60), (59.6, 60), (61.4, 61), (5000, 1800), (300, 300)])
async def test_durations_are_rounded_and_clamped(pair, seconds, expected):
    pa, pb = pair
    notify = await invite(pa, pb, seconds)
    assert notify["requestedSeconds"] == expected


async def test_pre_invite_rejections_leave_nothing_behind(client, db, sockets, pair):
    pa, pb = pair
    cases = [
        ({"toUserId": pa.user_id, "requestedSeconds": 300}, "invalid_target"),
        ({"toUserId": "6b1a3f43-2a4e-4f9f-9a55-1f0a0b0c0d0e", "requestedSeconds": 300}, "user_not_found"),
        ({"toUserId": "not-a-uuid", "requestedSeconds": 300}, "user_not_found"),
        ({"toUserId": pb.user_id, "requestedSeconds": "abc"}, "invalid_duration"),
        ({"toUserId": pb.user_id, "requestedSeconds": None}, "invalid_duration"),
    ]
    for payload, reason in cases:
        await pa.emit("call:invite", payload)
        declined = await pa.wait("call:declined")
        assert declined["reason"] == reason and len(declined["inviteId"]) == 36
    offline = await make_user(client, db, "Offline")
    await pa.emit("call:invite", {"toUserId": offline["userId"], "requestedSeconds": 300})
    assert (await pa.wait("call:declined"))["reason"] == "offline"
    lurker = await make_user(client, db, "NotInDeck")
    await sockets(lurker)  # online but never joined the queue
    await pa.emit("call:invite", {"toUserId": lurker["userId"], "requestedSeconds": 300})
    assert (await pa.wait("call:declined"))["reason"] == "offline"
    assert await redis_keys(client, "inv:*") == []  # §6 D29: no dangling invite
    assert pb.all("call:notify") == []


async def test_busy_target_is_offline_for_old_clients_and_busy_for_new(client, db, sockets, pair):
    pa, pb = pair
    await invite(pa, pb)  # B now has a pending incoming invite
    old = await make_user(client, db, "Old")
    new = await make_user(client, db, "New")
    p_old = await sockets(old)
    p_new = await sockets(new, capabilities=["busy"])
    await p_old.emit("call:invite", {"toUserId": pb.user_id, "requestedSeconds": 300})
    await p_new.emit("call:invite", {"toUserId": pb.user_id, "requestedSeconds": 300})
    assert (await p_old.wait("call:declined"))["reason"] == "offline"
    assert (await p_new.wait("call:declined"))["reason"] == "busy"


async def test_unauthenticated_and_unpaid_callers_cannot_invite(client, db, sockets, pair):
    _pa, pb = pair
    anon = await sockets(None)
    await anon.emit("call:invite", {"toUserId": pb.user_id, "requestedSeconds": 300})
    assert (await anon.wait("error"))["message"] == "Please wait for authentication to complete"
    unpaid = await make_user(client, db, "Unpaid", paid=False)
    pu = await sockets(unpaid)
    await pu.emit("call:invite", {"toUserId": pb.user_id, "requestedSeconds": 300})
    assert (await pu.wait("call:error"))["code"] == "PAYMENT_REQUIRED"
    await pu.emit("queue:join")
    assert (await pu.wait("call:error"))["code"] == "PAYMENT_REQUIRED"
    assert pb.all("call:notify") == []


async def test_one_pending_outgoing_invite_per_caller(client, db, sockets, pair):
    pa, pb = pair
    await invite(pa, pb)
    c = await make_user(client, db, "Third")
    pc = await sockets(c)
    await pc.emit("queue:join")
    await asyncio.sleep(0.1)
    await pa.emit("call:invite", {"toUserId": c["userId"], "requestedSeconds": 300})
    assert (await pa.wait("call:error"))["code"] == "INVITE_PENDING"
    await pc.quiet("call:notify", 0.2)


async def test_decline_gives_user_declined_and_a_24h_cooldown(db, pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    await pb.emit("call:decline", {"inviteId": notify["inviteId"]})
    declined = await pa.wait("call:declined")
    assert declined == {"inviteId": notify["inviteId"], "toUserId": pb.user_id, "reason": "user_declined"}
    row = await cooldown_row(db, pa.user_id, pb.user_id)
    assert row["reason"] == "declined" and 24 * HOUR - 60 < row["left"].total_seconds() <= 24 * HOUR + 1
    await pa.emit("call:invite", {"toUserId": pb.user_id, "requestedSeconds": 300})
    assert (await pa.wait("call:declined"))["reason"] == "cooldown"


async def test_decline_at_the_end_of_the_window_counts_as_timeout(db, pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    await asyncio.sleep(0.8)  # inside the last 2 s of the 2.5 s window: the old client's auto-decline
    await pb.emit("call:decline", {"inviteId": notify["inviteId"]})
    assert (await pa.wait("call:declined"))["reason"] == "timeout"
    row = await cooldown_row(db, pa.user_id, pb.user_id)
    assert row["reason"] == "timeout" and HOUR - 60 < row["left"].total_seconds() <= HOUR + 1


async def test_only_the_invitee_can_decline_or_accept(client, db, sockets, pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    other = await sockets(await make_user(client, db, "Intruder"))
    await other.emit("call:decline", {"inviteId": notify["inviteId"]})
    await other.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 300})
    assert (await other.wait("call:error"))["code"] == "INVITE_NOT_FOUND"
    assert (await other.wait("error"))["message"] == "Invite not found or expired"
    await pa.quiet("call:declined", 0.2)
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 300})
    assert (await pa.wait("call:start"))["isInitiator"] is True


async def test_rescind_tells_the_callee_and_costs_an_hour(db, pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    await pa.emit("call:rescind", {"toUserId": pb.user_id})
    assert (await pb.wait("call:rescinded"))["inviteId"] == notify["inviteId"]
    row = await cooldown_row(db, pa.user_id, pb.user_id)
    assert row["reason"] == "rescinded" and HOUR - 60 < row["left"].total_seconds() <= HOUR + 1
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 300})
    assert (await pb.wait("call:error"))["code"] == "INVITE_NOT_FOUND"


async def test_rescind_of_someone_elses_invite_is_ignored(client, db, sockets, pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    other = await sockets(await make_user(client, db, "Other"))
    await other.emit("call:rescind", {"toUserId": pb.user_id})
    await pb.quiet("call:rescinded", 0.3)
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 300})
    await pb.wait("call:start")


async def test_server_expires_invites(client, db, pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    t0 = time.monotonic()
    declined = await pa.wait("call:declined", timeout=4)
    assert declined == {"inviteId": notify["inviteId"], "toUserId": pb.user_id, "reason": "timeout"}
    assert (await pb.wait("call:rescinded")) == {"inviteId": notify["inviteId"], "reason": "expired"}
    assert 2.3 < time.monotonic() - t0 < 4.5  # ttl 2.5 s + grace 0.3 s
    row = await cooldown_row(db, pa.user_id, pb.user_id)
    assert row["reason"] == "timeout" and HOUR - 60 < row["left"].total_seconds() <= HOUR + 1
    assert await redis_keys(client, "inv:*") == []


async def test_extend_wait_pushes_expiry_up_to_three_times(pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    for _ in range(3):
        await pa.emit("call:extend-wait", {"toUserId": pb.user_id})
        ext = await pb.wait("call:wait-extended")
        assert ext["extraSeconds"] == 1 and ext["inviteId"] == notify["inviteId"]  # 1 s in these settings
    await pa.emit("call:extend-wait", {"toUserId": pb.user_id})
    assert (await pa.wait("call:error"))["code"] == "MAX_EXTENSIONS"
    t0 = time.monotonic()
    await pa.wait("call:declined", timeout=9)
    assert time.monotonic() - t0 > 4.5  # 2.5 s window + 3 x 1 s extensions + 0.3 s grace, counted from invite


async def test_extend_wait_needs_an_invite_of_ones_own(client, db, sockets, pair):
    pa, pb = pair
    await pa.emit("call:extend-wait", {"toUserId": pb.user_id})
    assert (await pa.wait("call:error"))["code"] == "INVITE_NOT_FOUND"
    await pb.quiet("call:wait-extended", 0.2)


async def test_accept_of_unknown_invite(pair):
    _pa, pb = pair
    await pb.emit("call:accept", {"inviteId": "00000000-0000-4000-8000-000000000000", "requestedSeconds": 300})
    assert (await pb.wait("error"))["message"] == "Invite not found or expired"
    assert (await pb.wait("call:error"))["code"] == "INVITE_NOT_FOUND"


async def test_accept_clamps_and_averages(pair):
    pa, pb = pair
    notify = await invite(pa, pb, 200)
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 10})  # F8: clamped to 60
    start = await pa.wait("call:start")
    assert start["agreedSeconds"] == 130


async def test_accept_with_non_number_duration_keeps_the_invite(pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": "soon"})
    assert (await pb.wait("error"))["message"] == "Invalid call duration"
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 300})
    await pa.wait("call:start")


async def test_caller_gone_at_accept_fails_cleanly_for_both(client, pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    await pa.drop()  # unexpected: the grace keeps the invite for now
    await asyncio.sleep(0.3)
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 300})
    assert (await pb.wait("call:error"))["code"] == "CALLER_UNAVAILABLE"
    assert await redis_keys(client, "room:*") == []
    assert await redis_keys(client, "inv:*") == []


async def test_caller_leaving_explicitly_rescinds_at_once(db, pair):
    pa, pb = pair
    notify = await invite(pa, pb)
    await pa.leave()  # explicit disconnect: no grace (§3.5)
    assert (await pb.wait("call:rescinded", timeout=2))["inviteId"] == notify["inviteId"]
    assert (await cooldown_row(db, pa.user_id, pb.user_id))["reason"] == "rescinded"


async def test_accepting_another_call_cancels_the_other_invites(client, db, sockets, pair):
    pa, pb = pair
    notify_ab = await invite(pa, pb)  # A -> B pending
    x = await sockets(await make_user(client, db, "X"))
    await x.emit("queue:join")
    await asyncio.sleep(0.05)
    await x.emit("call:invite", {"toUserId": pa.user_id, "requestedSeconds": 300})  # X -> A
    notify_xa = await pa.wait("call:notify")
    await pa.emit("call:accept", {"inviteId": notify_xa["inviteId"], "requestedSeconds": 300})
    await x.wait("call:start")
    rescinded = await pb.wait("call:rescinded")
    assert rescinded == {"inviteId": notify_ab["inviteId"], "reason": "busy"}
    await pb.emit("call:accept", {"inviteId": notify_ab["inviteId"], "requestedSeconds": 300})
    assert (await pb.wait("call:error"))["code"] == "INVITE_NOT_FOUND"
