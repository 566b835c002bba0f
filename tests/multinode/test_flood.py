"""A flood from one socket is held to its token bucket while another call on the same node goes on.

The bucket is configured small (burst 20, 1 event/s) so the result does not depend on how fast this
machine can send: even a slow sender outruns one token per second.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

BURST, RATE = 20, 1


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    return {"SOCKET_EVENT_BURST": str(BURST), "SOCKET_EVENTS_PER_SECOND": str(RATE)}


async def test_flood_is_rate_limited_per_socket(users, peers, n1, n2):
    noisy = await users.make(n1, "Noisy")
    quiet_a = await users.make(n1, "QuietA")
    quiet_b = await users.make(n2, "QuietB")
    flood = await peers(n1, noisy, "flood")
    qa = await peers(n1, quiet_a, "qa")
    qb = await peers(n2, quiet_b, "qb")
    await qb.emit("queue:join")
    await qb.wait("queue:update", where=lambda d: d["userId"] == quiet_b["userId"])

    t0 = time.monotonic()
    for i in range(300):
        await flood.sio.emit("call:end", {"roomId": f"r{i}"})
    # Meanwhile an unrelated pair on the same node starts a call normally.
    await qa.emit("call:invite", {"toUserId": quiet_b["userId"], "requestedSeconds": 60})
    n = await qb.wait("call:notify")
    await qb.emit("call:accept", {"inviteId": n["inviteId"], "requestedSeconds": 60})
    start = await qa.wait("call:start")
    await qa.emit("room:join", {"roomId": start["roomId"]})
    await qa.wait("room:joined")

    # Sentinel: one socket's events are handled in order, so once the answer to a later event
    # arrives, every earlier one has been handled (or dropped). Retry until a token has refilled.
    async def sentinel() -> None:
        while True:
            await flood.sio.emit("call:end", {"roomId": "sentinel"})
            try:
                await flood.wait("call:error", timeout=1.5 / RATE, where=lambda e: e.get("roomId") == "sentinel")
                return
            except AssertionError:
                continue

    await asyncio.wait_for(sentinel(), timeout=30)
    elapsed = time.monotonic() - t0
    codes = Counter(e["code"] for e in flood.all("call:error") if e.get("roomId") != "sentinel")
    assert set(codes) == {"NOT_PARTICIPANT", "RATE_LIMITED"}, codes
    # The burst plus what refilled while we sent, never all 300.
    assert BURST <= codes["NOT_PARTICIPANT"] <= BURST + RATE * elapsed + 1, (codes, elapsed)
    assert 1 <= codes["RATE_LIMITED"] <= elapsed + 2, (codes, elapsed)  # one notice per second at most
    assert flood.sio.connected
