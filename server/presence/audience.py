"""Who hears of a change in the deck (issue 10 §3): `queue:update` / `presence:update` about user X.

Each requester's deck is a window of the listed users that starts at a point derived from the
requester's own id (presence/deck.py), so once more users are listed than a window can reach, most
queued clients could never see X: telling all of them made every change cost O(queue) socket writes,
and the crowd O(N²). Then a change goes only to this node's queued sockets whose window can hold X (a
start point at most `reach` listed users before X), to X's own sockets and to the sockets of the user
X was introduced to (always first in their deck). Below `reach` listed users every queued socket hears
every change, as before (§7 E13).

`reach` is the card count, plus what windows walk past without showing (hidden and cooled users: the
most any window served on this node skipped in the last minute or two, `Deck.skips`), plus a quarter of
the cards for the users that join between a client's refetch and a change (they push a shown card
further from the window's start). A client whose window walked further than any this node served
lately (its requests served by another node) may see a change only at its next refetch; the original
client refetches on a timer too.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from server.deps import Deps
from server.presence.deck import CHANGE_EVENTS, Deck, start_point

# How stale the listed users' order may get while changes flow (nobody may be asking for decks on this
# node, so nothing else rebuilds it): positions shift by the changes since, which `reach` absorbs.
ORDER_STALE_S = 0.5


class Audience:
    def __init__(self, deps: Deps, user_of: Callable[[str], str | None]) -> None:
        self.deps = deps
        self.deck: Deck = deps.deck
        self.cards = max(1, deps.settings.deck_max_cards)
        self.user_of = user_of  # sid -> its user (None: not authenticated on this node)
        self._points: list[tuple[str, str]] = []  # (start point, sid) of queued sockets, sorted
        self._seat: dict[str, tuple[str, str]] = {}  # sid -> (its start point, its user)
        self._sids_of: dict[str, set[str]] = {}  # user -> queued sids on this node
        self._users: list[str] = []  # users with a queued socket on this node, sorted

    # ---- membership of the queue room on this node (NodeManager's room hooks)
    def entered(self, sid: str) -> None:
        user = self.user_of(sid)
        if user is None or sid in self._seat:
            return
        point = start_point(user)
        self._seat[sid] = (point, user)
        bisect.insort(self._points, (point, sid))
        sids = self._sids_of.setdefault(user, set())
        if not sids:
            bisect.insort(self._users, user)
        sids.add(sid)

    def left(self, sid: str) -> None:
        seat = self._seat.pop(sid, None)
        if seat is None:
            return
        point, user = seat
        i = bisect.bisect_left(self._points, (point, sid))
        if i < len(self._points) and self._points[i] == (point, sid):
            del self._points[i]
        sids = self._sids_of.get(user)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._sids_of[user]
                j = bisect.bisect_left(self._users, user)
                if j < len(self._users) and self._users[j] == user:
                    del self._users[j]

    @property
    def reach(self) -> int:
        return self.cards + self.deck.skips.most() + max(1, self.cards // 4)

    # ---- who hears an emit to the queue room
    def narrow(self, event: str, data: Any) -> set[str] | None:
        """The sids of this node's queue room that `event` concerns; None for all of them."""
        if event not in CHANGE_EVENTS or not isinstance(data, dict):
            return None
        user = data.get("userId")
        reach = self.reach
        if not isinstance(user, str) or len(self._points) <= reach:
            return None  # telling everyone costs no more than choosing
        self.deck.keep_fresh(self.deps, ORDER_STALE_S)
        order = self.deck.snapshot.order
        if 2 * len(order) < len(self._users):
            # The snapshot lags a surge (a start-up, everyone reconnecting after a deploy): position X
            # among the users queued here instead, about the listed ones (part of them on a cluster):
            # fewer users than the real list only widen each window's key range.
            order = self._users
        n = len(order)
        if n <= reach:
            return None
        # Windows start at bisect_left(order, point): X (at p, or inserted there) is among the first
        # reach + 1 cards of a window whose start point lies in (order[p - reach - 1], order[p]].
        p = bisect.bisect_left(order, user)
        lo, hi = order[(p - reach - 1) % n], order[p % n]
        out = self._between(lo, hi)
        out |= self._sids_of.get(user, set())
        card = self.deck.cards.get(user)
        introduced_to = card.fields["introduced_to"] if card is not None else None
        if introduced_to is not None:
            out |= self._sids_of.get(str(introduced_to), set())
        return out

    def _between(self, lo: str, hi: str) -> set[str]:
        """Sids whose start point lies in (lo, hi], the circle of user ids wrapping past the end."""
        pts = self._points
        i, j = bisect.bisect_right(pts, (lo, "\uffff")), bisect.bisect_right(pts, (hi, "\uffff"))
        if lo < hi:
            return {sid for _, sid in pts[i:j]}
        return {sid for _, sid in pts[i:]} | {sid for _, sid in pts[:j]}
