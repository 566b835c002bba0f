"""What each socket may do, cached on its Sender so presence never waits on Postgres (issue 10 §1).

The cache is filled at authentication (the session lookup already reads paid and ban status), dropped
on every node by `accounts.access.changed()` (a control message, see fanout.py), and re-read in the
background when older than RECHECK_S, so a missed signal cannot leave a socket's rights stale for long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from server.accounts.access import has_access
from server.accounts.sessions import BANNED_STATUSES
from server.deps import Deps
from server.events import Sender

RECHECK_S = 30.0
_tasks: set[asyncio.Task[Any]] = set()


def verdict_of(deps: Deps, access: tuple[str, str]) -> str:
    paid, ban = access
    if ban in BANNED_STATUSES:
        return "banned"
    return "ok" if has_access(deps, paid) else "payment"


async def refresh(deps: Deps, sender: Sender) -> str:
    row = await deps.deck.user(deps, sender.user_id)
    sender.access = (row["paid_status"], row["ban_status"]) if row is not None else ("unpaid", "permanent")
    sender.access_at = time.monotonic()
    return verdict_of(deps, sender.access)


async def verdict(deps: Deps, sender: Sender) -> str:
    """ok | payment | banned, from the socket's cache (Postgres only after an invalidation)."""
    if sender.access is None:
        return await refresh(deps, sender)
    return verdict_of(deps, sender.access)


def stale(sender: Sender) -> bool:
    return time.monotonic() - sender.access_at > RECHECK_S


def invalidate(deps: Deps, sids: list[str], local: dict[str, Sender], user_id: str) -> None:
    """Drop the cached rights of this node's sockets of `user_id` (and its deck card)."""
    for sid in sids:
        s = local.get(sid)
        if s is not None and s.user_id == user_id:
            s.access = None
    if deps.deck is not None:
        deps.deck.forget(user_id)


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
