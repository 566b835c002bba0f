"""SQL for users and sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

USER_COLUMNS = """u.id, u.account_type, u.name, u.gender, u.email, u.selfie_key, u.video_key, u.socials,
    u.role, u.is_bot, u.paid_status, u.paid_at, u.qr_unlocked_at, u.successful_sessions,
    u.timer_total_seconds, u.session_count, u.ban_status, u.created_at, u.introduced_to, u.introduced_by"""


async def insert_guest(conn: Conn, name: str, gender: str, introduced_to: UUID | None,
                       introduced_by: UUID | None, via_code: str | None, is_bot: bool = False) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""INSERT INTO users AS u (name, gender, introduced_to, introduced_by, introduced_via_code, is_bot)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {USER_COLUMNS}""",
        name, gender, introduced_to, introduced_by, via_code, is_bot,
    )


async def get_user(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1", user_id)


async def find_login(conn: Conn, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT {USER_COLUMNS}, u.password_hash, b.review_status
            FROM users u LEFT JOIN ban_records b ON b.user_id = u.id WHERE u.email = $1""",
        email,
    )


async def lock_user(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Row-lock the user until the caller's transaction ends."""
    await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)


async def link_account(conn: Conn, user_id: UUID, email: str, password_hash: str) -> bool:
    """Make a guest permanent. False if the user is already permanent;
    raises UniqueViolation on a taken email."""
    row = await conn.fetchrow(
        """UPDATE users SET account_type = 'permanent', email = $2, password_hash = $3, updated_at = now()
           WHERE id = $1 AND account_type = 'guest' RETURNING id""",
        user_id, email, password_hash,
    )
    return row is not None


async def set_socials(conn: Conn, user_id: UUID, socials: dict[str, str]) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE users SET socials = $2, updated_at = now() WHERE id = $1 RETURNING id, name, socials",
        user_id, socials,
    )


async def recent_sessions(conn: Conn, user_id: UUID, limit: int = 10) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT session_id, partner_name, started_at, duration_seconds FROM call_history
           WHERE user_id = $1 ORDER BY started_at DESC LIMIT $2""",
        user_id, limit,
    )


async def call_days(conn: Conn, user_id: UUID, limit: int = 400) -> list[Any]:
    rows = await conn.fetch(
        """SELECT DISTINCT (started_at AT TIME ZONE 'UTC')::date AS day FROM call_history
           WHERE user_id = $1 ORDER BY day DESC LIMIT $2""",
        user_id, limit,
    )
    return [r["day"] for r in rows]


# ---- sessions ----

async def insert_session(conn: Conn, user_id: UUID, kind: str, token_hash: bytes, expires_at: datetime,
                         ip: str | None, user_agent: str | None) -> UUID:
    return await conn.fetchval(
        """INSERT INTO sessions (user_id, kind, token_hash, expires_at, ip, user_agent)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        user_id, kind, token_hash, expires_at, ip, (user_agent or "")[:300] or None,
    )


async def find_session(conn: Conn, token_hash: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT s.id AS session_id, s.user_id, s.kind, s.expires_at, s.revoked_at, s.revoked_reason,
                  u.account_type, u.role, u.paid_status, u.ban_status, u.name
           FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1""",
        token_hash,
    )


async def revoke_session(conn: Conn, session_id: UUID, reason: str) -> bool:
    status = await conn.execute(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
        session_id, reason,
    )
    return status.endswith(" 1")


async def revoke_user_sessions(conn: Conn, user_id: UUID, reason: str,
                               keep: UUID | None = None) -> list[UUID]:
    rows = await conn.fetch(
        """UPDATE sessions SET revoked_at = now(), revoked_reason = $2
           WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now() AND id IS DISTINCT FROM $3
           RETURNING id""",
        user_id, reason, keep,
    )
    return [r["id"] for r in rows]


async def extend_session(conn: Conn, session_id: UUID, kind: str, expires_at: datetime) -> None:
    await conn.execute("UPDATE sessions SET kind = $2, expires_at = $3 WHERE id = $1",
                       session_id, kind, expires_at)
