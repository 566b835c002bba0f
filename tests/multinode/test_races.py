"""Races, by racing, across two nodes; afterwards the invariants are checked in Redis and Postgres."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.multinode.conftest import eventually


async def _room_records(rds) -> dict[str, dict[str, str]]:
    """Every room:<id> hash (not its :joined/:chat/... sub-keys)."""
    keys = [k for k in await rds.keys("room:*") if k.count(":") == 1]
    return {k.split(":", 1)[1]: await rds.hgetall(k) for k in keys}


async def _assert_room_invariants(rds, user_ids: list[str]) -> dict[str, dict[str, str]]:
    """No user in two rooms; every active room has exactly two distinct members whose u:<uid>:room points
    back; every u:<uid>:room points to an active room that has the user as a member."""
    rooms = {rid: r for rid, r in (await _room_records(rds)).items() if r.get("state") == "active"}
    membership: Counter[str] = Counter()
    for rid, r in rooms.items():
        assert r["a"] != r["b"], r
        for uid in (r["a"], r["b"]):
            membership[uid] += 1
            assert await rds.get(f"u:{uid}:room") == rid, (uid, rid)
    assert all(n == 1 for n in membership.values()), membership
    for uid in user_ids:
        rid = await rds.get(f"u:{uid}:room")
        if rid is not None:
            assert rid in rooms and uid in (rooms[rid]["a"], rooms[rid]["b"]), (uid, rid)
    return rooms


async def test_200_concurrent_accepts_make_one_room(users, peers, n1, n2, rds):
    a = await users.make(n1, "Caller")
    b = await users.make(n2, "Callee")
    pa = await peers(n1, a, "A")
    # The callee has ten tabs open, on both nodes; every one accepts the invite 20 times at once.
    tabs = [await peers(n1 if i % 2 else n2, b, f"B{i}") for i in range(10)]
    await tabs[0].emit("queue:join")
    await tabs[0].wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 300})
    notifies = [await t.wait("call:notify") for t in tabs]  # every tab of the callee is notified
    invite_id = notifies[0]["inviteId"]
    assert {n["inviteId"] for n in notifies} == {invite_id}

    accept = {"inviteId": invite_id, "requestedSeconds": 300}
    await asyncio.gather(*(t.emit("call:accept", accept) for t in tabs for _ in range(20)))

    async def settled() -> bool:
        errors = sum(len(t.all("call:error")) for t in tabs)
        return errors >= 199 and all(t.all("call:start") for t in tabs) and bool(pa.all("call:start"))
    await eventually(settled, within=10)
    await asyncio.sleep(0.5)  # a duplicate would show up now

    starts_a = pa.all("call:start")
    assert len(starts_a) == 1, starts_a
    room = starts_a[0]["roomId"]
    for t in tabs:  # call:start goes to every socket of the callee, exactly once
        assert [s["roomId"] for s in t.all("call:start")] == [room]
    errors = Counter(e["code"] for t in tabs for e in t.all("call:error"))
    assert errors == Counter({"INVITE_NOT_FOUND": 199}), errors
    rooms = await _room_records(rds)
    assert list(rooms) == [room]
    assert rooms[room]["a"] == a["userId"] and rooms[room]["b"] == b["userId"] and rooms[room]["state"] == "active"
    await _assert_room_invariants(rds, [a["userId"], b["userId"]])
    assert not await rds.keys("inv:*")
    assert [m for m in await rds.zrange("timers", 0, -1) if m.startswith("deadline:")] == [f"deadline:{room}"]


async def test_invite_cycles_all_accepting_at_once(users, peers, n1, n2, rds):
    """Two cycles of 10 users (u0 -> u1 -> ... -> u9 -> u0), spread over both nodes; every user accepts
    their incoming invite at the same instant. A user can be in at most one call, so only some pairs
    form; every invite must be resolved (accepted into exactly one room, or ended as busy)."""
    size, cycles = 10, 2
    everyone = await users.many(n1, size * cycles, "C")
    socks = [await peers(n1 if i % 2 else n2, u, f"C{i}") for i, u in enumerate(everyone)]
    for p, u in zip(socks, everyone, strict=True):
        await p.emit("queue:join")
        await p.wait("queue:update", where=lambda d, uid=u["userId"]: d["userId"] == uid)
    invites: dict[str, str] = {}  # invite id -> callee user id
    for c in range(cycles):
        ring = list(range(c * size, (c + 1) * size))
        for i, caller_ix in enumerate(ring):
            callee_ix = ring[(i + 1) % size]
            await socks[caller_ix].emit("call:invite", {"toUserId": everyone[callee_ix]["userId"],
                                                         "requestedSeconds": 120})
            n = await socks[callee_ix].wait("call:notify")
            invites[n["inviteId"]] = everyone[callee_ix]["userId"]
    assert len(invites) == size * cycles
    by_callee = {v: k for k, v in invites.items()}

    await asyncio.gather(*(p.emit("call:accept", {"inviteId": by_callee[u["userId"]], "requestedSeconds": 120})
                           for p, u in zip(socks, everyone, strict=True)))

    async def settled() -> bool:  # every accept answered: a call:start, or an error
        return all(p.all("call:start") or p.all("call:error") for p in socks) and not await rds.keys("inv:*")
    await eventually(settled, within=10)
    await asyncio.sleep(0.5)

    ids = [u["userId"] for u in everyone]
    rooms = await _assert_room_invariants(rds, ids)
    assert rooms, "no call formed at all"
    starts = {u["userId"]: p.all("call:start") for p, u in zip(socks, everyone, strict=True)}
    assert all(len(s) <= 1 for s in starts.values()), starts
    in_call = {uid for uid, s in starts.items() if s}
    assert in_call == {m for r in rooms.values() for m in (r["a"], r["b"])}
    for rid, r in rooms.items():  # both members were told about this room and nothing else
        assert [s["roomId"] for s in starts[r["a"]]] == [rid] == [s["roomId"] for s in starts[r["b"]]]
        assert starts[r["a"]][0]["isInitiator"] is True and starts[r["b"]][0]["isInitiator"] is False
    # Every accepted invite has one room: a room's pair is exactly one invite's (caller, callee).
    edges = {(ids[(i - 1) % size + (i // size) * size], ids[i]) for i in range(len(ids))}
    assert all((r["a"], r["b"]) in edges for r in rooms.values())
    assert len(rooms) == len({(r["a"], r["b"]) for r in rooms.values()})
    # Maximal: no invite left whose two ends are both free (it would have been accepted).
    free = set(ids) - in_call
    assert not [e for e in edges if e[0] in free and e[1] in free], (edges, free)
    # Nothing pending anywhere; the others were told why.
    assert not await rds.keys("inv:*") and not await rds.keys("u:*:in") and not await rds.keys("u:*:out")
    assert not [m for m in await rds.zrange("timers", 0, -1) if m.startswith("invite:")]
    for p, u in zip(socks, everyone, strict=True):
        if u["userId"] in free:
            told = p.all("call:declined") + p.all("call:rescinded") + p.all("call:error")
            assert told, (u["userId"], p.events)
    print(f"{len(rooms)} rooms from {len(invites)} invites in {cycles} cycles of {size}")
