"""DELETE /user/me: the account, its media and its live presence go; what must be kept stays
(README "Account lifecycle" has the table).

1. One transaction: the account is marked deleted (nothing can authenticate as it any more: its
   sessions are deleted), a deletion job is queued, and the request is audit-logged.
2. Live state is cut the way a ban cuts it (calls/enforce.py): its sockets on every node get
   `session:invalidated {reason:"account_deleted"}` and are disconnected; a call in progress ends as
   the user leaving it, so the partner gets the normal `peer:disconnected` + `session:finalized`.
3. Every S3 object under the user's prefix is deleted (and unfinished multipart uploads aborted),
   checked by listing the prefix again.
4. One transaction: personal rows are deleted or anonymised, the job is marked complete, audit row.

Steps 2-4 are the job. If anything fails or the process dies, the job stays pending and any node runs
it again (`resume_pending`, every ACCOUNT_DELETION_RETRY_SECONDS): every step is idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from aiohttp import web

from server import ratelimit
from server.accounts import access, passwords, store
from server.accounts.sessions import Principal
from server.background import every
from server.calls import enforce
from server.deps import DEPS, Deps
from server.errors import ApiError, rate_limited
from server.media.rules import user_prefix
from server.media.storage import Storage
from server.moderation import audit
from server.referrals import store as referrals

log = structlog.get_logger(__name__)

def email_hash(email: str) -> bytes:
    return hashlib.sha256(email.encode()).digest()


async def email_banned(deps: Deps, email: str) -> bool:
    """True if this email belonged to an account deleted while banned (the link route refuses it)."""
    return await store.email_banned(deps.db, email_hash(email))


async def _reauthenticate(deps: Deps, principal: Principal, password: str | None) -> None:
    """A permanent account proves itself with its password, or with a session signed in within
    ACCOUNT_FRESH_SESSION_MINUTES. A guest has no other credential than its session token."""
    s = deps.settings
    if principal.account_type != "permanent":
        return
    if password is None:
        created = principal.session_created_at
        if created and datetime.now(UTC) - created <= timedelta(minutes=s.account_fresh_session_minutes):
            return
        raise ApiError(403, "reauth_required", "Password required",
                       message="Enter your password (or sign in again) to delete your account.")
    scopes = [(f"delete:acct:{principal.user_id}", s.login_max_failures_per_account)]
    wait = await ratelimit.begin_attempt(deps.redis, scopes, s.login_failure_window_seconds)
    if wait is not None:
        raise rate_limited("Too many attempts", wait, code="reauth_rate_limited",
                           message=f"Too many wrong passwords. Try again in {wait} seconds.")
    ok = False
    try:
        ok = await passwords.verify_password(password, await store.password_hash_of(deps.db, principal.user_id),
                                             s.bcrypt_rounds)
    finally:
        await ratelimit.end_attempt(deps.redis, scopes, s.login_failure_window_seconds, failed=not ok,
                                    clear_on_success=[True])
    if not ok:
        raise ApiError(403, "invalid_credentials", "Invalid credentials", message="The password is not correct.")


async def delete_account(deps: Deps, principal: Principal, password: str | None, ip: str | None) -> dict[str, Any]:
    await _reauthenticate(deps, principal, password)
    uid = principal.user_id
    async with deps.db.acquire() as conn, conn.transaction():
        started = await store.begin_deletion(conn, uid)
        if started:
            await audit.record(conn, actor_label="user", action="account.deletion_requested", actor_user_id=uid,
                               target_user_id=uid, ip=ip, details={"accountType": principal.account_type})
    if started:
        log.warning("account_deletion_requested", user_id=str(uid))
        # Its sessions are gone from now on: every node drops its cached copies at once, not when the
        # job completes (the media step may fail or the node crash first).
        await access.changed(deps, str(uid), "account_deleted")
    done = await run(deps, uid)
    # Even if the media are not gone yet, the account is: the job finishes in the background.
    return {"success": True, "deleted": True, "complete": done}


async def run(deps: Deps, user_id: UUID) -> bool:
    """Steps 2-4 for one account; True once the job is complete (now or earlier)."""
    if not await store.claim_deletion(deps.db, user_id, deps.settings.account_deletion_lease_seconds):
        return await store.deletion_done(deps.db, user_id)
    try:
        await enforce.cut_user(
            deps, str(user_id), event="session:invalidated",
            payload={"message": "Your account has been deleted.", "reason": "account_deleted"},
            end_reason="disconnect", leaver=True)
        left = await Storage(deps).delete_prefix(user_prefix(user_id))
        if left:
            raise RuntimeError(f"{len(left)} objects still listed after deletion")
        async with deps.db.acquire() as conn, conn.transaction():
            await referrals.forget_user(conn, user_id)
            await store.scrub_user(conn, user_id)
            await audit.record(conn, actor_label="system", action="account.deleted", target_user_id=user_id)
    except Exception as exc:
        log.warning("account_deletion_incomplete", user_id=str(user_id), error=repr(exc)[:300])
        with contextlib.suppress(Exception):
            await store.release_deletion(deps.db, user_id, repr(exc))
        return False
    await access.changed(deps, str(user_id), "account_deleted")  # its role is gone with the account
    log.warning("account_deleted", user_id=str(user_id))
    return True


async def resume_pending(deps: Deps) -> int:
    """Run every unfinished job whose lease is free; returns how many completed."""
    done = 0
    for user_id in await store.pending_deletions(deps.db):
        done += await run(deps, user_id)
    return done


async def background(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: retry unfinished deletions on this node (a crash, S3 unavailable)."""
    deps = app[DEPS]
    async with every(deps.settings.account_deletion_retry_seconds, lambda: resume_pending(deps),
                     "account-deletion-retry"):
        yield
