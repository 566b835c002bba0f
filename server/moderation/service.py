"""Moderation: reports and the auto-ban (§5, §6 D9/D10), reviews and moderator decisions, and
enforcing a ban on live state at once (§6 D11/D30). No HTTP here.

Every change is one transaction with its audit row; after it commits, `access.changed` tells the
caches and `calls.enforce.cut_user` ends the banned user's sockets, call and invites on every node.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from aiohttp import web

from server import ratelimit
from server.accounts import access
from server.accounts.profile import ms
from server.background import every
from server.calls.enforce import cut_user
from server.deps import DEPS, Deps
from server.errors import ApiError, bad_request, not_found, rate_limited
from server.httpio import ip_scope
from server.ids import user_uuid
from server.moderation import admin, audit, ipbans, store
from server.moderation.authz import Moderator

log = structlog.get_logger(__name__)

AUTO_BAN_REASON = "Automatically suspended after reports from {n} people who met this user; pending review"
ACTIONS = ("dismiss", "warn", "temporary_ban", "permanent_ban", "ip_ban")
MAX_BAN_HOURS = 24 * 365


@dataclass(frozen=True)
class Actor:
    """Who acts (a moderator, or the system for auto-bans and expiries) and from where."""
    label: str
    user_id: UUID | None = None
    ip: str | None = None

    @classmethod
    def of(cls, mod: Moderator, ip: str | None) -> Actor:
        return cls(mod.label, mod.user_id, ip)


SYSTEM = Actor("system")


async def enforce(deps: Deps, user_id: UUID, banned: bool) -> None:
    """After a committed ban or unban: invalidate cached access, then cut a banned user's live state."""
    await access.changed(deps, str(user_id), "ban")
    if banned:
        await admin.revoke_all(deps, user_id)
        await cut_user(deps, str(user_id))


# ---- reports ----

async def throttle_reports(deps: Deps, ip: str | None) -> None:
    """Count one report attempt from this address; 429 past REPORTS_PER_IP_PER_HOUR."""
    w = await ratelimit.hit(deps.redis, f"report:ip:{ip_scope(ip)}", 3600)
    if w.count > deps.settings.reports_per_ip_per_hour:
        raise rate_limited("Too many reports", w.retry_after_s, code="report_rate_limited",
                           message=f"Please wait {w.retry_after_s} seconds before reporting again.")


async def report(deps: Deps, reporter: UUID, ip: str | None, reported_ref: str, reason: str,
                 room_ref: str | None) -> dict[str, Any]:
    reported = user_uuid(reported_ref)
    if reported == reporter:
        raise bad_request("Cannot report yourself", code="self_report")
    if reported is None:
        raise not_found("User not found", code="user_not_found")
    room_id = user_uuid(room_ref) if room_ref else None
    threshold = deps.settings.auto_ban_reports
    async with deps.db.acquire() as conn, conn.transaction():
        target = await store.lock_user(conn, reported)
        if target is None:
            raise not_found("User not found", code="user_not_found")
        call = await store.shared_call(conn, reporter, reported, room_id)
        report_id = await store.insert_report(
            conn, reporter, reported, reason, call["room_id"] if call else room_id, call is not None,
            call["messages"] if call else [], ip)
        if report_id is None:
            raise bad_request("You have already reported this user", code="already_reported", alreadyReported=True)
        total, counting = await store.report_counts(conn, reported)
        auto_banned = False
        if call is not None and counting >= threshold:
            # The row lock above makes this count see every earlier report: exactly one report crosses
            # the threshold, and set_ban refuses a second ban of an already banned user anyway.
            before = await store.set_ban(conn, reported, "temporary", source="auto",
                                         reason=AUTO_BAN_REASON.format(n=counting), report_count=counting,
                                         review_status="pending", expires_at=None, reviewer=None,
                                         only_if_unbanned=True)
            if before is not None:
                auto_banned = True
                await audit.record(conn, actor_label=SYSTEM.label, action="auto_ban", target_user_id=reported,
                                   before={"banStatus": before}, after={"banStatus": "temporary"},
                                   details={"reporters": counting, "reportId": str(report_id)})
    if auto_banned:
        log.warning("auto_ban", user_id=str(reported), reporters=counting)
        await enforce(deps, reported, banned=True)
    return {"success": True, "reportId": str(report_id), "reportCount": total, "autoBanned": auto_banned,
            "message": "Report submitted. Thank you for keeping the community safe."}


