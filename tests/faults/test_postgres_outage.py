"""Postgres down when calls end (issue 11 §4).

* The outage outlasts the finalised room's Redis record lifetime (ROOM_KEEP_SECONDS, 2 s here): the
  record is kept until its history is written, both sides are told at once, and the history is written
  exactly once when Postgres returns (then the record expires as usual).
* A participant deletes their account while the history write is still pending: the retry writes no
  row and no counters for the deleted account, and the partner's row does not name them.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.faults.conftest import call_across, core_errors, pg_connection
from tests.multinode.conftest import eventually

KEEP_S = 2


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    return {"ROOM_KEEP_SECONDS": str(KEEP_S), "STORE_TIMEOUT_SECONDS": "1"}


async def _after_history_minimum(start: dict) -> None:
    """Calls shorter than 5 s leave no history: end this one just after."""
    await asyncio.sleep(max(0.0, 5.3 - (time.time() * 1000 - start["serverNow"]) / 1000))


@pytest.mark.allow_server_errors  # other domains' noise while Postgres is down; the core's is checked below
async def test_postgres_down_longer_than_the_room_record_lives(stack, users, peers, n1, n2, settings, rds):
    marks = {n: n.log_size() for n in (n1, n2)}
    a, b, pa, pb, start = await call_across(users, peers, n1, n2, join=True)
    room, session = start["roomId"], start["sessionId"]
    await _after_history_minimum(start)

    stack.down(["postgres"])
    try:
        await pa.emit("call:end", {"roomId": room})
        # Both sides are told at once, Postgres or not.
        assert (await pa.wait("session:finalized"))["sessionId"] == session
        assert (await pb.wait("session:finalized"))["sessionId"] == session
        # The outage lasts well past the record's lifetime: the record is still there, with no expiry.
        await asyncio.sleep(2 * KEEP_S + 1)
        assert await rds.hget(f"room:{room}", "state") == "final"
        assert await rds.ttl(f"room:{room}") == -1
    finally:
        stack.up()
    back = time.monotonic()

    async with pg_connection(settings) as conn:
        async def written() -> int:
            return int(await conn.fetchval("SELECT count(*) FROM call_history WHERE session_id = $1", session))
        assert await eventually(written, within=15) == 2, "history was not written after Postgres came back"
        recovered_s = time.monotonic() - back
        # The counters the end screen shows arrive once the write is done (they now include this call).
        assert (await pa.wait("metrics:update", timeout=10))["sessionCount"] == 1
        assert (await pb.wait("metrics:update", timeout=10))["sessionCount"] == 1
        # Exactly once: one row per side, counters bumped once, the live record gone, one cooldown.
        assert await written() == 2
        counts = await conn.fetch("SELECT session_count FROM users WHERE id = ANY($1::uuid[])",
                                  [a["userId"], b["userId"]])
        assert sorted(r["session_count"] for r in counts) == [1, 1]
        assert await conn.fetchval("SELECT count(*) FROM live_calls") == 0
        assert await conn.fetchval("SELECT count(*) FROM cooldowns") == 1
    # session:finalized went out once per side (the sentinel metrics:update came after any replay).
    assert len(pa.all("session:finalized")) == 1 and len(pb.all("session:finalized")) == 1

    async def expired() -> bool:
        return not await rds.exists(f"room:{room}")
    assert await eventually(expired, within=KEEP_S + 5), (
        f"the written room's record never expired: {await rds.hgetall(f'room:{room}')}, "
        f"ttl {await rds.ttl(f'room:{room}')}, timers {await rds.zrange('timers', 0, -1, withscores=True)}")
    assert [e for n, at in marks.items() for e in core_errors(n, at)] == []
    print(f"history written {recovered_s:.2f} s after Postgres came back")


async def test_a_user_deleted_before_the_pending_history_write_is_not_written_back(
        users, peers, n1, n2, settings, http):
    a, b, pa, pb, start = await call_across(users, peers, n1, n2, join=True)
    room, session = start["roomId"], start["sessionId"]
    await pa.emit("room:chat", {"roomId": room, "text": "hello from A"})
    await pb.emit("room:chat", {"roomId": room, "text": "hello from B"})
    await pa.wait("room:chat", where=lambda m: m["text"] == "hello from B")
    await _after_history_minimum(start)

    # The history write fails (its transaction also ends the live record, whose table is locked: the
    # statement times out after 1 s) and is left to the retry timer.
    lock = await asyncpg.connect(settings.database_url)
    tx = lock.transaction()
    await tx.start()
    try:
        await lock.execute("LOCK TABLE live_calls IN ACCESS EXCLUSIVE MODE")
        await pa.emit("call:end", {"roomId": room})
        await pa.wait("session:finalized", timeout=8)
        await pb.wait("session:finalized", timeout=8)
        # Meanwhile B deletes the account (which does not touch live_calls).
        async with http.delete(f"{n2.url}/user/me",
                               headers={"Authorization": f"Bearer {b['sessionToken']}"}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["deleted"] is True
    finally:
        await tx.rollback()
        await lock.close()

    async with pg_connection(settings) as conn:
        async def live_record_gone() -> bool:
            return await conn.fetchval("SELECT count(*) FROM live_calls") == 0
        assert await eventually(live_record_gone, within=15), "the pending history write never ran"
        rows = await conn.fetch("SELECT user_id::text, partner_id, partner_name, messages FROM call_history "
                                "WHERE session_id = $1", session)
        # A keeps the call, without B's identity; nothing is written back for B.
        assert [r["user_id"] for r in rows] == [a["userId"]]
        assert rows[0]["partner_id"] is None and rows[0]["partner_name"] == "Deleted user"
        said = [(m["from"], m["text"]) for m in _json(rows[0]["messages"]) if m.get("type") == "message"]
        assert ("deleted-user", "hello from B") in said and (a["userId"], "hello from A") in said
        assert b["userId"] not in str(_json(rows[0]["messages"]))
        gone = await conn.fetchrow("SELECT session_count, timer_total_seconds FROM users WHERE id = $1", b["userId"])
        assert gone["session_count"] == 0 and gone["timer_total_seconds"] == 0
        mine = await conn.fetchval("SELECT session_count FROM users WHERE id = $1", a["userId"])
        assert mine == 1


def _json(value):
    import json

    return json.loads(value) if isinstance(value, str) else value
