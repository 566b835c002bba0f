"""SQL for access and payments: invite codes and their redemptions, Checkout payments, Stripe events.

Races are decided here by the database: conditional updates and unique constraints, never a read
followed by a write from Python.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

USER_CODE_USES = 4
ACCESS_GRANTING = ("paid", "qr_verified", "qr_grace_period")


# ---- invite codes ----

async def consume_code(conn: asyncpg.Connection, code: str) -> str | None:
    """One use of an active code (admin codes are unlimited). Returns its type, or None."""
    kind: str | None = await conn.fetchval(
        """UPDATE invite_codes
           SET uses_remaining = CASE WHEN type = 'admin' THEN uses_remaining ELSE uses_remaining - 1 END
           WHERE code = $1 AND is_active AND (type = 'admin' OR uses_remaining > 0)
           RETURNING type""",
        code,
    )
    return kind


async def get_code(conn: Conn, code: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT c.code, c.type, c.owner_user_id, c.created_by_label, c.max_uses, c.uses_remaining,
                  c.is_active, c.created_at,
                  (SELECT count(*) FROM invite_code_redemptions r WHERE r.code = c.code) AS total_used
           FROM invite_codes c WHERE c.code = $1""",
        code,
    )


async def record_redemption(conn: asyncpg.Connection, code: str, user_id: UUID) -> bool:
    """False if this user already redeemed this code (unique (code, user_id))."""
    return await conn.fetchval(
        """INSERT INTO invite_code_redemptions (code, user_id) VALUES ($1, $2)
           ON CONFLICT DO NOTHING RETURNING true""",
        code, user_id,
    ) is not None


async def grant_grace_period(conn: asyncpg.Connection, user_id: UUID) -> str | None:
    """unpaid -> qr_grace_period (or qr_verified when the user had already unlocked by calls).
    None when the user already has access: a concurrent redemption or payment won."""
    status: str | None = await conn.fetchval(
        """UPDATE users SET paid_status = CASE WHEN qr_unlocked_at IS NULL THEN 'qr_grace_period'
                                                ELSE 'qr_verified' END,
                            updated_at = now()
           WHERE id = $1 AND paid_status = 'unpaid' RETURNING paid_status""",
        user_id,
    )
    return status


async def insert_code(conn: Conn, code: str, kind: str, label: str, max_uses: int,
                      owner: UUID | None = None) -> bool:
    """False on a collision (the code exists, or the owner already has a code)."""
    return await conn.fetchval(
        """INSERT INTO invite_codes (code, type, owner_user_id, created_by_label, max_uses, uses_remaining)
           VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING RETURNING true""",
        code, kind, owner, label, max_uses,
    ) is not None


async def own_code(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT c.code, c.type, c.max_uses, c.uses_remaining, c.is_active,
                  (SELECT count(*) FROM invite_code_redemptions r WHERE r.code = c.code) AS total_used
           FROM invite_codes c WHERE c.owner_user_id = $1 AND c.type = 'user'""",
        user_id,
    )


async def code_used_by(conn: Conn, user_id: UUID) -> str | None:
    code: str | None = await conn.fetchval(
        "SELECT code FROM invite_code_redemptions WHERE user_id = $1 ORDER BY redeemed_at LIMIT 1", user_id)
    return code


async def list_codes(conn: Conn, limit: int = 1000) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT c.code, c.type, c.owner_user_id, c.created_by_label, c.max_uses, c.uses_remaining,
                  c.is_active, c.created_at, count(r.user_id) AS total_used
           FROM invite_codes c LEFT JOIN invite_code_redemptions r ON r.code = c.code
           GROUP BY c.code ORDER BY c.created_at DESC LIMIT $1""",
        limit,
    )


async def deactivate_code(conn: Conn, code: str) -> bool | None:
    """True if deactivated now, False if it already was, None if unknown."""
    row = await conn.fetchrow(
        """UPDATE invite_codes n SET is_active = false FROM invite_codes o
           WHERE n.code = $1 AND o.code = n.code RETURNING o.is_active AS was_active""",
        code,
    )
    return None if row is None else bool(row["was_active"])


