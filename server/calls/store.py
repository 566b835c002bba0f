"""SQL for calls: participants' status, queue candidates, history, counters and cooldowns."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from server.accounts.store import DELETED_NAME
from server.payments import codes

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def users_by_id(conn: Conn, ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        """SELECT u.id, u.name, u.gender, u.selfie_key, u.video_key, u.paid_status, u.ban_status, u.socials,
                  u.introduced_to, u.is_bot, ib.name AS introduced_by_name
           FROM users u LEFT JOIN users ib ON ib.id = u.introduced_by
           WHERE u.id = ANY($1::uuid[])""",
        ids,
    )
    return {str(r["id"]): r for r in rows}


async def deck_flags(conn: Conn, user_id: str) -> tuple[set[str], set[str], dict[str, int]]:
    """Everything the deck needs about the requester in one query: (users I reported, users who
    reported me, partner -> cooldown expiry in ms). Both report directions are hidden (§6 D16)."""
    rows = await conn.fetch(
        """SELECT reported_id AS other, 'mine' AS kind, NULL::bigint AS until FROM reports WHERE reporter_id = $1
           UNION ALL SELECT reporter_id, 'theirs', NULL FROM reports WHERE reported_id = $1
           UNION ALL SELECT CASE WHEN user_a = $1 THEN user_b ELSE user_a END, 'cooldown',
                            (extract(epoch FROM expires_at) * 1000)::bigint
                     FROM cooldowns WHERE (user_a = $1 OR user_b = $1) AND expires_at > now()""",
        user_id,
    )
    mine = {str(r["other"]) for r in rows if r["kind"] == "mine"}
    theirs = {str(r["other"]) for r in rows if r["kind"] == "theirs"}
    return mine, theirs, {str(r["other"]): int(r["until"]) for r in rows if r["kind"] == "cooldown"}


async def reported_between(conn: Conn, a: str, b: str) -> bool:
    """Has either of the two reported the other? Then they cannot invite each other (§6 D16)."""
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM reports WHERE (reporter_id = $1 AND reported_id = $2)
                                                 OR (reporter_id = $2 AND reported_id = $1))""", a, b))


async def history(conn: Conn, user_id: UUID, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT session_id, room_id, partner_id, partner_name, started_at, duration_seconds, messages, end_reason
           FROM call_history WHERE user_id = $1 ORDER BY started_at DESC LIMIT $2""",
        user_id, limit,
    )


# $1 user_a, $2 user_b (ordered), $3 expires_at, $4 reason; the later expiry wins.
_UPSERT_COOLDOWN = """INSERT INTO cooldowns (user_a, user_b, expires_at, reason) VALUES ($1, $2, $3, $4)
           ON CONFLICT (user_a, user_b) DO UPDATE
           SET expires_at = GREATEST(cooldowns.expires_at, EXCLUDED.expires_at),
               reason = CASE WHEN EXCLUDED.expires_at > cooldowns.expires_at THEN EXCLUDED.reason
                             ELSE cooldowns.reason END"""


async def upsert_cooldown(conn: Conn, a: str, b: str, expires_at: datetime, reason: str) -> None:
    await conn.execute(_UPSERT_COOLDOWN, a, b, expires_at, reason)


async def live_cooldowns(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT user_a, user_b, expires_at FROM cooldowns WHERE expires_at > now()")


async def start_live_call(conn: Conn, room_id: str, session_id: str, caller: str, callee: str, started_ms: int,
                          agreed: int, deadline_ms: int) -> None:
    await conn.execute(
        """INSERT INTO live_calls (room_id, session_id, caller_id, callee_id, started_at, agreed_seconds, deadline_at)
           VALUES ($1, $2, $3, $4, to_timestamp($5 / 1000.0), $6, to_timestamp($7 / 1000.0))
           ON CONFLICT (room_id) DO NOTHING""",
        room_id, session_id, caller, callee, started_ms, agreed, deadline_ms)


async def end_live_call(conn: Conn, room_id: str, cooldown: tuple[str, str, datetime, str] | None = None) -> None:
    """End a call's durable live record and, in the same statement, write the pair's `cooldown`
    (user_a, user_b, expires_at, reason): one round trip where a call's end took two."""
    if cooldown is None:
        await conn.execute("DELETE FROM live_calls WHERE room_id = $1", room_id)
        return
    await conn.execute(f"WITH cooldown AS ({_UPSERT_COOLDOWN}) DELETE FROM live_calls WHERE room_id = $5",
                       *cooldown, room_id)


async def is_live_call(conn: Conn, room_id: str) -> bool:
    """Does the call still have its durable live record (its history write not done yet)?"""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM live_calls WHERE room_id = $1)", room_id))


