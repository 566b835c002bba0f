"""Call rules that are product policy rather than configuration (PROTOCOL.md §5, §7 E2)."""

from __future__ import annotations

import math
from typing import Any

MIN_SECONDS, MAX_SECONDS = 60, 1800
HISTORY_MIN_SECONDS = 5
QR_SESSION_MIN_SECONDS = 30
QR_SESSIONS_TO_UNLOCK = 4
DECLINE_AS_TIMEOUT_MS = 2_000  # a decline this close to the callee's window end is the old client's auto-decline
CONNECTED_ALLOWANCE_MS = 5_000  # E1/E11: deadline after both sides report media connected
FINAL_MEMORY_MS = 120_000  # E3(c): re-send session:finalized to a user who was away

HOUR_MS = 3_600_000
# Cooldown per outcome, in ms. A pair on cooldown cannot invite each other.
COOLDOWN_MS = {
    "decline": 24 * HOUR_MS,
    "timeout": HOUR_MS,
    "expire": HOUR_MS,
    "rescind": HOUR_MS,
    "caller_gone": HOUR_MS,
    "callee_gone": 0,
    "busy": 0,
    "call": 24 * HOUR_MS,
}
COOLDOWN_REASON = {"decline": "declined", "timeout": "timeout", "expire": "timeout", "rescind": "rescinded",
                   "caller_gone": "rescinded", "call": "call"}


def clamp_seconds(value: Any) -> int | None:
    """Round any finite number into [60, 1800] (§5, ambiguity 2). None for non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return max(MIN_SECONDS, min(MAX_SECONDS, round(value)))


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)
