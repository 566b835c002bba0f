"""Postgres failing while an invite ends (issue 11 §4): the cooldown is already enforced by Redis, so
both sides are told at once and the durable copy is written by a timer once Postgres answers again."""

from __future__ import annotations

import asyncpg
import pytest

from tests.multinode.conftest import eventually


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    return {"STORE_TIMEOUT_SECONDS": "1"}  # a statement stuck behind the lock fails after 1 s


async def test_a_decline_is_announced_while_postgres_fails_and_persisted_later(users, peers, n1, n2, settings, db):
    a, b = await users.make(n1, "A"), await users.make(n2, "B")
    pa, pb = await peers(n1, a, "A"), await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
    notify = await pb.wait("call:notify")
    lock = await asyncpg.connect(settings.database_url)
    tx = lock.transaction()
    await tx.start()
    try:
        await lock.execute("LOCK TABLE cooldowns IN ACCESS EXCLUSIVE MODE")
        await pb.emit("call:decline", {"inviteId": notify["inviteId"]})
        declined = await pa.wait("call:declined", timeout=8)  # told while Postgres is failing
        # (the test invite window is 2 s, so the decline counts as the old client's timeout, E2)
        assert declined["reason"] in ("user_declined", "timeout")
    finally:
        await tx.rollback()
        await lock.close()

    async def persisted():
        return await db.fetchrow("SELECT reason, expires_at - now() AS left FROM cooldowns")
    row = await eventually(persisted, within=10)
    assert row is not None and row["reason"] in ("declined", "timeout") and row["left"].total_seconds() > 3500
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
    assert (await pa.wait("call:declined", where=lambda d: d["reason"] == "cooldown"))["toUserId"] == b["userId"]
