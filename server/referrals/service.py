"""Intro (referral) links (PROTOCOL.md §2.5, §6 D4, D23): A introduces a new person C to B with a
10-character code; C signs up with it (accounts/service.py records who introduced whom), B sees C
flagged in the deck and gets a notification once C has onboarded (notifications.py)."""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from server import ratelimit
from server.accounts.access import has_access
from server.accounts.profile import card, ms
from server.accounts.sessions import BANNED_STATUSES, Principal
from server.calls import state as calls_state
from server.deps import Deps
from server.errors import ApiError, bad_request, not_found, rate_limited
from server.httpio import ip_scope
from server.ids import user_uuid
from server.presence import state as presence
from server.referrals import store

log = structlog.get_logger(__name__)

ALPHABET = string.ascii_uppercase + string.digits
CODE_LENGTH = 10  # 36^10 ≈ 3.7e15 codes: guessing one at the lookup rate limit is hopeless


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalize(code: str) -> str | None:
    """The canonical form of a code as typed (DirectMatchInput uppercases), or None if it cannot be one."""
    code = code.strip().upper()
    return code if len(code) == CODE_LENGTH and all(c in ALPHABET for c in code) else None


async def _limit(deps: Deps, key: str, limit: int, window_s: int) -> None:
    w = await ratelimit.hit(deps.redis, key, window_s)
    if w.count > limit:
        raise rate_limited("Too many requests", w.retry_after_s, code="rate_limited",
                           message=f"Please wait {w.retry_after_s} seconds before trying again.")


def _visible(user: asyncpg.Record | None) -> bool:
    return user is not None and user["ban_status"] not in BANNED_STATUSES


async def generate(deps: Deps, principal: Principal, target_user_id: str) -> dict[str, Any]:
    target_id = user_uuid(target_user_id)
    if target_id is None:
        raise bad_request("Invalid targetUserId", code="validation_failed")
    if target_id == principal.user_id:
        raise bad_request("You cannot introduce yourself", code="self_introduction")
    await _limit(deps, f"referral:gen:{principal.user_id}", deps.settings.referral_generate_per_hour, 3600)
    target = await store.live_user(deps.db, target_id)
    if not _visible(target):
        raise not_found("Target user not found", code="target_not_found")
    assert target is not None
    expires = datetime.now(UTC) + timedelta(days=deps.settings.referral_code_ttl_days)
    for _ in range(5):
        try:
            code = await store.upsert_code(deps.db, new_code(), principal.user_id, target_id, expires)
            break
        except asyncpg.UniqueViolationError:  # the random code belongs to another pair: draw again
            continue
    else:  # pragma: no cover (five collisions in 3.7e15)
        raise ApiError(503, "code_space_exhausted", "Could not create a code, try again")
    log.info("referral_code", introducer=str(principal.user_id), target=str(target_id))
    return {"referralCode": code, "targetUserName": target["name"], "expiresAt": ms(expires)}


async def info(deps: Deps, ip: str | None, raw_code: str) -> dict[str, Any]:
    """Public: what the onboarding page shows to someone holding the link (README "Introductions":
    the target's name, gender and selfie, and the introducer's name; never ids, video or presence)."""
    await _limit(deps, f"referral:info:{ip_scope(ip)}", deps.settings.referral_lookups_per_minute, 60)
    code = normalize(raw_code)
    ref = await store.resolve(deps.db, code) if code else None
    target = await store.live_user(deps.db, ref["target_user_id"]) if ref else None
    if ref is None or not _visible(target):
        raise not_found("Invalid or expired referral code", code="invalid_referral_code")
    assert target is not None
    c = card(deps, target)
    return {
        "targetUserName": target["name"],
        "introducedBy": ref["creator_name"],
        "targetUser": {"name": c["name"], "gender": c["gender"], "selfieUrl": c["selfieUrl"]},
    }


async def direct_match(deps: Deps, principal: Principal, raw_code: str) -> dict[str, Any]:
    """Who a code points at, and whether the requester could call them right now (and if not, why)."""
    me = principal.user_id
    await _limit(deps, f"referral:match:{me}", deps.settings.referral_lookups_per_minute, 60)
    code = normalize(raw_code)
    ref = await store.resolve(deps.db, code) if code else None
    if ref is None:
        raise not_found("Invalid referral code", code="invalid_referral_code")
    target = await store.live_user(deps.db, ref["target_user_id"])
    if not _visible(target):
        raise not_found("Target user not found", code="target_not_found")
    assert target is not None
    tid = str(target["id"])
    online = await presence.is_online(deps.redis, tid)
    available = await presence.is_available(deps.redis, tid)
    reason = None
    if target["id"] == me:
        reason = "self"
    elif not has_access(deps, principal.paid_status):
        reason = "payment_required"
    elif not has_access(deps, target["paid_status"]) or await store.reported_between(deps.db, me, target["id"]):
        reason = "unavailable"  # a blocked or locked-out target looks merely unavailable (no leak why)
    elif not online:
        reason = "offline"
    elif not available:
        reason = "busy"
    elif await calls_state.cooldown_left_ms(deps.redis, str(me), [tid]):
        reason = "cooldown"
    mine = await store.live_user(deps.db, me)
    was_introduced = mine is not None and mine["introduced_to"] == target["id"]
    return {
        "success": True,
        "targetUser": card(deps, target),
        "isOnline": online,
        "isAvailable": available and reason != "unavailable",
        "canCall": reason is None,
        "reason": reason,
        "wasIntroduced": was_introduced,
        "introducedBy": ref["creator_name"],
    }


async def my_introductions(deps: Deps, principal: Principal) -> dict[str, Any]:
    rows = [r for r in await store.introductions_to(deps.db, principal.user_id) if _visible(r)]
    out = []
    for r in rows:
        uid = str(r["id"])
        out.append({
            **card(deps, r),
            "introducedBy": r["introduced_by_name"],
            "timestamp": ms(r["created_at"]),
            "isOnline": await presence.is_online(deps.redis, uid),
            "isAvailable": await presence.is_available(deps.redis, uid),
        })
    return {"introductions": out, "count": len(out)}
