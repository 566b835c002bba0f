"""The audit log: one row per moderator, operator or payment action (who, what, whom, before/after)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg


async def record(conn: asyncpg.Connection | asyncpg.Pool, *, actor_label: str, action: str,
                 actor_user_id: UUID | None = None, target_user_id: UUID | None = None,
                 before: Any = None, after: Any = None, ip: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
    """Write one audit row; call it inside the transaction that made the change."""
    payload = dict(details or {})
    if before is not None:
        payload["before"] = before
    if after is not None:
        payload["after"] = after
    if ip is not None:
        payload["ip"] = ip
    await conn.execute(
        """INSERT INTO audit_log (actor_user_id, actor_label, action, target_user_id, details)
           VALUES ($1, $2, $3, $4, $5)""",
        actor_user_id, actor_label, action, target_user_id, payload,
    )
