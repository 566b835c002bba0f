"""Referral notifications across two server processes (PROTOCOL.md §3.3, §6 D26, §7 E9): created once
however many intro uploads race on both nodes, delivered live to every socket of the target on every
node, and the unread ones once per connection when it authenticates (not on each repeated `auth`)."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.multinode.conftest import get_json

WEBM_HEAD = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d4287810442858102")
EVENT = "referral:notification"


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    return {"UPLOADS_PER_USER_CONCURRENT": "8"}  # eight racing uploads of one user (default 2)


async def _post(http, url, token, body):
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json()


async def _code(http, node, introducer, target) -> str:
    status, body = await _post(http, f"{node.url}/referral/generate", introducer["sessionToken"],
                               {"targetUserId": target["userId"]})
    assert status == 200, body
    return body["referralCode"]


async def _newcomer(http, node, name, code) -> dict:
    status, body = await _post(http, f"{node.url}/auth/guest", "", {"name": name, "gender": "female",
                                                                     "referralCode": code})
    assert status == 200 and body["wasReferred"], body
    return body


async def _upload_intro(http, node, user) -> int:
    fd = aiohttp.FormData()
    fd.add_field("video", WEBM_HEAD + os.urandom(2048), filename="intro.webm", content_type="video/webm")
    async with http.post(f"{node.url}/media/video", data=fd,
                         headers={"Authorization": f"Bearer {user['sessionToken']}"}) as resp:
        return resp.status


def _about(peer, user_id):
    return [d for d in peer.all(EVENT) if d["notification"]["referredUserId"] == user_id]


async def test_created_once_under_racing_uploads_and_delivered_to_every_socket_on_both_nodes(
        users, peers, n1, n2, http, db):
    a = await users.make(n1, "Alice")
    b = await users.make(n2, "Bob", gender="male")
    code = await _code(http, n1, a, b)
    bob_on_1 = await peers(n1, b, "bob@1")
    bob_on_2 = await peers(n2, b, "bob@2")
    cleo = await _newcomer(http, n2, "Cleo", code)

    statuses = await asyncio.gather(*(_upload_intro(http, node, cleo) for node in (n1, n2) * 4))
    assert statuses == [200] * 8
    for p in (bob_on_1, bob_on_2):
        got = await p.wait(EVENT)
        n = got["notification"]
        assert (n["referredUserId"], n["referredName"], n["introducedByName"], n["forUserId"], n["read"]) == \
            (cleo["userId"], "Cleo", "Alice", b["userId"], False)
        assert "Cleo" in got["message"]
    # Sentinel: a second newcomer's notification is published after every upload above has answered,
    # so any duplicate about Cleo would have arrived before it.
    dan = await _newcomer(http, n1, "Dan", code)
    assert await _upload_intro(http, n1, dan) == 200
    for p in (bob_on_1, bob_on_2):
        await p.wait(EVENT, where=lambda d: d["notification"]["referredUserId"] == dan["userId"])
        assert len(_about(p, cleo["userId"])) == 1, p.all(EVENT)
    assert await db.fetchval("SELECT count(*) FROM referral_notifications") == 2
    status, body = await get_json(http, f"{n1.url}/referral/notifications", b["sessionToken"])
    assert status == 200 and body["unreadCount"] == 2


async def test_unread_ones_once_per_connection_not_on_every_auth(users, peers, n1, n2, http):
    a = await users.make(n1, "Alice")
    b = await users.make(n2, "Bob", gender="male")
    code = await _code(http, n2, a, b)
    for name, node in (("Cleo", n1), ("Dan", n2)):
        newcomer = await _newcomer(http, node, name, code)
        assert await _upload_intro(http, node, newcomer) == 200

    first = await peers(n1, b, "bob@1")  # the handshake authenticates: both unread ones, oldest first
    await first.wait(EVENT)
    await first.wait(EVENT)
    assert [d["notification"]["referredName"] for d in first.all(EVENT)] == ["Cleo", "Dan"]
    # The client re-sends `auth` on every connect (and the overlay when it opens): no repeats.
    # A socket's events are handled in order, so the second auth:success follows anything the first caused.
    for _ in range(2):
        await first.emit("auth", {"sessionToken": b["sessionToken"]})
        await first.wait("auth:success")
    assert len(first.all(EVENT)) == 2

    # Another connection, on the other node, gets them once too; one marked read is not sent again.
    second = await peers(n2, b, "bob@2")
    await second.wait(EVENT)
    await second.wait(EVENT)
    nid = second.all(EVENT)[0]["notification"]["id"]
    async with http.put(f"{n2.url}/referral/notifications/{nid}/read",
                        headers={"Authorization": f"Bearer {b['sessionToken']}"}) as resp:
        assert resp.status == 200
    third = await peers(n1, b, "bob@3")
    only = await third.wait(EVENT)
    assert only["notification"]["referredName"] == "Dan"
    await third.emit("auth", {"sessionToken": b["sessionToken"]})
    await third.wait("auth:success")
    assert len(third.all(EVENT)) == 1 and len(second.all(EVENT)) == 2


async def test_a_connection_that_authenticates_only_by_the_auth_event_gets_them_once(users, peers, n1, n2, http):
    a = await users.make(n1, "Alice")
    b = await users.make(n2, "Bob", gender="male")
    code = await _code(http, n1, a, b)
    cleo = await _newcomer(http, n1, "Cleo", code)
    assert await _upload_intro(http, n2, cleo) == 200
    bob = await peers(n2, None, "bob-noauth")  # no handshake token: unauthenticated until `auth`
    bob.user_id = b["userId"]
    for _ in range(2):
        await bob.emit("auth", {"sessionToken": b["sessionToken"]})
        await bob.wait("auth:success")
    assert [d["notification"]["referredName"] for d in bob.all(EVENT)] == ["Cleo"]
