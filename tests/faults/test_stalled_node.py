"""A node whose timer work stalls (here: a timer handler waiting on a Postgres lock) longer than the
dead-node window is still alive: its heartbeat has its own task, so the other node must not reap its
sockets and end its calls (issue 11 §2)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.faults.conftest import call_across
from tests.multinode.conftest import GRACE_S, INVITE_GRACE_S, INVITE_TTL_S


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    return {"STORE_TIMEOUT_SECONDS": "20"}  # the stall below ends by our release, not by a timeout


async def test_a_node_stalled_in_timer_work_keeps_its_calls(users, peers, n1, n2, settings, rds):
    c, d, pc, pd, start = await call_across(users, peers, n1, n2, 600, ("C", "D"))
    room = start["roomId"]

    # An invite left to expire: whichever node's sweeper claims its timer writes the 1 h cooldown to
    # Postgres, where the table is locked: that node's timer loop stalls.
    a, b = await users.make(n1, "A"), await users.make(n2, "B")
    pa, pb = await peers(n1, a, "A"), await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda x: x["userId"] == b["userId"])
    lock = await asyncpg.connect(settings.database_url)
    tx = lock.transaction()
    await tx.start()
    try:
        await lock.execute("LOCK TABLE cooldowns IN ACCESS EXCLUSIVE MODE")
        await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
        await pb.wait("call:notify")
        # Stalled for the dead-node window (1.5 s) several times over, plus the disconnect grace.
        await asyncio.sleep(INVITE_TTL_S + INVITE_GRACE_S + 3 * 1.5 + GRACE_S)
        assert pa.all("call:declined") == []  # the expiry really is stuck behind the lock
    finally:
        await tx.rollback()
        await lock.close()
    # Released: the expiry completes (the sentinel: every event of the stall has arrived by now).
    assert (await pa.wait("call:declined", timeout=10))["reason"] == "timeout"
    for p in (pc, pd):
        assert p.all("room:partner-disconnected") == [] and p.all("session:finalized") == [], p.events
    assert await rds.hget(f"room:{room}", "state") == "active"
    assert await rds.scard(f"u:{c['userId']}:socks") == 1 and await rds.scard(f"u:{d['userId']}:socks") == 1
    # ... and signalling still flows across the nodes.
    for p in (pc, pd):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await pc.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "v=0 after the stall"}})
    assert (await pd.wait("rtc:offer"))["offer"]["sdp"] == "v=0 after the stall"
