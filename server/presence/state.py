"""Presence in Redis: a user is online while at least one authenticated socket of theirs exists."""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis


def sockets_key(user_id: str) -> str:
    return f"user:{user_id}:sockets"


async def is_online(redis: aioredis.Redis, user_id: str) -> bool:
    return bool(await redis.exists(sockets_key(user_id)))


async def online_map(redis: aioredis.Redis, user_ids: Iterable[str]) -> dict[str, bool]:
    ids = list(user_ids)
    if not ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for uid in ids:
            pipe.exists(sockets_key(uid))
        found = await pipe.execute()
    return {uid: bool(n) for uid, n in zip(ids, found, strict=True)}
