"""The audit log: one row per moderator, operator or payment action (who, what, whom, before/after, IP)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg


async def record(conn: asyncpg.Connection | asyncpg.Pool, *, actor_label: str, action: str,
                 actor_user_id: UUID | None = None, target_user_id: UUID | None = None,
                 before: Any = None, after: Any = None, ip: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
    """Write one audit row; call it inside the transaction that made the change."""
    await conn.execute(
        """INSERT INTO audit_log (actor_user_id, actor_label, action, target_user_id, details, before, after, ip)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8::inet)""",
        actor_user_id, actor_label, action, target_user_id, dict(details or {}), before, after, ip,
    )


async def page(conn: asyncpg.Connection | asyncpg.Pool, *, limit: int, before_id: int | None = None,
               action: str | None = None, target_user_id: UUID | None = None) -> list[asyncpg.Record]:
    """Newest first; `before_id` pages backwards (keyset paging on the serial id)."""
    return await conn.fetch(
        """SELECT a.id, a.created_at, a.actor_user_id, a.actor_label, a.action, a.target_user_id,
                  t.name AS target_name, a.details, a.before, a.after, host(a.ip) AS ip
           FROM audit_log a LEFT JOIN users t ON t.id = a.target_user_id
           WHERE ($1::bigint IS NULL OR a.id < $1) AND ($2::text IS NULL OR a.action = $2)
             AND ($3::uuid IS NULL OR a.target_user_id = $3)
           ORDER BY a.id DESC LIMIT $4""",
        before_id, action, target_user_id, limit,
    )
