"""Calls after Redis lost its data (issue 11 §1): every started call has a durable record in Postgres
(live_calls, written at call:start, removed once its history is written). A node that finds Redis
empty puts those calls back; each then ends the usual way (call:end, disconnect, or its deadline timer,
at once if the deadline has passed), with history, cooldown and session:finalized for both."""

from __future__ import annotations

import structlog

from server.calls import state, store
from server.deps import Deps

log = structlog.get_logger(__name__)


async def restore_calls(deps: Deps) -> int:
    restored = 0
    for row in await store.live_calls(deps.db):
        if await state.restore_room(deps.redis, row["room_id"], row["caller_id"], row["callee_id"],
                                    int(row["started_ms"]), int(row["agreed_seconds"]), int(row["deadline_ms"]),
                                    row["session_id"]):
            restored += 1
    if restored:
        log.warning("calls_restored", count=restored)
    return restored
