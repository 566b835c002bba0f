"""Stripe Checkout against the local emulator (server/payments/emulator.py), reached only through the
official library's API base: create-checkout, signed webhooks (forged, stale, replayed, concurrent,
out of order, for unknown users), refunds and disputes, the status-time lookup and the reconciliation
of a webhook that never arrived. A connected socket's next queue:join sees the new access."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid

import pytest
import structlog

from server.deps import DEPS
from server.payments import reconcile
from server.payments.routes import STRIPE
from tests.helpers import auth, guest
from tests.stripe_control import Stripe, stripe_settings


@pytest.fixture
def settings(base_settings, stripe_emulator):
    return stripe_settings(base_settings, stripe_emulator, stripe_lookup_interval_seconds=0,
                           payment_reconcile_interval_seconds=0, guest_signups_per_ip_per_hour=1000)


@pytest.fixture
async def stripe(client, stripe_emulator):
    ctl = Stripe(stripe_emulator.url)
    await ctl.reset(str(client.make_url("/payment/webhook")))
    return ctl


async def checkout(client, user, **headers):
    resp = await client.post("/payment/create-checkout", data=b"", headers={  # no body, as the original client
        **auth(user["sessionToken"]), "Content-Type": "application/json", **headers})
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def paid(client, stripe, name="Payer"):
    user = await guest(client, name)
    co = await checkout(client, user)
    await stripe.pay(co["sessionId"])
    deliveries = await stripe.delivered("checkout.session.completed")
    assert [d["status"] for d in deliveries] == [200], deliveries
    return user, co["sessionId"]


async def status_of(client, user):
    return await (await client.get("/payment/status", headers=auth(user["sessionToken"]))).json()


async def counts(db):
    return {
        "grants": await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'payment_completed'"),
        "codes": await db.fetchval("SELECT count(*) FROM invite_codes WHERE owner_user_id IS NOT NULL"),
        "completed": await db.fetchval("SELECT count(*) FROM payments WHERE status = 'completed'"),
        "paid_users": await db.fetchval("SELECT count(*) FROM users WHERE paid_status = 'paid'"),
    }


# ---- create-checkout ----

async def test_create_checkout_uses_settings_not_the_origin(client, db, stripe, settings):
    user = await guest(client, "Ada")
    body = await checkout(client, user, Origin="http://localhost:3000")
    assert body["checkoutUrl"].startswith(stripe.url + "/c/pay/cs_test_")
    session = await client.app[STRIPE].retrieve_checkout(body["sessionId"])
    front = settings.frontend_url
    assert session["success_url"] == f"{front}/payment-success?session_id={{CHECKOUT_SESSION_ID}}"
    assert session["cancel_url"] == f"{front}/onboarding"
    assert (session["client_reference_id"], session["metadata"]) == (user["userId"], {"userId": user["userId"],
                                                                                     "userName": "Ada"})
    assert (session["amount_total"], session["currency"], session["mode"]) == (50, "usd", "payment")
    row = await db.fetchrow("SELECT * FROM payments")
    assert (row["status"], row["amount_cents"], row["currency"], row["stripe_checkout_session_id"]) == \
        ("pending", 50, "usd", body["sessionId"])
    assert row["idempotency_key"] == f"checkout-{user['userId']}-1"
    again = await checkout(client, user)  # the back button: the same open session
    assert again == body
    await client.app[STRIPE]._client.v1.checkout.sessions.expire_async(body["sessionId"])
    await stripe.delivered("checkout.session.expired")
    third = await checkout(client, user)  # a new attempt once that one is gone
    assert third["sessionId"] != body["sessionId"]
    assert await db.fetchval("SELECT idempotency_key FROM payments WHERE status = 'pending'") == \
        f"checkout-{user['userId']}-2"
    assert (await client.post("/payment/create-checkout")).status == 401


async def test_double_click_creates_one_session(client, db, stripe):
    user = await guest(client)
    bodies = await asyncio.gather(*(checkout(client, user) for _ in range(5)))
    assert len({b["sessionId"] for b in bodies}) == 1  # one idempotency key per user and attempt
    assert await db.fetchval("SELECT count(*) FROM payments") == 1


async def test_paid_users_cannot_pay_again_but_grace_users_may(client, db, stripe):
    user, _ = await paid(client, stripe)
    resp = await client.post("/payment/create-checkout", headers=auth(user["sessionToken"]))
    assert resp.status == 400 and (await resp.json())["error"] == "You have already verified access"
    grace = await guest(client, "Grace")
    await db.execute("UPDATE users SET paid_status = 'qr_grace_period' WHERE id = $1", uuid.UUID(grace["userId"]))
    await checkout(client, grace)


# ---- a payment end to end ----

async def test_payment_grants_access_mints_one_code_and_the_socket_sees_it(client, db, stripe, sockets):
    user = await guest(client, "Payer")
    await db.execute("UPDATE users SET selfie_key = 'k', video_key = 'v' WHERE id = $1", uuid.UUID(user["userId"]))
    peer = await sockets(user, "P")
    await peer.emit("queue:join")
    assert (await peer.wait("call:error"))["code"] == "PAYMENT_REQUIRED"
    co = await checkout(client, user)
    await stripe.pay(co["sessionId"])
    await stripe.delivered("checkout.session.completed")
    st = await status_of(client, user)
    assert (st["paidStatus"], st["hasAccess"], st["myCodeInfo"]["maxUses"], st["myCodeInfo"]["type"]) == \
        ("paid", True, 4, "user")
    assert st["paidAt"] is not None and st["myInviteCode"] == st["myCodeInfo"]["code"]
    row = await db.fetchrow("SELECT paid_status, payment_id FROM users WHERE id = $1", uuid.UUID(user["userId"]))
    pay_row = await db.fetchrow("SELECT status, stripe_payment_intent, source, completed_at FROM payments")
    assert (pay_row["status"], pay_row["source"]) == ("completed", "webhook") and pay_row["completed_at"]
    assert row["payment_id"] == pay_row["stripe_payment_intent"] and row["payment_id"].startswith("pi_")
    assert await counts(db) == {"grants": 1, "codes": 1, "completed": 1, "paid_users": 1}
    event = await db.fetchrow("SELECT type, outcome, checkout_session_id FROM stripe_events")
    assert dict(event) == {"type": "checkout.session.completed", "outcome": "granted",
                           "checkout_session_id": co["sessionId"]}
    # The same socket, no reload: its next queue:join is accepted.
    await peer.emit("queue:join")
    await peer.wait("queue:update", where=lambda d: d["userId"] == user["userId"] and d["available"])
    me = await (await client.get("/user/me", headers=auth(user["sessionToken"]))).json()
    assert me["paidStatus"] == "paid"


async def test_100_replays_and_concurrent_duplicates_grant_once(client, db, stripe, aiohttp_client, settings):
    """Stripe delivers at least once: 10 simultaneous copies of the first delivery, then 100 concurrent
    replays spread over two server nodes, all answer 200 and change nothing after the first."""
    from server.app import create_app

    second = await aiohttp_client(create_app(settings))
    await stripe.config(duplicates=9, concurrent=True)
    user, _ = await paid_many(client, stripe)
    assert await counts(db) == {"grants": 1, "codes": 1, "completed": 1, "paid_users": 1}
    event = await stripe.event("checkout.session.completed")
    await stripe.config(webhook_urls=[str(client.make_url("/payment/webhook")),
                                      str(second.make_url("/payment/webhook"))])
    statuses = await stripe.resend(event["id"], times=50, concurrent=True)
    assert statuses == [200] * 100
    assert await counts(db) == {"grants": 1, "codes": 1, "completed": 1, "paid_users": 1}
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == 1
    assert (await status_of(client, user))["paidStatus"] == "paid"


async def paid_many(client, stripe):
    user = await guest(client, "Payer")
    co = await checkout(client, user)
    await stripe.pay(co["sessionId"])
    deliveries = await stripe.delivered("checkout.session.completed")
    assert [d["status"] for d in deliveries] == [200] * 10, deliveries
    return user, co["sessionId"]


async def test_webhook_and_reconciliation_racing_grant_once(client, db, stripe):
    """Dedupe on the checkout session id too: the webhook and several reconciliation passes (no event id)
    settle the same session at the same moment; one of them grants."""
    user = await guest(client)
    co = await checkout(client, user)
    await stripe.config(hold=True)
    await stripe.pay(co["sessionId"])
    await stripe.config(hold=False)
    deps, api = client.app[DEPS], client.app[STRIPE]
    results = await asyncio.gather(stripe.flush(), *(reconcile.run_once(deps, api) for _ in range(4)))
    assert results[0]["statuses"] == [[200]]
    assert await counts(db) == {"grants": 1, "codes": 1, "completed": 1, "paid_users": 1}
    assert (await status_of(client, user))["paidStatus"] == "paid"


# ---- signatures ----

def signed(secret: str, payload: str, t: int) -> str:
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.{payload}'.encode(), hashlib.sha256).hexdigest()}"


async def test_forged_and_stale_signatures_are_refused_and_change_nothing(client, db, stripe, settings):
    user = await guest(client)
    co = await checkout(client, user)
    session = await client.app[STRIPE].retrieve_checkout(co["sessionId"])
    session.update(status="complete", payment_status="paid", payment_intent="pi_forged")
    payload = json.dumps({"id": "evt_forged", "object": "event", "type": "checkout.session.completed",
                          "data": {"object": session}})
    now = int(time.time())
    for sig in (signed("whsec_wrong", payload, now), signed(settings.stripe_webhook_secret, payload, now - 600),
                signed(settings.stripe_webhook_secret, payload + " ", now), "", "t=1,v1=00"):
        resp = await client.post("/payment/webhook", data=payload, headers={"Stripe-Signature": sig,
                                                                             "Content-Type": "application/json"})
        assert resp.status == 400, sig
        assert (await resp.json())["error"] == "Invalid Stripe signature"
    assert (await client.post("/payment/webhook", data=payload)).status == 400
    assert await db.fetchval("SELECT count(*) FROM stripe_events") == 0
    assert await counts(db) == {"grants": 0, "codes": 0, "completed": 0, "paid_users": 0}
    # The same bytes, correctly signed now, are accepted: the refusals were about the signature only.
    resp = await client.post("/payment/webhook", data=payload,
                             headers={"Stripe-Signature": signed(settings.stripe_webhook_secret, payload, now)})
    assert resp.status == 200 and (await resp.json())["outcome"] == "granted"


# ---- order, unknown users, failures ----

async def test_out_of_order_async_payment(client, db, stripe):
    """async_payment_succeeded overtakes completed(unpaid): access at the first, and the late completed
    event does not move the payment back to processing."""
    user = await guest(client)
    co = await checkout(client, user)
    await stripe.config(hold=True)
    await stripe.pay(co["sessionId"], async_method=True)
    await stripe.action(co["sessionId"], "settle", succeed=True)
    await stripe.config(hold=False)
    await stripe.flush(order="reverse")
    assert await db.fetchval("SELECT status FROM payments") == "completed"
    assert (await status_of(client, user))["paidStatus"] == "paid"
    outcomes = [r["outcome"] for r in await db.fetch("SELECT outcome FROM stripe_events ORDER BY received_at")]
    assert outcomes == ["granted", "already_settled"]


async def test_async_payment_failure_and_expiry_grant_nothing(client, db, stripe):
    user = await guest(client)
    co = await checkout(client, user)
    await stripe.pay(co["sessionId"], async_method=True)
    await stripe.delivered("checkout.session.completed")
    assert await db.fetchval("SELECT status FROM payments") == "processing"
    await stripe.action(co["sessionId"], "settle", succeed=False)
    await stripe.delivered("checkout.session.async_payment_failed")
    assert await db.fetchval("SELECT status FROM payments") == "failed"
    other = await checkout(client, user)
    await client.app[STRIPE]._client.v1.checkout.sessions.expire_async(other["sessionId"])
    await stripe.delivered("checkout.session.expired")
    assert await db.fetchval("SELECT status FROM payments WHERE stripe_checkout_session_id = $1",
                             other["sessionId"]) == "expired"
    assert (await status_of(client, user))["paidStatus"] == "unpaid"
    assert await counts(db) == {"grants": 0, "codes": 0, "completed": 0, "paid_users": 0}


async def test_unknown_user_is_acknowledged_once_and_logged(client, db, stripe):
    ghost = str(uuid.uuid4())
    api = client.app[STRIPE]
    session = await api.create_checkout({
        "mode": "payment", "success_url": "http://x/s", "cancel_url": "http://x/c", "client_reference_id": ghost,
        "metadata": {"userId": ghost},
        "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 50,
                                                      "product_data": {"name": "x"}}}]}, "ghost-1")
    with structlog.testing.capture_logs() as logs:
        await stripe.pay(session["id"])
        deliveries = await stripe.delivered("checkout.session.completed")
    assert [d["status"] for d in deliveries] == [200]  # no retry loop
    assert any(e["event"] == "stripe_payment_for_unknown_user" and e["log_level"] == "error" for e in logs)
    assert await db.fetchval("SELECT outcome FROM stripe_events") == "unknown_user"
    assert await db.fetchval("SELECT count(*) FROM payments") == 0
    with structlog.testing.capture_logs() as again:  # reconciliation meets it again: no second alert
        assert await reconcile.run_once(client.app[DEPS], api) == {"unknown_user": 1}
    assert not [e for e in again if e["event"] == "stripe_payment_for_unknown_user"]


# ---- refunds and disputes ----

async def test_refund_withdraws_access_and_deactivates_the_code(client, db, stripe, sockets):
    user, sid = await paid(client, stripe)
    code = (await status_of(client, user))["myInviteCode"]
    friend = await guest(client, "Friend", inviteCode=code)  # redeemed before the refund: stays valid
    await db.execute("UPDATE users SET selfie_key = 'k', video_key = 'v' WHERE id = $1", uuid.UUID(user["userId"]))
    peer = await sockets(user, "P")
    await stripe.action(sid, "refund")
    await stripe.delivered("charge.refunded")
    st = await status_of(client, user)
    assert (st["paidStatus"], st["myInviteCode"], st["hasAccess"]) == ("unpaid", None, False)
    assert await db.fetchval("SELECT is_active FROM invite_codes WHERE code = $1", code) is False
    assert await db.fetchval("SELECT status FROM payments") == "refunded"
    audit = await db.fetchrow("SELECT actor_label, target_user_id::text AS t, details FROM audit_log "
                              "WHERE action = 'payment_refunded'")
    assert audit["actor_label"] == "stripe" and audit["t"] == user["userId"]
    assert json.loads(audit["details"])["codeDeactivated"] == code
    await peer.emit("queue:join")
    assert (await peer.wait("call:error"))["code"] == "PAYMENT_REQUIRED"
    assert (await status_of(client, friend))["paidStatus"] == "qr_grace_period"
    late = await client.post("/auth/guest", json={"name": "Late", "gender": "male", "inviteCode": code})
    assert (await late.json())["error"] == "This invite code has been deactivated"
    # Paying again is possible and mints no second code (the old one stays deactivated).
    co = await checkout(client, user)
    await stripe.pay(co["sessionId"])
    await stripe.delivered("checkout.session.completed")
    assert (await status_of(client, user))["paidStatus"] == "paid"


async def test_partial_refund_keeps_access_and_dispute_withdraws_it(client, db, stripe):
    user, sid = await paid(client, stripe)
    await stripe.action(sid, "refund", amount=20)
    await stripe.delivered("charge.refunded")
    assert (await status_of(client, user))["paidStatus"] == "paid"
    assert await db.fetchval("SELECT amount_refunded_cents FROM payments") == 20
    await stripe.action(sid, "dispute")
    await stripe.delivered("charge.dispute.created")
    assert (await status_of(client, user))["paidStatus"] == "unpaid"
    assert await db.fetchval("SELECT status FROM payments") == "disputed"
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'payment_disputed'") == 1


async def test_refund_overtaking_the_completion_grants_nothing(client, db, stripe):
    user = await guest(client)
    co = await checkout(client, user)
    await stripe.config(hold=True)
    await stripe.pay(co["sessionId"])
    await stripe.action(co["sessionId"], "refund")
    await stripe.config(hold=False)
    await stripe.flush(order="reverse")
    assert await db.fetchval("SELECT status FROM payments") == "refunded"
    assert (await status_of(client, user))["paidStatus"] == "unpaid"
    assert await counts(db) == {"grants": 0, "codes": 0, "completed": 0, "paid_users": 0}


# ---- not relying on the webhook ----

async def test_dropped_webhook_is_reconciled(client, db, stripe):
    await stripe.config(drop=1)
    user = await guest(client)
    co = await checkout(client, user)
    await stripe.pay(co["sessionId"])
    assert (await stripe.events())["deliveries"][0]["status"] == "dropped"
    assert await db.fetchval("SELECT paid_status FROM users") == "unpaid"
    deps, api = client.app[DEPS], client.app[STRIPE]
    assert await reconcile.run_once(deps, api) == {"granted": 1}
    assert await counts(db) == {"grants": 1, "codes": 1, "completed": 1, "paid_users": 1}
    assert await db.fetchval("SELECT source FROM payments") == "reconcile"
    assert await reconcile.run_once(deps, api) == {}
    assert (await status_of(client, user))["paidStatus"] == "paid"


async def test_periodic_reconciliation_runs_by_itself(base_settings, stripe_emulator, aiohttp_client, db, stripe):
    from server.app import create_app

    fast = await aiohttp_client(create_app(stripe_settings(base_settings, stripe_emulator,
                                                           stripe_lookup_interval_seconds=0,
                                                           payment_reconcile_interval_seconds=0.2)))
    await stripe.config(drop=1)
    user = await guest(fast)
    await stripe.pay((await checkout(fast, user))["sessionId"])
    for _ in range(100):
        if await db.fetchval("SELECT paid_status FROM users") == "paid":
            break
        await asyncio.sleep(0.05)
    assert await counts(db) == {"grants": 1, "codes": 1, "completed": 1, "paid_users": 1}


async def test_status_looks_up_an_open_session_at_stripe_rate_limited(base_settings, stripe_emulator,
                                                                      aiohttp_client, db, stripe):
    """The success page polls /payment/status for ~12 s: a paid session is found at Stripe even when the
    webhook is lost, and Stripe is asked at most once per interval per user."""
    from server.app import create_app

    app = await aiohttp_client(create_app(stripe_settings(base_settings, stripe_emulator,
                                                          stripe_lookup_interval_seconds=0.5,
                                                          payment_reconcile_interval_seconds=0)))
    await stripe.config(drop=1)
    user = await guest(app)
    co = await checkout(app, user)

    async def lookups() -> int:
        return sum(1 for c in (await stripe.events())["api_calls"] if c.startswith("GET /v1/checkout/sessions/"))

    assert (await status_of(app, user))["paidStatus"] == "unpaid"
    assert (await status_of(app, user))["paidStatus"] == "unpaid"
    assert await lookups() == 1  # the second poll within the interval did not ask Stripe
    await stripe.pay(co["sessionId"])
    await asyncio.sleep(0.6)  # past the interval
    st = await status_of(app, user)
    assert (st["paidStatus"], bool(st["myInviteCode"])) == ("paid", True)
    assert await lookups() == 2
    assert await db.fetchval("SELECT source FROM payments") == "status_lookup"
    await status_of(app, user)
    assert await lookups() == 2  # paid: nothing left to look up
