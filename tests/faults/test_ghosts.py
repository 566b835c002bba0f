"""Ghost sockets (issue 11 §3): a sid registered in Redis for a node that does not hold it (a cleanup
that failed halfway: a Redis error after the local pop, a reap interrupted after the node's sid list
was taken) keeps its user online until the node's reconciliation takes it out."""

from __future__ import annotations

import time

from tests.faults.conftest import call_across
from tests.multinode.conftest import eventually


async def _ghost(rds, node_id: str, user_id: str, sid: str) -> None:
    """What a failed disconnect leaves behind: the registration without the socket."""
    await rds.hset(f"sid:{sid}", mapping={"uid": user_id, "node": node_id, "sess": "gone"})
    await rds.sadd(f"node:{node_id}:sids", sid)
    await rds.sadd(f"u:{user_id}:socks", sid)
    await rds.sadd("online", user_id)


async def test_each_nodes_ghosts_go_offline_within_the_period(users, peers, n1, n2, rds, http):
    ghosts = [await users.make(n1, f"Ghost{i}") for i in range(2)]
    alive = await users.make(n2, "Alive")
    pl = await peers(n2, alive, "alive")
    probe = await peers(n1, await users.make(n1, "Probe"), "probe")

    async def node_of(peer) -> str | None:
        # Each node's id, read from its own socket's registration (other processes of this test
        # session may beat in the same Redis: the "nodes" hash alone does not say which are ours).
        return await rds.hget(f"sid:{peer.sio.get_sid()}", "node")

    nodes = [await eventually(lambda p=p: node_of(p), within=5) for p in (probe, pl)]
    assert all(nodes) and nodes[0] != nodes[1], nodes
    for node, g in zip(nodes, ghosts, strict=True):
        await _ghost(rds, node, g["userId"], f"ghost-{g['userId'][:8]}")
    t0 = time.monotonic()

    async def all_gone() -> bool:
        return not any([await rds.sismember("online", g["userId"]) for g in ghosts])
    assert await eventually(all_gone, within=5), "a ghost stayed online"
    took = time.monotonic() - t0
    assert await rds.sismember("online", alive["userId"])  # the real socket is untouched
    assert pl.sio.connected
    print(f"ghosts offline after {took:.2f} s (reconcile period 1 s)")


async def test_a_ghost_in_a_call_ends_it_properly_for_the_partner(users, peers, n1, n2, rds):
    """A ghost in a call: once taken out, its grace runs and the partner gets the usual end."""
    _a, b, pa, pb, _start = await call_across(users, peers, n1, n2, 60, join=True)
    # B's socket vanishes from n2's memory without its cleanup (we cut it and re-plant the registration).
    node2 = (await rds.hgetall(f"sid:{pb.sio.get_sid()}"))["node"]
    sid = pb.sio.get_sid()
    await pb.drop()

    async def b_offline() -> bool:
        return not await rds.sismember("online", b["userId"])
    await eventually(b_offline, within=3)
    await rds.delete(f"u:{b['userId']}:away")
    await rds.zrem("timers", f"grace:{b['userId']}")
    await _ghost(rds, node2, b["userId"], sid)
    assert (await pa.wait("session:finalized", timeout=10))["reason"] == "disconnect"
