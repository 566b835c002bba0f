"""Invite (paywall/QR) codes: the shared per-IP attempt budget, atomic redemption decided by the
database (§6 D8), and the user's own 4-use code, minted exactly once (§6 D20)."""

from __future__ import annotations

import math
import re
import secrets
import string
from uuid import UUID

import asyncpg

from server import ratelimit
from server.deps import Deps
from server.errors import ApiError
from server.httpio import ip_scope
from server.payments import store

CODE_RE = re.compile(r"^[A-Z0-9]{16}$")
ALPHABET = string.ascii_uppercase + string.digits
ATTEMPT_WINDOW_S = 3600


def normalize(code: str) -> str:
    return code.strip().upper()


def generate() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(16))


async def take_attempt(deps: Deps, ip: str | None) -> int:
    """Count one code attempt against the caller's IP; validate-code, apply-code and guest signup with
    an inviteCode share this budget, and every attempt counts, successes included (§5, §6 D8).
    Returns the attempts left; raises the 429 of §2.7 (retryAfter in ms) when none are."""
    limit = deps.settings.code_attempts_per_ip_per_hour
    w = await ratelimit.hit(deps.redis, f"codes:ip:{ip_scope(ip)}", ATTEMPT_WINDOW_S)
    if w.count > limit:
        minutes = max(1, math.ceil(w.retry_after_ms / 60_000))
        raise ApiError(429, "code_rate_limited", "Too many attempts", attemptsRemaining=0,
                       retryAfter=w.retry_after_ms,
                       message=f"Please wait {minutes} minute{'s' if minutes != 1 else ''} before trying again.")
    return limit - w.count


def _code_error(row: asyncpg.Record | None, **extra: object) -> ApiError:
    if row is None:
        return ApiError(403, "invalid_code", "Invalid invite code", **extra)
    if not row["is_active"]:
        return ApiError(403, "code_deactivated", "This invite code has been deactivated", **extra)
    return ApiError(403, "code_used_up", "This invite code has been fully used", **extra)


async def check(conn: asyncpg.Connection | asyncpg.Pool, code: str, attempts_left: int) -> asyncpg.Record:
    """validate-code: the code's row if it can be redeemed now; 404 unknown, 403 deactivated or used up."""
    row = await store.get_code(conn, code)
    if row is None:
        raise ApiError(404, "invalid_code", "Invalid invite code", attemptsRemaining=attempts_left)
    if not row["is_active"] or (row["type"] == "user" and row["uses_remaining"] <= 0):
        raise _code_error(row, attemptsRemaining=attempts_left)
    return row


async def redeem(conn: asyncpg.Connection, code: str, user_id: UUID) -> str:
    """Consume one use of `code` for `user_id` and grant grace-period access, inside the caller's
    transaction (any raise rolls the use back). Conditional decrement + unique (code, user) + a status
    change only from unpaid: 50 concurrent redemptions of a 4-use code succeed exactly 4 times, and one
    user redeeming two codes at once gets in once. Returns the new paid status."""
    if await store.consume_code(conn, code) is None:
        raise _code_error(await store.get_code(conn, code), requiresPayment=True)
    if not await store.record_redemption(conn, code, user_id):
        raise ApiError(403, "code_already_used", "You have already used this invite code", requiresPayment=True)
    status = await store.grant_grace_period(conn, user_id)
    if status is None:
        raise ApiError(400, "already_has_access", "You already have access")
    if status == "qr_verified":  # unlocked by calls before redeeming: this is the unlock's code (D20)
        await mint_own(conn, user_id)
    return status


async def mint_own(conn: asyncpg.Connection | asyncpg.Pool, user_id: UUID) -> str | None:
    """The user's own 4-use code, at `paid` or at the QR unlock (§6 D20). The partial unique index on
    the owner makes this once per user however often and wherever it is called. Returns the new code,
    or None when the user already had one."""
    label = await conn.fetchval("SELECT name FROM users WHERE id = $1", user_id) or str(user_id)
    for _ in range(5):  # a collision of 16 random characters is astronomically unlikely; retry anyway
        code = generate()
        if await store.insert_code(conn, code, "user", label, store.USER_CODE_USES, owner=user_id):
            return code
        if await store.own_code(conn, user_id) is not None:
            return None
    raise RuntimeError("could not mint an invite code")