async def deactivate_own_code(conn: Conn, user_id: UUID) -> str | None:
    code: str | None = await conn.fetchval(
        """UPDATE invite_codes SET is_active = false
           WHERE owner_user_id = $1 AND type = 'user' AND is_active RETURNING code""",
        user_id,
    )
    return code


# ---- users ----

async def access_row(conn: Conn, user_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT id, name, paid_status, paid_at, payment_id, qr_unlocked_at, successful_sessions
           FROM users WHERE id = $1""",
        user_id,
    )


async def mark_paid(conn: asyncpg.Connection, user_id: UUID, payment_intent: str | None) -> str | None:
    """-> paid, unless already paid. Returns the previous status when it changed."""
    previous: str | None = await conn.fetchval(
        """UPDATE users u SET paid_status = 'paid', paid_at = now(), payment_id = $2, updated_at = now()
           FROM users o WHERE u.id = $1 AND o.id = u.id AND u.paid_status <> 'paid'
           RETURNING o.paid_status""",
        user_id, payment_intent,
    )
    return previous


async def withdraw_paid(conn: asyncpg.Connection, user_id: UUID) -> str | None:
    """paid -> unpaid (refund or dispute). Returns the previous status when it changed."""
    previous: str | None = await conn.fetchval(
        """UPDATE users u SET paid_status = 'unpaid', updated_at = now()
           FROM users o WHERE u.id = $1 AND o.id = u.id AND u.paid_status = 'paid'
           RETURNING o.paid_status""",
        user_id,
    )
    return previous


# ---- payments (one row per Checkout Session) ----

async def count_settled_payments(conn: Conn, user_id: UUID) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM payments WHERE user_id = $1 AND status <> 'pending'",
                                   user_id))


async def insert_payment(conn: Conn, user_id: UUID, session_id: str, url: str | None, amount: int, currency: str,
                         idempotency_key: str) -> None:
    """Idempotent: a replayed create (same idempotency key, same session) records nothing new."""
    await conn.execute(
        """INSERT INTO payments (user_id, stripe_checkout_session_id, checkout_url, amount_cents, currency,
                                 idempotency_key, source)
           VALUES ($1, $2, $3, $4, $5, $6, 'create') ON CONFLICT (stripe_checkout_session_id) DO NOTHING""",
        user_id, session_id, url, amount, currency, idempotency_key,
    )


async def complete_payment(conn: asyncpg.Connection, user_id: UUID, session_id: str, payment_intent: str | None,
                           amount: int, currency: str, source: str) -> bool:
    """pending/processing -> completed (inserting the row if this session was never recorded). True only
    for the one caller that made the transition: the checkout-session-id half of webhook dedupe."""
    return await conn.fetchval(
        """INSERT INTO payments (user_id, stripe_checkout_session_id, stripe_payment_intent, amount_cents, currency,
                                 status, completed_at, source)
           VALUES ($1, $2, $3, $4, $5, 'completed', now(), $6)
           ON CONFLICT (stripe_checkout_session_id) DO UPDATE
           SET status = 'completed', completed_at = now(), stripe_payment_intent = EXCLUDED.stripe_payment_intent,
               amount_cents = EXCLUDED.amount_cents, currency = EXCLUDED.currency, source = EXCLUDED.source,
               updated_at = now()
           WHERE payments.status IN ('pending', 'processing')
           RETURNING true""",
        user_id, session_id, payment_intent, amount, currency, source,
    ) is not None


async def set_payment_status(conn: Conn, user_id: UUID, session_id: str, status: str, from_statuses: tuple[str, ...],
                             payment_intent: str | None, amount: int, currency: str, source: str) -> bool:
    """A non-granting outcome (processing, failed, expired), only from the given states."""
    return await conn.fetchval(
        """INSERT INTO payments (user_id, stripe_checkout_session_id, stripe_payment_intent, amount_cents, currency,
                                 status, source)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (stripe_checkout_session_id) DO UPDATE
           SET status = EXCLUDED.status, source = EXCLUDED.source, updated_at = now(),
               stripe_payment_intent = COALESCE(EXCLUDED.stripe_payment_intent, payments.stripe_payment_intent)
           WHERE payments.status = ANY($8::text[])
           RETURNING true""",
        user_id, session_id, payment_intent, amount, currency, status, source, list(from_statuses),
    ) is not None


async def reverse_payment(conn: asyncpg.Connection, session_id: str, payment_intent: str | None, status: str,
                          refunded_cents: int) -> asyncpg.Record | None:
    """Mark a payment refunded or disputed (from any state: a refund may overtake the completion event,
    which then finds a terminal row and grants nothing). Returns (user_id, previous status)."""
    return await conn.fetchrow(
        """UPDATE payments p SET status = $3, stripe_payment_intent = COALESCE(p.stripe_payment_intent, $2),
               amount_refunded_cents = GREATEST(p.amount_refunded_cents, $4), updated_at = now()
           FROM payments o WHERE p.stripe_checkout_session_id = $1 AND o.id = p.id
           RETURNING p.user_id, o.status AS previous""",
        session_id, payment_intent, status, refunded_cents,
    )


async def session_for_intent(conn: Conn, payment_intent: str) -> str | None:
    sid: str | None = await conn.fetchval(
        "SELECT stripe_checkout_session_id FROM payments WHERE stripe_payment_intent = $1", payment_intent)
    return sid


async def other_completed_payment(conn: Conn, user_id: UUID, session_id: str) -> bool:
    return await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM payments WHERE user_id = $1 AND status = 'completed'
                          AND stripe_checkout_session_id <> $2)""",
        user_id, session_id,
    )


