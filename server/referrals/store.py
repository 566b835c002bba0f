"""SQL for intro (referral) codes, introductions and their notifications."""

from __future__ import annotations

from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

# A card of a live user (deleted accounts are tombstones and never shown).
_CARD = "u.id, u.name, u.gender, u.selfie_key, u.video_key, u.paid_status, u.ban_status"


async def resolve(conn: Conn, code: str) -> asyncpg.Record | None:
    """The live referral code's target and creator, or None (unknown, expired, or either account deleted)."""
    return await conn.fetchrow(
        """SELECT r.code, r.target_user_id, r.created_by, t.name AS target_name, c.name AS creator_name
           FROM referral_codes r JOIN users t ON t.id = r.target_user_id JOIN users c ON c.id = r.created_by
           WHERE r.code = $1 AND (r.expires_at IS NULL OR r.expires_at > now())
             AND t.deleted_at IS NULL AND c.deleted_at IS NULL""",
        code,
    )


async def upsert_code(conn: Conn, code: str, created_by: UUID, target: UUID, expires_at: datetime) -> str:
    """The pair's code: `code` if the pair had none, else its existing code with a renewed expiry.
    Raises UniqueViolationError only if `code` itself is taken by another pair (retry with another)."""
    return str(await conn.fetchval(
        """INSERT INTO referral_codes (code, created_by, target_user_id, expires_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (created_by, target_user_id) DO UPDATE SET expires_at = EXCLUDED.expires_at
           RETURNING code""",
        code, created_by, target, expires_at,
    ))


async def live_user(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_CARD}, u.introduced_to, u.introduced_by FROM users u WHERE u.id = $1 AND u.deleted_at IS NULL",
        user_id)


async def name_of(conn: Conn, user_id: UUID | None) -> str | None:
    if user_id is None:
        return None
    return await conn.fetchval("SELECT name FROM users WHERE id = $1 AND deleted_at IS NULL", user_id)


async def reported_between(conn: Conn, a: UUID, b: UUID) -> bool:
    """Either reported the other: they are hidden from each other (§6 D16) and may not call."""
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM reports WHERE (reporter_id = $1 AND reported_id = $2)
                                                  OR (reporter_id = $2 AND reported_id = $1))""",
        a, b))


async def introductions_to(conn: Conn, user_id: UUID, limit: int = 200) -> list[asyncpg.Record]:
    """Users introduced to `user_id` (they signed up through a code for them), newest first."""
    return await conn.fetch(
        f"""SELECT {_CARD}, u.created_at, ib.name AS introduced_by_name
            FROM users u LEFT JOIN users ib ON ib.id = u.introduced_by AND ib.deleted_at IS NULL
            WHERE u.introduced_to = $1 AND u.deleted_at IS NULL
            ORDER BY u.created_at DESC LIMIT $2""",
        user_id, limit)


# ---- notifications (§7 E9) ----

_NOTIFICATION = """n.id, n.for_user_id, n.referred_user_id, n.introduced_by, n.created_at, n.read_at,
    r.name AS referred_name, ib.name AS introduced_by_name"""
_NOTIFICATION_FROM = """referral_notifications n JOIN users r ON r.id = n.referred_user_id AND r.deleted_at IS NULL
    LEFT JOIN users ib ON ib.id = n.introduced_by AND ib.deleted_at IS NULL"""


async def create_notification(conn: Conn, referred: UUID) -> asyncpg.Record | None:
    """The notification that `referred` finished onboarding, for the user they were introduced to.
    Created once per (target, referred) whatever the number of concurrent or later uploads:
    None if it existed already, or if `referred` came without an introduction."""
    return await conn.fetchrow(
        f"""WITH created AS (
                INSERT INTO referral_notifications (for_user_id, referred_user_id, introduced_by)
                SELECT u.introduced_to, u.id, u.introduced_by FROM users u
                JOIN users t ON t.id = u.introduced_to AND t.deleted_at IS NULL
                WHERE u.id = $1 AND u.deleted_at IS NULL AND u.video_key IS NOT NULL
                ON CONFLICT (for_user_id, referred_user_id) DO NOTHING
                RETURNING *)
            SELECT {_NOTIFICATION} FROM created n JOIN users r ON r.id = n.referred_user_id
            LEFT JOIN users ib ON ib.id = n.introduced_by""",
        referred)


async def notifications(conn: Conn, user_id: UUID, *, unread_only: bool = False,
                        limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_NOTIFICATION} FROM {_NOTIFICATION_FROM}
            WHERE n.for_user_id = $1 AND (NOT $2 OR n.read_at IS NULL)
            ORDER BY n.created_at DESC LIMIT $3""",
        user_id, unread_only, limit)


async def unread_count(conn: Conn, user_id: UUID) -> int:
    return int(await conn.fetchval(
        f"SELECT count(*) FROM {_NOTIFICATION_FROM} WHERE n.for_user_id = $1 AND n.read_at IS NULL", user_id))


async def mark_read(conn: Conn, user_id: UUID, notification_id: UUID) -> None:
    await conn.execute(
        "UPDATE referral_notifications SET read_at = now() WHERE id = $1 AND for_user_id = $2 AND read_at IS NULL",
        notification_id, user_id)


# ---- account export and deletion (accounts/export.py, accounts/deletion.py) ----

async def codes_created_by(conn: Conn, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT r.code, r.created_at, r.expires_at, t.name AS target_name FROM referral_codes r
           JOIN users t ON t.id = r.target_user_id WHERE r.created_by = $1 ORDER BY r.created_at""",
        user_id)


async def forget_user(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Remove a deleted account from every introduction: its codes (either side), its notifications,
    and the links of users it introduced or was introduced to."""
    await conn.execute("DELETE FROM referral_codes WHERE created_by = $1 OR target_user_id = $1", user_id)
    await conn.execute(
        "DELETE FROM referral_notifications WHERE for_user_id = $1 OR referred_user_id = $1", user_id)
    await conn.execute("UPDATE referral_notifications SET introduced_by = NULL WHERE introduced_by = $1", user_id)
    await conn.execute("UPDATE users SET introduced_by = NULL WHERE introduced_by = $1", user_id)
    await conn.execute("UPDATE users SET introduced_to = NULL WHERE introduced_to = $1", user_id)
    await conn.execute(
        "UPDATE users SET introduced_to = NULL, introduced_by = NULL, introduced_via_code = NULL WHERE id = $1",
        user_id)
