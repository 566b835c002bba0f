"""SQL for moderation: reports and their workflow, bans (status in users.ban_status, the case in
ban_records), IP bans, warnings, moderator TOTP, stats and user lookup."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

BANNED = ("temporary", "permanent")

# ---- reports ----

REPORT_COLUMNS = """r.id, r.reporter_id, r.reported_id, r.reason, r.room_id, r.shared_room,
    host(r.reporter_ip) AS reporter_ip, r.created_at, r.transcript, r.state, r.assigned_to, r.claimed_at,
    r.resolved_at, r.resolved_by, r.resolution, rp.name AS reporter_name, rd.name AS reported_name,
    rd.selfie_key AS reported_selfie, rd.video_key AS reported_video, rd.ban_status AS reported_ban_status,
    am.name AS assigned_name"""
REPORT_FROM = """reports r JOIN users rp ON rp.id = r.reporter_id JOIN users rd ON rd.id = r.reported_id
    LEFT JOIN users am ON am.id = r.assigned_to"""


async def lock_user(conn: asyncpg.Connection, user_id: UUID) -> asyncpg.Record | None:
    """Row-lock the reported user: reports against one user are decided one at a time, so the
    auto-ban count always sees every earlier report (no lost ban when reports race across nodes)."""
    return await conn.fetchrow(
        "SELECT id, name, ban_status, role FROM users WHERE id = $1 FOR UPDATE", user_id)


async def shared_call(conn: Conn, reporter: UUID, reported: UUID, room_id: UUID | None) -> asyncpg.Record | None:
    """The call the two had (the given room first, else their latest), from the reporter's history."""
    return await conn.fetchrow(
        """SELECT room_id, messages FROM call_history WHERE user_id = $1 AND partner_id = $2
           ORDER BY (room_id = $3) IS TRUE DESC, started_at DESC LIMIT 1""",
        reporter, reported, room_id,
    )


async def insert_report(conn: Conn, reporter: UUID, reported: UUID, reason: str, room_id: UUID | None,
                        shared: bool, transcript: list[Any], ip: str | None) -> UUID | None:
    """None when this reporter already reported this user (the unique pair decides, §6 D9)."""
    return await conn.fetchval(
        """INSERT INTO reports (reporter_id, reported_id, reason, room_id, shared_room, transcript, reporter_ip)
           VALUES ($1, $2, $3, $4, $5, $6, $7::inet)
           ON CONFLICT (reporter_id, reported_id) DO NOTHING RETURNING id""",
        reporter, reported, reason, room_id, shared, transcript, ip,
    )


async def report_counts(conn: Conn, reported: UUID) -> tuple[int, int]:
    """(all reports, reports from distinct reporters who shared a room since the last lifted ban)."""
    row = await conn.fetchrow(
        """SELECT count(*) AS total,
                  count(*) FILTER (WHERE r.shared_room
                                   AND r.created_at > COALESCE(b.lifted_at, '-infinity')) AS counting
           FROM reports r LEFT JOIN ban_records b ON b.user_id = r.reported_id
           WHERE r.reported_id = $1""",
        reported,
    )
    return int(row["total"]), int(row["counting"])


