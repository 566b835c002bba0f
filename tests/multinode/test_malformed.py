"""Malformed input on one node: a few hundred bad packets per event (wrong types, missing fields, huge
strings, unknown and foreign rooms, non-object payloads). Nothing changes in Redis or Postgres, the
sender gets the typed errors (§7 E10) it should, another call on the same node keeps working, and the
node stays healthy. Then schema-valid but nasty content (the flood test is in test_flood.py)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from typing import Any

from tests.multinode.conftest import eventually, get_json

BIG = "x" * 70_000  # over the 64 KB event limit
HUGE = "y" * 120_000  # over the SDP events' limit too
WRONG_TYPES: list[Any] = [1, 0, -7, 1.5, True, False, None, [], ["a"], {}, {"a": 1}]
NOT_OBJECTS: list[Any] = [None, 1, 0, -1, 2.5, True, False, "", "text", "a" * 500, [], [1, 2], [{}], [None]]
ID_BAD: list[Any] = [*WRONG_TYPES, "", "z" * 65, "é" * 65]

SDP_EVENTS = ("rtc:offer", "rtc:answer")  # 110 KB limit instead of 64 KB
Packet = tuple[str, Any, str | None]  # event, payload, expected reaction (None: silently ignored)


def _too_big(event: str) -> str:
    """The reaction to a 70 KB value: over the limit, except for the SDP events (then it is a bad shape)."""
    return "error:INVALID_PAYLOAD" if event in SDP_EVENTS else "error:PAYLOAD_TOO_LARGE"


def _reactions(p) -> list[str]:
    out = [f"error:{e['code']}" for e in p.all("call:error")]
    out += [f"declined:{d['reason']}" for d in p.all("call:declined")]
    return out


def build_packets(me: str, victim: str, foreign_room: str, rng: random.Random) -> list[Packet]:
    pk: list[Packet] = []
    unknown = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(150)]
    junk_ids = ["abc", "room", "../../etc", "0", "null", "💣", "<script>", "r" * 64]

    def shape_errors(event: str, valid: dict[str, Any], id_fields: list[str],
                     other_bad: dict[str, list[Any]]) -> None:
        for v in NOT_OBJECTS:
            pk.append((event, v, "error:INVALID_PAYLOAD"))
        pk.append((event, {"unexpected": 1}, "error:INVALID_PAYLOAD"))
        pk.append((event, BIG, _too_big(event)))
        pk.append((event, HUGE, "error:PAYLOAD_TOO_LARGE"))
        for f in valid:
            if f in id_fields or f in other_bad:
                pk.append((event, {k: v for k, v in valid.items() if k != f}, "error:INVALID_PAYLOAD"))
        for f in id_fields:
            for bad in ID_BAD:
                pk.append((event, {**valid, f: bad}, "error:INVALID_PAYLOAD"))
            pk.append((event, {**valid, f: BIG}, _too_big(event)))
            pk.append((event, {**valid, f: HUGE}, "error:PAYLOAD_TOO_LARGE"))
        for f, bads in other_bad.items():
            for bad in bads:
                pk.append((event, {**valid, f: bad}, "error:INVALID_PAYLOAD"))

    def rooms(event: str, make: Any, expected: str | None = "error:NOT_PARTICIPANT") -> None:
        for rid in unknown:
            pk.append((event, make(rid), expected))
        for rid in junk_ids:
            pk.append((event, make(rid), expected))
        for i in range(50):  # a room that exists, of two other users
            pk.append((event, {**make(foreign_room), f"junk{i}": "x" * i}, expected))

    # Room events
    shape_errors("room:join", {"roomId": foreign_room}, ["roomId"], {})
    rooms("room:join", lambda r: {"roomId": r})
    for kind in ("offer", "answer"):
        ev, body = f"rtc:{kind}", {"type": kind, "sdp": "v=0"}
        shape_errors(ev, {"roomId": foreign_room, kind: body}, ["roomId"], {kind: [
            *WRONG_TYPES, "sdp", {"type": kind}, {"sdp": 5, "type": kind}, {"sdp": "v=0", "type": "pranswer"},
            {"sdp": "s" * (100 * 1024 + 1), "type": kind}]})
        rooms(ev, lambda r, kind=kind, body=body: {"roomId": r, kind: body})
    cand = {"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    shape_errors("rtc:ice", {"roomId": foreign_room, "candidate": cand}, ["roomId"], {"candidate": [
        *WRONG_TYPES, "cand", {"sdpMid": "0"}, {**cand, "candidate": 5}, {**cand, "candidate": "c" * 2049},
        {**cand, "sdpMLineIndex": -1}, {**cand, "sdpMLineIndex": 256}, {**cand, "sdpMLineIndex": "0"},
        {**cand, "sdpMid": 3}, {**cand, "usernameFragment": ["u"]}]})
    rooms("rtc:ice", lambda r: {"roomId": r, "candidate": cand})
    shape_errors("room:chat", {"roomId": foreign_room, "text": "hi"}, ["roomId"],
                 {"text": [*WRONG_TYPES, "t" * 2049]})
    rooms("room:chat", lambda r: {"roomId": r, "text": "hello <b>there</b>"})
    for r in unknown[:10]:  # sanitises to nothing: dropped before any lookup
        pk.append(("room:chat", {"roomId": r, "text": "<b></b>  "}, None))
    shape_errors("room:giveSocial", {"roomId": foreign_room, "socials": {"instagram": "me"}}, ["roomId"],
                 {"socials": [1, "insta", [], ["instagram"], True, {f"k{i}": "v" for i in range(11)},
                              {"instagram": 5}, {"instagram": "h" * 65}]})
    rooms("room:giveSocial", lambda r: {"roomId": r, "socials": {"instagram": "me.too"}})
    for r in unknown[:20]:  # nothing valid to share
        pk.append(("room:giveSocial", {"roomId": r, "socials": {"myspace": "x", "tiktok": "bad handle"}},
                   "error:INVALID_PAYLOAD"))
    shape_errors("call:end", {"roomId": foreign_room}, ["roomId"], {})
    rooms("call:end", lambda r: {"roomId": r})
    shape_errors("call:connected", {"roomId": foreign_room}, ["roomId"], {})
    rooms("call:connected", lambda r: {"roomId": r})

    # Invite events
    shape_errors("call:accept", {"inviteId": unknown[0], "requestedSeconds": 60}, ["inviteId"], {})
    for iid in unknown + junk_ids:
        pk.append(("call:accept", {"inviteId": iid, "requestedSeconds": 60}, "error:INVITE_NOT_FOUND"))
        pk.append(("call:accept", {"inviteId": iid}, "error:INVITE_NOT_FOUND"))
    for secs in ["60", None, [], {}, True, "NaN"]:
        pk.append(("call:accept", {"inviteId": unknown[1], "requestedSeconds": secs}, "error:INVALID_DURATION"))
    shape_errors("call:decline", {"inviteId": unknown[0]}, ["inviteId"],
                 {"reason": ["nope", 1, [], {}, "TIMEOUT"]})
    for iid in unknown + junk_ids:
        pk.append(("call:decline", {"inviteId": iid}, None))
        pk.append(("call:decline", {"inviteId": iid, "reason": "timeout"}, None))
    shape_errors("call:rescind", {"toUserId": victim}, ["toUserId"], {})
    for uid in [*unknown, *junk_ids, victim, me]:
        pk.append(("call:rescind", {"toUserId": uid}, None))
    shape_errors("call:extend-wait", {"toUserId": victim}, ["toUserId"], {})
    for uid in [*unknown, *junk_ids, victim, me]:
        pk.append(("call:extend-wait", {"toUserId": uid}, "error:INVITE_NOT_FOUND"))
    shape_errors("call:invite", {"toUserId": unknown[0], "requestedSeconds": 60}, ["toUserId"], {})
    for uid in unknown + junk_ids:
        pk.append(("call:invite", {"toUserId": uid, "requestedSeconds": 60}, "declined:user_not_found"))
        pk.append(("call:invite", {"toUserId": uid, "requestedSeconds": "abc"}, "declined:user_not_found"))
    for secs in [*WRONG_TYPES[6:], "60"]:  # a real target, but the duration is not a number
        pk.append(("call:invite", {"toUserId": victim, "requestedSeconds": secs}, "declined:invalid_duration"))
    for _ in range(10):
        pk.append(("call:invite", {"toUserId": me, "requestedSeconds": 60}, "declined:invalid_target"))
    for _ in range(5):  # well-formed, but the target is in a call (the old client is told "offline")
        pk.append(("call:invite", {"toUserId": victim, "requestedSeconds": 60}, "declined:offline"))

    # Events that take any payload: only the size matters; unknown events are ignored.
    for ev in ("presence:join", "presence:leave", "queue:leave"):
        for _ in range(5):
            pk.append((ev, {"pad": BIG}, "error:PAYLOAD_TOO_LARGE"))
    for ev in ("call:hack", "room:delete", "admin:ban", "", "x" * 300):
        pk.append((ev, {"roomId": foreign_room}, None))
    return pk


async def _spread(socks, packets: list[Packet]) -> None:
    """Send the packets round-robin over the sockets, all at once (each socket stays under its burst)."""
    per = [packets[i::len(socks)] for i in range(len(socks))]

    async def send(p, mine: list[Packet]) -> None:
        for ev, payload, _ in mine:
            await p.sio.emit(ev, payload)

    await asyncio.gather(*(send(p, mine) for p, mine in zip(socks, per, strict=True)))


async def _snapshot(rds, db) -> dict[str, Any]:
    keys = sorted(k for k in await rds.keys("*")
                  if not k.startswith(("rl:", "u:", "sid:", "node:", "sess:"))
                  and k not in ("nodes", "nodes:unbeaten", "online"))
    return {
        "keys": keys,
        "timers": sorted(await rds.zrange("timers", 0, -1)),
        "available": sorted(await rds.smembers("available")),
        "history": await db.fetchval("SELECT count(*) FROM call_history"),
        "cooldowns": await db.fetchval("SELECT count(*) FROM cooldowns"),
    }


async def test_bad_packets_change_nothing(users, peers, n1, db, rds, http):
    # Two users in a call on this node: their room is the "foreign" room of the attack.
    v1 = await users.make(n1, "Victim1")
    v2 = await users.make(n1, "Victim2")
    p1 = await peers(n1, v1, "V1")
    p2 = await peers(n1, v2, "V2")
    await p2.emit("queue:join")
    await p2.wait("queue:update", where=lambda d: d["userId"] == v2["userId"])
    await p1.emit("call:invite", {"toUserId": v2["userId"], "requestedSeconds": 300})
    n = await p2.wait("call:notify")
    await p2.emit("call:accept", {"inviteId": n["inviteId"], "requestedSeconds": 300})
    room = (await p1.wait("call:start"))["roomId"]
    await p2.wait("call:start")
    for p in (p1, p2):
        await p.emit("room:join", {"roomId": room})
        await p.wait("room:joined")
    await p1.emit("room:chat", {"roomId": room, "text": "before"})
    await p2.wait("room:chat")
    victim_events = (len(p1.events), len(p2.events))

    attacker = await users.make(n1, "Mallory")
    me = attacker["userId"]
    packets = build_packets(me, v1["userId"], room, random.Random(1234))
    per_event = Counter(ev for ev, _, _ in packets)
    real = ["room:join", "rtc:offer", "rtc:answer", "rtc:ice", "room:chat", "room:giveSocial", "call:end",
            "call:connected", "call:accept", "call:decline", "call:rescind", "call:extend-wait", "call:invite"]
    assert min(per_event[ev] for ev in real) >= 150, {ev: per_event[ev] for ev in real}
    socks = [await peers(n1, attacker, f"M{i}") for i in range((len(packets) + 99) // 100)]
    before = await _snapshot(rds, db)

    t0 = time.monotonic()
    health = asyncio.create_task(_health_during(http, n1.url, 3.0))
    await _spread(socks, packets)
    expected = Counter(r for _, _, r in packets if r is not None)

    async def settled() -> bool:
        return sum(len(_reactions(p)) for p in socks) >= sum(expected.values())
    await eventually(settled, within=30)
    await asyncio.sleep(0.5)
    took = time.monotonic() - t0
    got = Counter(r for p in socks for r in _reactions(p))
    assert got == expected, {"missing": expected - got, "unexpected": got - expected}
    for p in socks:  # every typed error comes with the legacy `error {message}`; sockets still connected
        assert len(p.all("error")) == len(p.all("call:error"))
        assert p.sio.connected
    health_codes = await health
    assert health_codes and set(health_codes) == {200}

    # Nothing changed: no room, no invite, no cooldown, no history, no timer; the attacker is nowhere.
    assert await _snapshot(rds, db) == before
    assert not await rds.keys("inv:*")
    for suffix in ("room", "out", "in", "final", "away"):
        assert not await rds.exists(f"u:{me}:{suffix}")
    assert await rds.llen(f"room:{room}:chat") == 1
    assert await rds.hget(f"room:{room}", "state") == "active"
    assert sorted(await rds.smembers(f"room:{room}:joined")) == sorted([v1["userId"], v2["userId"]])
    # The victims saw none of it...
    # (p2 is still in the queue room from before its call, so it saw the attacker come online.)
    seen = p1.events[victim_events[0]:] + p2.events[victim_events[1]:]
    assert seen in ([], [("presence:update", {"userId": me, "online": True, "available": False})]), seen
    # ...and their call still works.
    await p1.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "v=0 still"}})
    assert (await p2.wait("rtc:offer"))["offer"]["sdp"] == "v=0 still"
    await p2.emit("room:chat", {"roomId": room, "text": "after"})
    assert (await p1.wait("room:chat", where=lambda m: m["from"] == v2["userId"]))["text"] == "after"
    status, _ = await get_json(http, f"{n1.url}/health")
    assert status == 200
    shown = {ev[:24]: c for ev, c in per_event.items()}
    print(f"{len(packets)} bad packets over {len(per_event)} events ({shown}) answered in {took:.2f}s")


async def _health_during(http, url: str, seconds: float) -> list[int]:
    codes = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        async with http.get(f"{url}/health") as resp:
            codes.append(resp.status)
        await asyncio.sleep(0.1)
    return codes


async def test_nasty_but_valid_content_still_finalises(users, peers, n1, n2, db, rds):
    """Schema-valid text with NUL characters, lone surrogates and markup, and odd socials, in a real call:
    the call still ends with its history rows, and what is stored is sanitised."""
    a = await users.make(n1, "Ann")
    b = await users.make(n2, "Bob")
    pa = await peers(n1, a, "A")
    pb = await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
    n = await pb.wait("call:notify")
    await pb.emit("call:accept", {"inviteId": n["inviteId"], "requestedSeconds": 60})
    start = await pa.wait("call:start")
    await pb.wait("call:start")
    room = start["roomId"]
    t0 = time.monotonic()
    for p in (pa, pb):
        await p.emit("room:join", {"roomId": room})
    for p in (pa, pb):  # chat is not buffered for a side that has not joined yet
        await p.wait("room:joined")
    texts = ["nul\u0000inside", "lone \ud800 surrogate", "<img src=x onerror=alert(1)>ok", "tab\tand\nnewline",
             "\u202eright-to-left", "😀" * 300]
    for t in texts:
        await pa.emit("room:chat", {"roomId": room, "text": t})
    got = [await pb.wait("room:chat", timeout=3) for _ in texts]
    assert all("<" not in m["text"] for m in got)
    await pa.emit("room:giveSocial", {"roomId": room, "socials": {"instagram": "ok_1", "snapchat": "\u0000"}})
    assert (await pb.wait("room:socialShared"))["socials"] == {"instagram": "ok_1"}
    await asyncio.sleep(max(0.0, 5.3 - (time.monotonic() - t0)))
    await pa.emit("call:end", {"roomId": room})
    await pa.wait("session:finalized")
    await pb.wait("session:finalized")

    async def rows():
        return await db.fetch("SELECT messages FROM call_history WHERE session_id = $1", start["sessionId"])
    stored = await eventually(rows, within=3)
    assert len(stored) == 2, "history rows were not written (content made the insert fail?)"
    kept = [m["text"] for m in json.loads(stored[0]["messages"]) if m.get("type") == "message"]
    assert kept[:3] == ["nulinside", "lone  surrogate", "ok"]
    assert kept[5] == "😀" * 300


async def test_message_over_1mb_closes_only_that_socket(users, peers, n1, http):
    """Above the 1 MB Engine.IO limit the node drops the connection itself, before any handler runs."""
    u = await users.make(n1, "Big")
    other = await users.make(n1, "Other")
    big = await peers(n1, u, "big")
    same_user_tab = await peers(n1, u, "tab2")
    bystander = await peers(n1, other, "other")
    await big.sio.emit("room:chat", {"roomId": "x", "text": "z" * 2_000_000})

    async def dropped() -> bool:
        return not big.sio.connected
    assert await eventually(dropped, within=3)
    assert not big.all("call:error")
    status, _ = await get_json(http, f"{n1.url}/health")
    assert status == 200
    for p in (same_user_tab, bystander):
        assert p.sio.connected
        await p.emit("call:end", {"roomId": "nope"})
        assert (await p.wait("call:error"))["code"] == "NOT_PARTICIPANT"
