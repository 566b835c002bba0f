"""The deck: who is listed in /room/queue and `queue:snapshot` (§2.4, §6 D16, §7 E13), and the
per-node cache of user cards the realtime core reads instead of Postgres.

Cost does not grow with the crowd per request: each node keeps one snapshot of the listable users
(their cards already JSON-encoded, signed URLs included) and rebuilds it at most once per
`deck_min_rebuild_seconds` after a change it has seen (every queue/presence change is broadcast, so
every node sees it), and at least every `deck_max_age_seconds`. A request then costs one small
Postgres query (the requester's own reports and cooldowns) and a string join.

Freshness bound: a request made after a node has seen a change waits for the rebuild that includes it
(at most the minimum rebuild interval); changes made without a broadcast show within the maximum
age. Cards (name, media, access, ban) are cached for CARD_TTL_S and dropped on every node at once by
`access.changed()` and by `changed()` below (a new selfie or intro: without it, a user who finishes
their profile while already in the queue stayed unlisted on a node for up to CARD_TTL_S).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from server.accounts.access import has_access
from server.accounts.profile import card
from server.accounts.sessions import BANNED_STATUSES
from server.calls import store
from server.deps import Deps
from server.presence import state

CARD_TTL_S = 30.0
CARD_MAX = 100_000
CHANGE_EVENTS = frozenset({"queue:update", "presence:update"})


@dataclass
class Card:
    user_id: str
    fields: Any  # the users row (asyncpg.Record)
    public: dict[str, Any]  # the card others see
    prefix: str  # json of `public` without its closing brace: per-requester flags are appended
    until: float


@dataclass
class Snapshot:
    at: float = 0.0
    cards: list[Card] = field(default_factory=list)


class Deck:
    def __init__(self, max_age_s: float = 2.0, min_rebuild_s: float = 0.05) -> None:
        self.max_age_s = max_age_s
        self.min_rebuild_s = min_rebuild_s
        self.cards: dict[str, Card] = {}
        self.snapshot = Snapshot()
        self.dirty = True
        self.changed_at = 0.0
        self.forgets = 0  # bumped by forget(): a read that overlapped one must not be cached
        self._lock = asyncio.Lock()

    # ---- cards
    async def cards_of(self, deps: Deps, ids: list[str]) -> dict[str, Card]:
        now = time.monotonic()
        out: dict[str, Card] = {}
        missing = []
        for uid in ids:
            c = self.cards.get(uid)
            if c is not None and c.until > now:
                out[uid] = c
            else:
                missing.append(uid)
        if missing:
            forgets = self.forgets
            rows = await store.users_by_id(deps.db, missing)
            # A forget() while we read may have been for a row we read just before its change.
            keep = self.forgets == forgets
            if keep and len(self.cards) + len(rows) > CARD_MAX:
                self.cards.clear()
            for uid, row in rows.items():
                public = card(deps, row)
                c = out[uid] = Card(uid, row, public, json.dumps(public)[:-1], now + CARD_TTL_S)
                if keep:
                    self.cards[uid] = c
        return out

    async def rows(self, deps: Deps, ids: list[str]) -> dict[str, Any]:
        """Users rows (as store.users_by_id returns them) from the card cache."""
        return {uid: c.fields for uid, c in (await self.cards_of(deps, ids)).items()}

    async def user(self, deps: Deps, user_id: str) -> Any:
        """A user's row from the card cache (None for an unknown id)."""
        c = (await self.cards_of(deps, [user_id])).get(user_id)
        return c.fields if c else None

    def forget(self, user_id: str) -> None:
        """Access, ban or profile changed: the next read goes to Postgres."""
        self.cards.pop(user_id, None)
        self.forgets += 1
        self.mark_changed()

    def mark_changed(self) -> None:
        self.dirty = True
        self.changed_at = time.monotonic()

    def on_emit(self, event: str, _room: Any) -> None:
        if event in CHANGE_EVENTS:
            self.mark_changed()

    # ---- the snapshot
    async def current(self, deps: Deps) -> Snapshot:
        now = time.monotonic()
        if not self.dirty and now - self.snapshot.at < self.max_age_s:
            return self.snapshot
        async with self._lock:  # concurrent requests share one rebuild
            now = time.monotonic()
            if self.snapshot.at >= self.changed_at and now - self.snapshot.at < self.max_age_s:
                return self.snapshot  # rebuilt by someone else while we waited
            wait = self.snapshot.at + self.min_rebuild_s - now
            if wait > 0:
                await asyncio.sleep(wait)
            started = time.monotonic()
            self.dirty = False
            ids = sorted(await state.available_users(deps.redis))
            cards = await self.cards_of(deps, ids)
            listed = [c for uid in ids if (c := cards.get(uid)) is not None and _listable(deps, c.fields)]
            self.snapshot = Snapshot(started, listed)
            return self.snapshot

    async def for_user(self, deps: Deps, me: str) -> tuple[list[str], int]:
        """The requester's deck as JSON-encoded cards, and totalAvailable (counted before the
        "reported by me" filter, §2.4)."""
        snap = await self.current(deps)
        reported_by_me, reported_me, cooldowns = await store.deck_flags(deps.db, me)
        now_ms = int(time.time() * 1000)
        total = 0
        out = []
        for c in snap.cards:
            uid = c.user_id
            if uid == me or uid in reported_me:
                continue
            total += 1
            if uid in reported_by_me:
                continue
            expiry = cooldowns.get(uid)
            cooled = expiry is not None and expiry > now_ms
            introduced = c.fields["introduced_to"] is not None and str(c.fields["introduced_to"]) == me
            out.append(f'{c.prefix},"hasCooldown":{"true" if cooled else "false"},'
                       f'"cooldownExpiry":{expiry if cooled else "null"},'
                       f'"wasIntroducedToMe":{"true" if introduced else "false"},'
                       f'"introducedBy":{json.dumps(c.fields["introduced_by_name"]) if introduced else "null"}}}')
        return out, total


async def changed(deps: Deps, user_id: str) -> None:
    """Called after a committed change of user_id's card (selfie, intro video): every node drops its
    cached card (this one at once, the others through a control message handled before any later
    emit), then, if the user is in the queue, lobbies are told to refetch, so they appear live."""
    from server import emit, fanout  # the realtime layer sits above the domains that call this

    await fanout.signal(deps, "card", user=user_id)
    if await state.is_available(deps.redis, user_id):
        await emit.to_queue(deps, "queue:update", {"userId": user_id, "available": True})


def _listable(deps: Deps, u: Any) -> bool:
    return (u["ban_status"] not in BANNED_STATUSES and has_access(deps, u["paid_status"])
            and bool(u["selfie_key"]) and bool(u["video_key"]))


def body(cards: list[str], total: int) -> str:
    return f'{{"users":[{",".join(cards)}],"totalAvailable":{total}}}'

