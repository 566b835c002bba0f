"""GET /user/me/export: everything the server holds about the user, as JSON, plus short-lived links to
their stored media. Never included: secrets (password hash, session token hashes) and other users'
private data (who reported them, other users' ids, emails, IPs or media)."""

from __future__ import annotations

import time
from typing import Any

from server import ratelimit
from server.accounts import store
from server.accounts.profile import ms
from server.accounts.sessions import Principal
from server.calls import store as calls
from server.deps import Deps
from server.errors import not_found, rate_limited
from server.media.rules import user_prefix
from server.media.storage import Storage
from server.media.urls import media_url
from server.referrals import notifications
from server.referrals import store as referrals

FORMAT_VERSION = 1


def _audit_entry(r: Any) -> dict[str, Any]:
    entry = {"action": r["action"], "by": "you" if r["by_self"] else r["actor_label"].split(":", 1)[0],
             "before": r["before"], "after": r["after"], "at": ms(r["created_at"])}
    if r["by_self"]:  # someone else's action shows its effect on this account, not their details or IP
        entry.update(details=r["details"] or {}, ip=r["ip"])
    return entry


async def build(deps: Deps, principal: Principal) -> dict[str, Any]:
    uid = principal.user_id
    w = await ratelimit.hit(deps.redis, f"export:{uid}", 3600)
    if w.count > deps.settings.exports_per_hour:
        raise rate_limited("Too many exports", w.retry_after_s, message="Try again later.")
    db = deps.db
    u = await store.export_user(db, uid)
    if u is None:
        raise not_found("User not found")
    ttl = deps.settings.export_media_url_ttl_seconds
    keys = await Storage(deps).list_keys(user_prefix(uid))
    current = {u["selfie_key"]: "selfie", u["video_key"]: "video"}
    ban = await store.export_ban(db, uid)
    owned, redeemed = await store.export_invite_codes(db, uid)
    history = await calls.history(db, uid, limit=100_000)
    return {
        "formatVersion": FORMAT_VERSION,
        "exportedAt": int(time.time() * 1000),
        "profile": {
            "userId": str(u["id"]), "name": u["name"], "gender": u["gender"], "accountType": u["account_type"],
            "email": u["email"], "socials": u["socials"], "role": u["role"], "isBot": u["is_bot"],
            "paidStatus": u["paid_status"], "paidAt": ms(u["paid_at"]), "paymentId": u["payment_id"],
            "accessGrantedAt": ms(u["access_granted_at"]), "qrUnlockedAt": ms(u["qr_unlocked_at"]),
            "successfulSessions": u["successful_sessions"], "timerTotalSeconds": u["timer_total_seconds"],
            "sessionCount": u["session_count"], "banStatus": u["ban_status"], "createdAt": ms(u["created_at"]),
            "updatedAt": ms(u["updated_at"]),
            "introducedToName": u["introduced_to_name"], "introducedByName": u["introduced_by_name"],
            "introducedViaCode": u["introduced_via_code"],
        },
        "media": {
            "linksExpireInSeconds": ttl,
            "objects": [{"key": k, "current": current.get(k), "url": media_url(deps, k, ttl_s=ttl)} for k in keys],
        },
        "sessions": [
            {"id": str(s["id"]), "kind": s["kind"], "createdAt": ms(s["created_at"]), "expiresAt": ms(s["expires_at"]),
             "revokedAt": ms(s["revoked_at"]), "revokedReason": s["revoked_reason"], "ip": s["ip"],
             "userAgent": s["user_agent"], "current": s["id"] == principal.session_id}
            for s in await store.export_sessions(db, uid)
        ],
        "callHistory": [
            {"sessionId": str(r["session_id"]), "roomId": str(r["room_id"]),
             "partnerId": str(r["partner_id"]) if r["partner_id"] else None, "partnerName": r["partner_name"],
             "startedAt": ms(r["started_at"]), "duration": r["duration_seconds"], "endReason": r["end_reason"],
             "messages": r["messages"]}
            for r in history
        ],
        "reportsMade": [
            {"reportId": str(r["id"]), "reportedUserId": str(r["reported_id"]), "reportedName": r["reported_name"],
             "reason": r["reason"], "roomId": str(r["room_id"]) if r["room_id"] else None, "yourIp": r["ip"],
             "createdAt": ms(r["created_at"])}
            for r in await store.export_reports_made(db, uid)
        ],
        "banRecord": None if ban is None else {
            "banStatus": u["ban_status"], "reviewStatus": ban["review_status"], "bannedAt": ms(ban["banned_at"]),
            "bannedReason": ban["banned_reason"], "reportCount": ban["report_count"],
            "reviewedAt": ms(ban["reviewed_at"]), "expiresAt": ms(ban["expires_at"]),
            "liftedAt": ms(ban["lifted_at"])},
        "warnings": [{"reason": w["reason"], "at": ms(w["created_at"])}
                     for w in await store.export_warnings(db, uid)],
        "payments": [
            {"paymentId": str(p["id"]), "checkoutSessionId": p["stripe_checkout_session_id"],
             "amountCents": p["amount_cents"], "currency": p["currency"], "status": p["status"],
             "createdAt": ms(p["created_at"]), "completedAt": ms(p["completed_at"])}
            for p in await store.export_payments(db, uid)
        ],
        "inviteCodes": {
            "owned": [{"code": c["code"], "type": c["type"], "maxUses": c["max_uses"],
                       "usesRemaining": c["uses_remaining"], "isActive": c["is_active"],
                       "createdAt": ms(c["created_at"])} for c in owned],
            "redeemed": [{"code": c["code"], "redeemedAt": ms(c["redeemed_at"])} for c in redeemed],
        },
        "introductions": {
            "codesCreated": [{"code": c["code"], "targetName": c["target_name"], "createdAt": ms(c["created_at"]),
                              "expiresAt": ms(c["expires_at"])}
                             for c in await referrals.codes_created_by(db, uid)],
            "introducedToYou": [{"name": r["name"], "introducedBy": r["introduced_by_name"],
                                 "timestamp": ms(r["created_at"])}
                                for r in await referrals.introductions_to(db, uid)],
            "notifications": [{k: n[k] for k in ("referredName", "introducedByName", "timestamp", "read")}
                              for n in (await notifications.listing(deps, uid))["notifications"]],
        },
        "auditLog": [_audit_entry(r) for r in await store.export_audit(db, uid)],
    }