async def check_ban(deps: Deps, user_id: UUID, ban_status: str) -> dict[str, Any]:
    record = await store.get_ban(deps.db, user_id)
    warning = await store.latest_warning(deps.db, user_id)
    banned = ban_status in store.BANNED
    return {"isBanned": banned, "banStatus": ban_status,
            "banRecord": ban_record(record, with_ips=False) if record is not None and ban_status != "none" else None,
            "warning": {"reason": warning["reason"], "createdAt": ms(warning["created_at"])} if warning else None}


# ---- decisions ----

async def ban(deps: Deps, actor: Actor, user_id: UUID, status: str, reason: str, hours: float | None,
              report_id: UUID | None = None) -> dict[str, Any]:
    """A moderator's ban: permanent, or temporary for `hours` (reviewed, so not in the pending queue)."""
    expires = datetime.now(UTC) + timedelta(hours=hours) if status == "temporary" and hours else None
    if status == "temporary" and expires is None:
        raise bad_request("A temporary ban needs durationHours", code="duration_required")
    async with deps.db.acquire() as conn, conn.transaction():
        target = await store.lock_user(conn, user_id)
        if target is None:
            raise not_found("User not found", code="user_not_found")
        if target["role"] != "user" and actor.user_id == user_id:
            raise bad_request("Cannot ban yourself", code="self_ban")
        total, _ = await store.report_counts(conn, user_id)
        before = await store.set_ban(conn, user_id, status, source="moderator", reason=reason, report_count=total,
                                     review_status="reviewed_ban", expires_at=expires, reviewer=actor.user_id)
        resolution = "permanent_ban" if status == "permanent" else "temporary_ban"
        resolved = await store.resolve_reports(conn, report_id=report_id, reported=user_id, resolution=resolution,
                                               moderator=actor.user_id)
        await audit.record(conn, actor_label=actor.label, actor_user_id=actor.user_id, ip=actor.ip,
                           action=f"ban_{status}", target_user_id=user_id,
                           before={"banStatus": before}, after={"banStatus": status, "expiresAt": ms(expires)},
                           details={"reason": reason, "resolvedReports": [str(r) for r in resolved]})
    await enforce(deps, user_id, banned=True)
    return {"success": True, "userId": str(user_id), "banStatus": status, "expiresAt": ms(expires),
            "resolvedReports": len(resolved)}


async def unban(deps: Deps, actor: Actor, user_id: UUID, reason: str, *, vindicate: bool = True,
                report_id: UUID | None = None) -> dict[str, Any]:
    """Lift a ban: vindicated (cleared by review; its IP bans go unless shared with another banned
    user) or plain 'none' (a timed ban that ran out)."""
    async with deps.db.acquire() as conn, conn.transaction():
        status = "vindicated" if vindicate else "none"
        before = await store.lift_ban(conn, user_id, status, "reviewed_vindicate" if vindicate else "reviewed_ban",
                                      actor.user_id)
        if before is None:
            if await store.find_user(conn, user_id) is None:
                raise not_found("User not found", code="user_not_found")
            raise ApiError(409, "not_banned", "User is not banned")
        lifted_ips = await store.lift_user_ip_bans(conn, user_id) if vindicate else []
        resolved = []
        if vindicate and actor.user_id is not None:
            resolved = await store.resolve_reports(conn, report_id=report_id, reported=user_id,
                                                   resolution="vindicated", moderator=actor.user_id)
        await audit.record(conn, actor_label=actor.label, actor_user_id=actor.user_id, ip=actor.ip,
                           action="unban" if vindicate else "ban_expired", target_user_id=user_id,
                           before={"banStatus": before}, after={"banStatus": status},
                           details={"reason": reason, "liftedIpBans": lifted_ips,
                                    "resolvedReports": [str(r) for r in resolved]})
    await enforce(deps, user_id, banned=False)
    return {"success": True, "userId": str(user_id), "banStatus": status, "liftedIpBans": lifted_ips}


