"""HTTP: /report/* (PROTOCOL §2.6), /admin/* (§2.9) and the moderator queue API under /mod/*.

Every moderator route goes through `require_moderator`; reporter IPs and users' addresses are shown
to admins only (§6 D23).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any
from uuid import UUID

from aiohttp import web

from server.accounts.profile import ms
from server.accounts.sessions import require_user
from server.deps import Deps, deps_of
from server.errors import ApiError, bad_request, not_found
from server.httpio import bearer_token, client_ip, read_json
from server.ids import user_uuid
from server.media.urls import media_url
from server.moderation import admin, service
from server.moderation.authz import Moderator, require_moderator

routes = web.RouteTableDef()

REPORT_SCHEMA = {
    "type": "object",
    "required": ["reportedUserId"],
    "properties": {
        "reportedUserId": {"type": "string", "minLength": 1, "maxLength": 64,
                           "x-error": "reportedUserId is required"},
        "reason": {"type": ["string", "null"], "maxLength": 1000, "x-error": "reason must be at most 1000 characters"},
        "roomId": {"type": ["string", "null"], "maxLength": 64, "x-error": "Invalid roomId"},
    },
}
REVIEW_SCHEMA = {"type": "object", "required": ["decision"],
                 "properties": {"decision": {"enum": ["permanent", "vindicated"],
                                             "x-error": "Invalid decision. Must be 'permanent' or 'vindicated'"}}}
ADMIN_LOGIN_SCHEMA = {
    "type": "object",
    "required": ["username", "password"],
    "properties": {
        "username": {"type": "string", "minLength": 1, "maxLength": 254, "x-error": "Username and password required"},
        "password": {"type": "string", "minLength": 1, "maxLength": 1024, "x-error": "Username and password required"},
        "totp": {"type": ["string", "null"], "maxLength": 12, "x-error": "Invalid two-factor code"},
        "code": {"type": ["string", "null"], "maxLength": 12, "x-error": "Invalid two-factor code"},
    },
}
REASON = {"type": ["string", "null"], "maxLength": 1000, "x-error": "reason must be at most 1000 characters"}
HOURS = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": service.MAX_BAN_HOURS,
         "x-error": f"durationHours must be a number of hours between 0 and {service.MAX_BAN_HOURS}"}
RESOLVE_SCHEMA = {"type": "object", "required": ["action"],
                  "properties": {"action": {"enum": list(service.ACTIONS),
                                            "x-error": f"action must be one of {', '.join(service.ACTIONS)}"},
                                 "reason": REASON, "durationHours": HOURS,
                                 "note": {"type": ["string", "null"], "maxLength": 2000}}}
NOTE_SCHEMA = {"type": "object", "required": ["body"],
               "properties": {"body": {"type": "string", "minLength": 1, "maxLength": 2000,
                                       "x-error": "body must be 1-2000 characters"}}}
CLAIM_SCHEMA = {"type": "object", "properties": {"force": {"type": ["boolean", "null"]}}}
BAN_SCHEMA = {"type": "object", "required": ["status"],
              "properties": {"status": {"enum": ["temporary", "permanent"],
                                        "x-error": "status must be 'temporary' or 'permanent'"},
                             "reason": REASON, "durationHours": HOURS}}
UNBAN_SCHEMA = {"type": "object", "properties": {"reason": REASON}}
IP_BAN_SCHEMA = {"type": "object", "required": ["ip"],
                 "properties": {"ip": {"type": "string", "maxLength": 64, "x-error": "A valid IP address is required"},
                                "reason": REASON, "userId": {"type": ["string", "null"], "maxLength": 64},
                                "durationHours": HOURS}}
STATES = ("open", "claimed", "resolved")


def _ip(request: web.Request) -> str | None:
    return client_ip(request, deps_of(request).settings.trusted_proxy_hops)


def _admin_token(request: web.Request) -> str | None:
    return request.headers.get("X-Admin-Token", "").strip() or bearer_token(request)


def _actor(request: web.Request, mod: Moderator) -> service.Actor:
    return service.Actor.of(mod, _ip(request))


def _uuid(value: str, what: str) -> UUID:
    parsed = user_uuid(value)
    if parsed is None:
        raise not_found(f"{what} not found", code=f"{what.lower().replace(' ', '_')}_not_found")
    return parsed


def _media(deps: Deps) -> Any:
    return lambda key: media_url(deps, key)


def report_json(deps: Deps, r: Any, *, admin_view: bool, full: bool = False) -> dict[str, Any]:
    """Report (§2.6) plus workflow and evidence fields. reporterIp for admins only (D23)."""
    out: dict[str, Any] = {
        "reportId": str(r["id"]), "reportedUserId": str(r["reported_id"]), "reportedUserName": r["reported_name"],
        "reportedUserSelfie": media_url(deps, r["reported_selfie"]),
        "reportedUserVideo": media_url(deps, r["reported_video"]),
        "reportedUserBanStatus": r["reported_ban_status"],
        "reporterUserId": str(r["reporter_id"]), "reporterName": r["reporter_name"],
        "reason": r["reason"], "timestamp": ms(r["created_at"]),
        "roomId": str(r["room_id"]) if r["room_id"] else None, "sharedRoom": r["shared_room"],
        "state": r["state"], "assignedTo": str(r["assigned_to"]) if r["assigned_to"] else None,
        "assignedName": r["assigned_name"], "claimedAt": ms(r["claimed_at"]), "resolvedAt": ms(r["resolved_at"]),
        "resolvedBy": str(r["resolved_by"]) if r["resolved_by"] else None, "resolution": r["resolution"],
    }
    if admin_view:
        out["reporterIp"] = r["reporter_ip"]
    if full:
        out["transcript"] = r["transcript"]
    return out


# ---- /report (§2.6) ----

@routes.post("/report/user")
async def report_user(request: web.Request) -> web.Response:
    principal = await require_user(request)  # banned reporters get 403 Account suspended
    deps = deps_of(request)
    ip = _ip(request)
    await service.throttle_reports(deps, ip)  # before the body: malformed reports count too
    body = await read_json(request, REPORT_SCHEMA)
    result = await service.report(deps, principal.user_id, ip, body["reportedUserId"],
                                  (body.get("reason") or "").strip() or "No reason provided", body.get("roomId"))
    return web.json_response(result)


@routes.get("/report/check-ban")
async def check_ban(request: web.Request) -> web.Response:
    principal = await require_user(request, allow_banned=True)  # 200 {isBanned:true} for banned users
    return web.json_response(await service.check_ban(deps_of(request), principal.user_id, principal.ban_status))


@routes.get("/report/blacklist")
async def blacklist(request: web.Request) -> web.Response:
    deps = deps_of(request)
    rows = await service.blacklist(deps)
    items = [{"userName": r["name"], "userSelfie": media_url(deps, r["selfie_key"]),
              "userVideo": media_url(deps, r["video_key"]), "bannedAt": ms(r["banned_at"]),
              "bannedReason": r["banned_reason"], "reportCount": r["report_count"]} for r in rows]
    return web.json_response({"blacklist": items, "count": len(items), "lastUpdated": int(time.time() * 1000)},
                             headers={"Cache-Control": "no-store"})


@routes.get("/report/pending")
async def pending(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    deps = deps_of(request)
    items = [{**service.ban_record(p.ban, with_ips=mod.is_admin, ips=p.ips, media=_media(deps)),
              "reports": [report_json(deps, r, admin_view=mod.is_admin, full=True) for r in p.reports]}
             for p in await service.pending_reviews(deps, with_ips=mod.is_admin)]
    return web.json_response({"pending": items, "count": len(items)})


@routes.get("/report/all")
async def all_reports(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    deps = deps_of(request)
    rows = await service.recent_reports(deps, 500)
    items = [report_json(deps, r, admin_view=mod.is_admin) for r in rows]
    return web.json_response({"reports": items, "count": len(items)})


def _stats(row: Any) -> dict[str, Any]:
    median = row["median_decision_seconds"]
    return {"totalReports": row["total_reports"], "totalBans": row["total_bans"],
            "pendingReviews": row["pending_reviews"], "permanentBans": row["permanent_bans"],
            "temporaryBans": row["temporary_bans"], "vindicated": row["vindicated"],
            "openReports": row["open_reports"], "claimedReports": row["claimed_reports"],
            "resolvedReports": row["resolved_reports"], "ipBans": row["ip_bans"],
            "medianDecisionSeconds": round(float(median), 1) if median is not None else None}


@routes.get("/report/stats")
@routes.get("/mod/stats")
async def stats(request: web.Request) -> web.Response:
    await require_moderator(request)
    return web.json_response(_stats(await service.stats(deps_of(request))))


@routes.post("/report/review/{userId}")
async def review(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    body = await read_json(request, REVIEW_SCHEMA)
    user_id = user_uuid(request.match_info["userId"])
    if user_id is None:
        raise not_found("Ban record not found", code="ban_not_found")
    return web.json_response(await service.review(deps_of(request), _actor(request, mod), user_id, body["decision"]))


@routes.get("/report/check-ip/{ip}")
async def check_ip(request: web.Request) -> web.Response:
    """Public in the original (an enumeration aid, §6 D23): admins only here."""
    await require_moderator(request, admin_only=True)
    ip = _valid_ip(request.match_info["ip"])
    ban = await service.find_ip_ban(deps_of(request), ip)
    return web.json_response({"isBanned": ban is not None, "ipBan": _ip_ban_json(ban) if ban else None})


# ---- /admin (§2.9) ----

@routes.post("/admin/login")
async def admin_login(request: web.Request) -> web.Response:
    body = await read_json(request, ADMIN_LOGIN_SCHEMA)
    result = await admin.login(deps_of(request), _ip(request), body["username"], body["password"],
                               body.get("totp") or body.get("code"))
    return web.json_response(result)


@routes.get("/admin/verify")
async def admin_verify(request: web.Request) -> web.Response:
    found = await admin.verify(deps_of(request), _admin_token(request))
    if found is None:
        return web.json_response({"valid": False, "error": "Invalid or expired session", "code": "unauthorized"},
                                 status=401)
    session, user = found
    return web.json_response({"valid": True, "username": user["email"], "role": user["role"],
                              "userId": str(user["id"]), "expiresAt": session.expires_ms})


@routes.post("/admin/logout")
async def admin_logout(request: web.Request) -> web.Response:
    await admin.logout(deps_of(request), _admin_token(request), _ip(request))
    return web.json_response({"success": True})


# ---- /mod: the moderator queue API ----

def _paging(request: web.Request, default: int = 50, cap: int = 200) -> tuple[int, int]:
    try:
        limit = int(request.query.get("limit", default))
        offset = int(request.query.get("offset", 0))
    except ValueError:
        raise bad_request("limit and offset must be integers", code="invalid_paging") from None
    if not 1 <= limit <= cap or offset < 0:
        raise bad_request(f"limit must be 1-{cap} and offset >= 0", code="invalid_paging")
    return limit, offset


@routes.get("/mod/reports")
async def mod_reports(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    deps = deps_of(request)
    state = request.query.get("state", "open")
    if state not in (*STATES, "unresolved", "all"):
        raise bad_request("state must be open, claimed, resolved, unresolved or all", code="invalid_state")
    states = None if state == "all" else ["open", "claimed"] if state == "unresolved" else [state]
    limit, offset = _paging(request)
    rows, total = await service.report_queue(deps, states, limit, offset)
    return web.json_response({"reports": [report_json(deps, r, admin_view=mod.is_admin) for r in rows],
                              "total": total, "limit": limit, "offset": offset, "state": state})


@routes.get("/mod/reports/{reportId}")
async def mod_report(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    deps = deps_of(request)
    rid = _uuid(request.match_info["reportId"], "Report")
    d = await service.report_detail(deps, rid)
    return web.json_response({
        "report": report_json(deps, d.report, admin_view=mod.is_admin, full=True),
        "notes": [{"noteId": n["id"], "body": n["body"], "createdAt": ms(n["created_at"]),
                   "author": n["author_name"] or n["author_label"]} for n in d.notes],
        "ban": service.ban_record(d.ban, with_ips=False, media=_media(deps)) if d.ban else None,
        "otherReports": [report_json(deps, o, admin_view=mod.is_admin) for o in d.others],
    })


@routes.post("/mod/reports/{reportId}/claim")
async def mod_claim(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    body = await read_json(request, CLAIM_SCHEMA)
    rid = _uuid(request.match_info["reportId"], "Report")
    return web.json_response(await service.claim(deps_of(request), _actor(request, mod), rid, bool(body.get("force"))))


@routes.post("/mod/reports/{reportId}/release")
async def mod_release(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    rid = _uuid(request.match_info["reportId"], "Report")
    return web.json_response(await service.release(deps_of(request), _actor(request, mod), rid))


@routes.post("/mod/reports/{reportId}/notes")
async def mod_note(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    body = await read_json(request, NOTE_SCHEMA)
    rid = _uuid(request.match_info["reportId"], "Report")
    return web.json_response(await service.note(deps_of(request), _actor(request, mod), rid, body["body"].strip()
                                                or body["body"]))


@routes.post("/mod/reports/{reportId}/resolve")
async def mod_resolve(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    body = await read_json(request, RESOLVE_SCHEMA)
    rid = _uuid(request.match_info["reportId"], "Report")
    deps, actor = deps_of(request), _actor(request, mod)
    if body["action"] == "ip_ban" and not mod.is_admin:
        raise ApiError(403, "forbidden", "Admin access required", message="IP bans are for admins.")
    if body.get("note"):
        await service.note(deps, actor, rid, body["note"])
    result = await service.resolve(deps, actor, rid, body["action"], (body.get("reason") or "").strip(),
                                   body.get("durationHours"))
    return web.json_response(result)


@routes.get("/mod/users/{userId}")
async def mod_user(request: web.Request) -> web.Response:
    """Everything a moderator needs about one user: profile, media, reports made and received,
    calls, ban, warnings; addresses for admins only."""
    mod = await require_moderator(request)
    deps = deps_of(request)
    uid = _uuid(request.match_info["userId"], "User")
    d = await service.user_dossier(deps, uid, with_ips=mod.is_admin)
    u = d.user
    out: dict[str, Any] = {
        "user": {"userId": str(u["id"]), "name": u["name"], "gender": u["gender"], "accountType": u["account_type"],
                 "role": u["role"], "isBot": u["is_bot"], "paidStatus": u["paid_status"], "banStatus": u["ban_status"],
                 "selfieUrl": media_url(deps, u["selfie_key"]), "videoUrl": media_url(deps, u["video_key"]),
                 "socials": u["socials"], "createdAt": ms(u["created_at"]), "sessionCount": u["session_count"],
                 "timerTotalSeconds": u["timer_total_seconds"],
                 **({"email": u["email"]} if mod.is_admin else {})},
        "reportsReceived": [report_json(deps, r, admin_view=mod.is_admin) for r in d.received],
        "reportsMade": [report_json(deps, r, admin_view=mod.is_admin) for r in d.made],
        "calls": [{"sessionId": str(c["session_id"]), "roomId": str(c["room_id"]),
                   "partnerId": str(c["partner_id"]) if c["partner_id"] else None, "partnerName": c["partner_name"],
                   "startedAt": ms(c["started_at"]), "duration": c["duration_seconds"], "endReason": c["end_reason"]}
                  for c in d.calls],
        "ban": service.ban_record(d.ban, with_ips=False) if d.ban else None,
        "lastWarning": {"reason": d.warning["reason"], "createdAt": ms(d.warning["created_at"])} if d.warning else None,
    }
    if d.ips is not None:
        out["ipAddresses"] = d.ips
    return web.json_response(out)


@routes.post("/mod/users/{userId}/ban")
async def mod_ban(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    body = await read_json(request, BAN_SCHEMA)
    uid = _uuid(request.match_info["userId"], "User")
    return web.json_response(await service.ban(deps_of(request), _actor(request, mod), uid, body["status"],
                                               (body.get("reason") or "").strip() or "Banned by a moderator",
                                               body.get("durationHours")))


@routes.post("/mod/users/{userId}/unban")
async def mod_unban(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    body = await read_json(request, UNBAN_SCHEMA)
    uid = _uuid(request.match_info["userId"], "User")
    return web.json_response(await service.unban(deps_of(request), _actor(request, mod), uid,
                                                 (body.get("reason") or "").strip()))


@routes.get("/mod/bans")
async def mod_bans(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    deps = deps_of(request)
    status = request.query.get("status")
    if status not in (None, "temporary", "permanent", "vindicated", "none"):
        raise bad_request("status must be temporary, permanent, vindicated or none", code="invalid_status")
    rows = await service.ban_list(deps, status, with_ips=mod.is_admin)
    return web.json_response({"bans": [service.ban_record(r, with_ips=mod.is_admin, ips=ips, media=_media(deps))
                                       for r, ips in rows]})


def _valid_ip(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        raise bad_request("A valid IP address is required", code="invalid_ip") from None


def _ip_ban_json(b: Any) -> dict[str, Any]:
    return {"ip": b["ip"], "reason": b["reason"], "userId": str(b["user_id"]) if b["user_id"] else None,
            "userName": b["user_name"], "bannedAt": ms(b["banned_at"]), "expiresAt": ms(b["expires_at"])}


@routes.get("/mod/ip-bans")
async def mod_ip_bans(request: web.Request) -> web.Response:
    await require_moderator(request, admin_only=True)
    return web.json_response({"ipBans": [_ip_ban_json(b) for b in await service.ip_bans(deps_of(request))]})


@routes.post("/mod/ip-bans")
async def mod_ip_ban(request: web.Request) -> web.Response:
    mod = await require_moderator(request, admin_only=True)
    body = await read_json(request, IP_BAN_SCHEMA)
    ip = _valid_ip(body["ip"])
    user_id = user_uuid(body["userId"]) if body.get("userId") else None
    return web.json_response(await service.ban_ip(deps_of(request), _actor(request, mod), ip,
                                                  (body.get("reason") or "").strip() or "Banned by an admin",
                                                  user_id, body.get("durationHours")))


@routes.delete("/mod/ip-bans/{ip}")
async def mod_ip_unban(request: web.Request) -> web.Response:
    mod = await require_moderator(request, admin_only=True)
    ip = _valid_ip(request.match_info["ip"])
    return web.json_response(await service.unban_ip(deps_of(request), _actor(request, mod), ip))


@routes.get("/mod/audit")
async def mod_audit(request: web.Request) -> web.Response:
    await require_moderator(request, admin_only=True)
    limit, _ = _paging(request, default=100, cap=500)
    try:
        before = int(request.query["before"]) if "before" in request.query else None
    except ValueError:
        raise bad_request("before must be an audit entry id", code="invalid_paging") from None
    target = user_uuid(request.query["userId"]) if request.query.get("userId") else None
    rows = await service.audit_entries(deps_of(request), limit=limit, before_id=before,
                                       action=request.query.get("action") or None, target_user_id=target)
    return web.json_response({"entries": [
        {"id": r["id"], "at": ms(r["created_at"]), "actor": r["actor_label"],
         "actorUserId": str(r["actor_user_id"]) if r["actor_user_id"] else None, "action": r["action"],
         "targetUserId": str(r["target_user_id"]) if r["target_user_id"] else None, "targetName": r["target_name"],
         "before": r["before"], "after": r["after"], "ip": r["ip"], "details": r["details"]} for r in rows],
        "next": rows[-1]["id"] if len(rows) == limit else None})


@routes.get("/mod/me")
async def mod_me(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    u = await service.moderator_account(deps_of(request), mod.user_id)
    return web.json_response({"userId": str(mod.user_id), "role": mod.role, "via": mod.via,
                              "name": u["name"] if u else None})