async def get_report(conn: Conn, report_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {REPORT_COLUMNS} FROM {REPORT_FROM} WHERE r.id = $1", report_id)


async def list_reports(conn: Conn, *, states: list[str] | None, limit: int, offset: int = 0,
                       reported: UUID | None = None, reporter: UUID | None = None) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {REPORT_COLUMNS} FROM {REPORT_FROM}
            WHERE ($1::text[] IS NULL OR r.state = ANY($1)) AND ($2::uuid IS NULL OR r.reported_id = $2)
              AND ($3::uuid IS NULL OR r.reporter_id = $3)
            ORDER BY r.created_at DESC, r.id LIMIT $4 OFFSET $5""",
        states, reported, reporter, limit, offset,
    )


async def count_reports(conn: Conn, states: list[str] | None) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM reports WHERE $1::text[] IS NULL OR state = ANY($1)", states))


async def reports_against(conn: Conn, user_ids: list[UUID]) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {REPORT_COLUMNS} FROM {REPORT_FROM} WHERE r.reported_id = ANY($1::uuid[]) ORDER BY r.created_at",
        user_ids)


async def claim_report(conn: Conn, report_id: UUID, moderator: UUID, force: bool) -> asyncpg.Record | None:
    """Open -> claimed by me (or taken over with force). None if resolved, missing, or someone else's."""
    return await conn.fetchrow(
        """UPDATE reports SET state = 'claimed', assigned_to = $2, claimed_at = now()
           WHERE id = $1 AND state <> 'resolved' AND (state = 'open' OR assigned_to = $2 OR $3)
           RETURNING id, state, assigned_to""",
        report_id, moderator, force,
    )


async def release_report(conn: Conn, report_id: UUID, moderator: UUID) -> bool:
    row = await conn.fetchval(
        """UPDATE reports SET state = 'open', assigned_to = NULL, claimed_at = NULL
           WHERE id = $1 AND state = 'claimed' AND assigned_to = $2 RETURNING 1""", report_id, moderator)
    return row is not None


async def resolve_reports(conn: Conn, *, report_id: UUID | None, reported: UUID | None, resolution: str,
                          moderator: UUID | None) -> list[UUID]:
    """Resolve one report, or every unresolved report against `reported` (a decision on the user)."""
    rows = await conn.fetch(
        """UPDATE reports SET state = 'resolved', resolved_at = now(), resolved_by = $3, resolution = $4,
                  assigned_to = COALESCE(assigned_to, $3)
           WHERE state <> 'resolved' AND (id = $1 OR reported_id = $2) RETURNING id""",
        report_id, reported, moderator, resolution,
    )
    return [r["id"] for r in rows]


async def add_note(conn: Conn, report_id: UUID, author: UUID, label: str, body: str) -> asyncpg.Record:
    return await conn.fetchrow(
        """INSERT INTO report_notes (report_id, author_user_id, author_label, body) VALUES ($1, $2, $3, $4)
           RETURNING id, created_at""", report_id, author, label, body)


async def notes(conn: Conn, report_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT n.id, n.body, n.created_at, n.author_user_id, n.author_label, u.name AS author_name
           FROM report_notes n LEFT JOIN users u ON u.id = n.author_user_id
           WHERE n.report_id = $1 ORDER BY n.created_at, n.id""", report_id)


# ---- bans ----

BAN_COLUMNS = """u.id AS user_id, u.name, u.selfie_key, u.video_key, u.ban_status, b.review_status, b.banned_at,
    b.banned_reason, b.report_count, b.reviewed_at, b.reviewed_by, b.source, b.expires_at, b.lifted_at"""


async def get_ban(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {BAN_COLUMNS} FROM users u JOIN ban_records b ON b.user_id = u.id WHERE u.id = $1", user_id)


async def bans(conn: Conn, *, status: str | None = None, review: str | None = None,
               limit: int = 500) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {BAN_COLUMNS} FROM users u JOIN ban_records b ON b.user_id = u.id
            WHERE ($1::text IS NULL OR u.ban_status = $1) AND ($2::text IS NULL OR b.review_status = $2)
            ORDER BY b.banned_at DESC LIMIT $3""",
        status, review, limit,
    )


async def set_ban(conn: asyncpg.Connection, user_id: UUID, status: str, *, source: str, reason: str,
                  report_count: int, review_status: str, expires_at: datetime | None,
                  reviewer: UUID | None, only_if_unbanned: bool = False) -> str | None:
    """Put the user under a ban. Returns the previous status, or None when `only_if_unbanned` and
    the user is already banned (the auto-ban is created once)."""
    previous = await conn.fetchval("SELECT ban_status FROM users WHERE id = $1 FOR UPDATE", user_id)
    if previous is None or (only_if_unbanned and previous in BANNED):
        return None
    await conn.execute("UPDATE users SET ban_status = $2, updated_at = now() WHERE id = $1", user_id, status)
    await conn.execute(
        """INSERT INTO ban_records (user_id, review_status, banned_at, banned_reason, report_count, source,
                                    expires_at, reviewed_at, reviewed_by, lifted_at)
           VALUES ($1, $2, now(), $3, $4, $5, $6, CASE WHEN $7::uuid IS NULL THEN NULL ELSE now() END, $7, NULL)
           ON CONFLICT (user_id) DO UPDATE SET review_status = EXCLUDED.review_status,
               banned_at = CASE WHEN ban_records.lifted_at IS NULL THEN ban_records.banned_at ELSE now() END,
               banned_reason = EXCLUDED.banned_reason,
               report_count = GREATEST(ban_records.report_count, EXCLUDED.report_count),
               source = EXCLUDED.source, expires_at = EXCLUDED.expires_at,
               reviewed_at = EXCLUDED.reviewed_at, reviewed_by = EXCLUDED.reviewed_by, lifted_at = NULL""",
        user_id, review_status, reason, report_count, source, expires_at, reviewer,
    )
    return str(previous)


async def lift_ban(conn: asyncpg.Connection, user_id: UUID, status: str, review_status: str,
                   reviewer: UUID | None) -> str | None:
    """Clear a current ban: users.ban_status -> `status` ('vindicated' or 'none'). None if not banned."""
    previous = await conn.fetchval("SELECT ban_status FROM users WHERE id = $1 FOR UPDATE", user_id)
    if previous not in BANNED:
        return None
    await conn.execute("UPDATE users SET ban_status = $2, updated_at = now() WHERE id = $1", user_id, status)
    await conn.execute(
        """UPDATE ban_records SET review_status = $2, reviewed_at = CASE WHEN $3::uuid IS NULL THEN reviewed_at
               ELSE now() END, reviewed_by = COALESCE($3, reviewed_by), lifted_at = now(), expires_at = NULL
           WHERE user_id = $1""",
        user_id, review_status, reviewer,
    )
    return str(previous)


async def expired_bans(conn: Conn) -> list[UUID]:
    rows = await conn.fetch(
        """SELECT b.user_id FROM ban_records b JOIN users u ON u.id = b.user_id
           WHERE b.expires_at <= now() AND b.lifted_at IS NULL AND u.ban_status = 'temporary' LIMIT 100""")
    return [r["user_id"] for r in rows]


async def blacklist(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT u.name, u.selfie_key, u.video_key, b.banned_at, b.banned_reason, b.report_count, b.reviewed_at
           FROM users u JOIN ban_records b ON b.user_id = u.id WHERE u.ban_status = 'permanent'
           ORDER BY b.banned_at DESC LIMIT 1000""")


async def user_ips(conn: Conn, user_ids: list[UUID]) -> dict[UUID, list[str]]:
    """IPs each user's sessions came from (as recorded with the trusted-proxy hop count)."""
    rows = await conn.fetch(
        """SELECT user_id, array_agg(DISTINCT host(ip)) AS ips FROM sessions
           WHERE user_id = ANY($1::uuid[]) AND ip IS NOT NULL GROUP BY user_id""", user_ids)
    return {r["user_id"]: sorted(r["ips"]) for r in rows}


# ---- IP bans (moderator decision only, §6 D10) ----

async def ban_ip(conn: Conn, ip: str, reason: str, user_id: UUID | None, by: UUID | None,
                 expires_at: datetime | None) -> bool:
    row = await conn.fetchval(
        """INSERT INTO ip_bans (ip, reason, user_id, banned_by, expires_at) VALUES ($1::inet, $2, $3, $4, $5)
           ON CONFLICT (ip) DO UPDATE SET reason = EXCLUDED.reason, user_id = EXCLUDED.user_id,
               banned_by = EXCLUDED.banned_by, banned_at = now(), expires_at = EXCLUDED.expires_at
           RETURNING (xmax = 0)""",
        ip, reason, user_id, by, expires_at,
    )
    return bool(row)


async def unban_ip(conn: Conn, ip: str) -> bool:
    return (await conn.execute("DELETE FROM ip_bans WHERE ip = $1::inet", ip)).endswith(" 1")


async def lift_user_ip_bans(conn: Conn, user_id: UUID) -> list[str]:
    """A vindicated user's IP bans go, unless another banned user shares the address."""
    rows = await conn.fetch(
        """DELETE FROM ip_bans i WHERE i.user_id = $1 AND NOT EXISTS (
               SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
               WHERE s.ip = i.ip AND u.id <> $1 AND u.ban_status IN ('temporary', 'permanent'))
           RETURNING host(i.ip) AS ip""", user_id)
    return [r["ip"] for r in rows]


async def ip_bans(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT host(i.ip) AS ip, i.reason, i.user_id, u.name AS user_name, i.banned_by, i.banned_at, i.expires_at
           FROM ip_bans i LEFT JOIN users u ON u.id = i.user_id
           WHERE i.expires_at IS NULL OR i.expires_at > now() ORDER BY i.banned_at DESC""")


async def active_ip_bans(conn: Conn) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT host(ip) AS ip, reason FROM ip_bans WHERE expires_at IS NULL OR expires_at > now()")
    return {r["ip"]: r["reason"] for r in rows}


# ---- warnings ----

async def add_warning(conn: Conn, user_id: UUID, reason: str, by: UUID | None) -> None:
    await conn.execute("INSERT INTO warnings (user_id, reason, issued_by) VALUES ($1, $2, $3)", user_id, reason, by)


async def latest_warning(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT reason, created_at FROM warnings WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1", user_id)


# ---- lookup and stats ----

async def find_user(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT id, name, gender, email, account_type, role, is_bot, paid_status, ban_status, selfie_key,
                  video_key, socials, created_at, session_count, timer_total_seconds
           FROM users WHERE id = $1""", user_id)


async def call_history(conn: Conn, user_id: UUID, limit: int = 50) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT session_id, room_id, partner_id, partner_name, started_at, duration_seconds, end_reason
           FROM call_history WHERE user_id = $1 ORDER BY started_at DESC LIMIT $2""", user_id, limit)


async def stats(conn: Conn) -> asyncpg.Record:
    return await conn.fetchrow(
        """SELECT (SELECT count(*) FROM reports) AS total_reports,
                  (SELECT count(*) FROM ban_records) AS total_bans,
                  (SELECT count(*) FROM users u JOIN ban_records b ON b.user_id = u.id
                    WHERE u.ban_status = 'temporary' AND b.review_status = 'pending') AS pending_reviews,
                  (SELECT count(*) FROM users WHERE ban_status = 'permanent') AS permanent_bans,
                  (SELECT count(*) FROM users WHERE ban_status = 'temporary') AS temporary_bans,
                  (SELECT count(*) FROM users WHERE ban_status = 'vindicated') AS vindicated,
                  (SELECT count(*) FROM reports WHERE state = 'open') AS open_reports,
                  (SELECT count(*) FROM reports WHERE state = 'claimed') AS claimed_reports,
                  (SELECT count(*) FROM reports WHERE state = 'resolved') AS resolved_reports,
                  (SELECT percentile_cont(0.5) WITHIN GROUP (
                       ORDER BY extract(epoch FROM resolved_at - created_at))
                   FROM reports WHERE state = 'resolved') AS median_decision_seconds,
                  (SELECT count(*) FROM ip_bans WHERE expires_at IS NULL OR expires_at > now()) AS ip_bans""")


# ---- moderator TOTP ----

async def totp_secret(conn: Conn, user_id: UUID) -> str | None:
    return await conn.fetchval("SELECT secret FROM moderator_totp WHERE user_id = $1", user_id)


async def use_totp_step(conn: Conn, user_id: UUID, step: int) -> bool:
    """Record `step` as used; False if it (or a later one) was used already: a replayed code."""
    row = await conn.fetchval(
        "UPDATE moderator_totp SET last_step = $2 WHERE user_id = $1 AND last_step < $2 RETURNING 1",
        user_id, step)
    return row is not None


async def enroll_totp(conn: Conn, user_id: UUID, secret: str) -> None:
    await conn.execute(
        """INSERT INTO moderator_totp (user_id, secret) VALUES ($1, $2)
           ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, enrolled_at = now(), last_step = 0""",
        user_id, secret)


async def remove_totp(conn: Conn, user_id: UUID) -> bool:
    return (await conn.execute("DELETE FROM moderator_totp WHERE user_id = $1", user_id)).endswith(" 1")


async def account_by_id(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, email, role FROM users WHERE id = $1", user_id)


async def account_by_email(conn: Conn, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name, email, role FROM users WHERE email = $1", email)


async def moderator_by_login(conn: Conn, username: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT u.id, u.name, u.email, u.role, u.ban_status, u.password_hash, t.secret AS totp_secret
           FROM users u LEFT JOIN moderator_totp t ON t.user_id = u.id WHERE u.email = $1""", username)


async def moderator_by_id(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, name, email, role, ban_status FROM users WHERE id = $1", user_id)
