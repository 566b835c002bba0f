"""Bots against a server that keeps the paywall (REQUIRE_PAYMENT=true, the test app's default): they
stop with the reason and the way out, instead of waiting forever; with access granted they call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bots.client import Bot, BotOptions

pytestmark = pytest.mark.e2e

HINT = "REQUIRE_PAYMENT=false"


def _bot(client: Any, **kw: Any) -> Bot:
    url = str(client.make_url("/")).rstrip("/")
    return Bot(BotOptions(server=url, relay=True, quiet=True, wait_timeout=10, **kw))


async def test_unpaid_bots_say_why_they_cannot_queue_or_call(client, db):
    waiting = await _bot(client, mode="wait").run()
    assert waiting["ok"] is False and "PAYMENT_REQUIRED" in waiting["error"] and HINT in waiting["error"], waiting
    first = await _bot(client, mode="invite-first").run()
    assert first["endedBy"] == "payment-required" and "402" in first["error"] and HINT in first["error"], first
    inviting = await _bot(client, mode="invite", invite_user=waiting["userId"]).run()
    assert inviting["endedBy"] == "invite-refused" and "PAYMENT_REQUIRED" in inviting["error"], inviting
    # Every one of them signed up as a bot.
    rows = await db.fetch("SELECT is_bot FROM users")
    assert len(rows) == 3 and all(r["is_bot"] for r in rows)


async def test_bots_with_granted_access_and_tokens_call(client, db):
    from tests.helpers import guest

    users = [await guest(client, name=n) for n in ("PaidW", "PaidC")]
    for u in users:
        await db.execute("UPDATE users SET paid_status = 'paid' WHERE id = $1", u["userId"])
    waiter = _bot(client, mode="wait", token=users[0]["sessionToken"], seconds=3, width=320, height=240)
    task = asyncio.create_task(waiter.run())
    await asyncio.wait_for(waiter.available.wait(), 10)
    caller = await _bot(client, mode="invite", invite_user=users[0]["userId"], token=users[1]["sessionToken"],
                        seconds=3, width=320, height=240).run()
    called = await asyncio.wait_for(task, 20)
    for s in (caller, called):
        assert s["ok"], s
        assert s["framesReceived"] > 0 and s["candidatePair"]["local"]["type"] == "relay", s
    assert caller["roomId"] == called["roomId"]
    assert (caller["name"], called["name"]) == ("PaidC", "PaidW")  # names from /user/me with --token
