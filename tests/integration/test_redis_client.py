"""The Redis client (server/redis.py): a new connection costs no read of package metadata (redis-py
read it from disk for each one, on the event loop)."""

import asyncio

import redis.utils

from server.redis import create_redis


async def test_new_connections_read_no_package_metadata(base_settings, monkeypatch):
    reads = []
    real = redis.utils.get_lib_version
    monkeypatch.setattr(redis.utils, "get_lib_version", lambda: reads.append(1) or real())
    probe = create_redis(base_settings.redis_url, timeout_s=5, max_connections=1)
    client = create_redis(base_settings.redis_url, timeout_s=5, max_connections=4)
    try:
        before = int((await probe.info("clients"))["connected_clients"])
        # Four blocking commands at once hold four connections of the pool.
        await asyncio.gather(*(client.blpop([f"test:driver:{i}"], timeout=0.2) for i in range(4)))
        opened = int((await probe.info("clients"))["connected_clients"]) - before
    finally:
        await client.aclose()
        await probe.aclose()
    assert opened == 4
    assert reads == []
