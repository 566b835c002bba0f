"""Per-IP limits on guest signup and on code-accepting routes, with small test limits."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from server import ratelimit


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(guest_signups_per_ip_per_hour=3, code_attempts_per_ip_per_hour=2,
                               trusted_proxy_hops=1)


async def _signup(client, ip: str, **body):
    resp = await client.post("/auth/guest", json={"name": "U", "gender": "male", **body},
                             headers={"X-Forwarded-For": ip})
    return resp.status, await resp.json()


async def test_signup_rate_limit_is_429_with_retry_after(client, db):
    for _ in range(3):
        assert (await _signup(client, "10.0.0.1"))[0] == 200
    status, body = await _signup(client, "10.0.0.1")
    assert status == 429
    assert body["error"].startswith("Too many")
    assert isinstance(body["retryAfter"], int) and 3000 <= body["retryAfter"] <= 3600
    assert body["code"] == "signup_rate_limited"
    assert await db.fetchval("SELECT count(*) FROM users") == 3
    # Another network is not affected.
    assert (await _signup(client, "10.0.0.2"))[0] == 200


async def test_invite_code_attempts_share_the_code_budget(client, db):
    for _ in range(2):
        assert (await _signup(client, "10.0.0.3", inviteCode="A" * 16))[0] == 403
    status, body = await _signup(client, "10.0.0.3", inviteCode="A" * 16)
    assert status == 429 and body["error"].startswith("Too many") and body["retryAfter"] >= 1
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_the_signup_limit_clears_when_its_window_ends(client, settings):
    for _ in range(3):
        await _signup(client, "10.0.0.4")
    assert (await _signup(client, "10.0.0.4"))[0] == 429
    # The hour is not slept through: ending the counter's TTL is what the end of the window means.
    r = aioredis.from_url(settings.redis_url)
    try:
        assert await r.pexpire("rl:signup:ip:10.0.0.4", 1)
        await asyncio.sleep(0.05)
    finally:
        await r.aclose()
    assert (await _signup(client, "10.0.0.4"))[0] == 200


async def test_ratelimit_window_counts_and_expires(client, settings):
    r = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        w1 = await ratelimit.hit(r, "t:k", 0.3)
        w2 = await ratelimit.hit(r, "t:k", 0.3)
        assert (w1.count, w2.count) == (1, 2)
        assert 0 < w2.retry_after_ms <= 300 and w2.retry_after_s == 1
        assert (await ratelimit.peek(r, "t:k", 0.3)).count == 2
        await asyncio.sleep(0.35)
        assert (await ratelimit.peek(r, "t:k", 0.3)).count == 0
        assert (await ratelimit.hit(r, "t:k", 0.3)).count == 1
        await ratelimit.clear(r, "t:k")
        assert (await ratelimit.peek(r, "t:k", 0.3)).count == 0
    finally:
        await r.aclose()


async def test_attempt_slots_wait_for_in_flight_attempts_then_throttle(client, settings):
    r = aioredis.from_url(settings.redis_url, decode_responses=True)
    scopes = [("t:ip", 2), ("t:acct", 5)]
    try:
        assert await ratelimit.begin_attempt(r, scopes, 2) is None
        assert await ratelimit.begin_attempt(r, scopes, 2) is None
        # Both slots of the IP scope are in flight: a third attempt waits, and gives up after max_wait_s.
        assert await ratelimit.begin_attempt(r, scopes, 2, max_wait_s=0.1) == 1
        # A success frees its slot for a waiting attempt.
        waiter = asyncio.create_task(ratelimit.begin_attempt(r, scopes, 2, max_wait_s=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await ratelimit.end_attempt(r, scopes, 2, failed=False)
        assert await waiter is None
        # Two failures reach the IP limit: everyone else is throttled for the rest of the window.
        await ratelimit.end_attempt(r, scopes, 2, failed=True)
        await ratelimit.end_attempt(r, scopes, 2, failed=True)
        assert await ratelimit.begin_attempt(r, scopes, 2) == 2
        assert await r.get("rl:t:ip") == "2" and await r.get("rl:t:acct") == "2"
        assert await r.get("rl:t:ip:inflight") == "0"
        # A success clears only the flagged scope's failures.
        assert await ratelimit.begin_attempt(r, [("t:acct", 5)], 2) is None
        await ratelimit.end_attempt(r, [("t:acct", 5)], 2, failed=False, clear_on_success=[True])
        assert await r.get("rl:t:acct") is None
    finally:
        await r.aclose()
