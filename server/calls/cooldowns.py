"""Pair cooldowns: durable in Postgres, mirrored in Redis for atomic checks inside the invite script.

The Redis key is written inside the transition scripts (so a re-invite cannot slip in between);
this module writes the durable copy and rebuilds Redis from Postgres when Redis lost its data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from server import timers
from server.calls import store
from server.calls.policy import COOLDOWN_REASON, pair
from server.deps import Deps

log = structlog.get_logger(__name__)


def row(a: str, b: str, ms: int, outcome: str) -> tuple[str, str, datetime, str] | None:
    """The durable cooldown of a pair for `ms` from now (None when there is none to write)."""
    if ms <= 0:
        return None
    x, y = pair(a, b)
    return x, y, datetime.now(UTC) + timedelta(milliseconds=ms), COOLDOWN_REASON.get(outcome, "call")


async def persist(deps: Deps, a: str, b: str, ms: int, outcome: str) -> None:
    if (cooldown := row(a, b, ms, outcome)) is not None:
        await store.upsert_cooldown(deps.db, *cooldown)


async def persist_or_defer(deps: Deps, a: str, b: str, ms: int, outcome: str) -> None:
    """persist(), or, when Postgres fails, a `cooldown` timer that retries it until it is written."""
    if ms <= 0:
        return
    try:
        await persist(deps, a, b, ms, outcome)
    except timers.DB_FAILED as exc:
        until = timers.now_ms() + ms
        log.warning("cooldown_persist_deferred", error=repr(exc))
        await timers.schedule(deps, "cooldown", f"{a}|{b}|{until}|{outcome}", timers.now_ms() + timers.RETRY_MS)


async def on_timer(deps: Deps, ident: str) -> None:
    """Timer: write a deferred cooldown (raises while Postgres is still down: retried after the lease)."""
    a, b, until, outcome = ident.split("|")
    await persist(deps, a, b, int(until) - timers.now_ms(), outcome)


async def rebuild_if_lost(deps: Deps) -> int:
    """Load live cooldowns into Redis once per Redis lifetime (the marker vanishes with the data). The
    marker is set only after the load, so a load that failed (Postgres down) is retried on the next
    heartbeat; nodes loading at the same time only repeat each other's SET NX."""
    if await deps.redis.exists("cooldowns:loaded"):
        return 0
    rows = await store.live_cooldowns(deps.db)
    now = datetime.now(UTC)
    async with deps.redis.pipeline(transaction=False) as pipe:
        for r in rows:
            ms = int((r["expires_at"] - now).total_seconds() * 1000)
            if ms > 0:
                pipe.set(f"cd:{r['user_a']}:{r['user_b']}", "1", px=ms, nx=True)
        pipe.set("cooldowns:loaded", "1")
        await pipe.execute()
    if rows:
        log.info("cooldowns_rebuilt", count=len(rows))
    return len(rows)