async def review(deps: Deps, actor: Actor, user_id: UUID, decision: str) -> dict[str, Any]:
    """POST /report/review/:userId (the original admin page): permanent or vindicated."""
    record = await store.get_ban(deps.db, user_id)
    if record is None:
        raise not_found("Ban record not found", code="ban_not_found")
    if decision == "permanent":
        await ban(deps, actor, user_id, "permanent", record["banned_reason"] or "Reviewed: permanent ban", None)
        message = "User permanently banned"
    else:
        if record["ban_status"] in store.BANNED:
            await unban(deps, actor, user_id, "Reviewed: vindicated")
        message = "User vindicated and unbanned"
    return {"success": True, "userId": str(user_id), "decision": decision, "message": message}


async def ban_ip(deps: Deps, actor: Actor, ip: str, reason: str, user_id: UUID | None,
                 hours: float | None) -> dict[str, Any]:
    expires = datetime.now(UTC) + timedelta(hours=hours) if hours else None
    async with deps.db.acquire() as conn, conn.transaction():
        created = await store.ban_ip(conn, ip, reason, user_id, actor.user_id, expires)
        await audit.record(conn, actor_label=actor.label, actor_user_id=actor.user_id, ip=actor.ip,
                           action="ip_ban", target_user_id=user_id, after={"ip": ip, "expiresAt": ms(expires)},
                           details={"reason": reason, "new": created})
    ipbans.invalidate()
    return {"success": True, "ip": ip, "expiresAt": ms(expires)}


async def unban_ip(deps: Deps, actor: Actor, ip: str) -> dict[str, Any]:
    async with deps.db.acquire() as conn, conn.transaction():
        if not await store.unban_ip(conn, ip):
            raise not_found("IP ban not found", code="ip_ban_not_found")
        await audit.record(conn, actor_label=actor.label, actor_user_id=actor.user_id, ip=actor.ip,
                           action="ip_unban", before={"ip": ip})
    ipbans.invalidate()
    return {"success": True, "ip": ip}


async def _report(conn: store.Conn, report_id: UUID) -> asyncpg.Record:
    """The report, or 404 Report not found."""
    rep = await store.get_report(conn, report_id)
    if rep is None:
        raise not_found("Report not found", code="report_not_found")
    return rep


async def resolve(deps: Deps, actor: Actor, report_id: UUID, action: str, reason: str,
                  hours: float | None) -> dict[str, Any]:
    """Resolve a report with an action (Mastodon-style): dismiss, warn, temporary/permanent ban of
    the reported user, or an IP ban of the addresses they used (a decision, never automatic)."""
    rep = await _report(deps.db, report_id)
    if rep["state"] == "resolved":
        raise ApiError(409, "already_resolved", "Report already resolved")
    target = rep["reported_id"]
    reason = reason or rep["reason"] or action
    if action == "temporary_ban":
        await ban(deps, actor, target, "temporary", reason, hours, report_id)
    elif action == "permanent_ban":
        await ban(deps, actor, target, "permanent", reason, None, report_id)
    elif action == "ip_ban":
        ips = (await store.user_ips(deps.db, [target])).get(target, [])
        if not ips:
            raise ApiError(409, "no_known_ip", "No address is known for this user")
        for ip in ips:
            await ban_ip(deps, actor, ip, reason, target, hours)
        await store.resolve_reports(deps.db, report_id=report_id, reported=None, resolution="ip_ban",
                                    moderator=actor.user_id)
        await ban(deps, actor, target, "permanent", reason, None, report_id)
    else:  # dismiss | warn: this report only
        async with deps.db.acquire() as conn, conn.transaction():
            done = await store.resolve_reports(conn, report_id=report_id, reported=None, resolution=action,
                                               moderator=actor.user_id)
            if not done:
                raise ApiError(409, "already_resolved", "Report already resolved")
            if action == "warn":
                await store.add_warning(conn, target, reason, actor.user_id)
            await audit.record(conn, actor_label=actor.label, actor_user_id=actor.user_id, ip=actor.ip,
                               action=f"report_{action}", target_user_id=target,
                               details={"reportId": str(report_id), "reason": reason})
    return {"success": True, "reportId": str(report_id), "action": action}


