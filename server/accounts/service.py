"""Account operations: guest signup, linking, login, logout. No HTTP here: callers pass plain values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from server import ratelimit
from server.accounts import deletion, passwords, sessions, store
from server.accounts.access import has_access, reported_status
from server.accounts.profile import card
from server.accounts.sessions import BANNED_STATUSES, Principal, start_session
from server.deps import Deps
from server.errors import ApiError, bad_request, rate_limited
from server.httpio import ip_scope
from server.payments import codes
from server.presence.state import is_online
from server.referrals import store as referrals

log = structlog.get_logger(__name__)

INVALID_CREDENTIALS = "Invalid credentials"


@dataclass(frozen=True)
class Client:
    ip: str | None
    user_agent: str | None


async def _limit(deps: Deps, key: str, limit: int, window_s: int, message: str, code: str) -> None:
    w = await ratelimit.hit(deps.redis, key, window_s)
    if w.count > limit:
        raise rate_limited(message, w.retry_after_s, code=code,
                           message=f"Please wait {w.retry_after_s} seconds before trying again.")


async def guest_signup(deps: Deps, client: Client, name: str, gender: str,
                       referral_code: str | None, invite_code: str | None, is_bot: bool = False) -> dict[str, Any]:
    s = deps.settings
    attempts_left = None
    if invite_code is not None:
        # Every code-accepting route shares validate-code's per-IP budget (§6 D8).
        attempts_left = await codes.take_attempt(deps, client.ip)
        invite_code = codes.normalize(invite_code)
        if not codes.CODE_RE.match(invite_code):
            raise bad_request("Invalid invite code format", code="invalid_code_format",
                              attemptsRemaining=attempts_left)
    await _limit(deps, f"signup:ip:{ip_scope(client.ip)}", s.guest_signups_per_ip_per_hour, 3600,
                 "Too many signups from this network", "signup_rate_limited")

    ref = await referrals.resolve(deps.db, referral_code.strip().upper()) if referral_code else None
    async with deps.db.acquire() as conn, conn.transaction():
        user = await store.insert_guest(
            conn, name, gender,
            ref["target_user_id"] if ref else None, ref["created_by"] if ref else None,
            ref["code"] if ref else None, is_bot=is_bot,
        )
        if invite_code:
            try:  # raises -> the whole signup rolls back; no own code yet (minted at the QR unlock, D20)
                await codes.redeem(conn, invite_code, user["id"])
            except ApiError as exc:
                exc.extra["attemptsRemaining"] = attempts_left
                raise
            user = await store.get_user(conn, user["id"])
        token, _, _ = await start_session(conn, user["id"], "guest", s.guest_session_days, client.ip,
                                          client.user_agent)
    target = await store.get_user(deps.db, ref["target_user_id"]) if ref else None
    log.info("guest_signup", user_id=str(user["id"]), referred=ref is not None, invite_code=bool(invite_code),
             is_bot=is_bot)
    return {
        "userId": str(user["id"]),
        "sessionToken": token,
        "accountType": "guest",
        "paidStatus": reported_status(deps, user["paid_status"]),
        "accountPaidStatus": user["paid_status"],
        "paywall": s.require_payment,
        "requiresPayment": not has_access(deps, user["paid_status"]),
        "inviteCodeUsed": bool(invite_code),
        "wasReferred": ref is not None,
        "referralCode": ref["code"] if ref else None,
        "introducedTo": str(ref["target_user_id"]) if ref else None,
        "targetUser": card(deps, target) if target else None,
        "targetOnline": await is_online(deps.redis, str(target["id"])) if target else False,
    }


def already_linked() -> ApiError:
    return ApiError(409, "already_linked", "Account is already linked to an email")


def email_taken() -> ApiError:
    return ApiError(409, "email_taken", "Email already registered")


async def limit_link_ip(deps: Deps, client: Client) -> None:
    """Per address, before the token is even looked up (each lookup is a query)."""
    await _limit(deps, f"link:ip:{ip_scope(client.ip)}", deps.settings.link_attempts_per_ip_per_hour, 3600,
                 "Too many attempts", "link_rate_limited")


async def link(deps: Deps, principal: Principal, email: str, password: str) -> dict[str, Any]:
    problem = passwords.policy_error(password)
    if problem:
        raise bad_request(problem, code="weak_password")
    # Everything that can refuse the link is checked before bcrypt (~250 ms of CPU at cost 12): a
    # session token must not buy hashes it cannot use.
    if principal.account_type != "guest":
        raise already_linked()
    await _limit(deps, f"link:user:{principal.user_id}", deps.settings.link_attempts_per_user_per_hour, 3600,
                 "Too many attempts", "link_rate_limited")
    if await deletion.email_banned(deps, email):  # deleted while banned: no fresh start (README)
        raise ApiError(403, "banned", "Account suspended", banned=True, message="This email cannot be used.")
    if await store.email_taken(deps.db, email):
        raise email_taken()
    # One hash in flight per account: parallel requests with one token queue up as 429s, not as CPU.
    busy_key = f"link:busy:{principal.user_id}"
    if not await ratelimit.acquire_slot(deps.redis, busy_key, 1, 60):
        raise rate_limited("Too many attempts", 1, code="link_rate_limited",
                           message="Your account is already being linked.")
    try:
        hashed = await passwords.hash_password(password, deps.settings.bcrypt_rounds)
    finally:
        await ratelimit.release_slot(deps.redis, busy_key)
    async with deps.db.acquire() as conn, conn.transaction():
        try:
            linked = await store.link_account(conn, principal.user_id, email, hashed)
        except asyncpg.UniqueViolationError:  # taken since the check above
            raise email_taken() from None
        except asyncpg.CheckViolationError:  # an address Postgres's lower() would still change
            raise bad_request("A valid email is required", code="validation_failed") from None
        if not linked:
            raise already_linked()
        expires = datetime.now(UTC) + timedelta(days=deps.settings.login_session_days)
        await store.extend_session(conn, principal.session_id, "link", expires)
    log.info("account_linked", user_id=str(principal.user_id))
    return {"success": True, "accountType": "permanent"}


async def login(deps: Deps, client: Client, email: str,
                password: str) -> tuple[dict[str, Any], UUID, list[UUID]]:
    """Returns the response, the user id, and the sessions this login invalidated."""
    s = deps.settings
    if len(password.encode()) > passwords.MAX_BYTES:
        raise bad_request(f"Password must be at most {passwords.MAX_BYTES} bytes", code="password_too_long")
    ip = ip_scope(client.ip)
    # Every attempt costs a bcrypt check, successful or not: a budget per address for all of them...
    await _limit(deps, f"login:any:ip:{ip}", s.login_attempts_per_ip_per_hour, 3600,
                 "Too many login attempts", "login_rate_limited")
    # ...and per account for successes (someone holding the password must not buy unlimited hashes and
    # sessions). A slot is reserved atomically before the check and handed back if the check fails.
    ok_key = f"login:ok:acct:{email}"
    w = await ratelimit.hit(deps.redis, ok_key, 3600)
    if w.count > s.logins_per_account_per_hour:
        await ratelimit.give_back(deps.redis, ok_key)
        raise rate_limited("Too many login attempts", w.retry_after_s, code="login_rate_limited",
                           message=f"Too many sign-ins. Try again in {w.retry_after_s} seconds.")
    # Failed attempts are limited per IP and per account. Each attempt holds a slot while its password
    # is checked, so parallel guesses cannot outrun the count (see ratelimit.begin_attempt).
    scopes = [(f"login:ip:{ip}", s.login_max_failures_per_ip),
              (f"login:acct:{email}", s.login_max_failures_per_account)]
    window = s.login_failure_window_seconds
    wait = await ratelimit.begin_attempt(deps.redis, scopes, window)
    if wait is not None:
        await ratelimit.give_back(deps.redis, ok_key)
        raise rate_limited("Too many login attempts", wait, code="login_rate_limited",
                           message=f"Too many failed attempts. Try again in {wait} seconds.")
    failed = succeeded = False
    try:
        user = await store.find_login(deps.db, email)
        ok = await passwords.verify_password(password, user["password_hash"] if user else None,
                                             s.bcrypt_rounds)
        failed = not ok or user is None
        succeeded = not failed
    finally:
        # A success clears the account's failures; the IP's stay until their window ends.
        await ratelimit.end_attempt(deps.redis, scopes, window, failed=failed, clear_on_success=[False, True])
        if not succeeded:
            await ratelimit.give_back(deps.redis, ok_key)
    if failed or user is None:
        raise ApiError(401, "invalid_credentials", INVALID_CREDENTIALS,
                       message="Email or password is incorrect. Guest accounts have no password: "
                               "link an email from Settings first.")
    if user["ban_status"] in BANNED_STATUSES:
        raise ApiError(403, "banned", "Account suspended", banned=True, banStatus=user["ban_status"],
                       reviewStatus=user["review_status"] or "pending",
                       message="Your account has been suspended.")

    async with deps.db.acquire() as conn, conn.transaction():
        # Serialise concurrent logins of one user: without the row lock, two transactions each revoke
        # "every other" session before seeing the other's insert, leaving several sessions active.
        await store.lock_user(conn, user["id"])
        token, session_id, _ = await start_session(conn, user["id"], "login", s.login_session_days,
                                                   client.ip, client.user_agent)
        revoked = await store.revoke_user_sessions(conn, user["id"], "new_login", keep=session_id)
    log.info("login", user_id=str(user["id"]), invalidated=len(revoked))
    return {
        "userId": str(user["id"]),
        "sessionToken": token,
        "accountType": user["account_type"],
        "paidStatus": reported_status(deps, user["paid_status"]),
        "sessionInvalidated": bool(revoked),
        "invalidatedCount": len(revoked),
        "user": {**card(deps, user), "email": user["email"]},
    }, user["id"], revoked


async def logout(deps: Deps, principal: Principal) -> None:
    await store.revoke_session(deps.db, principal.session_id, "logout")
    await sessions.revoked(deps, [str(principal.session_id)])
