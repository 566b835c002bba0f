"""Periodic reconciliation with Stripe: a webhook that never arrives must not cost anyone their access.
Every PAYMENT_RECONCILE_INTERVAL_SECONDS one node (a Redis lock decides which) lists the Checkout
Sessions created in the last PAYMENT_RECONCILE_WINDOW_HOURS and applies those we have not settled."""

from __future__ import annotations

import contextlib
import time
from contextlib import AbstractAsyncContextManager

import stripe
import structlog

from server.background import every
from server.deps import Deps
from server.payments import service, store
from server.payments.stripe_api import StripeApi

log = structlog.get_logger(__name__)

SETTLED = ("completed", "expired", "failed", "refunded", "disputed")


async def run_once(deps: Deps, api: StripeApi) -> dict[str, int]:
    """One pass; returns how many sessions led to each outcome."""
    since = int(time.time() - deps.settings.payment_reconcile_window_hours * 3600)
    sessions = await api.list_checkouts(created={"gte": since})
    known = await store.payment_statuses(deps.db, [s["id"] for s in sessions])
    counts: dict[str, int] = {}
    for session in sessions:
        if known.get(session["id"]) in SETTLED or session.get("status") == "open":
            continue
        outcome = await service.apply_session(deps, session, "reconcile")
        counts[outcome] = counts.get(outcome, 0) + 1
    if counts.get("granted"):
        log.warning("reconcile_granted_missed_payments", counts=counts)  # a webhook went missing
    return counts


async def locked_pass(deps: Deps, api: StripeApi) -> None:
    """One reconciliation pass, by one node per interval: the lock expires by itself, so a node that
    dies mid-pass hands over. Stripe or network trouble is a warning; the next pass retries."""
    interval = deps.settings.payment_reconcile_interval_seconds
    try:
        if await deps.redis.set("pay:reconcile", deps.settings.node_id, ex=max(1, int(interval)), nx=True):
            await run_once(deps, api)
    except (stripe.StripeError, OSError) as exc:
        log.warning("reconcile_failed", error=str(exc))


def running(deps: Deps, api: StripeApi) -> AbstractAsyncContextManager[None]:
    """The periodic reconciliation for the app's lifetime (nothing when Stripe is not configured)."""
    interval = deps.settings.payment_reconcile_interval_seconds
    if not api.configured or interval <= 0:
        return contextlib.nullcontext()
    return every(interval, lambda: locked_pass(deps, api), "payments-reconcile")
