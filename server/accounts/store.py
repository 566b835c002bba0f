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
            FROM users u LEFT JOIN ban_records b ON b.user_id = u.id WHERE u.email = $1 AND u.deleted_at IS NULL""",
        email,
    )


async def email_taken(conn: Conn, email: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)", email))


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
        """SELECT s.id AS session_id, s.user_id, s.kind, s.created_at, s.expires_at, s.revoked_at, s.revoked_reason,
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


async def slide_session(conn: Conn, session_id: UUID, expires_at: datetime) -> datetime | None:
    """Sliding refresh: move the expiry forward (never back). None if another request already did."""
    return await conn.fetchval(
        "UPDATE sessions SET expires_at = $2 WHERE id = $1 AND expires_at < $2 AND revoked_at IS NULL "
        "RETURNING expires_at",
        session_id, expires_at,
    )


# ---- account export and deletion (accounts/export.py, accounts/deletion.py) ----

async def password_hash_of(conn: Conn, user_id: UUID) -> str | None:
    return await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)


async def email_banned(conn: Conn, email_hash: bytes) -> bool:
    """The email belonged to an account deleted while banned (users.banned_email_hash)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE banned_email_hash = $1)", email_hash))


async def begin_deletion(conn: asyncpg.Connection, user_id: UUID) -> bool:
    """In the caller's transaction: mark the account deleted, end every session, queue the deletion job.
    A banned account keeps the hash of its email, so the address cannot be linked to a new account.
    False if the account was already deleted (or does not exist)."""
    marked = await conn.fetchval(
        """UPDATE users SET deleted_at = now(), updated_at = now(),
               banned_email_hash = CASE WHEN ban_status IN ('temporary', 'permanent') AND email IS NOT NULL
                                        THEN sha256(convert_to(email, 'UTF8')) END
           WHERE id = $1 AND deleted_at IS NULL RETURNING 1""",
        user_id,
    )
    if not marked:
        return False
    await conn.execute("DELETE FROM sessions WHERE user_id = $1", user_id)
    await conn.execute("INSERT INTO account_deletions (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id)
    return True


async def claim_deletion(conn: Conn, user_id: UUID, lease_s: float) -> bool:
    """Take the job for `lease_s` seconds; False if it is done or another node holds a live lease."""
    return bool(await conn.fetchval(
        """UPDATE account_deletions SET attempts = attempts + 1,
               lease_until = now() + make_interval(secs => $2)
           WHERE user_id = $1 AND completed_at IS NULL AND (lease_until IS NULL OR lease_until < now())
           RETURNING 1""",
        user_id, lease_s,
    ))


async def deletion_done(conn: Conn, user_id: UUID) -> bool:
    return bool(await conn.fetchval(
        "SELECT completed_at IS NOT NULL FROM account_deletions WHERE user_id = $1", user_id))


async def release_deletion(conn: Conn, user_id: UUID, error: str) -> None:
    await conn.execute("UPDATE account_deletions SET lease_until = NULL, last_error = $2 WHERE user_id = $1",
                       user_id, error[:500])


async def pending_deletions(conn: Conn, limit: int = 20) -> list[UUID]:
    rows = await conn.fetch(
        """SELECT user_id FROM account_deletions
           WHERE completed_at IS NULL AND (lease_until IS NULL OR lease_until < now())
           ORDER BY requested_at LIMIT $1""",
        limit,
    )
    return [r["user_id"] for r in rows]


DELETED_NAME = "Deleted user"


async def scrub_user(conn: asyncpg.Connection, user_id: UUID) -> None:
    """In the caller's transaction: remove or anonymise the account's personal data, keeping the
    tombstone row that payments, reports against the user, bans and the audit log point at."""
    # The partners' history keeps the call and what was said, but not who: no id, no name, no socials.
    await conn.execute(
        """UPDATE call_history h SET partner_id = NULL, partner_name = $2,
               messages = COALESCE((
                   SELECT jsonb_agg(CASE WHEN m->>'from' = $3
                                         THEN (m - 'socials') || jsonb_build_object('from', 'deleted-user')
                                         ELSE m END ORDER BY i)
                   FROM jsonb_array_elements(h.messages) WITH ORDINALITY AS t(m, i)
                   WHERE NOT (m->>'from' = $3 AND m->>'type' = 'social')), '[]'::jsonb)
           WHERE partner_id = $1""",
        user_id, DELETED_NAME, str(user_id),
    )
    await conn.execute("DELETE FROM call_history WHERE user_id = $1", user_id)
    await conn.execute("DELETE FROM cooldowns WHERE user_a = $1 OR user_b = $1", user_id)
    await conn.execute("DELETE FROM sessions WHERE user_id = $1", user_id)
    await conn.execute("UPDATE reports SET reporter_ip = NULL WHERE reporter_id = $1", user_id)
    await conn.execute(
        """UPDATE users SET name = $2, gender = 'unspecified', account_type = 'guest', email = NULL,
               password_hash = NULL, selfie_key = NULL, video_key = NULL, socials = '{}'::jsonb, role = 'user',
               updated_at = now()
           WHERE id = $1""",
        user_id, DELETED_NAME,
    )
    await conn.execute("UPDATE account_deletions SET completed_at = now(), lease_until = NULL, last_error = NULL "
                       "WHERE user_id = $1", user_id)


async def export_user(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    """Every column of the user's row except the password hash."""
    return await conn.fetchrow(
        """SELECT u.id, u.account_type, u.name, u.gender, u.email, u.socials, u.role, u.is_bot, u.paid_status,
                  u.paid_at, u.payment_id, u.access_granted_at, u.qr_unlocked_at, u.successful_sessions,
                  u.timer_total_seconds, u.session_count, u.ban_status, u.created_at, u.updated_at,
                  u.selfie_key, u.video_key, u.introduced_via_code,
                  it.name AS introduced_to_name, ib.name AS introduced_by_name
           FROM users u LEFT JOIN users it ON it.id = u.introduced_to AND it.deleted_at IS NULL
                        LEFT JOIN users ib ON ib.id = u.introduced_by AND ib.deleted_at IS NULL
           WHERE u.id = $1 AND u.deleted_at IS NULL""",
        user_id)


