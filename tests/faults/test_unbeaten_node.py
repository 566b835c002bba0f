"""A node that registers sockets while it is not in the heartbeat registry (before its first beat, or
after Redis lost its data and before its next one) and dies before it beats: its sockets are reaped
like any dead node's, within the dead-node window (issue 11 §2). Without that, its users stayed
online and in the deck for good: nothing listed the node, so nothing could find it stale.

A third node that beats once at start-up and then not for an hour stands for that window, stretched:
the test drops its registration (as a Redis that lost its data would) once it has beaten, so every
socket it registers afterwards is one of an unregistered node."""

from __future__ import annotations

import time
import uuid

from tests.multinode.conftest import Node, eventually

TOKEN = "unbeaten-metrics-token"


async def test_sockets_of_a_node_that_died_before_its_first_beat_are_reaped(users, peers, n1, n2, cluster, rds,
                                                                           http):
    node_id = f"unbeaten-{uuid.uuid4().hex[:8]}"
    n3 = Node("node3-unbeaten", {**cluster.env, "NODE_ID": node_id, "NODE_HEARTBEAT_SECONDS": "3600",
                                 "METRICS_TOKEN": TOKEN}).start()
    try:
        async def first_beat_done() -> bool:  # the node's own gauge, set by its first heartbeat
            async with http.get(f"{n3.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                return resp.status == 200 and "napalm_heartbeat_age_seconds" in await resp.text()
        assert await eventually(first_beat_done, within=10), "the third node never beat"
        await rds.hdel("nodes", node_id)  # (or the others reaped it, empty, once its beat was stale)

        gone = await users.make(n3, "Gone")
        await peers(n3, gone, "G")  # authenticated: its socket is registered, under an unregistered node
        marks = {n.name: n.log_size() for n in (n1, n2)}
        n3.kill()
        t0 = time.monotonic()

        async def offline() -> bool:
            return not await rds.sismember("online", gone["userId"])

        def logs() -> str:
            return "".join(n.log_since(marks[n.name]) for n in (n1, n2))
        assert await eventually(offline, within=15), f"the dead node's user stayed online; the nodes logged:\n{logs()}"
        print(f"offline {time.monotonic() - t0:.2f} s after the kill")
        assert await rds.scard(f"node:{node_id}:sids") == 0
        assert not await rds.hexists("nodes:unbeaten", node_id)
        assert not await rds.hexists("nodes", node_id)
        reaped = [line for line in logs().splitlines() if "node_reaped" in line and node_id in line]
        assert len(reaped) == 1, logs()
    finally:
        n3.stop()