async def count_live_calls(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM live_calls"))


async def live_calls(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT room_id::text, session_id::text, caller_id::text, callee_id::text, agreed_seconds,
                  (extract(epoch FROM started_at) * 1000)::bigint AS started_ms,
                  (extract(epoch FROM deadline_at) * 1000)::bigint AS deadline_ms
           FROM live_calls l
           -- a call whose history exists has ended (a record left by a write that was not atomic)
           WHERE NOT EXISTS (SELECT 1 FROM call_history h WHERE h.session_id = l.session_id)""")


async def record_call(conn: asyncpg.Connection, session_id: UUID, room_id: UUID, started_at: datetime,
                      ended_at: datetime, duration: int, agreed: int, reason: str,
                      participants: list[dict[str, Any]], messages: list[Any], counts_for_qr: bool,
                      qr_sessions_to_unlock: int) -> list[str]:
    """Write one history row per participant and bump their counters, exactly once per
    (session, user): a replay after a crash inserts nothing and counts nothing.
    Returns the ids of users whose QR access was unlocked by this call.

    A participant whose account was deleted since the call (this runs again after an outage or a
    crash) gets no row and no counters, and the partner's row does not name them: what the deletion's
    scrub (accounts/store.scrub_user) does to rows that existed. FOR SHARE makes a deletion that starts
    meanwhile wait for this transaction, so its scrub sees the rows written here."""
    rows = await conn.fetch("SELECT id::text, deleted_at IS NOT NULL AS gone FROM users WHERE id = ANY($1::uuid[]) "
                            "ORDER BY id FOR SHARE", [str(p["user_id"]) for p in participants])
    present = {r["id"] for r in rows if not r["gone"]}
    unlocked: list[str] = []
    for p in participants:
        if str(p["user_id"]) not in present:
            continue
        said = messages
        if p["partner_id"] is not None and str(p["partner_id"]) not in present:
            said = _scrubbed(messages, str(p["partner_id"]))
            p = {**p, "partner_id": None, "partner_name": DELETED_NAME}
        inserted = await conn.fetchval(
            """INSERT INTO call_history (session_id, user_id, room_id, partner_id, partner_name, started_at,
                   ended_at, duration_seconds, agreed_seconds, end_reason, messages)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (session_id, user_id) DO NOTHING RETURNING 1""",
            session_id, p["user_id"], room_id, p["partner_id"], p["partner_name"], started_at, ended_at,
            duration, agreed, reason, said,
        )
        if inserted is None:
            continue
        row = await conn.fetchrow(
            """UPDATE users SET timer_total_seconds = timer_total_seconds + $2,
                   session_count = session_count + 1,
                   successful_sessions = successful_sessions + $3::int,
                   updated_at = now()
               WHERE id = $1 RETURNING successful_sessions, paid_status, qr_unlocked_at""",
            p["user_id"], duration, 1 if counts_for_qr else 0,
        )
        if (row and counts_for_qr and row["qr_unlocked_at"] is None
                and row["successful_sessions"] >= qr_sessions_to_unlock):
            done = await conn.fetchval(
                """UPDATE users SET qr_unlocked_at = now(),
                       paid_status = CASE WHEN paid_status = 'qr_grace_period' THEN 'qr_verified' ELSE paid_status END
                   WHERE id = $1 AND qr_unlocked_at IS NULL RETURNING paid_status""",
                p["user_id"],
            )
            if done:
                if done in ("qr_verified", "paid"):  # the user's own invite code, minted once (§6 D20)
                    await codes.mint_own(conn, p["user_id"])
                unlocked.append(str(p["user_id"]))
    return unlocked


def _scrubbed(messages: list[Any], gone: str) -> list[Any]:
    """The transcript as a deleted user's partner keeps it: their lines as 'deleted-user', no socials."""
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("from") == gone:
            if m.get("type") == "social":
                continue
            m = {**{k: v for k, v in m.items() if k != "socials"}, "from": "deleted-user"}
        out.append(m)
    return out


async def metrics(conn: Conn, user_ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        """SELECT id, timer_total_seconds, session_count, successful_sessions FROM users
           WHERE id = ANY($1::uuid[])""", user_ids)
    return {str(r["id"]): r for r in rows}
