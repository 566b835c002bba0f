"""The HTTP session cache across two server processes (issue 10 §5): with the session cached on both
nodes, a logout, a newer login, a ban or a deletion made through one node is refused by the very next
request on either node (the change's control message reaches every node before its response)."""

from __future__ import annotations

import aiohttp

from tests.moderation_kit import moderator_on, post_json
from tests.multinode.conftest import Node


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status(http: aiohttp.ClientSession, node: Node, token: str) -> int:
    async with http.get(f"{node.url}/user/me", headers=_h(token)) as resp:
        await resp.read()
        return resp.status


async def _warm(http: aiohttp.ClientSession, nodes: tuple[Node, Node], token: str) -> None:
    for node in nodes:
        for _ in range(2):  # the second is served from the node's cache
            assert await _status(http, node, token) == 200


async def test_logout_on_one_node_is_refused_next_on_both(users, n1, n2, http):
    u = await users.make(n1, "Out")
    await _warm(http, (n1, n2), u["sessionToken"])
    status, _ = await post_json(http, f"{n2.url}/auth/logout", None, u["sessionToken"])
    assert status == 200
    assert [await _status(http, n, u["sessionToken"]) for n in (n1, n2)] == [401, 401]


async def test_a_newer_login_is_refused_next_on_both(users, n1, n2, http):
    u = await users.make(n1, "Twice")
    status, body = await post_json(http, f"{n1.url}/auth/link", {"sessionToken": u["sessionToken"],
                                                              "email": "twice@example.com",
                                                              "password": "a long password 1"})
    assert status == 200, body
    await _warm(http, (n1, n2), u["sessionToken"])
    status, body = await post_json(http, f"{n1.url}/auth/login", {"email": "twice@example.com",
                                                               "password": "a long password 1"})
    assert status == 200 and body["sessionInvalidated"] is True, body
    assert [await _status(http, n, u["sessionToken"]) for n in (n1, n2)] == [401, 401]
    assert [await _status(http, n, body["sessionToken"]) for n in (n1, n2)] == [200, 200]


async def test_a_ban_is_refused_next_on_both(users, n1, n2, http, db):
    _mod, admin_token = await moderator_on(http, db, n1, users)
    bad = await users.make(n2, "Bad")
    await _warm(http, (n1, n2), bad["sessionToken"])
    status, body = await post_json(http, f"{n1.url}/mod/users/{bad['userId']}/ban",
                               {"status": "permanent", "reason": "abuse"}, admin_token)
    assert status == 200, body
    assert [await _status(http, n, bad["sessionToken"]) for n in (n1, n2)] == [403, 403]


async def test_a_deleted_account_is_refused_next_on_both(users, n1, n2, http):
    u = await users.make(n1, "Gone")
    await _warm(http, (n1, n2), u["sessionToken"])
    async with http.delete(f"{n2.url}/user/me", headers=_h(u["sessionToken"])) as resp:
        assert resp.status == 200, await resp.text()
    assert [await _status(http, n, u["sessionToken"]) for n in (n1, n2)] == [401, 401]
