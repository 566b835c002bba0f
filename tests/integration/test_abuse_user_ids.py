"""Routes that take a user id see one spelling of it (issue 12, item 4): one's own id in any spelling
is still oneself, and another user's id in any spelling is that user."""

from __future__ import annotations

import pytest

from tests.helpers import auth
from tests.rt import make_user


def spellings(user_id: str) -> list[str]:
    return [user_id.upper(), "urn:uuid:" + user_id, user_id.replace("-", ""), "{" + user_id + "}",
            "URN:UUID:{" + user_id.replace("-", "").upper() + "}"]


async def _generate(client, token, target_id):
    resp = await client.post("/referral/generate", json={"targetUserId": target_id}, headers=auth(token))
    return resp.status, await resp.json()


async def test_introducing_yourself_is_refused_in_every_spelling(client, db):
    a = await make_user(client, db, "Alice")
    for own in spellings(a["userId"]):
        status, body = await _generate(client, a["sessionToken"], own)
        assert (status, body["code"]) == (400, "self_introduction"), own
    assert await db.fetchval("SELECT count(*) FROM referral_codes") == 0


async def test_another_users_id_in_every_spelling_is_that_user(client, db):
    a = await make_user(client, db, "Alice")
    b = await make_user(client, db, "Bob", gender="male")
    codes = set()
    for other in spellings(b["userId"]):
        status, body = await _generate(client, a["sessionToken"], other)
        assert status == 200, body
        codes.add(body["referralCode"])
    assert len(codes) == 1 and await db.fetchval("SELECT count(*) FROM referral_codes") == 1


@pytest.mark.parametrize("bad", ["3f25_04e04f8911d39a0c0305e82c330", "uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301"])
async def test_near_ids_are_refused(client, db, bad):
    a = await make_user(client, db, "Alice")
    assert (await _generate(client, a["sessionToken"], bad))[0] == 400


async def test_reporting_yourself_is_refused_in_every_spelling(client, db):
    a = await make_user(client, db, "Alice")
    for own in spellings(a["userId"]):
        resp = await client.post("/report/user", json={"reportedUserId": own, "reason": "x"},
                                 headers=auth(a["sessionToken"]))
        assert resp.status == 400 and (await resp.json())["code"] == "self_report", own
    assert await db.fetchval("SELECT count(*) FROM reports") == 0
