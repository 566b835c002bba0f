"""SQL for the media keys on users."""

from __future__ import annotations

from uuid import UUID

import asyncpg

_COLUMNS = frozenset({"selfie_key", "video_key"})


async def swap_key(pool: asyncpg.Pool, user_id: UUID, column: str, key: str) -> tuple[bool, str | None]:
    """Point the user's `column` at `key`; returns (user found, the key it replaced). The row lock
    makes concurrent replacements each see, and so delete, exactly the key they replaced."""
    if column not in _COLUMNS:
        raise ValueError(column)
    async with pool.acquire() as conn, conn.transaction():
        # A deleted account takes no new media (an upload that was in flight when it was deleted).
        row = await conn.fetchrow(f"SELECT {column} AS key FROM users WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                                  user_id)
        if row is None:
            return False, None
        await conn.execute(f"UPDATE users SET {column} = $2, updated_at = now() WHERE id = $1", user_id, key)
        return True, row["key"]


async def keys(conn: asyncpg.Connection | asyncpg.Pool, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT selfie_key, video_key FROM users WHERE id = $1", user_id)
