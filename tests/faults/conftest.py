"""The fault suite (issue 11): each fault against two real nodes, reusing the multinode fixtures
(cluster, nodes, users, peers, clean state and the check that no node logged an error)."""

from __future__ import annotations

import os

import pytest

from tests.multinode.conftest import (  # noqa: F401  (fixtures)
    _clean,
    _pool,
    cluster,
    db,
    http,
    n1,
    n2,
    node_env,
    peers,
    rds,
    settings,
    users,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.multinode)


async def call_across(make_user, make_peer, caller_node, callee_node, seconds: int = 120,
                      names: tuple[str, str] = ("A", "B"),
                      join: bool = False) -> tuple[dict, dict, object, object, dict]:
    """A caller on one node and a callee on the other in a call (`make_user`/`make_peer`: the users and
    peers fixtures) (optionally both joined to the room):
    (caller, callee, caller's peer, callee's peer, the caller's call:start)."""
    a, b = await make_user.make(caller_node, names[0]), await make_user.make(callee_node, names[1])
    pa, pb = await make_peer(caller_node, a, names[0]), await make_peer(callee_node, b, names[1])
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": seconds})
    await pb.emit("call:accept", {"inviteId": (await pb.wait("call:notify"))["inviteId"], "requestedSeconds": seconds})
    start = await pa.wait("call:start")
    await pb.wait("call:start")
    if join:
        for p in (pa, pb):
            await p.emit("room:join", {"roomId": start["roomId"]})
            await p.wait("room:joined")
    return a, b, pa, pb, start
