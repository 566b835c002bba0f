"""SQL for intro (referral) codes."""

from __future__ import annotations

import asyncpg


async def resolve(conn: asyncpg.Connection | asyncpg.Pool, code: str) -> asyncpg.Record | None:
    """The live referral code's target and creator, or None."""
    return await conn.fetchrow(
        """SELECT r.code, r.target_user_id, r.created_by, t.name AS target_name
           FROM referral_codes r JOIN users t ON t.id = r.target_user_id
           WHERE r.code = $1 AND (r.expires_at IS NULL OR r.expires_at > now())""",
        code,
    )
