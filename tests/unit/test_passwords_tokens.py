"""Password policy and hashing, session tokens."""

from __future__ import annotations

import base64

import pytest

from server.accounts.passwords import hash_password, policy_error, verify_password
from server.accounts.profile import streak_days
from server.accounts.sessions import hash_token, new_token


@pytest.mark.parametrize("password,ok", [
    ("1234567", False), ("12345678", True), ("x" * 72, True), ("x" * 73, False),
    ("é" * 4, True), ("é" * 3 + "a", False), ("é" * 36, True), ("é" * 37, False), ("😀" * 18, True),
    ("😀" * 19, False),
])
def test_policy_counts_bytes(password, ok):
    assert (policy_error(password) is None) is ok


async def test_hash_and_verify_with_the_configured_cost():
    hashed = await hash_password("correct horse", 4)
    assert hashed.startswith("$2b$04$")
    assert await verify_password("correct horse", hashed, 4)
    assert not await verify_password("wrong horse", hashed, 4)


async def test_verify_without_a_hash_is_false_and_still_costs_a_check():
    assert not await verify_password("no-such-account", None, 4)
    assert not await verify_password("anything", None, 4)


async def test_verify_of_an_overlong_password_is_false_not_an_error():
    hashed = await hash_password("x" * 72, 4)
    assert not await verify_password("y" * 100, hashed, 4)


def test_tokens_have_at_least_128_bits_and_are_unique():
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for t in list(tokens)[:20]:
        assert len(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))) * 8 >= 128
        assert 16 <= len(t) <= 256


def test_token_hash_is_sha256_and_not_the_token():
    t = new_token()
    h = hash_token(t)
    assert len(h) == 32 and h != t.encode() and h == hash_token(t)


def test_streak_days():
    from datetime import date, timedelta

    today = date(2026, 1, 10)
    d = [today - timedelta(days=i) for i in range(3)]
    assert streak_days([], today) == 0
    assert streak_days(d, today) == 3
    assert streak_days(d[1:], today) == 2  # ending yesterday still counts
    assert streak_days([today - timedelta(days=2)], today) == 0
    assert streak_days([today, today - timedelta(days=2)], today) == 1
