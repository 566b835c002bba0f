"""A node dies between finalising a call and telling its participants (issue 11 §4): the call is final
in Redis, the history write is stuck (here: behind a lock on call_history) and the node is SIGKILLed
before anyone hears session:finalized. The other node's persist retry writes the history and tells
both sides, once each: the survivor's user, and the victim's user reconnected to the survivor."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.faults.conftest import call_across
from tests.multinode.conftest import eventually


async def test_crash_between_finalise_and_notify_still_tells_both_once(users, peers, n1, n2, settings, rds, db):
    a, b, pa, pb, start = await call_across(users, peers, n1, n2, join=True)
    room, session = start["roomId"], start["sessionId"]
    await asyncio.sleep(max(0.0, 5.3 - (time.time() * 1000 - start["serverNow"]) / 1000))  # history minimum

    lock = await asyncpg.connect(settings.database_url)
    tx = lock.transaction()
    await tx.start()
    try:
        await lock.execute("LOCK TABLE call_history IN ACCESS EXCLUSIVE MODE")
        await pb.emit("call:end", {"roomId": room})  # handled by n2, the node about to die

        async def stuck_writing() -> bool:  # n2 finalised and now waits for the history write
            # (read outside the lock's transaction: statistics views are a snapshot per transaction)
            waiting = await db.fetchval("""SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                                             AND query ILIKE '%call_history%'""")
            return bool(waiting) and await rds.hget(f"room:{room}", "state") == "final"
        assert await eventually(stuck_writing, within=10), "the finalising node never reached the history write"
        assert pa.all("session:finalized") == [] and pb.all("session:finalized") == []  # nobody told yet
        n2.kill()
        killed = time.monotonic()
    finally:
        await tx.rollback()
        await lock.close()

    # B's client reconnects, to the surviving node.
    pb2 = await peers(n1, b, "B2")
    fa = await pa.wait("session:finalized", timeout=20)
    fb = await pb2.wait("session:finalized", timeout=20)
    told_s = time.monotonic() - killed
    assert fa["sessionId"] == fb["sessionId"] == session
    # The counters come after session:finalized from the same retry: the sentinel that all has arrived.
    assert (await pa.wait("metrics:update", timeout=10))["sessionCount"] == 1
    assert (await pb2.wait("metrics:update", timeout=10))["sessionCount"] == 1
    assert len(pa.all("session:finalized")) == 1 and len(pb2.all("session:finalized")) == 1

    async def written() -> bool:
        return await db.fetchval("SELECT count(*) FROM call_history WHERE session_id = $1", session) == 2
    assert await eventually(written, within=5)
    assert await db.fetchval("SELECT count(*) FROM live_calls") == 0
    assert sorted(r["session_count"] for r in await db.fetch(
        "SELECT session_count FROM users WHERE id = ANY($1::uuid[])", [a["userId"], b["userId"]])) == [1, 1]
    print(f"session:finalized reached both {told_s:.2f} s after the finalising node was killed")
