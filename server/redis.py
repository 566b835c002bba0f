"""Redis client and the Lua script helper.

Every multi-key transition is one Lua script so it is atomic across nodes. A domain declares its
scripts next to the code that calls them with `Script("...lua source...")`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from server.ops.metrics import REDIS_LATENCY

# What each new connection reports in CLIENT SETINFO. Without it redis-py reads its own package
# metadata from disk for every connection it makes: 47 ms of the event loop in one burst of new
# connections (a live node's stall, sampled).
DRIVER = DriverInfo(name="redis-py", lib_version=redis.__version__)


class InstrumentedRedis(aioredis.Redis):
    """Times every command for /metrics (pipelines are not used on hot paths)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await super().execute_command(*args, **options)
            outcome = "ok"
            return result
        finally:
            command = str(args[0]).upper() if args else "?"
            REDIS_LATENCY.labels(command, outcome).observe(time.perf_counter() - started)


def create_redis(url: str, timeout_s: float | None = None, max_connections: int = 64) -> aioredis.Redis:
    """A deliberately sized pool that makes a burst wait for a free connection (up to timeout_s) instead
    of failing with MaxConnectionsError; timeout_s also bounds connecting and every command, so a
    stalled Redis fails a call instead of hanging it.

    A command that finds its pooled connection closed is retried once on a fresh connection: after a
    Redis restart every connection in the pool is dead, and without this each one failed the first
    command it carried (a call:end answered UNAVAILABLE seconds after Redis was back). Only connection
    errors are retried, never timeouts (that would double the bound)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s or 20, decode_responses=True,
        health_check_interval=30, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), driver_info=DRIVER)
    return InstrumentedRedis.from_pool(pool)


class Script:
    """EVALSHA with a transparent SCRIPT LOAD on a cold server (e.g. after a Redis restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: aioredis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)
