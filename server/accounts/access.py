"""The one access rule (PROTOCOL §2.7, §6 D11) and the signal that a user's access changed.

Domains that change what a user may do (a payment granted or refunded, a code redeemed, a QR unlock,
a role change, a ban or an unban) call `changed()` after their transaction commits. Whatever caches
access for live sockets (the realtime core) invalidates it there; HTTP routes read the database.
"""

from __future__ import annotations

from server.deps import Deps
from server.ops import metrics

ACCESS_STATUSES = ("paid", "qr_verified", "qr_grace_period")


def has_access(deps: Deps, paid_status: str) -> bool:
    """May this user queue, invite and accept? Paid, QR-verified or in the QR grace period; everyone
    when the paywall is off (REQUIRE_PAYMENT=false)."""
    return paid_status in ACCESS_STATUSES or not deps.settings.require_payment


async def changed(deps: Deps, user_id: str, reason: str) -> None:
    """Called after a committed change of user_id's paid status, role or ban. Every node drops what it
    cached about the user (each socket's rights, the deck card): this node at once, the others through
    a control message on the Socket.IO channel (server/fanout.py)."""
    from server import fanout  # the realtime layer sits above accounts

    metrics.access_changed(reason)  # bans, payments, codes, QR unlocks for /metrics
    await fanout.signal(deps, "access", user=str(user_id), reason=reason)


def reported_status(deps: Deps, paid_status: str) -> str:
    """`paidStatus` as told to clients. The stored status stays the truth (an unpaid user stays `unpaid`
    in the database), but with the paywall off an unpaid user is reported as `qr_grace_period`: access
    that is provisional and not paid for, which every client treats as "may enter" (README, "Payments
    and access"). Responses carry `paywall` and `accountPaidStatus` beside it for clients that care."""
    if paid_status in ACCESS_STATUSES or deps.settings.require_payment:
        return paid_status
    return "qr_grace_period"
