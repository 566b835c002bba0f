"""Redis loses its data while Postgres is down (issue 11 §1 and §4 together).

* A live call: the nodes cannot read its durable record when they find Redis empty; the restore is
  retried on their next beats and the call is back once Postgres answers, then ends normally.
* A call that had already ended (both sides told, history write pending because Postgres was down):
  Redis held the only record of its end. The finalising node kept a copy and puts the final record back,
  so the call is not restored as live from its durable record: its users are free, nobody is told
  twice, and the history is written once when Postgres returns.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.conftest import both_beating, call_across, core_errors, pg_connection, restart_redis_empty
from tests.multinode.conftest import eventually

pytestmark = pytest.mark.allow_server_errors  # other domains' noise while Postgres is down; see core_errors


async def test_a_restore_that_failed_with_postgres_down_is_retried(stack, users, peers, n1, n2, settings, rds):
    marks = {n: n.log_size() for n in (n1, n2)}
    _a, _b, pa, pb, start = await call_across(users, peers, n1, n2, join=True)
    room, session = start["roomId"], start["sessionId"]

    stack.down(["postgres"])
    try:
        await restart_redis_empty(stack, rds)
        lost_ms = int(time.time() * 1000)
        await both_beating(rds, lost_ms)
        assert not await rds.exists(f"room:{room}")  # nothing to restore from while Postgres is down
    finally:
        stack.up()
    back = time.monotonic()

    async def restored() -> bool:
        return await rds.hget(f"room:{room}", "state") == "active"
    assert await eventually(restored, within=10), "the call was not restored once Postgres came back"
    recovered_s = time.monotonic() - back

    await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "v=0 restored late"}})
    assert (await pb.wait("rtc:offer", timeout=5))["offer"]["sdp"] == "v=0 restored late"
    await asyncio.sleep(max(0.0, 5.3 - (time.time() * 1000 - start["serverNow"]) / 1000))
    await pb.emit("call:end", {"roomId": room})
    assert (await pa.wait("session:finalized"))["sessionId"] == session
    assert (await pb.wait("session:finalized"))["sessionId"] == session
    await pa.wait("metrics:update")
    await pb.wait("metrics:update")
    assert len(pa.all("session:finalized")) == 1 and len(pb.all("session:finalized")) == 1
    async with pg_connection(settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM call_history WHERE session_id = $1", session) == 2
        assert await conn.fetchval("SELECT count(*) FROM live_calls") == 0
    assert [e for n, at in marks.items() for e in core_errors(n, at)] == []
    print(f"call restored {recovered_s:.2f} s after Postgres came back")


async def test_redis_lost_while_postgres_down_does_not_revive_an_ended_call(stack, users, peers, n1, n2,
                                                                            settings, rds):
    marks = {n: n.log_size() for n in (n1, n2)}
    a, b, pa, pb, start = await call_across(users, peers, n1, n2, join=True)
    room, session = start["roomId"], start["sessionId"]
    c = await users.make(n1, "C")
    pc = await peers(n1, c, "C")
    await asyncio.sleep(max(0.0, 5.3 - (time.time() * 1000 - start["serverNow"]) / 1000))

    stack.down(["postgres"])
    try:
        await pa.emit("call:end", {"roomId": room})
        assert (await pa.wait("session:finalized"))["sessionId"] == session
        assert (await pb.wait("session:finalized"))["sessionId"] == session
        await restart_redis_empty(stack, rds)
        lost_ms = int(time.time() * 1000)
        await both_beating(rds, lost_ms)
        # The finalising node put the call's end back (Redis only, Postgres is still down).
        assert await rds.hget(f"room:{room}", "state") == "final"
    finally:
        stack.up()
    back = time.monotonic()

    async with pg_connection(settings) as conn:
        async def written() -> bool:
            return await conn.fetchval("SELECT count(*) FROM live_calls") == 0
        assert await eventually(written, within=15), "the pending history write never ran"
        recovered_s = time.monotonic() - back
        assert await conn.fetchval("SELECT count(*) FROM call_history WHERE session_id = $1", session) == 2
        assert await conn.fetchval("SELECT count(*) FROM cooldowns") == 1
    assert (await pa.wait("metrics:update", timeout=10))["sessionCount"] == 1
    assert (await pb.wait("metrics:update", timeout=10))["sessionCount"] == 1

    # Both are free again: A can invite, B can be invited (a revived call would answer BUSY / busy).
    await pc.emit("queue:join")
    await pc.wait("queue:update", where=lambda d: d["userId"] == c["userId"])
    await pa.emit("call:invite", {"toUserId": c["userId"], "requestedSeconds": 60})
    assert (await pc.wait("call:notify"))["fromUser"]["userId"] == a["userId"]
    await pa.emit("call:rescind", {"toUserId": c["userId"]})
    await pc.wait("call:rescinded")
    await pc.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
    assert (await pb.wait("call:notify"))["fromUser"]["userId"] == c["userId"]
    for p in (pa, pb):
        assert p.all("call:error") == [] and p.all("call:resume") == [] and p.all("call:declined") == []
        assert len(p.all("session:finalized")) == 1
    assert await rds.hget(f"room:{room}", "state") == "final"
    assert not await rds.exists(f"u:{a['userId']}:room") and not await rds.exists(f"u:{b['userId']}:room")
    assert [e for n, at in marks.items() for e in core_errors(n, at)] == []
    print(f"history written {recovered_s:.2f} s after Postgres came back; the ended call stayed ended")
