"""Session tokens and the one authentication function used by HTTP routes and Socket.IO alike."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
from aiohttp import web

from server.accounts import store
from server.deps import Deps, deps_of
from server.errors import ApiError, unauthorized
from server.httpio import USER_ID, bearer_token

BANNED_STATUSES = ("temporary", "permanent")


def new_token() -> str:
    """256 bits from the OS CSPRNG, URL-safe. Only its hash is stored."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Principal:
    user_id: UUID
    session_id: UUID
    account_type: str
    role: str
    paid_status: str
    ban_status: str
    expires_at: datetime
    session_created_at: datetime | None = None

    @property
    def banned(self) -> bool:
        return self.ban_status in BANNED_STATUSES


async def revoked(deps: Deps, session_ids: list[str]) -> None:
    """After sessions were revoked (logout, a newer login): every node forgets its cached copy
    (realtime.Realtime._authenticate)."""
    from server import fanout  # the realtime layer sits above accounts

    if session_ids:
        await fanout.signal(deps, "sessions", ids=[str(s) for s in session_ids])


def suspended() -> ApiError:
    return ApiError(403, "banned", "Account suspended", banned=True,
                    message="Your account has been suspended pending review.")


async def authenticate(deps: Deps, token: str | None, *, allow_banned: bool = False) -> Principal:
    """Resolve a bearer token: unknown, expired, revoked or replaced tokens fail; banned users fail
    unless the caller explicitly serves them (e.g. /report/check-ban)."""
    if not token:
        raise unauthorized("Authorization required")
    if len(token) > 256:
        raise unauthorized("Invalid or expired session")
    return await authenticate_hash(deps, hash_token(token), allow_banned=allow_banned)


async def authenticate_hash(deps: Deps, token_hash: bytes, *, allow_banned: bool = False) -> Principal:
    """`authenticate` for a token already hashed (a socket re-checks the session it was opened with)."""
    row = await store.find_session(deps.db, token_hash)
    if row is None or row["expires_at"] <= datetime.now(UTC):
        raise unauthorized("Invalid or expired session")
    if row["revoked_at"] is not None:
        if row["revoked_reason"] == "new_login":
            raise ApiError(401, "session_invalidated", "Session invalidated", sessionInvalidated=True,
                           message="You signed in on another device.")
        raise unauthorized("Invalid or expired session")
    expires_at = await _slide(deps, row)
    principal = Principal(row["user_id"], row["session_id"], row["account_type"], row["role"],
                          row["paid_status"], row["ban_status"], expires_at, row["created_at"])
    if principal.banned and not allow_banned:
        raise suspended()
    return principal


async def _slide(deps: Deps, row: asyncpg.Record) -> datetime:
    """Sliding refresh (README "Account lifecycle"): a session in use is extended to a full lifetime
    from now, written at most once per SESSION_REFRESH_MINUTES; an idle one expires. Login and link
    sessions never outlive SESSION_MAX_DAYS after sign-in; a guest's token is its only credential, so
    an active guest session has no such cap."""
    s = deps.settings
    now = datetime.now(UTC)
    guest = row["kind"] == "guest"
    target = now + timedelta(days=s.guest_session_days if guest else s.login_session_days)
    if not guest:
        target = min(target, row["created_at"] + timedelta(days=s.session_max_days))
    if target - row["expires_at"] < timedelta(minutes=s.session_refresh_minutes):
        return row["expires_at"]  # refreshed recently enough (or capped): no write
    return await store.slide_session(deps.db, row["session_id"], target) or row["expires_at"]


async def require_user(request: web.Request, *, allow_banned: bool = False) -> Principal:
    principal = await authenticate(deps_of(request), bearer_token(request), allow_banned=allow_banned)
    request[USER_ID] = principal.user_id
    return principal


async def start_session(conn: asyncpg.Connection | asyncpg.Pool, user_id: UUID, kind: str, days: int,
                        ip: str | None, user_agent: str | None) -> tuple[str, UUID, datetime]:
    token = new_token()
    expires_at = datetime.now(UTC) + timedelta(days=days)
    session_id = await store.insert_session(conn, user_id, kind, hash_token(token), expires_at, ip,
                                            user_agent)
    return token, session_id, expires_at
