"""Invite (paywall/QR) codes: atomic redemption decided by the database (§6 D8)."""

from __future__ import annotations

import re
from uuid import UUID

import asyncpg

from server.errors import ApiError

CODE_RE = re.compile(r"^[A-Z0-9]{16}$")


def normalize(code: str) -> str:
    return code.strip().upper()


async def redeem(conn: asyncpg.Connection, code: str, user_id: UUID) -> str:
    """Consume one use of `code` for `user_id` and grant grace-period access, inside the caller's
    transaction. Raises ApiError(403) with the original's message when the code cannot be used."""
    kind = await conn.fetchval(
        """UPDATE invite_codes
           SET uses_remaining = CASE WHEN type = 'admin' THEN uses_remaining ELSE uses_remaining - 1 END
           WHERE code = $1 AND is_active AND (type = 'admin' OR uses_remaining > 0)
           RETURNING type""",
        code,
    )
    if kind is None:
        row = await conn.fetchrow("SELECT is_active, uses_remaining FROM invite_codes WHERE code = $1", code)
        if row is None:
            raise ApiError(403, "invalid_code", "Invalid invite code", requiresPayment=True)
        if not row["is_active"]:
            raise ApiError(403, "code_deactivated", "This invite code has been deactivated", requiresPayment=True)
        raise ApiError(403, "code_used_up", "This invite code has been fully used", requiresPayment=True)
    inserted = await conn.fetchval(
        """INSERT INTO invite_code_redemptions (code, user_id) VALUES ($1, $2)
           ON CONFLICT DO NOTHING RETURNING 1""",
        code, user_id,
    )
    if inserted is None:
        raise ApiError(403, "code_already_used", "You have already used this invite code", requiresPayment=True)
    await conn.execute(
        "UPDATE users SET paid_status = 'qr_grace_period', updated_at = now() WHERE id = $1 AND paid_status = 'unpaid'",
        user_id,
    )
    return str(kind)
