"""A node frozen (SIGSTOP) past the dead-node window but within the disconnect grace, then resumed
(SIGCONT): the partner on the other node heard room:partner-disconnected, and must now hear
room:partner-reconnected; the call goes on (issue 11 §6)."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.faults.conftest import call_across
from tests.multinode.conftest import GRACE_S


async def test_partner_reconnected_after_a_freeze(users, peers, n1, n2, rds):
    _a, b, pa, pb, start = await call_across(users, peers, n1, n2, join=True)
    room = start["roomId"]

    assert n2.proc is not None
    n1_log = n1.log_size()
    n2.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    try:
        # n1 reaps the frozen node once its own beats were steady for a whole window (1.5 s here): on a
        # loaded CI machine (a browser starting on the other worker) that took 8.7 s once. The grace
        # the reap starts is what the rest of the test measures, so a late reap weakens nothing.
        try:
            gone = await pa.wait("room:partner-disconnected", timeout=20)
        except AssertionError as exc:  # say what n1 saw, so a late or missing reap can be told apart
            beats = {k: int(v) / 1000 - frozen_at for k, v in (await rds.hgetall("nodes")).items()}
            raise AssertionError(f"{exc}\nnodes' last beats, s after the freeze: {beats}\n"
                                 f"n1's log since the freeze:\n{n1.log_since(n1_log)[-3000:]}") from None
        assert gone["userId"] == b["userId"]
    finally:
        n2.proc.send_signal(signal.SIGCONT)
    t0 = time.monotonic()
    back = await pa.wait("room:partner-reconnected", timeout=GRACE_S)
    assert back == {"userId": b["userId"]}
    print(f"partner-reconnected {time.monotonic() - t0:.2f} s after SIGCONT")
    await asyncio.sleep(GRACE_S)  # past the grace that was running: the call must still be alive
    assert await rds.hget(f"room:{room}", "state") == "active"
    assert pa.all("session:finalized") == [] and pa.all("peer:disconnected") == []
    await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "v=0 after the freeze"}})
    assert (await pb.wait("rtc:offer", timeout=5))["offer"]["sdp"] == "v=0 after the freeze"
