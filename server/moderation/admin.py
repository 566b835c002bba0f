"""Moderator sign-in (PROTOCOL §2.9, §6 D3): accounts with the moderator/admin role log in with their
email and bcrypt password, plus a TOTP code once enrolled. Admin sessions live hashed in Redis (shared
by every node) for ADMIN_SESSION_SECONDS and can be revoked.

Redis keys:
  adm:s:<sha256 hex>   the session: "<userId>|<expires ms>", expires with it
  adm:u:<userId>       sorted set of that user's session hashes, scored by expiry (revoke all,
                       "has a live admin session" for REQUIRE_MODERATOR_TOTP)
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import pyotp
import structlog

from server import ratelimit
from server.accounts import passwords
from server.accounts.sessions import hash_token, new_token, suspended
from server.deps import Deps
from server.errors import ApiError, rate_limited
from server.moderation import audit, store

log = structlog.get_logger(__name__)

MODERATOR_ROLES = ("moderator", "admin")
TOTP_DIGITS = 6
TOTP_STEP_S = 30


def _key(token: str) -> str:
    return f"adm:s:{hash_token(token).hex()}"


def _user_key(user_id: str) -> str:
    return f"adm:u:{user_id}"


@dataclass(frozen=True)
class AdminSession:
    user_id: UUID
    expires_ms: int


async def create_session(deps: Deps, user_id: UUID) -> tuple[str, int]:
    token = new_token()
    ttl_ms = deps.settings.admin_session_seconds * 1000
    expires = int(time.time() * 1000) + ttl_ms
    digest = hash_token(token).hex()
    async with deps.redis.pipeline(transaction=True) as p:
        p.set(f"adm:s:{digest}", f"{user_id}|{expires}", px=ttl_ms)
        p.zadd(_user_key(str(user_id)), {digest: expires})
        p.zremrangebyscore(_user_key(str(user_id)), "-inf", int(time.time() * 1000))
        p.pexpire(_user_key(str(user_id)), ttl_ms)
        await p.execute()
    return token, expires


async def find_session(deps: Deps, token: str | None) -> AdminSession | None:
    if not token or len(token) > 256:
        return None
    raw = await deps.redis.get(_key(token))
    if raw is None:
        return None
    uid, _, expires = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition("|")
    if int(expires) <= int(time.time() * 1000):
        return None
    return AdminSession(UUID(uid), int(expires))


async def revoke(deps: Deps, token: str | None) -> bool:
    session = await find_session(deps, token)
    if session is None or token is None:
        return False
    await _drop(deps, session, token)
    return True


async def _drop(deps: Deps, session: AdminSession, token: str) -> None:
    digest = hash_token(token).hex()
    async with deps.redis.pipeline(transaction=True) as p:
        p.delete(f"adm:s:{digest}")
        p.zrem(_user_key(str(session.user_id)), digest)
        await p.execute()


async def verify(deps: Deps, token: str | None) -> tuple[AdminSession, asyncpg.Record] | None:
    """GET /admin/verify: the live session and its user, while that user holds a moderator role and
    is not banned (both read now, not at sign-in)."""
    session = await find_session(deps, token)
    user = await store.moderator_by_id(deps.db, session.user_id) if session else None
    if session is None or user is None or user["role"] not in MODERATOR_ROLES or user["ban_status"] in store.BANNED:
        return None
    return session, user


async def logout(deps: Deps, token: str | None, ip: str | None) -> None:
    """POST /admin/logout: end this admin session (audit-logged); an unknown token is no error."""
    session = await find_session(deps, token)
    if session is None or token is None:
        return
    await _drop(deps, session, token)
    await audit.record(deps.db, actor_label=f"moderator:{session.user_id}", actor_user_id=session.user_id,
                       action="admin_logout", target_user_id=session.user_id, ip=ip)


async def revoke_all(deps: Deps, user_id: UUID) -> int:
    """End every admin session of a user (a ban, a role taken away)."""
    key = _user_key(str(user_id))
    digests = [d.decode() if isinstance(d, bytes) else d for d in await deps.redis.zrange(key, 0, -1)]
    if digests:
        await deps.redis.delete(*[f"adm:s:{d}" for d in digests], key)
    return len(digests)


async def has_live_session(deps: Deps, user_id: UUID) -> bool:
    key = _user_key(str(user_id))
    await deps.redis.zremrangebyscore(key, "-inf", int(time.time() * 1000))
    return bool(await deps.redis.zcard(key))


# ---- TOTP ----

def totp_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step `code` belongs to (current one, or one step either side for clock drift)."""
    if not code.isdigit() or len(code) != TOTP_DIGITS:
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S)
    now = time.time() if now is None else now
    current = int(now // TOTP_STEP_S)
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP_S).provisioning_uri(
        name=account, issuer_name=issuer)