async def claim(deps: Deps, actor: Actor, report_id: UUID, force: bool) -> dict[str, Any]:
    assert actor.user_id is not None
    async with deps.db.acquire() as conn, conn.transaction():
        row = await store.claim_report(conn, report_id, actor.user_id, force)
        if row is None:
            rep = await _report(conn, report_id)
            if rep["state"] == "resolved":
                raise ApiError(409, "already_resolved", "Report already resolved")
            raise ApiError(409, "claimed_by_other", "Another moderator has claimed this report",
                           assignedTo=str(rep["assigned_to"]), assignedName=rep["assigned_name"])
        await audit.record(conn, actor_label=actor.label, actor_user_id=actor.user_id, ip=actor.ip,
                           action="report_claim", details={"reportId": str(report_id), "force": force})
    return {"success": True, "reportId": str(report_id), "state": "claimed", "assignedTo": str(actor.user_id)}


async def release(deps: Deps, actor: Actor, report_id: UUID) -> dict[str, Any]:
    assert actor.user_id is not None
    async with deps.db.acquire() as conn, conn.transaction():
        if not await store.release_report(conn, report_id, actor.user_id):
            raise ApiError(409, "not_claimed_by_you", "You have not claimed this report")
        await audit.record(conn, actor_label=actor.label, actor_user_id=actor.user_id, ip=actor.ip,
                           action="report_release", details={"reportId": str(report_id)})
    return {"success": True, "reportId": str(report_id), "state": "open"}


async def note(deps: Deps, actor: Actor, report_id: UUID, body: str) -> dict[str, Any]:
    assert actor.user_id is not None
    async with deps.db.acquire() as conn, conn.transaction():
        await _report(conn, report_id)
        row = await store.add_note(conn, report_id, actor.user_id, actor.label, body)
        await audit.record(conn, actor_label=actor.label, actor_user_id=actor.user_id, ip=actor.ip,
                           action="report_note", details={"reportId": str(report_id), "noteId": row["id"]})
    return {"success": True, "noteId": row["id"], "createdAt": ms(row["created_at"])}


# ---- what moderators look at ----

@dataclass(frozen=True)
class PendingReview:
    """A temporary ban waiting for review, the reports against that user, and (for admins) their addresses."""
    ban: asyncpg.Record
    reports: list[asyncpg.Record]
    ips: list[str] | None


@dataclass(frozen=True)
class ReportDetail:
    report: asyncpg.Record
    notes: list[asyncpg.Record]
    ban: asyncpg.Record | None
    others: list[asyncpg.Record]  # the other reports against the same user


@dataclass(frozen=True)
class UserDossier:
    user: asyncpg.Record
    received: list[asyncpg.Record]
    made: list[asyncpg.Record]
    calls: list[asyncpg.Record]
    ban: asyncpg.Record | None
    warning: asyncpg.Record | None
    ips: list[str] | None  # admins only (§6 D23)


async def blacklist(deps: Deps) -> list[asyncpg.Record]:
    """Permanently banned users, newest first (the public blacklist)."""
    return await store.blacklist(deps.db)


async def pending_reviews(deps: Deps, *, with_ips: bool) -> list[PendingReview]:
    bans = await store.bans(deps.db, status="temporary", review="pending")
    ids = [b["user_id"] for b in bans]
    reports = await store.reports_against(deps.db, ids)
    ips = await store.user_ips(deps.db, ids) if with_ips else {}
    by_user: dict[UUID, list[asyncpg.Record]] = {}
    for r in reports:
        by_user.setdefault(r["reported_id"], []).append(r)
    return [PendingReview(b, by_user.get(b["user_id"], []), ips.get(b["user_id"])) for b in bans]


async def recent_reports(deps: Deps, limit: int) -> list[asyncpg.Record]:
    """The newest `limit` reports, whatever their state."""
    return await store.list_reports(deps.db, states=None, limit=limit)


async def report_queue(deps: Deps, states: list[str] | None, limit: int,
                       offset: int) -> tuple[list[asyncpg.Record], int]:
    """One page of reports in `states` (None: all), newest first, and how many there are in all."""
    rows = await store.list_reports(deps.db, states=states, limit=limit, offset=offset)
    return rows, await store.count_reports(deps.db, states)


