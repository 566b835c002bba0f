"""Access and payments (PROTOCOL §2.7, §6 D8 D19 D20): status, Stripe Checkout, webhook events,
refunds and disputes, invite-code redemption and the moderator code tools. No HTTP here.

Every grant goes through `_grant` inside one transaction that also claims the Stripe event (when
there is one) and moves the payment row out of pending: whichever of the webhook, a replay on
another node, the status-time lookup or the reconciliation gets there first grants; the others find
the row completed and do nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import stripe
import structlog

from server.accounts import access
from server.accounts.profile import ms
from server.calls.policy import QR_SESSIONS_TO_UNLOCK
from server.deps import Deps
from server.errors import ApiError, bad_request, not_found
from server.moderation import audit
from server.moderation.authz import Moderator
from server.payments import codes, store
from server.payments.stripe_api import StripeApi

log = structlog.get_logger(__name__)

OPEN_SESSION_MAX_AGE = timedelta(hours=24)  # Stripe expires Checkout Sessions after 24 h at most
PAID_STATES = ("paid", "no_payment_required")
REUSE_OPEN_SESSION = timedelta(hours=1)
UNKNOWN_USER_REPORTED_S = 7 * 24 * 3600


# ---- status ----

async def status(deps: Deps, api: StripeApi, user_id: UUID) -> dict[str, Any]:
    user = await store.access_row(deps.db, user_id)
    if user is None:
        raise not_found("User not found")
    if user["paid_status"] not in ("paid", "qr_verified") and api.configured:
        # The original success page polls for about 12 s: don't wait for the webhook.
        if await lookup_open_session(deps, api, user_id):
            user = await store.access_row(deps.db, user_id) or user
    own = await store.own_code(deps.db, user_id)
    own = own if own is not None and own["is_active"] else None
    stored = user["paid_status"]
    return {
        "paidStatus": access.reported_status(deps, stored),
        "paidAt": ms(user["paid_at"]),
        "myInviteCode": own["code"] if own else None,
        "inviteCodeUsesRemaining": own["uses_remaining"] if own else 0,
        "myCodeInfo": store.code_info(own) if own else None,
        "inviteCodeUsed": await store.code_used_by(deps.db, user_id),
        "qrUnlocked": user["qr_unlocked_at"] is not None,
        "qrUnlockedAt": ms(user["qr_unlocked_at"]),
        "successfulSessions": user["successful_sessions"],
        "sessionsNeeded": max(0, QR_SESSIONS_TO_UNLOCK - user["successful_sessions"]),
        "hasAccess": access.has_access(deps, stored),
        "requiresPayment": not access.has_access(deps, stored),
        "paywall": deps.settings.require_payment,
        "accountPaidStatus": stored,
    }


async def lookup_open_session(deps: Deps, api: StripeApi, user_id: UUID) -> bool:
    """Ask Stripe about the user's open Checkout Session, at most once per interval per user (every
    node shares the Redis key). True if that granted access."""
    sid = await store.open_payment(deps.db, user_id, datetime.now(UTC) - OPEN_SESSION_MAX_AGE)
    if sid is None:
        return False
    interval_ms = int(deps.settings.stripe_lookup_interval_seconds * 1000)
    if interval_ms <= 0 or not await deps.redis.set(f"pay:lookup:{user_id}", "1", px=interval_ms, nx=True):
        return False
    try:
        session = await api.retrieve_checkout(sid)
    except stripe.StripeError as exc:
        log.warning("stripe_lookup_failed", session_id=sid, error=str(exc))
        return False
    return await apply_session(deps, session, "status_lookup") == "granted"


# ---- Checkout ----

async def create_checkout(deps: Deps, api: StripeApi, user_id: UUID) -> dict[str, Any]:
    s = deps.settings
    user = await store.access_row(deps.db, user_id)
    if user is None:
        raise not_found("User not found")
    if user["paid_status"] in ("paid", "qr_verified"):  # grace-period users may pay
        raise bad_request("You have already verified access", code="already_verified")
    # A double click, the back button or a second tab: the same open session. Requests racing past this
    # read share one idempotency key (per user and attempt), so Stripe returns them the same session too.
    recent = await store.reusable_payment(deps.db, user_id, datetime.now(UTC) - REUSE_OPEN_SESSION)
    if recent is not None:
        return {"checkoutUrl": recent["checkout_url"], "sessionId": recent["stripe_checkout_session_id"]}
    attempt = await store.count_settled_payments(deps.db, user_id) + 1  # a new attempt once one is settled
    key = f"checkout-{user_id}-{attempt}"
    frontend = s.frontend_url.rstrip("/")  # never the request's Origin (D19)
    params = {
        "mode": "payment",
        "payment_method_types": ["card"],
        "line_items": [{"quantity": 1, "price_data": {
            "currency": s.price_currency, "unit_amount": s.price_cents,
            "product_data": {"name": "Napalm Sky access"}}}],
        "client_reference_id": str(user_id),
        "metadata": {"userId": str(user_id), "userName": user["name"]},
        "success_url": f"{frontend}/payment-success?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{frontend}/onboarding",
    }
    try:
        session = await api.create_checkout(params, key)
    except stripe.StripeError as exc:
        log.error("stripe_checkout_failed", user_id=str(user_id), error=str(exc))
        raise ApiError(502, "payment_provider_error", "Could not start the payment; please try again") from None
    await store.insert_payment(deps.db, user_id, session["id"], session.get("url"), session.get("amount_total")
                               or s.price_cents, session.get("currency") or s.price_currency, key)
    log.info("checkout_created", user_id=str(user_id), session_id=session["id"], attempt=attempt)
    return {"checkoutUrl": session["url"], "sessionId": session["id"]}


def _user_of(obj: dict[str, Any]) -> UUID | None:
    ref = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("userId")
    try:
        return UUID(str(ref)) if ref else None
    except ValueError:
        return None


def _session_outcome(session: dict[str, Any], event_type: str | None = None) -> str | None:
    """What a Checkout Session (as sent in an event, or retrieved) means for us."""
    if event_type == "checkout.session.async_payment_succeeded":
        return "paid"
    if event_type == "checkout.session.async_payment_failed":
        return "failed"
    if event_type == "checkout.session.expired" or session.get("status") == "expired":
        return "expired"
    if session.get("status") == "complete":
        return "paid" if session.get("payment_status") in PAID_STATES else "processing"
    return None


async def apply_session(deps: Deps, session: dict[str, Any], source: str, event: dict[str, Any] | None = None,
                        ) -> str:
    """Record what a Checkout Session says, in one transaction with the event claim (if any).
    Returns the outcome: granted, duplicate, already_settled, processing, failed, expired, open, unknown_user."""
    event_type = event["type"] if event else None
    outcome = _session_outcome(session, event_type)
    sid = str(session.get("id") or "")
    user_id = _user_of(session)
    granted = False
    async with deps.db.acquire() as conn, conn.transaction():
        if event is not None and not await store.claim_event(conn, event["id"], event["type"]):
            return "duplicate"
        result = await _apply(conn, session, sid, user_id, outcome, source)
        granted = result == "granted"
        if event is not None:
            await store.finish_event(conn, event["id"], result, sid or None,
                                     user_id if result != "unknown_user" else None)
    if result == "unknown_user" and await deps.redis.set(f"pay:unknown:{sid}", "1", ex=UNKNOWN_USER_REPORTED_S,
                                                          nx=True):
        # 200 to Stripe all the same: a retry cannot make the user exist (D19). Someone must look; once
        # per session, however often reconciliation meets it again.
        log.error("stripe_payment_for_unknown_user", session_id=sid, reference=session.get("client_reference_id"),
                  event_id=event["id"] if event else None, source=source)
    if granted and user_id is not None:
        await access.changed(deps, str(user_id), "paid")
        log.info("payment_granted", user_id=str(user_id), session_id=sid, source=source)
    return result


async def _apply(conn: asyncpg.Connection, session: dict[str, Any], sid: str, user_id: UUID | None,
                 outcome: str | None, source: str) -> str:
    if outcome is None or not sid:
        return "open"
    if user_id is None or await store.access_row(conn, user_id) is None:
        return "unknown_user"
    pi = session.get("payment_intent")
    pi = pi if isinstance(pi, str) else (pi or {}).get("id")
    amount = int(session.get("amount_total") or 0)
    currency = str(session.get("currency") or "")
    if outcome == "paid":
        if not await store.complete_payment(conn, user_id, sid, pi, amount, currency, source):
            return "already_settled"
        previous = await store.mark_paid(conn, user_id, pi)
        code = await codes.mint_own(conn, user_id)
        await audit.record(conn, actor_label="stripe", action="payment_completed", target_user_id=user_id,
                           before=previous, after="paid" if previous else None,
                           details={"checkoutSessionId": sid, "paymentIntent": pi, "amount": amount,
                                    "currency": currency, "source": source, "codeMinted": code is not None})
        return "granted"
    allowed = {"processing": ("pending",), "failed": ("pending", "processing"),
               "expired": ("pending", "processing")}[outcome]
    changed = await store.set_payment_status(conn, user_id, sid, outcome, allowed, pi, amount, currency, source)
    return outcome if changed else "already_settled"


async def reverse(deps: Deps, api: StripeApi, event: dict[str, Any]) -> str:
    """charge.refunded (full refunds) and charge.dispute.created: the payment is reversed, paid access
    is withdrawn unless another completed payment backs it, and the user's own code is deactivated
    (codes already redeemed by others stay redeemed). Audit-logged. Partial refunds are recorded only."""
    obj = event["data"]["object"]
    disputed = event["type"] == "charge.dispute.created"
    pi = obj.get("payment_intent")
    pi = pi if isinstance(pi, str) else (pi or {}).get("id")
    full = disputed or bool(obj.get("refunded"))
    refunded = int(obj.get("amount_refunded") or 0) if not disputed else 0
    sid = await store.session_for_intent(deps.db, pi) if pi else None
    if sid is None and pi:
        # The refund overtook the completion event (or we never heard of it): ask Stripe which session.
        try:
            found = await api.list_checkouts(payment_intent=pi)
        except stripe.StripeError as exc:
            raise ApiError(503, "payment_provider_error", f"Stripe lookup failed: {exc}") from None  # Stripe retries
        sid = found[0]["id"] if found else None
    user_id: UUID | None = None
    withdrawn = False
    async with deps.db.acquire() as conn, conn.transaction():
        if not await store.claim_event(conn, event["id"], event["type"]):
            return "duplicate"
        if sid is None:
            result = "unknown_payment"
        elif not full:
            result = "partial_refund"
            await conn.execute("UPDATE payments SET amount_refunded_cents = GREATEST(amount_refunded_cents, $2) "
                               "WHERE stripe_checkout_session_id = $1", sid, refunded)
        else:
            row = await store.reverse_payment(conn, sid, pi, "disputed" if disputed else "refunded", refunded)
            if row is None:
                result = "unknown_payment"
            else:
                user_id = row["user_id"]
                result = "revoked"
                previous = None
                code = None
                if not await store.other_completed_payment(conn, user_id, sid):
                    previous = await store.withdraw_paid(conn, user_id)
                    code = await store.deactivate_own_code(conn, user_id)
                    withdrawn = previous is not None
                await audit.record(conn, actor_label="stripe",
                                   action="payment_disputed" if disputed else "payment_refunded",
                                   target_user_id=user_id, before=previous, after="unpaid" if withdrawn else None,
                                   details={"checkoutSessionId": sid, "paymentIntent": pi,
                                            "previousPaymentStatus": row["previous"], "codeDeactivated": code})
        await store.finish_event(conn, event["id"], result, sid, user_id)
    if result == "unknown_payment":
        log.error("stripe_reversal_for_unknown_payment", event_id=event["id"], payment_intent=pi)
    if withdrawn and user_id is not None:
        await access.changed(deps, str(user_id), "refunded" if not disputed else "disputed")
        log.warning("payment_reversed", user_id=str(user_id), session_id=sid, disputed=disputed)
    return result


CHECKOUT_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded",
                   "checkout.session.async_payment_failed", "checkout.session.expired")
REVERSAL_EVENTS = ("charge.refunded", "charge.dispute.created")


async def handle_event(deps: Deps, api: StripeApi, event: dict[str, Any]) -> str:
    kind = event.get("type", "")
    if kind in CHECKOUT_EVENTS:
        return await apply_session(deps, event["data"]["object"], "webhook", event)
    if kind in REVERSAL_EVENTS:
        return await reverse(deps, api, event)
    async with deps.db.acquire() as conn, conn.transaction():
        if await store.claim_event(conn, event["id"], kind):
            await store.finish_event(conn, event["id"], "ignored", None, None)
    return "ignored"


# ---- invite codes ----

async def validate_code(deps: Deps, ip: str | None, raw: str | None) -> dict[str, Any]:
    left = await codes.take_attempt(deps, ip)
    code = codes.normalize(raw or "")
    if not code:
        raise bad_request("Code is required", code="code_required", attemptsRemaining=left)
    if not codes.CODE_RE.match(code):
        raise bad_request("Invalid code format", code="invalid_code_format", attemptsRemaining=left)
    row = await codes.check(deps.db, code, left)
    return {"valid": True, "type": row["type"], "usesRemaining": row["uses_remaining"],
            "createdBy": row["created_by_label"], "attemptsRemaining": left}


async def apply_code(deps: Deps, ip: str | None, user_id: UUID, raw: str | None) -> dict[str, Any]:
    left = await codes.take_attempt(deps, ip)
    code = codes.normalize(raw or "")
    if not code:
        raise bad_request("Invite code is required", code="code_required", attemptsRemaining=left)
    user = await store.access_row(deps.db, user_id)
    if user is None:
        raise not_found("User not found")
    if user["paid_status"] in store.ACCESS_GRANTING:
        raise bad_request("You already have access", code="already_has_access", attemptsRemaining=left)
    if not codes.CODE_RE.match(code):
        raise ApiError(403, "invalid_code", "Invalid invite code", attemptsRemaining=left)
    async with deps.db.acquire() as conn, conn.transaction():
        try:
            new_status = await codes.redeem(conn, code, user_id)
        except ApiError as exc:
            exc.extra.pop("requiresPayment", None)
            exc.extra["attemptsRemaining"] = left
            raise
    await access.changed(deps, str(user_id), "invite_code")
    log.info("invite_code_applied", user_id=str(user_id), status=new_status)
    return {"success": True, "paidStatus": new_status, "qrUnlocked": new_status == "qr_verified",
            "sessionsNeeded": max(0, QR_SESSIONS_TO_UNLOCK - user["successful_sessions"]),
            "attemptsRemaining": left}


# ---- moderator / operator code tools ----

def code_row(r: asyncpg.Record) -> dict[str, Any]:
    return {"code": r["code"], "type": r["type"], "createdBy": r["created_by_label"], "createdAt": ms(r["created_at"]),
            "maxUses": r["max_uses"], "usesRemaining": r["uses_remaining"], "totalUsed": int(r["total_used"]),
            "isActive": r["is_active"], "ownerUserId": str(r["owner_user_id"]) if r["owner_user_id"] else None}


async def create_code(conn: asyncpg.Connection, actor_label: str, label: str, uses: int | None,
                      actor_user_id: UUID | None = None) -> str:
    """An admin code (unlimited) or, with `uses`, a limited code owned by nobody. Audit-logged."""
    label = label.strip() or "Admin QR Code"
    async with conn.transaction():
        for _ in range(5):
            code = codes.generate()
            if await store.insert_code(conn, code, "user" if uses else "admin", label[:100], uses or -1):
                break
        else:
            raise RuntimeError("could not generate a unique code")
        await audit.record(conn, actor_label=actor_label, actor_user_id=actor_user_id, action="invite_code_created",
                           details={"code": code, "label": label[:100], "maxUses": uses or -1})
    return code


async def deactivate(conn: asyncpg.Connection, actor_label: str, code: str,
                     actor_user_id: UUID | None = None) -> bool:
    """False if it was already inactive; raises 404 for an unknown code. Audit-logged."""
    code = codes.normalize(code)
    async with conn.transaction():
        was_active = await store.deactivate_code(conn, code) if codes.CODE_RE.match(code) else None
        if was_active is None:
            raise not_found("Invite code not found", code="code_not_found")
        await audit.record(conn, actor_label=actor_label, actor_user_id=actor_user_id,
                           action="invite_code_deactivated", details={"code": code, "wasActive": was_active})
    return was_active


async def admin_generate(deps: Deps, mod: Moderator, label: str) -> dict[str, Any]:
    async with deps.db.acquire() as conn:
        code = await create_code(conn, mod.label, label, None, mod.user_id)
    return {"code": code, "qrCodeUrl": f"/payment/qr/{code}"}


async def admin_list(deps: Deps, mod: Moderator) -> dict[str, Any]:
    rows = await store.list_codes(deps.db)
    await audit.record(deps.db, actor_label=mod.label, actor_user_id=mod.user_id, action="invite_codes_listed",
                       details={"count": len(rows)})
    return {"codes": [code_row(r) for r in rows], "total": len(rows)}


async def admin_deactivate(deps: Deps, mod: Moderator, code: str) -> dict[str, Any]:
    async with deps.db.acquire() as conn:
        was_active = await deactivate(conn, mod.label, code, mod.user_id)
    return {"success": True, "message": "Code deactivated" if was_active else "Code was already inactive"}