async def open_payment(conn: Conn, user_id: UUID, since: datetime) -> str | None:
    """The user's most recent Checkout Session still waiting for an outcome."""
    sid: str | None = await conn.fetchval(
        """SELECT stripe_checkout_session_id FROM payments
           WHERE user_id = $1 AND status IN ('pending', 'processing') AND created_at >= $2
           ORDER BY created_at DESC LIMIT 1""",
        user_id, since,
    )
    return sid


async def reusable_payment(conn: Conn, user_id: UUID, since: datetime) -> asyncpg.Record | None:
    """The user's recent Checkout Session that nobody has paid, expired or failed yet."""
    return await conn.fetchrow(
        """SELECT stripe_checkout_session_id, checkout_url FROM payments
           WHERE user_id = $1 AND status = 'pending' AND checkout_url IS NOT NULL AND created_at >= $2
           ORDER BY created_at DESC LIMIT 1""",
        user_id, since,
    )


async def payment_statuses(conn: Conn, session_ids: list[str]) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT stripe_checkout_session_id, status FROM payments WHERE stripe_checkout_session_id = ANY($1::text[])",
        session_ids,
    )
    return {r["stripe_checkout_session_id"]: r["status"] for r in rows}


# ---- Stripe events (the event-id half of webhook dedupe) ----

async def claim_event(conn: asyncpg.Connection, event_id: str, kind: str) -> bool:
    """True for the first delivery of this event; concurrent duplicates wait on the key, then get False."""
    return await conn.fetchval(
        """INSERT INTO stripe_events (event_id, type) VALUES ($1, $2)
           ON CONFLICT (event_id) DO NOTHING RETURNING true""",
        event_id, kind,
    ) is not None


async def finish_event(conn: asyncpg.Connection, event_id: str, outcome: str, session_id: str | None,
                       user_id: UUID | None) -> None:
    await conn.execute(
        """UPDATE stripe_events SET processed_at = now(), outcome = $2, checkout_session_id = $3, user_id = $4
           WHERE event_id = $1""",
        event_id, outcome, session_id, user_id,
    )


def code_info(row: Any) -> dict[str, Any]:
    return {"code": row["code"], "usesRemaining": row["uses_remaining"], "maxUses": row["max_uses"],
            "totalUsed": int(row["total_used"]), "type": row["type"], "isActive": row["is_active"]}
