"""Referral notifications (PROTOCOL.md §3.3 `referral:notification`, §6 D26, §7 E9).

Created once, by a unique (target, referred) row, when a referred user's intro video is stored; sent
live to every socket of the target on every node (the `user:<id>` room), and the unread ones again to
each new connection when it authenticates (not on a repeated `auth` of the same connection).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import structlog

from server import emit
from server.accounts.profile import ms
from server.deps import Deps
from server.referrals import store

log = structlog.get_logger(__name__)

EVENT = "referral:notification"


def shape(n: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(n["id"]),
        "forUserId": str(n["for_user_id"]),
        "referredUserId": str(n["referred_user_id"]),
        "referredName": n["referred_name"],
        "introducedBy": str(n["introduced_by"]) if n["introduced_by"] else None,
        "introducedByName": n["introduced_by_name"],
        "timestamp": ms(n["created_at"]),
        "read": n["read_at"] is not None,
    }


def _event(n: asyncpg.Record) -> dict[str, Any]:
    who = n["referred_name"]
    by = n["introduced_by_name"]
    message = f"{who} was introduced to you by {by} and just joined!" if by else f"{who} just joined!"
    return {"message": message, "notification": shape(n)}


async def on_onboarded(deps: Deps, user_id: UUID) -> None:
    """Called after a user's intro video is stored (media/service.py)."""
    n = await store.create_notification(deps.db, user_id)
    if n is None:
        return
    await emit.to_user(deps, str(n["for_user_id"]), EVENT, _event(n))
    log.info("referral_notification", for_user=str(n["for_user_id"]), referred=str(user_id))


async def deliver_unread(deps: Deps, sid: str, user_id: str) -> None:
    """Once per connection, right after its first successful authentication (realtime.bind). A failure
    here must not fail the authentication: the client also fetches GET /referral/notifications."""
    try:
        for n in reversed(await store.notifications(deps.db, UUID(user_id), unread_only=True, limit=20)):
            await emit.to_sid(deps, sid, EVENT, _event(n))
    except Exception:
        log.exception("referral_notification_delivery_failed", user_id=user_id)


async def mark_read(deps: Deps, user_id: UUID, notification_id: str) -> None:
    """Only the owner's own notification; an unknown or malformed id changes nothing."""
    try:
        nid = UUID(notification_id)
    except ValueError:
        return
    await store.mark_read(deps.db, user_id, nid)


async def listing(deps: Deps, user_id: UUID) -> dict[str, Any]:
    rows = await store.notifications(deps.db, user_id)
    return {"notifications": [shape(n) for n in rows], "unreadCount": await store.unread_count(deps.db, user_id)}
