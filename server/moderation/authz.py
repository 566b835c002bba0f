"""Who may use moderator routes (PROTOCOL §2.6 note, §6 D3, §7 E7).

A request is allowed when its bearer is a session whose user has the moderator or admin role. Admin
tokens (`/admin/login`, optionally in `X-Admin-Token`) are added by the moderation domain; every
moderator route goes through `require_moderator`, so that is the one place to extend.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from aiohttp import web

from server.accounts.sessions import require_user
from server.errors import ApiError

MODERATOR_ROLES = ("moderator", "admin")


@dataclass(frozen=True)
class Moderator:
    user_id: UUID
    role: str

    @property
    def label(self) -> str:
        return f"{self.role}:{self.user_id}"


async def require_moderator(request: web.Request, *, admin_only: bool = False) -> Moderator:
    principal = await require_user(request)  # 401 without a valid session, 403 when banned
    allowed = ("admin",) if admin_only else MODERATOR_ROLES
    if principal.role not in allowed:
        raise ApiError(403, "forbidden", "Moderator access required")
    return Moderator(principal.user_id, principal.role)
