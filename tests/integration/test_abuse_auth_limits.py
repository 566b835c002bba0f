"""/auth/link and /auth/login cannot be used to buy bcrypt CPU (issue 12, item 3): what can refuse a
link is checked before hashing, links are limited per account and per address with one hash in
flight per account, and logins are limited per address and per account even when they succeed.

The bcrypt functions are wrapped to count calls (they still hash): "before bcrypt" is checked by
counting, not by timing. The limits are configured small.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from server.accounts import passwords
from tests.helpers import guest, permanent

LINKS_PER_USER = 3
LINKS_PER_IP = 6
LOGINS_PER_IP = 8
LOGINS_PER_ACCOUNT = 3


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(link_attempts_per_user_per_hour=LINKS_PER_USER,
                               link_attempts_per_ip_per_hour=LINKS_PER_IP, login_attempts_per_ip_per_hour=LOGINS_PER_IP,
                               logins_per_account_per_hour=LOGINS_PER_ACCOUNT, login_max_failures_per_ip=100)


@pytest.fixture
def bcrypt_calls(monkeypatch):
    calls: Counter[str] = Counter()
    real_hash, real_verify = passwords.hash_password, passwords.verify_password

    async def hash_password(*a, **kw):
        calls["hash"] += 1
        return await real_hash(*a, **kw)

    async def verify_password(*a, **kw):
        calls["verify"] += 1
        return await real_verify(*a, **kw)

    monkeypatch.setattr(passwords, "hash_password", hash_password)
    monkeypatch.setattr(passwords, "verify_password", verify_password)
    return calls


async def _link(client, token, email, password="correct horse"):
    resp = await client.post("/auth/link", json={"sessionToken": token, "email": email, "password": password})
    return resp.status, await resp.json()


async def _login(client, email, password="correct horse"):
    resp = await client.post("/auth/login", json={"email": email, "password": password})
    return resp.status, await resp.json()


async def test_link_refusals_cost_no_bcrypt(client, db, bcrypt_calls):
    owner = await permanent(client, "taken@example.com")
    hashed = bcrypt_calls["hash"]
    # An account that is already linked, and an email someone else has: 409, and nothing hashed.
    assert (await _link(client, owner["sessionToken"], "new@example.com"))[1]["code"] == "already_linked"
    g = await guest(client, name="Bo")
    status, body = await _link(client, g["sessionToken"], "TAKEN@example.com")
    assert (status, body["code"]) == (409, "email_taken")
    assert bcrypt_calls["hash"] == hashed
    assert await db.fetchval("SELECT account_type FROM users WHERE id = $1::uuid", g["userId"]) == "guest"


async def test_links_are_limited_per_account(client, bcrypt_calls):
    await permanent(client, "taken@example.com")
    hashed = bcrypt_calls["hash"]
    g = await guest(client, name="Bo")
    other = await guest(client, name="Cy")
    for _ in range(LINKS_PER_USER):
        assert (await _link(client, g["sessionToken"], "taken@example.com"))[0] == 409
    status, body = await _link(client, g["sessionToken"], "bo@example.com")  # would succeed, but too many
    assert (status, body["code"]) == (429, "link_rate_limited") and body["retryAfter"] >= 1
    assert bcrypt_calls["hash"] == hashed
    assert (await _link(client, other["sessionToken"], "cy@example.com"))[0] == 200  # others unaffected


async def test_links_are_limited_per_address_before_the_token_is_looked_up(client):
    for _ in range(LINKS_PER_IP):
        assert (await _link(client, "not-a-token", "x@example.com"))[0] == 401
    status, body = await _link(client, "not-a-token", "x@example.com")
    assert (status, body["code"]) == (429, "link_rate_limited")


async def test_one_token_in_parallel_buys_one_hash(client, db, bcrypt_calls):
    g = await guest(client, name="Bo")
    results = await asyncio.gather(*[_link(client, g["sessionToken"], f"bo{i}@example.com") for i in range(12)])
    statuses = Counter(s for s, _ in results)
    assert statuses[200] == 1, results
    assert set(statuses) <= {200, 409, 429}, results
    assert bcrypt_calls["hash"] <= LINKS_PER_USER  # however many were sent
    assert await db.fetchval("SELECT count(*) FROM users WHERE email IS NOT NULL") == 1


async def test_successful_logins_are_limited_per_account_and_failures_do_not_use_them_up(client, bcrypt_calls):
    await permanent(client, "ada@example.com")
    assert (await _login(client, "ada@example.com", "wrong password"))[0] == 401
    for _ in range(LOGINS_PER_ACCOUNT):
        assert (await _login(client, "ada@example.com"))[0] == 200
    verified = bcrypt_calls["verify"]
    status, body = await _login(client, "ada@example.com")
    assert (status, body["code"]) == (429, "login_rate_limited") and body["retryAfter"] >= 1
    assert bcrypt_calls["verify"] == verified  # refused before bcrypt


async def test_parallel_logins_of_one_account_cannot_pass_the_limit(client):
    await permanent(client, "ada@example.com")
    results = await asyncio.gather(*[_login(client, "ada@example.com") for _ in range(10)])
    statuses = Counter(s for s, _ in results)
    assert statuses == {200: LOGINS_PER_ACCOUNT, 429: 10 - LOGINS_PER_ACCOUNT}, results


async def test_logins_are_limited_per_address_successful_or_not(client, bcrypt_calls):
    for i in range(LOGINS_PER_ACCOUNT):
        await permanent(client, f"u{i}@example.com", name=f"U{i}")
    for i in range(LOGINS_PER_IP):  # successes and failures alike count
        status, _ = await _login(client, f"u{i % LOGINS_PER_ACCOUNT}@example.com",
                                 "wrong password" if i % 2 else "correct horse")
        assert status == (401 if i % 2 else 200)
    verified = bcrypt_calls["verify"]
    status, body = await _login(client, "u0@example.com")
    assert (status, body["code"]) == (429, "login_rate_limited")
    assert bcrypt_calls["verify"] == verified
