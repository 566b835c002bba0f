"""Two (or more) server nodes as separate processes (`python -m server serve --port N`) sharing the
test session's Postgres and Redis, with short timers. Clients connect to whichever node a test picks.

* `cluster` (module scope) starts the nodes once per module; a module changes their environment by
  overriding the module-scoped `node_env` fixture. Consecutive modules with the same environment
  share the processes. Every process is killed at the end (no leftovers).
* Each test starts from truncated tables and a flushed Redis (`reset_state`), and fails if a node
  logged an error during it (unless marked `allow_server_errors`).
* Node output goes to test-artifacts/multinode/<node>.log (JSON log lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from server.settings import Settings
from server.stack import REPO, Stack, free_port
from tests.conftest import reset_state, worker_artifacts
from tests.rt import Peer

LOGS = worker_artifacts("multinode")

# Short timers (the protocol values are 20 s / 5 s / 15 s ...): the suite runs in minutes.
BASE_ENV = {
    "INVITE_TTL_MS": "2000",
    "INVITE_EXPIRY_GRACE_MS": "500",
    "DISCONNECT_GRACE_SECONDS": "3",
    "TIMER_POLL_SECONDS": "0.05",
    "NODE_HEARTBEAT_SECONDS": "0.3",
    "NODE_DEAD_AFTER_SECONDS": "1.5",
    "RECONCILE_SECONDS": "1",
    "BCRYPT_ROUNDS": "4",
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "json",
    "GUEST_SIGNUPS_PER_IP_PER_HOUR": "100000",
    "MAX_SOCKETS_PER_ADDRESS": "100000",  # every client of the suite is 127.0.0.1
    "MAX_SOCKETS_PER_USER": "1000",  # test_malformed spreads one attacker over many sockets
    "DRAIN_DELAY_SECONDS": "0.2",  # SIGTERM drains first (server/ops/drain.py); no balancer to wait for here
}
INVITE_TTL_S = 2.0
INVITE_GRACE_S = 0.5
GRACE_S = 3.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_server_errors: the test provokes errors in a node's log on purpose")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/multinode/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.multinode)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if pytest itself dies (even by SIGKILL), so no node outlives the run."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Node:
    """One server process."""

    def __init__(self, name: str, env: dict[str, str], port: int | None = None) -> None:
        self.name = name
        self.env = env
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = LOGS / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Node:
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.name} on port {self.port} at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--port", str(self.port)],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /health within {timeout}s; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node vanishes without any cleanup (sockets, timers it claimed, heartbeat)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> Node:
        self.stop()
        return self.start()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def errors_since(self, offset: int) -> list[str]:
        """Log lines at error level (or tracebacks) written after `offset`."""
        bad = []
        for line in self.log_since(offset).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                if line.startswith(("Traceback", "ERROR", "CRITICAL")):
                    bad.append(line)
                continue
            if isinstance(rec, dict) and rec.get("level") in ("error", "critical", "exception"):
                bad.append(line[:2000])
        return bad


class Cluster:
    def __init__(self, stack: Stack, overrides: dict[str, str], count: int = 2) -> None:
        self.key = tuple(sorted(overrides.items()))
        env = {**os.environ, **stack.env(), **BASE_ENV, **overrides, "PYTHONUNBUFFERED": "1"}
        env.pop("PYTEST_CURRENT_TEST", None)
        tag = "-".join(f"{k.lower()}{v}" for k, v in sorted(overrides.items())) or "default"
        self.nodes = [Node(f"node{i + 1}-{tag}", env) for i in range(count)]
        self.env = env

    def start(self) -> Cluster:
        try:
            for n in self.nodes:
                n.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def ensure_up(self) -> None:
        """Restart any node a test killed (same port, so its URL stays valid)."""
        for n in self.nodes:
            if not n.alive:
                n.start()

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]


class _Pool:
    """At most one cluster alive; modules asking for the same environment share it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.current: Cluster | None = None

    def get(self, overrides: dict[str, str]) -> Cluster:
        key = tuple(sorted(overrides.items()))
        if self.current is not None and self.current.key == key:
            self.current.ensure_up()
            return self.current
        if self.current is not None:
            self.current.stop()
            self.current = None
        self.current = Cluster(self.stack, overrides).start()
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    """Extra environment for this module's nodes (override in a test module)."""
    return {}


@pytest.fixture(scope="module")
def cluster(_pool: _Pool, node_env: dict[str, str]) -> Cluster:
    return _pool.get(node_env)


@pytest.fixture
def n1(cluster: Cluster) -> Node:
    return cluster[0]


@pytest.fixture
def n2(cluster: Cluster) -> Node:
    return cluster[1]


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return base_settings


