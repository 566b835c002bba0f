"""Both sides send call:end at once (the original client always does): 200 races, the parties on
different nodes; each side gets exactly one session:finalized (§3.3, issue 11 §5) and every call's
durable record is closed."""

from __future__ import annotations

import asyncio

PAIRS = 20
ROUNDS = 10  # 200 races


async def test_one_session_finalized_per_side_in_200_double_ends(users, peers, n1, n2, rds, db):
    callers = [await users.make(n1, f"A{i}") for i in range(PAIRS)]
    callees = [await users.make(n2, f"B{i}") for i in range(PAIRS)]
    pas = [await peers(n1, u, f"A{i}") for i, u in enumerate(callers)]
    pbs = [await peers(n2, u, f"B{i}") for i, u in enumerate(callees)]
    sessions = []

    async def race(pa, pb) -> None:
        # A trailing debounced queue:update from the last round may still arrive: only the echo of
        # this round's queue:join means the callee is available again.
        mark = pb.mark()
        await pb.emit("queue:join")
        await pb.wait("queue:update", since=mark, where=lambda d: d["userId"] == pb.user_id and d["available"])
        await pa.emit("call:invite", {"toUserId": pb.user_id, "requestedSeconds": 60})
        await pb.emit("call:accept", {"inviteId": (await pb.wait("call:notify"))["inviteId"],
                                      "requestedSeconds": 60})
        start = await pa.wait("call:start")
        await pb.wait("call:start")
        before = (len(pa.all("session:finalized")), len(pb.all("session:finalized")))
        await asyncio.gather(pa.emit("call:end", {"roomId": start["roomId"]}),
                             pb.emit("call:end", {"roomId": start["roomId"]}))
        for p, n in zip((pa, pb), before, strict=True):
            await p.wait("session:finalized", where=lambda d, s=start: d["sessionId"] == s["sessionId"])
            # Sentinel: handled after this socket's call:end, and after anything it caused here.
            await p.emit("call:end", {"roomId": "sentinel"})
            await p.wait("call:error", where=lambda d: d["code"] == "NOT_PARTICIPANT")
            assert len(p.all("session:finalized")) == n + 1, p.all("session:finalized")
        sessions.append(start["sessionId"])

    for _ in range(ROUNDS):
        await asyncio.gather(*(race(pa, pb) for pa, pb in zip(pas, pbs, strict=True)))
        keys = [k async for k in rds.scan_iter("cd:*")]  # the same pairs call again next round
        if keys:
            await rds.delete(*keys)
    assert len(sessions) == PAIRS * ROUNDS == len(set(sessions))
    for p in pas + pbs:
        assert len(p.all("session:finalized")) == ROUNDS
    assert await db.fetchval("SELECT count(*) FROM live_calls") == 0
