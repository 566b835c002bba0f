"""The deck beyond `deck_max_cards` listed users (issue 10): a bounded window per requester, with the
users introduced to them first and cooldowns last, and totalAvailable still counted over everyone
(§2.4: before the "reported by me" filter; both report directions hidden, D16)."""

import uuid

import pytest

from server.deps import DEPS
from tests.helpers import auth
from tests.rt import make_user

CAP = 3


@pytest.fixture
def settings(base_settings, request):
    return base_settings.with_(deck_max_cards=getattr(request, "param", CAP))


async def _crowd(client, db, n):
    users = [await make_user(client, db, f"U{i}") for i in range(n)]
    await client.app[DEPS].redis.sadd("available", *[u["userId"] for u in users])
    return users


async def _deck(client, user) -> dict:
    resp = await client.get("/room/queue", headers=auth(user["sessionToken"]))
    assert resp.status == 200
    return await resp.json()


async def _cooldown(db, a, b) -> None:
    await db.execute(
        """INSERT INTO cooldowns (user_a, user_b, expires_at, reason)
           VALUES (LEAST($1::uuid, $2::uuid), GREATEST($1::uuid, $2::uuid), now() + interval '1 hour', 'call')""",
        a, b)


async def test_a_crowd_beyond_the_cap_gets_a_stable_bounded_window(client, db):
    me, *others = await _crowd(client, db, 8)
    first = await _deck(client, me)
    assert first["totalAvailable"] == 7
    ids = [u["userId"] for u in first["users"]]
    assert len(ids) == CAP and me["userId"] not in ids
    assert set(ids) <= {o["userId"] for o in others}
    assert [u["userId"] for u in (await _deck(client, me))["users"]] == ids  # the same on a refetch
    card = first["users"][0]
    assert set(card) >= {"userId", "name", "gender", "selfieUrl", "videoUrl", "hasCooldown", "cooldownExpiry",
                         "wasIntroducedToMe", "introducedBy"}


async def test_requesters_get_different_windows(client, db):
    users = await _crowd(client, db, 8)
    windows = {tuple(sorted(u["userId"] for u in (await _deck(client, me))["users"])) for me in users}
    assert len(windows) > 1


async def test_introduced_users_come_first_and_cooldowns_last(client, db):
    me, introduced, free, *cooled = await _crowd(client, db, 7)
    await db.execute("UPDATE users SET introduced_to = $1 WHERE id = $2", me["userId"], introduced["userId"])
    await _cooldown(db, me["userId"], introduced["userId"])  # introduced still comes first
    for c in cooled:
        await _cooldown(db, me["userId"], c["userId"])
    deck = await _deck(client, me)
    got = deck["users"]
    assert deck["totalAvailable"] == 6
    assert len(got) == CAP
    assert got[0]["userId"] == introduced["userId"] and got[0]["wasIntroducedToMe"] is True
    assert got[1]["userId"] == free["userId"] and got[1]["hasCooldown"] is False
    assert got[2]["userId"] in {c["userId"] for c in cooled} and got[2]["hasCooldown"] is True
    assert isinstance(got[2]["cooldownExpiry"], int)


@pytest.mark.parametrize("settings", [2, 100], ids=["beyond-cap", "below-cap"], indirect=True)
async def test_reports_hide_both_ways_and_total_counts_mine(client, db, settings):
    cap = settings.deck_max_cards
    me, mine, theirs, *rest = await _crowd(client, db, 6)
    await db.execute("INSERT INTO reports (reporter_id, reported_id) VALUES ($1, $2)", me["userId"], mine["userId"])
    await db.execute("INSERT INTO reports (reporter_id, reported_id) VALUES ($1, $2)", theirs["userId"], me["userId"])
    for _ in range(3):
        deck = await _deck(client, me)
        ids = {u["userId"] for u in deck["users"]}
        assert deck["totalAvailable"] == 4  # everyone but me and who reported me; mine still counts (§2.4)
        assert not ids & {me["userId"], mine["userId"], theirs["userId"]}
        assert len(ids) == min(cap, len(rest))


async def test_a_caller_may_ask_for_fewer_cards_never_more(client, db):
    me, *_ = await _crowd(client, db, 6)
    deps = client.app[DEPS]
    for asked, got in ((1, 1), (CAP, CAP), (50, CAP)):
        cards, total = await deps.deck.for_user(deps, me["userId"], limit=asked)
        assert (len(cards), total) == (got, 5)


async def test_limit_asks_for_fewer_cards_and_bad_limits_are_refused(client, db):
    me, *_others = await _crowd(client, db, 5)
    resp = await client.get("/room/queue?limit=2", headers=auth(me["sessionToken"]))
    body = await resp.json()
    assert resp.status == 200 and len(body["users"]) == 2 and body["totalAvailable"] == 4
    assert len((await _deck(client, me))["users"]) == CAP  # never more than the server's cap
    resp = await client.get("/room/queue?limit=1000", headers=auth(me["sessionToken"]))
    assert resp.status == 200 and len((await resp.json())["users"]) == CAP
    for bad in ("0", "-1", "abc", "1001", "2.5", "99999999999999999999", "\u0661"):
        resp = await client.get("/room/queue", params={"limit": bad}, headers=auth(me["sessionToken"]))
        assert resp.status == 400, bad
        assert (await resp.json())["code"] == "invalid_limit"


async def test_building_many_cards_lets_other_handlers_run_between_batches(client, db, monkeypatch):
    import asyncio

    from server.presence import deck as deck_module

    ids = [str(uuid.uuid4()) for _ in range(2 * deck_module.CARD_BATCH + 1)]
    await db.executemany(
        """INSERT INTO users (id, name, gender, paid_status, selfie_key, video_key)
           VALUES ($1, $2, 'female', 'paid', $3, $4)""",
        [(i, f"B{n}", f"users/{i}/selfie-1.jpg", f"users/{i}/intro-1.webm") for n, i in enumerate(ids)])
    deps = client.app[DEPS]
    ticks = 0

    async def other_handler():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    seen: list[int] = []  # the other handler's ticks when each card was built
    real_card = deck_module.card
    monkeypatch.setattr(deck_module, "card", lambda d, row: seen.append(ticks) or real_card(d, row))
    deps.deck.cards.clear()
    other = asyncio.create_task(other_handler())
    try:
        cards = await deps.deck.cards_of(deps, ids)
    finally:
        other.cancel()
    assert set(cards) == set(ids)
    assert all(i in deps.deck.cards for i in ids)  # cached for the next request
    batch = deck_module.CARD_BATCH
    assert len(seen) == len(ids)
    # Within a batch nothing else ran; between batches the other handler did.
    assert seen[0] == seen[batch - 1] < seen[batch] == seen[2 * batch - 1] < seen[2 * batch]
