"""Postgres down when calls end (issue 11 §4).

* The outage outlasts the finalised room's Redis record lifetime (ROOM_KEEP_SECONDS, 2 s here): the
  record is kept until its history is written, both sides are told at once, and the history is written
  exactly once when Postgres returns (then the record expires as usual).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import pytest

from tests.faults.conftest import call_across, core_errors
from tests.multinode.conftest import eventually

KEEP_S = 2


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    return {"ROOM_KEEP_SECONDS": str(KEEP_S), "STORE_TIMEOUT_SECONDS": "1"}


async def _after_history_minimum(start: dict) -> None:
    """Calls shorter than 5 s leave no history: end this one just after."""
    await asyncio.sleep(max(0.0, 5.3 - (time.time() * 1000 - start["serverNow"]) / 1000))


@contextlib.asynccontextmanager
async def _connect(settings):
    conn = await asyncpg.connect(settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


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

    async with _connect(settings) as conn:
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
    assert await eventually(expired, within=KEEP_S + 5), "the written room's record never expired"
    assert [e for n, at in marks.items() for e in core_errors(n, at)] == []
    print(f"history written {recovered_s:.2f} s after Postgres came back")
