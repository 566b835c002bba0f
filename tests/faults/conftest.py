"""The fault suite (issue 11): each fault against two real nodes, reusing the multinode fixtures
(cluster, nodes, users, peers, clean state and the check that no node logged an error)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import asyncpg
import pytest

from tests.multinode.conftest import (  # noqa: F401  (fixtures)
    _clean,
    cluster,
    db,
    eventually,
    http,
    n1,
    n2,
    node_env,
    peers,
    rds,
    settings,
    users,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_server_errors: the test provokes errors in a node's log on purpose")


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


async def stop_redis(stack, redis, save: bool = False) -> float:
    """SHUTDOWN the test stack's Redis (SAVE: it keeps its data; NOSAVE: the test stack has no
    persistence, so it comes back empty) and wait for the process to exit. Returns when it was asked."""
    t0 = time.monotonic()
    with contextlib.suppress(Exception):  # the connection drops as the server exits
        await redis.shutdown(save=save, nosave=not save)
    for _ in range(100):
        if stack.pid("redis") is None:
            break
        await asyncio.sleep(0.05)
    return t0


async def restart_redis_empty(stack, redis) -> float:
    """Redis loses its data: stopped without saving and started alone again (whatever else is down
    stays down). Returns when the stop was asked."""
    t0 = await stop_redis(stack, redis)
    stack._start_redis()
    await redis.connection_pool.disconnect()
    return t0


async def listeners_back(session, *nodes, within: float = 10) -> bool:
    """Cross-node delivery works again once every node's listener has resubscribed (its /ready says
    so): what a test waits for before it relays across nodes after a Redis restart."""
    async def listening() -> bool:
        for n in nodes:
            async with session.get(f"{n.url}/ready") as resp:
                if (await resp.json()).get("checks", {}).get("pubsub") != "ok":
                    return False
        return True
    return bool(await eventually(listening, within=within))


@contextlib.asynccontextmanager
async def pg_connection(config):
    """A direct Postgres connection (the test's own, outside the nodes' pools), closed on exit."""
    conn = await asyncpg.connect(config.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def both_beating(redis, after_ms: int) -> None:
    """The sentinel that both nodes beat again after a Redis loss or outage (a node re-registers its
    sockets before it writes its first beat into an empty Redis)."""
    async def beating() -> bool:
        seen = {k: int(v) for k, v in (await redis.hgetall("nodes")).items()}
        return len(seen) >= 2 and all(v > after_ms for v in seen.values())
    assert await eventually(beating, within=10), "the nodes did not beat again"


# Logged by code outside the realtime core while Postgres is down (reported on the issue): asyncpg's own
# pool warns with a traceback when it cannot restore its connection floor, and the shared periodic-job
# helper (server/background.py) logs a failed run of another domain's job at error level.
_OUTSIDE_NOISE = ("_maintain_min_size", "Failed to restore the pool connection floor")
_OUTSIDE_JOBS = ("periodic_job_failed",)


def core_errors(node, offset: int) -> list[str]:
    """Error lines (and tracebacks) a node wrote after `offset`, minus the outside noise above: what a
    fault test marked allow_server_errors still asserts to be empty."""
    try:
        with open(node.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    bad: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if block and block[0].startswith(("Traceback", "ERROR", "CRITICAL")):
            joined = "\n".join(block)
            if not any(n in joined for n in _OUTSIDE_NOISE):
                bad.append(joined[:2000])
        block.clear()

    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if line.startswith(("Traceback", "ERROR", "CRITICAL")):
                flush()
            if line.startswith(("WARNING", "INFO")) or not line.strip():
                flush()
            block.append(line)
            continue
        flush()
        if isinstance(rec, dict) and rec.get("level") in ("error", "critical", "exception") \
                and rec.get("event") not in _OUTSIDE_JOBS:
            bad.append(line[:2000])
    flush()
    return [f"{node.name}: {b}" for b in bad]
