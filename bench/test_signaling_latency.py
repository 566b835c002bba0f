"""Benchmark (`make bench`, not part of `make test`): signalling latency on one node (the baseline)
vs across two nodes, measured in the same run: invite -> call:start (the callee accepts as soon as it
is notified) and rtc:offer -> delivery to the partner. Printed side by side and written to
test-artifacts/multinode/timings.json. It asserts nothing about speed: numbers are for reading."""

from __future__ import annotations

import json
import statistics
import time

from tests.multinode.conftest import artifacts_dir

INVITES = 15
OFFERS_PER_CALL = 10


def _summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"n": len(s), "median_ms": round(statistics.median(s), 2),
            "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))], 2), "max_ms": round(s[-1], 2)}


async def _measure(users, peers, rds, caller_node, callee_node, tag: str) -> dict[str, dict[str, float]]:
    a = await users.make(caller_node, f"T{tag}a")
    b = await users.make(callee_node, f"T{tag}b")
    pa = await peers(caller_node, a, f"{tag}A")
    pb = await peers(callee_node, b, f"{tag}B")
    notify_ms, start_ms, offer_ms = [], [], []
    for i in range(INVITES):
        await pb.emit("queue:join")
        await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"] and d["available"])
        t0 = time.perf_counter()
        await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 120})
        n = await pb.wait("call:notify")
        t1 = time.perf_counter()
        await pb.emit("call:accept", {"inviteId": n["inviteId"], "requestedSeconds": 120})
        start = await pa.wait("call:start")
        t2 = time.perf_counter()
        notify_ms.append((t1 - t0) * 1000)
        start_ms.append((t2 - t0) * 1000)
        room = start["roomId"]
        await pb.wait("call:start")
        for p in (pa, pb):
            await p.emit("room:join", {"roomId": room})
            await p.wait("room:joined")
        if i < 5:
            for k in range(OFFERS_PER_CALL):
                sdp = f"v=0 {i}-{k}"
                t3 = time.perf_counter()
                await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": sdp}})
                await pb.wait("rtc:offer", where=lambda d, sdp=sdp: d["offer"]["sdp"] == sdp)
                offer_ms.append((time.perf_counter() - t3) * 1000)
        await pa.emit("call:end", {"roomId": room})
        await pa.wait("session:finalized")
        await pb.wait("session:finalized")
        for key in await rds.keys("cd:*"):  # the 24 h post-call cooldown would block the next sample
            await rds.delete(key)
    return {"invite_to_notify": _summary(notify_ms), "invite_to_call_start": _summary(start_ms),
            "offer_to_partner": _summary(offer_ms)}


async def test_latency_one_node_vs_two(users, peers, n1, n2, rds):
    one = await _measure(users, peers, rds, n1, n1, "one")
    two = await _measure(users, peers, rds, n1, n2, "two")
    result = {"one_node": one, "two_nodes": two}
    (artifacts_dir() / "timings.json").write_text(json.dumps(result, indent=2))
    print()
    for name, r in result.items():
        for metric, s in r.items():
            print(f"{name:<10} {metric:<22} median {s['median_ms']:7.2f} ms  p95 {s['p95_ms']:7.2f} ms  "
                  f"max {s['max_ms']:7.2f} ms  (n={s['n']})")
    for metric in one:
        ratio = two[metric]["median_ms"] / one[metric]["median_ms"]
        print(f"two nodes / one node, {metric:<22} median x{ratio:.2f}")