async def export_sessions(conn: Conn, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, kind, created_at, expires_at, revoked_at, revoked_reason, host(ip) AS ip, user_agent
           FROM sessions WHERE user_id = $1 ORDER BY created_at""", user_id)


async def export_reports_made(conn: Conn, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT r.id, r.reported_id, u.name AS reported_name, r.reason, r.room_id, host(r.reporter_ip) AS ip,
                  r.created_at
           FROM reports r JOIN users u ON u.id = r.reported_id WHERE r.reporter_id = $1 ORDER BY r.created_at""",
        user_id)


async def export_ban(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    """The user's own ban record, without who reported or reviewed them."""
    return await conn.fetchrow(
        """SELECT review_status, banned_at, banned_reason, report_count, reviewed_at, expires_at, lifted_at
           FROM ban_records WHERE user_id = $1""", user_id)


async def export_payments(conn: Conn, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT id, stripe_checkout_session_id, amount_cents, currency, status, created_at, completed_at
           FROM payments WHERE user_id = $1 ORDER BY created_at""", user_id)


async def export_invite_codes(conn: Conn, user_id: UUID) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """(codes the user owns, codes the user redeemed)."""
    owned = await conn.fetch(
        """SELECT code, type, max_uses, uses_remaining, is_active, created_at FROM invite_codes
           WHERE owner_user_id = $1 ORDER BY created_at""", user_id)
    redeemed = await conn.fetch(
        "SELECT code, redeemed_at FROM invite_code_redemptions WHERE user_id = $1 ORDER BY redeemed_at", user_id)
    return owned, redeemed


async def export_warnings(conn: Conn, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT reason, created_at FROM warnings WHERE user_id = $1 ORDER BY created_at",
                            user_id)


async def export_audit(conn: Conn, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT action, actor_label, COALESCE(actor_user_id = $1, false) AS by_self, details, before, after,
                  host(ip) AS ip, created_at FROM audit_log
           WHERE target_user_id = $1 OR actor_user_id = $1 ORDER BY created_at, id""", user_id)
