"""The server deadline (§7 E1) across two nodes, and call:end from both sides racing the deadline.

These nodes run with CALL_SETUP_ALLOWANCE_MS=-54000, so a 60 s call's deadline comes 6 s after
accept (long enough for a history row, which needs >= 5 s)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

DEADLINE_S = 6.0


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    return {"CALL_SETUP_ALLOWANCE_MS": str(int((DEADLINE_S - 60) * 1000))}


async def _in_call(users, peers, caller_node, callee_node, tag: str = ""):
    a = await users.make(caller_node, f"Caller{tag}")
    b = await users.make(callee_node, f"Callee{tag}")
    pa = await peers(caller_node, a, f"A{tag}")
    pb = await peers(callee_node, b, f"B{tag}")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
    notify = await pb.wait("call:notify")
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 60})
    sa = await pa.wait("call:start")
    sb = await pb.wait("call:start")
    return a, b, pa, pb, sa, sb


async def test_deadline_ends_silent_call(users, peers, n1, n2, db, rds):
    a, b, pa, pb, sa, sb = await _in_call(users, peers, n1, n2)
    assert sa["agreedSeconds"] == 60
    assert abs(sa["endsAt"] - sa["serverNow"] - DEADLINE_S * 1000) < 500
    assert sa["endsAt"] == sb["endsAt"]
    room = sa["roomId"]
    # Both clients join and then hang: no call:end, ever.
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
        d = await p.wait("call:deadline")
        assert d["roomId"] == room and d["endsAt"] == sa["endsAt"]
    fa = await pa.wait("session:finalized", timeout=DEADLINE_S + 3)
    fb = await pb.wait("session:finalized", timeout=2)
    ended_at = time.time() * 1000
    assert fa == fb == {"sessionId": sa["sessionId"], "reason": "deadline"}
    assert sa["endsAt"] - 50 <= ended_at <= sa["endsAt"] + 1500, ended_at - sa["endsAt"]
    rows = await db.fetch("SELECT user_id::text, end_reason, duration_seconds FROM call_history")
    assert len(rows) == 2 and {r["user_id"] for r in rows} == {a["userId"], b["userId"]}
    assert {r["end_reason"] for r in rows} == {"deadline"}
    assert await rds.hget(f"room:{room}", "state") == "final"
    assert await rds.get(f"u:{a['userId']}:room") is None and await rds.get(f"u:{b['userId']}:room") is None
    assert not [m for m in await rds.zrange("timers", 0, -1) if m.startswith("deadline:")]
    # Signalling after the end is refused.
    await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "late"}})
    assert (await pa.wait("call:error"))["code"] == "NOT_PARTICIPANT"
    await pb.quiet("rtc:offer", 0.2)


async def test_call_end_from_both_sides_races_the_deadline(users, peers, n1, n2, db, rds):
    """Several calls at once; in each, both sides send call:end at (about) the deadline instant, each
    pair with a different offset, so the three finalisers really race. Exactly one wins per call:

    * one finalisation: 2 history rows, one metrics:update per side, the room final, the deadline timer gone;
    * every side gets exactly one session:finalized (§3.3): a call:end that lost the race gets no replay,
      since its socket was already told by the finaliser (issue 11 §5).
    """
    offsets_ms = [-40, -20, -5, 0, 5, 15, 30, 60]
    calls = await asyncio.gather(*(
        _in_call(users, peers, n1 if i % 2 else n2, n2 if i % 2 else n1, tag=str(i)) for i in range(len(offsets_ms))))

    async def end_both(call, offset_ms: int) -> None:
        _a, _b, pa, pb, sa, _sb = call
        room = sa["roomId"]
        for p in (pa, pb):
            await p.emit("room:join", {"roomId": room})
        await asyncio.sleep(max(0.0, (sa["endsAt"] + offset_ms) / 1000 - time.time()))
        await asyncio.gather(pa.emit("call:end", {"roomId": room}), pb.emit("call:end", {"roomId": room}))

    await asyncio.gather(*(end_both(c, off) for c, off in zip(calls, offsets_ms, strict=True)))

    reasons = Counter()
    for a, b, pa, pb, sa, _sb in calls:
        room, session = sa["roomId"], sa["sessionId"]

        for p in (pa, pb):  # sentinel: answered after anything this socket's call:end caused
            await p.wait("session:finalized")
            await p.emit("call:end", {"roomId": "sentinel"})
            await p.wait("call:error", where=lambda d: d["code"] == "NOT_PARTICIPANT")
        fa, fb = pa.all("session:finalized"), pb.all("session:finalized")
        events = fa + fb
        assert {e["sessionId"] for e in events} == {session}
        reason = events[0]["reason"]
        assert {e["reason"] for e in events} == {reason}, events
        reasons[reason] += 1
        assert reason in ("deadline", "ended")
        assert (len(fa), len(fb)) == (1, 1), (fa, fb)
        assert len(pa.all("metrics:update")) == 1 and len(pb.all("metrics:update")) == 1
        rows = await db.fetch("SELECT user_id::text, end_reason FROM call_history WHERE session_id = $1", session)
        assert sorted(r["user_id"] for r in rows) == sorted([a["userId"], b["userId"]])
        assert {r["end_reason"] for r in rows} == {reason}
        assert await rds.hget(f"room:{room}", "state") == "final"
        assert await rds.hget(f"room:{room}", "reason") == reason
    assert await db.fetchval("SELECT count(*) FROM call_history") == 2 * len(calls)
    assert not [m for m in await rds.zrange("timers", 0, -1) if m.startswith("deadline:")]
    print(f"race winners: {dict(reasons)}")