async def report_detail(deps: Deps, report_id: UUID) -> ReportDetail:
    r = await _report(deps.db, report_id)
    notes = await store.notes(deps.db, report_id)
    ban = await store.get_ban(deps.db, r["reported_id"])
    others = await store.list_reports(deps.db, states=None, limit=100, reported=r["reported_id"])
    return ReportDetail(r, notes, ban, [o for o in others if o["id"] != report_id])


async def user_dossier(deps: Deps, user_id: UUID, *, with_ips: bool) -> UserDossier:
    """Everything a moderator needs about one user; addresses only `with_ips` (admins)."""
    u = await store.find_user(deps.db, user_id)
    if u is None:
        raise not_found("User not found", code="user_not_found")
    received = await store.list_reports(deps.db, states=None, limit=200, reported=user_id)
    made = await store.list_reports(deps.db, states=None, limit=200, reporter=user_id)
    calls = await store.call_history(deps.db, user_id)
    ban = await store.get_ban(deps.db, user_id)
    warning = await store.latest_warning(deps.db, user_id)
    ips = (await store.user_ips(deps.db, [user_id])).get(user_id, []) if with_ips else None
    return UserDossier(u, received, made, calls, ban, warning, ips)


async def ban_list(deps: Deps, status: str | None, *,
                   with_ips: bool) -> list[tuple[asyncpg.Record, list[str] | None]]:
    """Ban records (of users now in `status`, or all), each with its user's addresses when `with_ips`."""
    rows = await store.bans(deps.db, status=status, limit=500)
    ips = await store.user_ips(deps.db, [r["user_id"] for r in rows]) if with_ips else {}
    return [(r, ips.get(r["user_id"])) for r in rows]


async def ip_bans(deps: Deps) -> list[asyncpg.Record]:
    """IP bans in force, newest first."""
    return await store.ip_bans(deps.db)


async def find_ip_ban(deps: Deps, ip: str) -> asyncpg.Record | None:
    """The IP ban in force for `ip`, if any."""
    return {b["ip"]: b for b in await store.ip_bans(deps.db)}.get(ip)


async def stats(deps: Deps) -> asyncpg.Record:
    return await store.stats(deps.db)


async def audit_entries(deps: Deps, *, limit: int, before_id: int | None, action: str | None,
                        target_user_id: UUID | None) -> list[asyncpg.Record]:
    return await audit.page(deps.db, limit=limit, before_id=before_id, action=action, target_user_id=target_user_id)


async def moderator_account(deps: Deps, user_id: UUID) -> asyncpg.Record | None:
    return await store.moderator_by_id(deps.db, user_id)


# ---- timed bans running out ----

async def lift_expired(deps: Deps) -> int:
    """Every node runs this now and then; lift_ban's row lock makes each expiry happen once."""
    lifted = 0
    for user_id in await store.expired_bans(deps.db):
        with contextlib.suppress(ApiError):
            await unban(deps, SYSTEM, user_id, "Temporary ban ended", vindicate=False)
            lifted += 1
    return lifted


async def background(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the app's resources): the timed-ban expiry loop of this node."""
    deps = app[DEPS]
    async with every(deps.settings.ban_sweep_seconds, lambda: lift_expired(deps), "ban-expiry"):
        yield


# ---- shapes ----

def ban_record(r: Any, *, with_ips: bool, ips: list[str] | None = None, media: Any = None) -> dict[str, Any]:
    """BanRecord (§2.6). IP addresses only for admins (§6 D23)."""
    out = {
        "userId": str(r["user_id"]), "userName": r["name"],
        "userSelfie": media(r["selfie_key"]) if media else None,
        "userVideo": media(r["video_key"]) if media else None,
        "banStatus": r["ban_status"], "bannedAt": ms(r["banned_at"]), "bannedReason": r["banned_reason"],
        "reportCount": r["report_count"], "reviewStatus": r["review_status"], "reviewedAt": ms(r["reviewed_at"]),
        "reviewedBy": str(r["reviewed_by"]) if r["reviewed_by"] else None, "source": r["source"],
        "expiresAt": ms(r["expires_at"]),
    }
    if with_ips:
        out["ipAddresses"] = ips or []
    return out
