"""Who may use moderator routes (PROTOCOL §2.6 note, §6 D3, §7 E7).

A request is allowed when it carries either
  * an admin token (from `/admin/login`), as the bearer or in `X-Admin-Token`, or
  * a user session (bearer) whose user has the moderator or admin role: the original admin page
    calls /report/* and /payment/admin/* with the user session token, never the admin token.
With REQUIRE_MODERATOR_TOTP on, the user-session path also needs a live admin session of the same
user (the sign-in that checked the second factor), so that path cannot skip the TOTP.
In both cases the user must still hold the role and not be banned: both are read at every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from aiohttp import web

from server.accounts.sessions import BANNED_STATUSES, require_user, suspended
from server.deps import deps_of
from server.errors import ApiError, unauthorized
from server.httpio import USER_ID, bearer_token
from server.moderation import admin, store

MODERATOR_ROLES = admin.MODERATOR_ROLES


@dataclass(frozen=True)
class Moderator:
    user_id: UUID
    role: str
    via: str = "session"  # "session" (role-holder's user session) or "admin_token"

    @property
    def label(self) -> str:
        return f"{self.role}:{self.user_id}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _forbidden() -> ApiError:
    return ApiError(403, "forbidden", "Moderator access required")


async def require_moderator(request: web.Request, *, admin_only: bool = False) -> Moderator:
    deps = deps_of(request)
    allowed = ("admin",) if admin_only else MODERATOR_ROLES
    header_token = request.headers.get("X-Admin-Token", "").strip() or None
    bearer = bearer_token(request)
    for token in (header_token, bearer):
        session = await admin.find_session(deps, token)
        if session is None:
            continue
        user = await store.moderator_by_id(deps.db, session.user_id)
        if user is None:
            break
        request[USER_ID] = user["id"]
        if user["ban_status"] in BANNED_STATUSES:
            raise suspended()
        if user["role"] not in allowed:
            raise _forbidden()
        return Moderator(user["id"], user["role"], "admin_token")
    if header_token and not bearer:
        raise unauthorized("Invalid or expired session")
    principal = await require_user(request)  # 401 without a valid session, 403 when banned
    if principal.role not in allowed:
        raise _forbidden()
    if deps.settings.require_moderator_totp and not await admin.has_live_session(deps, principal.user_id):
        raise ApiError(403, "admin_login_required", "Moderator sign-in required",
                       message="Sign in at /admin/login (with your two-factor code) first.")
    return Moderator(principal.user_id, principal.role)
