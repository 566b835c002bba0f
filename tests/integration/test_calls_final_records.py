"""A finalised call's Redis record is never revived without expiry once its history is written (issue 11):
the "told" mark lands only on a record that still exists, and after Redis lost its data a node puts back
the final records it kept only for calls whose write Postgres says is still pending."""

import time
import uuid

import pytest

from server import timers
from server.calls import rooms, state, store
from server.deps import DEPS
from tests.rt import make_user


@pytest.fixture
def unwritten():
    rooms._unwritten.clear()
    yield rooms._unwritten
    rooms._unwritten.clear()


async def test_the_told_mark_never_creates_a_record(client):
    r = client.app[DEPS].redis
    await state.mark_told(r, "expired-room", 123)
    assert not await r.exists("room:expired-room")
    await r.hset("room:live-room", mapping={"state": "final"})
    await state.mark_told(r, "live-room", 456)
    assert await r.hgetall("room:live-room") == {"state": "final", "told": "456"}


def _final(room_id: str, a: str, b: str) -> dict[str, str]:
    now = timers.now_ms()
    return {"id": room_id, "a": a, "b": b, "started": str(now - 60_000), "ended": str(now), "agreed": "120",
            "deadline": str(now + 60_000), "session": str(uuid.uuid4()), "state": "final", "reason": "ended",
            "cd": "60000", "told": str(now)}


async def test_after_a_redis_loss_only_calls_still_unwritten_come_back(client, db, unwritten):
    deps = client.app[DEPS]
    a, b = await make_user(client, db, "A"), await make_user(client, db, "B")
    pending, written = str(uuid.uuid4()), str(uuid.uuid4())
    for room_id in (pending, written):
        room = _final(room_id, a["userId"], b["userId"])
        await store.start_live_call(deps.db, room_id, room["session"], a["userId"], b["userId"],
                                    int(room["started"]), 120, int(room["deadline"]))
        unwritten[room_id] = (time.monotonic(), room, ['{"text": "hi"}'])
    await store.end_live_call(deps.db, written)  # its history write is done (by another node, say)

    assert await rooms.restore_unwritten(deps) == 1
    assert not await deps.redis.exists(f"room:{written}"), "a written call came back without expiry"
    assert written not in unwritten
    back = await state.get_room(deps.redis, pending)
    assert back["state"] == "final" and back["a"] == a["userId"]
    assert await deps.redis.lrange(f"room:{pending}:chat", 0, -1) == ['{"text": "hi"}']
    assert await deps.redis.zscore("timers", f"persist:{pending}") is not None  # its write is retried
    assert pending in unwritten


async def test_an_entry_is_forgotten_once_its_record_has_an_expiry(client, db, unwritten):
    deps = client.app[DEPS]
    a, b = await make_user(client, db, "A"), await make_user(client, db, "B")
    room_id = str(uuid.uuid4())
    room = _final(room_id, a["userId"], b["userId"])
    await store.start_live_call(deps.db, room_id, room["session"], a["userId"], b["userId"],
                                int(room["started"]), 120, int(room["deadline"]))  # its write is pending
    unwritten[room_id] = (time.monotonic(), room, [])
    await deps.redis.hset(f"room:{room_id}", "state", "final")
    await rooms.prune_unwritten(deps)
    assert room_id in unwritten  # no expiry yet: the write is pending
    await deps.redis.pexpire(f"room:{room_id}", 400)  # TTL rounds this to 0 seconds
    await rooms.prune_unwritten(deps)
    assert room_id not in unwritten