def new_secret() -> str:
    return pyotp.random_base32(32)


# ---- login ----

def _invalid(message: str = "Username, password or code is incorrect.") -> ApiError:
    return ApiError(401, "invalid_credentials", "Invalid credentials", message=message)


async def login(deps: Deps, ip: str | None, username: str, password: str, code: str | None) -> dict[str, object]:
    """POST /admin/login. With TOTP enrolled and no separate code field (the original admin page sends
    only username and password), the last six characters of the password field are the code."""
    s = deps.settings
    username = username.strip().lower()
    scopes = [(f"admin:ip:{ip}", s.admin_login_max_failures_per_ip),
              (f"admin:acct:{username}", s.admin_login_max_failures_per_account)]
    window = s.login_failure_window_seconds
    wait = await ratelimit.begin_attempt(deps.redis, scopes, window)
    if wait is not None:
        raise rate_limited("Too many login attempts", wait, code="admin_login_rate_limited",
                           message=f"Too many failed attempts. Try again in {wait} seconds.")
    failure: ApiError | None = None
    user = None
    try:
        user = await store.moderator_by_login(deps.db, username)
        secret = user["totp_secret"] if user else None
        if secret and not code and len(password) > TOTP_DIGITS:
            password, code = password[:-TOTP_DIGITS], password[-TOTP_DIGITS:]
        ok = await passwords.verify_password(password,
                                             user["password_hash"] if user else None, s.bcrypt_rounds)
        if not ok or user is None or user["role"] not in MODERATOR_ROLES:
            failure = _invalid()
        elif secret:
            step = totp_step(secret, code or "")
            if step is None:
                failure = _invalid("The two-factor code is missing or wrong.")
            elif not await store.use_totp_step(deps.db, user["id"], step):
                failure = _invalid("That two-factor code was used already; wait for the next one.")
    finally:
        await ratelimit.end_attempt(deps.redis, scopes, window, failed=failure is not None or user is None,
                                    clear_on_success=[False, True])
    if failure is not None or user is None:
        await asyncio.sleep(s.admin_login_failure_delay_seconds)  # the original's deliberate 1 s delay
        log.warning("admin_login_failed", ip=ip)
        raise failure or _invalid()
    if user["ban_status"] in store.BANNED:
        raise suspended()
    if not user["totp_secret"] and s.require_moderator_totp:
        raise ApiError(403, "totp_enrolment_required", "Two-factor enrolment required",
                       message="An operator must enrol this account: python -m server user totp-enroll <email>")
    token, expires = await create_session(deps, user["id"])
    await audit.record(deps.db, actor_label=f"{user['role']}:{user['id']}", actor_user_id=user["id"],
                       action="admin_login", target_user_id=user["id"], ip=ip,
                       details={"totp": bool(user["totp_secret"])})
    log.info("admin_login", user_id=str(user["id"]))
    return {"adminToken": token, "username": user["email"], "role": user["role"], "userId": str(user["id"]),
            "expiresAt": expires, "totp": bool(user["totp_secret"])}
