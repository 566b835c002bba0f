"""Operator actions run from the command line (`python -m server user ...`), each audit-logged."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

import asyncpg

from server.ids import user_uuid
from server.settings import Settings

ROLES = ("user", "moderator", "admin")


class OperatorError(Exception):
    pass


async def _find_user(conn: asyncpg.Connection, ref: str) -> asyncpg.Record:
    user_id = user_uuid(ref)
    if user_id is not None:
        row = await conn.fetchrow("SELECT id, name, email, role, paid_status FROM users WHERE id = $1", user_id)
    else:
        row = await conn.fetchrow("SELECT id, name, email, role, paid_status FROM users WHERE email = $1",
                                  ref.strip().lower())
    if row is None:
        raise OperatorError(f"no user with id or email {ref!r}")
    return row


async def _audit(conn: asyncpg.Connection, action: str, target: Any, details: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor_label, action, target_user_id, details) VALUES ('cli', $1, $2, $3)",
        action, target, details,
    )


async def grant_access(conn: asyncpg.Connection, ref: str) -> tuple[str, UUID | None]:
    """Access without payment: paidStatus becomes `paid` (what every client treats as full access).
    Returns the message and the user whose access changed (None when nothing changed)."""
    async with conn.transaction():
        user = await _find_user(conn, ref)
        if user["paid_status"] in ("paid", "qr_verified"):
            return f"{user['id']} ({user['name']}) already has access ({user['paid_status']})", None
        await conn.execute(
            """UPDATE users SET paid_status = 'paid', paid_at = now(), access_granted_at = now(), updated_at = now()
               WHERE id = $1""", user["id"])
        await _audit(conn, "grant_access", user["id"], {"previous": user["paid_status"]})
    return f"granted access to {user['id']} ({user['name']})", user["id"]


async def set_role(conn: asyncpg.Connection, ref: str, role: str) -> tuple[str, UUID | None]:
    if role not in ROLES:
        raise OperatorError(f"role must be one of {', '.join(ROLES)}")
    async with conn.transaction():
        user = await _find_user(conn, ref)
        await conn.execute("UPDATE users SET role = $2, updated_at = now() WHERE id = $1", user["id"], role)
        await _audit(conn, "set_role", user["id"], {"previous": user["role"], "role": role})
    return f"{user['id']} ({user['name']}) role: {user['role']} -> {role}", user["id"]


async def announce(settings: Settings, user_id: UUID, reason: str) -> str:
    """Tell the running nodes, through Redis, that this user's access or role changed (what
    access.changed() does on the HTTP paths): every node drops the user's cached sessions and socket
    rights at once. If Redis cannot be reached the change still stands; caches then see it within
    SESSION_CACHE_SECONDS."""
    from redis.exceptions import RedisError

    from server.accounts import access
    from server.deps import Deps
    from server.redis import create_redis

    redis = create_redis(settings.redis_url, timeout_s=5)
    try:
        await access.changed(Deps(settings, cast(Any, None), redis, None), str(user_id), reason)
        return ""
    except (RedisError, OSError) as exc:
        ttl = settings.session_cache_seconds
        return f"warning: running nodes not told ({exc!r}); they see the change within {ttl:g} s"
    finally:
        await redis.aclose()


# ---- invite codes (`python -m server codes ...`); the logic is the payments domain's ----

async def create_code(conn: asyncpg.Connection, label: str, uses: int | None) -> str:
    from server.payments import service

    if uses is not None and uses < 1:
        raise OperatorError("--uses must be at least 1")
    code = await service.create_code(conn, "cli", label, uses)
    kind = f"{uses} use{'s' if uses != 1 else ''}" if uses else "unlimited (admin)"
    return f"{code}  {kind}  /payment/qr/{code}"


async def list_codes(conn: asyncpg.Connection) -> str:
    from server.payments import store

    rows = await store.list_codes(conn)
    lines = [f"{'code':<16}  {'type':<5}  {'uses left':>9}  {'used':>4}  {'active':<6}  created by"]
    for r in rows:
        left = "unlimited" if r["type"] == "admin" else f"{r['uses_remaining']}/{r['max_uses']}"
        lines.append(f"{r['code']:<16}  {r['type']:<5}  {left:>9}  {r['total_used']:>4}  "
                     f"{'yes' if r['is_active'] else 'no':<6}  {r['created_by_label']}")
    return "\n".join(lines) if rows else "no invite codes"


async def deactivate_code(conn: asyncpg.Connection, code: str) -> str:
    from server.errors import ApiError
    from server.payments import service

    try:
        was_active = await service.deactivate(conn, "cli", code)
    except ApiError:
        raise OperatorError(f"no invite code {code!r}") from None
    return f"deactivated {code.strip().upper()}" if was_active else f"{code.strip().upper()} was already inactive"
