"""The deck: who is listed in /room/queue and `queue:snapshot` (§2.4, §6 D16, §7 E13), and the
per-node cache of user cards the realtime core reads instead of Postgres.

Cost does not grow with the crowd per request: each node keeps one snapshot of the listable users
(their cards already JSON-encoded, signed URLs included) and rebuilds it at most once per
`deck_min_rebuild_seconds` after a change it has seen (every queue/presence change is broadcast, so
every node sees it), and at least every `deck_max_age_seconds` (in the background once the snapshot is
past half that age, so a steady flow of requests never waits for it). A request then costs one small
Postgres query (the requester's own reports and cooldowns), set arithmetic for the total, and at most
`deck_max_cards` cards joined (see `Deck.for_user` for which ones when more are listed).

Freshness bound: a request made after a node has seen a change waits for the rebuild that includes it
(at most the minimum rebuild interval); changes made without a broadcast show within the maximum
age. Cards (name, media, access, ban) are cached for CARD_TTL_S and dropped on every node at once by
`access.changed()` and by `changed()` below (a new selfie or intro: without it, a user who finishes
their profile while already in the queue stayed unlisted on a node for up to CARD_TTL_S).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from server.accounts.access import has_access
from server.accounts.profile import card
from server.accounts.sessions import BANNED_STATUSES
from server.calls import store
from server.deps import Deps
from server.presence import state

log = structlog.get_logger(__name__)

CARD_TTL_S = 30.0
CARD_MAX = 100_000
CARD_BATCH = 16  # cards built between two yields to the event loop
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
    """The listable users of one rebuild, in user id order, with what per-request filtering needs
    precomputed: their ids as a set (totals by set operations) and who was introduced to whom."""

    at: float = 0.0
    cards: list[Card] = field(default_factory=list)
    ids: frozenset[str] = frozenset()
    order: list[str] = field(default_factory=list)  # cards' user ids, sorted (bisect for a window)
    introduced: dict[str, list[Card]] = field(default_factory=dict)  # introduced_to -> their cards

    @classmethod
    def of(cls, at: float, cards: list[Card]) -> Snapshot:
        introduced: dict[str, list[Card]] = {}
        for c in cards:
            to = c.fields["introduced_to"]
            if to is not None:
                introduced.setdefault(str(to), []).append(c)
        return cls(at, cards, frozenset(c.user_id for c in cards), [c.user_id for c in cards], introduced)


class SkipGauge:
    """The most listed users any deck window served here walked past without showing them (hidden,
    cooled, or already shown as introduced) within the last one to two periods: how much further
    than its card count a window reaches (presence/audience.py)."""

    def __init__(self, period_s: float = 60.0) -> None:
        self.period_s = period_s
        self._current = self._previous = 0
        self._since = time.monotonic()

    def saw(self, skipped: int) -> None:
        self._roll()
        self._current = max(self._current, skipped)

    def most(self) -> int:
        self._roll()
        return max(self._current, self._previous)

    def _roll(self) -> None:
        elapsed = time.monotonic() - self._since
        if elapsed >= self.period_s:
            self._previous = self._current if elapsed < 2 * self.period_s else 0
            self._current = 0
            self._since = time.monotonic()


class Deck:
    def __init__(self, max_age_s: float = 2.0, min_rebuild_s: float = 0.05) -> None:
        self.max_age_s = max_age_s
        self.min_rebuild_s = min_rebuild_s
        self.skips = SkipGauge()
        self.cards: dict[str, Card] = {}
        self.snapshot = Snapshot()
        self.dirty = True
        self.changed_at = 0.0
        self.forgets = 0  # bumped by forget(): a read that overlapped one must not be cached
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

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
            if len(self.cards) + len(rows) > CARD_MAX:
                self.cards.clear()
            for i, (uid, row) in enumerate(rows.items()):
                if i and i % CARD_BATCH == 0:
                    # Signing a card's URLs is ~1 ms of CPU: a crowd's first rebuild (200 new users
                    # stalled the loop 242 ms; a reconnect storm of thousands, seconds) lets other
                    # handlers run between batches.
                    await asyncio.sleep(0)
                public = card(deps, row)
                # Jittered: cards read together (a crowd's first rebuild) do not all expire in one rebuild.
                c = out[uid] = Card(uid, row, public, json.dumps(public)[:-1],
                                    now + CARD_TTL_S * (0.75 + random.random() / 2))
                # A forget() since the read may have been for a row read just before its change.
                if self.forgets == forgets:
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
        age = now - self.snapshot.at
        if not self.dirty and age < self.max_age_s:
            # Past half its age and nothing changed: rebuild behind this request, so under a steady
            # flow of requests none of them waits for a max-age rebuild.
            self.keep_fresh(deps, self.max_age_s)
            return self.snapshot
        async with self._lock:  # concurrent requests share one rebuild
            now = time.monotonic()
            if self.snapshot.at >= self.changed_at and now - self.snapshot.at < self.max_age_s:
                return self.snapshot  # rebuilt by someone else while we waited
            wait = self.snapshot.at + self.min_rebuild_s - now
            if wait > 0:
                await asyncio.sleep(wait)
            return await self._rebuild(deps)

    async def _rebuild(self, deps: Deps) -> Snapshot:
        started = time.monotonic()
        self.dirty = False
        ids = sorted(await state.available_users(deps.redis))
        cards = await self.cards_of(deps, ids)
        listed = [c for uid in ids if (c := cards.get(uid)) is not None and _listable(deps, c.fields)]
        self.snapshot = Snapshot.of(started, listed)
        return self.snapshot

    def keep_fresh(self, deps: Deps, changed_age_s: float) -> None:
        """For readers that cannot wait (presence/audience.py): rebuild in the background once the
        snapshot is past half its maximum age, or `changed_age_s` old with a change seen since."""
        age = time.monotonic() - self.snapshot.at
        if self._refresh is None and (age >= self.max_age_s / 2 or (self.dirty and age >= changed_age_s)):
            self._refresh = asyncio.create_task(self._refresh_in_background(deps))

    async def _refresh_in_background(self, deps: Deps) -> None:
        try:
            async with self._lock:
                if time.monotonic() - self.snapshot.at >= self.max_age_s / 2 or self.dirty:
                    await self._rebuild(deps)
        except Exception as exc:  # the next request rebuilds in line (and sees the error itself)
            log.warning("deck_refresh_failed", error=repr(exc))
        finally:
            self._refresh = None

    async def for_user(self, deps: Deps, me: str, limit: int | None = None) -> tuple[list[str], int]:
        """The requester's deck as JSON-encoded cards, and totalAvailable (counted before the
        "reported by me" filter, §2.4).

        The work per request does not grow with the crowd: totalAvailable is set arithmetic on the
        snapshot's ids, and at most `deck_max_cards` cards are rendered (the client shows one card at
        a time and may open 10 per 30 s, §5). Beyond that many, the requester gets the users
        introduced to them (the direct-match auto-invite, §5), then a window of the snapshot that starts at a point
        derived from their own id: stable across refetches and joins/leaves elsewhere in the list,
        and different for each requester, so a crowd does not all call the same few people. Users on
        cooldown with the requester go after the others (they stay listed and flagged, §2.4). `limit`
        (optional) asks for fewer than `deck_max_cards`, e.g. from a `?limit=` on the route."""
        snap = await self.current(deps)
        reported_by_me, reported_me, cooldowns = await store.deck_flags(deps.db, me)
        now_ms = int(time.time() * 1000)
        hidden = reported_me | {me}
        total = len(snap.ids) - len(hidden & snap.ids)  # set & iterates the smaller side
        hidden |= reported_by_me
        cap = max(1, deps.settings.deck_max_cards)  # a caller may ask for fewer (`limit`), never more
        limit = cap if limit is None else max(1, min(limit, cap))
        if len(snap.cards) <= limit:
            chosen = [c for c in snap.cards if c.user_id not in hidden]
        else:
            chosen, skipped = _window(snap, me, hidden, cooldowns, now_ms, limit)
            self.skips.saw(skipped)
        return [_render(c, me, cooldowns, now_ms) for c in chosen], total


def _window(snap: Snapshot, me: str, hidden: set[str], cooldowns: dict[str, int], now_ms: int,
            limit: int) -> tuple[list[Card], int]:
    """The cards, and how many listed users the walk passed without taking them."""
    chosen: list[Card] = []
    seen: set[str] = set()
    for c in snap.introduced.get(me, ()):
        if c.user_id not in hidden and len(chosen) < limit:
            chosen.append(c)
            seen.add(c.user_id)
    cooled: list[Card] = []
    skipped = 0
    n = len(snap.order)
    start = bisect.bisect_left(snap.order, start_point(me))
    for i in range(n):
        if len(chosen) >= limit:
            break
        c = snap.cards[(start + i) % n]
        uid = c.user_id
        if uid in hidden or uid in seen:
            skipped += 1
            continue
        if cooldowns.get(uid, 0) > now_ms:
            skipped += 1
            if len(cooled) < limit:
                cooled.append(c)
            continue
        chosen.append(c)
    return chosen + cooled[:limit - len(chosen)], skipped


def start_point(me: str) -> str:
    """A point in user id space (ids are UUID strings) that depends only on the requester."""
    return str(uuid.UUID(bytes=hashlib.blake2b(me.encode(), digest_size=16).digest()))


def _render(c: Card, me: str, cooldowns: dict[str, int], now_ms: int) -> str:
    expiry = cooldowns.get(c.user_id)
    cooled = expiry is not None and expiry > now_ms
    introduced = c.fields["introduced_to"] is not None and str(c.fields["introduced_to"]) == me
    return (f'{c.prefix},"hasCooldown":{"true" if cooled else "false"},'
            f'"cooldownExpiry":{expiry if cooled else "null"},'
            f'"wasIntroducedToMe":{"true" if introduced else "false"},'
            f'"introducedBy":{json.dumps(c.fields["introduced_by_name"]) if introduced else "null"}}}')


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

