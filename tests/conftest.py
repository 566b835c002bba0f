"""Test session: real Postgres, Redis, S3 server and coturn on free loopback ports, started once.

Integration tests get a fresh app per test and a clean state (tables truncated, Redis flushed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from server.settings import Settings
from server.stack import Stack, free_port

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# `make test` runs the suite in several pytest-xdist workers ("gw0", "gw1"...), each with its own
# services; what a worker writes by name (node logs) goes to a directory of its own.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def worker_artifacts(name: str) -> Path:
    return ARTIFACTS / (f"{name}-{WORKER}" if WORKER else name)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The multi-node suites keep their cluster between modules, but its nodes share this worker's
    Redis: left running under a test with its own app, they would claim that test's timers and reap
    its node. Stop it first (the next multi-node module starts it again)."""
    pool = getattr(item.config, "napalm_cluster_pool", None)
    if pool is not None and "cluster" not in item.fixturenames:  # type: ignore[attr-defined]
        pool.close()


@pytest.fixture(scope="session")
def _pool(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The worker's one pool of multi-node clusters (tests/multinode/conftest.py), defined here once for
    every suite that uses it. Defined in each suite's conftest, the multi-node and the fault suites each
    had a pool, so two clusters ran at once on this worker's Redis: every node of one reaped, swept
    and re-registered under the other's tests (a frozen node's reap never reached its partner once in
    a full run). The fault suite imports this module as `tests.multinode.conftest`, a second copy of
    the one pytest loads as a conftest: nothing may tell the copies' classes apart (no isinstance)."""
    from tests.multinode.conftest import _Pool

    pool = _Pool(stack)
    request.config.__dict__["napalm_cluster_pool"] = pool  # for pytest_runtest_setup
    try:
        yield pool
    finally:
        pool.close()


def release_finished_apps() -> None:
    """aiohttp memoises each route's middleware chain in a module-level LRU cache (1024 entries) keyed
    by the route's handler and its Application: every test app that served a request stayed alive in
    that cache, with its pools, Socket.IO server and boto3 client (about 100k objects each). A worker
    accumulated hundreds of them, and a full garbage collection of that heap blocks the event loop (the
    test's and its app's) for seconds in whatever test it hits: 3.5 s already after 93 tests in one
    process, against under 0.8 s with this release (the likely cause of a realtime wait of 5 s that
    failed in a full run). One app per process in production: only a test process needs this."""
    from aiohttp import web_app

    cached = getattr(web_app, "_cached_build_middleware", None)
    if cached is not None:
        cached.cache_clear()


@pytest.fixture(autouse=True)
def _release_apps() -> Iterator[None]:
    """After every test (autouse: torn down after the test's own app fixtures)."""
    yield
    release_finished_apps()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="napalm-test-"))
    # A relay range of our own, below the ephemeral range; xdist workers never share one.
    base = 21000 + ((os.getpid() % 12) * 4 + int(WORKER[2:] or 0) % 4) * 200
    st = Stack(root=root, ports={n: free_port() for n in ("postgres", "redis", "s3", "turn")}, durable=False,
               turn_secret="test-turn-secret", turn_realm="napalm.test", relay_ports=(base, base + 199))
    st.up()
    try:
        settings = Settings.from_env(st.env())
        from server.__main__ import _prepare, ensure_bucket

        asyncio.run(_prepare(settings))
        ensure_bucket(settings)
        yield st
    finally:
        st.down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stripe_emulator() -> Iterator[Any]:
    """The local Stripe (server/payments/emulator.py) in its own process, once per session, for the tests
    that ask for it (see tests/stripe_control.py)."""
    from server.payments.emulator import EmulatorProcess

    em = EmulatorProcess(free_port(), "sk_test_emulator", "whsec_test_emulator", [],
                         worker_artifacts("stripe-emulator") / "emulator.log").start()
    try:
        yield em
    finally:
        em.stop()


@pytest.fixture(scope="session")
def base_settings(stack: Stack) -> Settings:
    return Settings.from_env(
        stack.env(),
        bcrypt_rounds=4,  # cost 12 in production; tests check the setting is honoured, not the CPU cost
        log_format="console",
        log_level="WARNING",
        login_failure_window_seconds=2,
        allowed_origins=("http://localhost:3000", "http://127.0.0.1:8080"),
    )


@pytest.fixture(scope="session")
def s3(base_settings: Settings) -> Any:
    """A boto3 client on the test session's S3 server, for inspecting the bucket."""
    from server.app import make_s3_client

    return make_s3_client(base_settings)


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return base_settings


async def reset_state(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'")
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(t['tablename'] for t in tables)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    import redis.asyncio as aioredis

    # Generous timeout: a stalled loaded machine must not fail a test in its set-up (redis-py's default is 5 s).
    r = aioredis.from_url(settings.redis_url, socket_timeout=30)
    try:
        await r.flushdb()
    finally:
        await r.aclose()


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Any) -> AsyncIterator[Any]:
    from server.app import create_app

    await reset_state(settings)
    yield await aiohttp_client(create_app(settings))


@pytest.fixture
async def db(client: Any, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection for assertions on what was (not) written."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def sockets(client: Any) -> AsyncIterator[Any]:
    """Factory of connected realtime clients for the test app; all closed before the app stops."""
    from tests.rt import Peer

    made: list[Peer] = []
    url = str(client.make_url("/"))

    async def connect(user: dict[str, Any] | None, name: str = "", **kw: Any) -> Peer:
        p = Peer(url, user["sessionToken"] if user else None, user["userId"] if user else "", name)
        made.append(p)
        return await p.connect(**kw)

    yield connect
    for p in made:
        await p.close()
