"""Session tokens and the one authentication function used by HTTP routes and Socket.IO alike, and
the per-node cache of validated sessions both read (`require_user`, realtime's connect and `auth`)."""

from __future__ import annotations

import hashlib
import secrets
import time
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
    (SessionCache, dropped by realtime's handler of the "sessions" control message)."""
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
    deps = deps_of(request)
    token = bearer_token(request)
    cache: SessionCache | None = deps.sessions
    if cache is None or not token or len(token) > 256:
        principal = await authenticate(deps, token, allow_banned=allow_banned)
    else:
        principal = await cache.authenticate(deps, hash_token(token))
        if principal.banned and not allow_banned:
            raise suspended()
    request[USER_ID] = principal.user_id
    return principal


# ---- the per-node session cache (issue 10 §5, issue 12 §3)

SESSION_CACHE_MAX = 50_000  # entries per node; the oldest goes first beyond it


class SessionCache:
    """Validated sessions of this node, by token hash, trusted for SESSION_CACHE_SECONDS: an
    authenticated HTTP request, a socket connect or an `auth` event (reconnect storms, repeated
    `auth` with one token) costs no Postgres round trip while its session is cached. Created by
    realtime.Realtime as `deps.sessions` (None when the TTL is 0).

    Dropped on every node, before the change's HTTP response is sent, through the control messages
    that already carry these changes (server/fanout.py, handled in realtime.py): "sessions"
    (`revoked()`: logout, a newer login) by session id, and "access" (`access.changed()`: ban, unban,
    payment, refund, deletion) by user. A read that overlapped a drop is not cached (it may predate
    the change). An expired session is never served from the cache; a change with no signal (a CLI
    role change) shows within `ttl`."""

    def __init__(self, ttl_s: float, max_entries: int = SESSION_CACHE_MAX) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.entries: dict[bytes, tuple[float, Principal]] = {}
        self.by_user: dict[str, set[bytes]] = {}
        self.by_session: dict[str, set[bytes]] = {}
        self.generation = 0  # bumped by every drop
        self.hits = 0
        self.misses = 0

    async def authenticate(self, deps: Deps, key: bytes) -> Principal:
        """`authenticate_hash(allow_banned=True)` through the cache (the caller applies the ban)."""
        hit = self.entries.get(key)
        now = time.monotonic()
        if hit is not None:
            read_at, principal = hit
            if now - read_at < self.ttl_s and principal.expires_at.timestamp() > time.time():
                self.hits += 1
                return principal
            self._drop(key)
        self.misses += 1
        generation = self.generation
        principal = await authenticate_hash(deps, key, allow_banned=True)
        if generation == self.generation:
            self._put(key, now, principal)
        return principal

    def _put(self, key: bytes, now: float, principal: Principal) -> None:
        self._drop(key)
        while len(self.entries) >= self.max_entries:
            self._drop(next(iter(self.entries)))  # insertion order: the oldest read
        self.entries[key] = (now, principal)
        self.by_user.setdefault(str(principal.user_id), set()).add(key)
        self.by_session.setdefault(str(principal.session_id), set()).add(key)

    def _drop(self, key: bytes) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        for index, name in ((self.by_user, str(entry[1].user_id)), (self.by_session, str(entry[1].session_id))):
            keys = index.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[name]

    def forget_user(self, user_id: str) -> None:
        self.generation += 1
        for key in list(self.by_user.get(user_id, ())):
            self._drop(key)

    def forget_sessions(self, session_ids: list[str]) -> None:
        self.generation += 1
        for sid in session_ids:
            for key in list(self.by_session.get(str(sid), ())):
                self._drop(key)


async def start_session(conn: asyncpg.Connection | asyncpg.Pool, user_id: UUID, kind: str, days: int,
                        ip: str | None, user_agent: str | None) -> tuple[str, UUID, datetime]:
    token = new_token()
    expires_at = datetime.now(UTC) + timedelta(days=days)
    session_id = await store.insert_session(conn, user_id, kind, hash_token(token), expires_at, ip,
                                            user_agent)
    return token, session_id, expires_at