@pytest.fixture
async def rds(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture
async def db(settings: Settings, _clean: None) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(autouse=True)
async def _clean(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[None]:
    """Fresh state before each test; afterwards, no error lines in the nodes' logs."""
    cl: Cluster | None = request.getfixturevalue("cluster") if "cluster" in request.fixturenames else None
    if cl is not None:
        cl.ensure_up()
    await reset_state(settings)
    if cl is not None:
        # The flush also wiped the nodes' heartbeat registry: a node that died before its next heartbeat
        # would never be seen as dead. Start once every node is registered again.
        r = aioredis.from_url(settings.redis_url)
        try:
            async def registered() -> bool:
                return await r.hlen("nodes") >= len(cl.nodes)

            assert await eventually(registered, within=5), "nodes did not heartbeat after the reset"

            # A node re-registers the sockets it still holds after the flush; the previous test's
            # sockets may still be closing on the server side. Start once they are all gone.
            async def nobody_online() -> bool:
                return await r.scard("online") == 0

            if not await eventually(nobody_online, within=5):
                left = {}
                for uid in await r.smembers("online"):
                    socks = await r.smembers(f"u:{uid.decode()}:socks")
                    left[uid.decode()] = {x.decode(): await r.hgetall(f"sid:{x.decode()}") for x in socks}
                raise AssertionError(f"sockets of an earlier test are still online: {left}")
        finally:
            await r.aclose()
    marks = {n.name: n.log_size() for n in cl.nodes} if cl else {}
    yield
    if cl is None or request.node.get_closest_marker("allow_server_errors"):
        return
    errors = [f"{n.name}: {line}" for n in cl.nodes for line in n.errors_since(marks[n.name])]
    assert not errors, "server errors during the test:\n" + "\n".join(errors[:20])


class Users:
    """Sign-ups through a node's HTTP API, then access and media set in the database (like rt.make_user)."""

    def __init__(self, http: aiohttp.ClientSession, db: asyncpg.Connection) -> None:
        self.http = http
        self.db = db
        self.lock = asyncio.Lock()  # one connection: one statement at a time

    async def make(self, node: Node | str, name: str = "Ada", *, gender: str = "female", paid: bool = True,
                   media: bool = True) -> dict[str, Any]:
        base = node if isinstance(node, str) else node.url  # a Node of either copy of this module (tests/conftest.py)
        async with self.http.post(f"{base}/auth/guest", json={"name": name, "gender": gender}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        uid = body["userId"]
        async with self.lock:
            await self.db.execute(
                "UPDATE users SET paid_status = $2, selfie_key = $3, video_key = $4 WHERE id = $1",
                uid, "paid" if paid else "unpaid",
                f"users/{uid}/selfie-1.jpg" if media else None, f"users/{uid}/intro-1.webm" if media else None)
        return body

    async def many(self, node: Node, count: int, prefix: str = "U") -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.make(node, f"{prefix}{i}") for i in range(count))))


@pytest.fixture
def users(http: aiohttp.ClientSession, db: asyncpg.Connection) -> Users:
    return Users(http, db)


class Peers:
    """Factory of recording Socket.IO clients; closes them all after the test and waits until the
    nodes have processed the disconnects (so nothing lands in the next test's fresh state)."""

    def __init__(self, rds: aioredis.Redis) -> None:
        self.made: list[Peer] = []
        self.rds = rds

    async def __call__(self, node: Node, user: dict[str, Any] | None, name: str = "", **kw: Any) -> Peer:
        p = Peer(node.url, user["sessionToken"] if user else None, user["userId"] if user else "", name)
        self.made.append(p)
        return await p.connect(**kw)

    async def close(self) -> None:
        await asyncio.gather(*(_close_quietly(p) for p in self.made))
        await eventually(lambda: _none_online(self.rds), within=5)
        await asyncio.sleep(0.1)


async def _none_online(rds: aioredis.Redis) -> bool:
    return not await rds.scard("online")


async def eventually(probe: Callable[[], Awaitable[Any]], within: float = 3.0, step: float = 0.05) -> Any:
    """Poll `probe()` until it returns something truthy or `within` seconds pass; returns the last value."""
    end = time.monotonic() + within
    while True:
        value = await probe()
        if value or time.monotonic() >= end:
            return value
        await asyncio.sleep(step)


async def _close_quietly(p: Peer) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(p.close(), 3)


@pytest.fixture
async def peers(rds: aioredis.Redis, cluster: Cluster) -> AsyncIterator[Peers]:
    made = Peers(rds)
    try:
        yield made
    finally:
        await made.close()


async def get_json(http: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


def artifacts_dir() -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    return LOGS
