"""The user object as the client reads it (PROTOCOL.md §2.2, §2.11)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from server.accounts import store
from server.accounts.access import has_access, reported_status
from server.deps import Deps
from server.media.urls import media_url


def ms(ts: datetime | None) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1000)


def card(deps: Deps, user: asyncpg.Record) -> dict[str, Any]:
    """The public card shown to other users (queue, notify, referral payloads)."""
    return {
        "userId": str(user["id"]),
        "name": user["name"],
        "gender": user["gender"],
        "selfieUrl": media_url(deps, user["selfie_key"]),
        "videoUrl": media_url(deps, user["video_key"]),
    }


def streak_days(days: list[date], today: date | None = None) -> int:
    """Consecutive UTC days with a call, ending today or yesterday."""
    today = today or datetime.now(UTC).date()
    if not days or days[0] < today - timedelta(days=1):
        return 0
    streak, expected = 0, days[0]
    for day in days:
        if day != expected:
            break
        streak += 1
        expected = day - timedelta(days=1)
    return streak


async def me(deps: Deps, user: asyncpg.Record) -> dict[str, Any]:
    recent = await store.recent_sessions(deps.db, user["id"])
    days = await store.call_days(deps.db, user["id"])
    return {
        **card(deps, user),
        "accountType": user["account_type"],
        "email": user["email"],
        "socials": user["socials"],
        "createdAt": ms(user["created_at"]),
        "timerTotalSeconds": user["timer_total_seconds"],
        "sessionCount": user["session_count"],
        "lastSessions": [
            {"sessionId": str(r["session_id"]), "partnerName": r["partner_name"],
             "startedAt": ms(r["started_at"]), "duration": r["duration_seconds"]}
            for r in recent
        ],
        "streakDays": streak_days(days),
        "paidStatus": reported_status(deps, user["paid_status"]),
        "accountPaidStatus": user["paid_status"],
        "paywall": deps.settings.require_payment,
        "hasAccess": has_access(deps, user["paid_status"]),
        "qrUnlocked": user["qr_unlocked_at"] is not None,
        "successfulSessions": user["successful_sessions"],
        "role": user["role"],
    }
