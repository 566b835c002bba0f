"""Deck changes reach the clients whose deck can show that user (issue 10 §3, presence/audience.py).

With more users listed than a deck window reaches (deck_max_cards, plus the most users a window served
lately walked past without showing them, plus a quarter of the cards), `queue:update` about user X goes
to the queued clients whose window starts close enough before X and to the user X was introduced to,
and not to a client whose window lies far away; with fewer listed, everyone hears it."""

import bisect

import pytest

from server.presence.deck import start_point
from tests.helpers import auth
from tests.rt import make_user

CARDS = 1  # one card per deck
REACH = CARDS + 1  # before any window skipped a user: the card and the margin for joins (at least 1)
CROWD = 12


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(deck_max_cards=CARDS)


def _distance(order: list[str], viewer: str, target: str) -> int:
    """How many listed users the viewer's window starts before the target."""
    return (order.index(target) - bisect.bisect_left(order, start_point(viewer))) % len(order)


def _pick(order: list[str]) -> tuple[str, list[str], list[str]]:
    """A target with at least one near viewer (its window starts within reach of the target, even if the
    target is no longer listed) and two far ones (their windows start well away from it)."""
    for target in order:
        others = [u for u in order if u != target]
        near = [u for u in others if _distance(order, u, target) <= REACH]
        # (+3: the near viewer's own deck request may walk past itself, which widens the reach by one)
        far = [u for u in others if REACH + 3 <= _distance(order, u, target) <= len(order) - 2]
        if near and len(far) >= 2:
            return target, near, far
    raise AssertionError("no target with near and far viewers in this crowd")


async def _queued(sockets, users):
    peers = {}
    for u in users:
        p = peers[u["userId"]] = await sockets(u)
        await p.emit("queue:join")
        await p.wait("queue:update", where=lambda d, me=u["userId"]: d["userId"] == me)
    return peers


async def test_a_change_reaches_the_windows_that_can_show_it(client, db, sockets):
    users = [await make_user(client, db, f"U{i}") for i in range(CROWD)]
    order = sorted(u["userId"] for u in users)
    target, near, far = _pick(order)
    introduced = far[1]  # far by position, but X was introduced to them: always first in their deck
    await db.execute("UPDATE users SET introduced_to = $1 WHERE id = $2", introduced, target)
    peers = await _queued(sockets, users)
    by_id = {u["userId"]: u for u in users}
    resp = await client.get("/room/queue", headers=auth(by_id[near[0]]["sessionToken"]))
    assert (await resp.json())["totalAvailable"] == CROWD - 1
    marks = {uid: p.mark() for uid, p in peers.items()}

    await peers[target].emit("queue:leave")

    def about_target(d):
        return d["userId"] == target and d["available"] is False

    for uid in [*near, introduced]:  # (X's socket left the queue room with its queue:leave)
        await peers[uid].wait("queue:update", where=about_target, since=marks[uid], timeout=8)
    assert not await _sentinel_then_heard(peers[far[0]], marks[far[0]], about_target)


async def _sentinel_then_heard(peer, mark, about) -> bool:
    """Whether `peer` got a queue:update matching `about` since `mark`, asked after its own request was
    answered (the node answers in order, so an update sent before it has arrived by then)."""
    await peer.emit("call:end", {"roomId": "00000000-0000-4000-8000-000000000000"})
    await peer.wait("call:error", since=mark)
    return any(d[0] == "queue:update" and about(d[1]) for d in peer.events[mark:])


async def test_a_window_that_walks_past_hidden_users_widens_the_reach(client, db, sockets):
    users = [await make_user(client, db, f"U{i}") for i in range(CROWD)]
    order = sorted(u["userId"] for u in users)
    skip = REACH + 2  # users the viewer's window walks past before the target: beyond the default reach
    viewer, target, witness = next(
        (v, t, w) for t in order for v in order for w in order
        if len({v, t, w}) == 3 and _distance(order, v, t) == skip and _distance(order, w, t) <= REACH)
    start = order.index(target) - skip
    for passed in (order[(start + i) % len(order)] for i in range(skip)):
        if passed != viewer:  # (the viewer passes itself anyway)
            await db.execute(
                """INSERT INTO cooldowns (user_a, user_b, expires_at, reason)
                   VALUES (LEAST($1::uuid, $2::uuid), GREATEST($1::uuid, $2::uuid), now() + interval '1 hour',
                           'call')""", viewer, passed)
    peers = await _queued(sockets, users)
    by_id = {u["userId"]: u for u in users}

    def about_target(available):
        return lambda d: d["userId"] == target and d["available"] is available

    # Nobody's window has skipped anyone yet: the viewer is out of reach (the witness, within it,
    # shows the update went out).
    mark, seen = peers[viewer].mark(), peers[witness].mark()
    await peers[target].emit("queue:leave")
    await peers[witness].wait("queue:update", where=about_target(False), since=seen, timeout=8)
    assert not await _sentinel_then_heard(peers[viewer], mark, about_target(False))
    seen = peers[witness].mark()
    await peers[target].emit("queue:join")
    await peers[witness].wait("queue:update", where=about_target(True), since=seen, timeout=8)

    # Its deck walks past the cooled users to the target; from then on it hears of the target.
    resp = await client.get("/room/queue", headers=auth(by_id[viewer]["sessionToken"]))
    assert [u["userId"] for u in (await resp.json())["users"]] == [target]
    mark = peers[viewer].mark()
    await peers[target].emit("queue:leave")
    await peers[viewer].wait("queue:update", where=about_target(False), since=mark, timeout=8)


async def test_everyone_hears_a_change_while_few_are_listed(client, db, sockets):
    users = [await make_user(client, db, f"U{i}") for i in range(2 * CARDS)]  # within one window's reach
    peers = await _queued(sockets, users)
    a, b = users
    mark = peers[b["userId"]].mark()
    await peers[a["userId"]].emit("queue:leave")
    got = await peers[b["userId"]].wait("queue:update", where=lambda d: d["userId"] == a["userId"], since=mark,
                                        timeout=8)
    assert got["available"] is False
