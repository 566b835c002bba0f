"""One canonical spelling of user ids (issue 12, item 4)."""

from __future__ import annotations

import uuid

import pytest

from server.ids import canonical_user_id, user_uuid

ID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


@pytest.mark.parametrize("spelling", [
    ID, ID.upper(), ID.replace("-", ""), ID.replace("-", "").upper(), "{" + ID + "}", "{" + ID.upper() + "}",
    "urn:uuid:" + ID, "URN:UUID:" + ID.upper(), "urn:uuid:{" + ID + "}", f"  {ID}\n",
    "3F2504E0-4f89-11D3-9a0c-0305E82C3301",
])
def test_every_spelling_of_one_id_is_the_same_id(spelling):
    assert canonical_user_id(spelling) == ID
    assert user_uuid(spelling) == uuid.UUID(ID)


@pytest.mark.parametrize("value", [
    None, 5, ["x"], "", "not-a-uuid", ID[:-1], ID + "0", "{" + ID, ID + "}", "(" + ID + ")",
    ID.replace("3f25", "3g25"), "3f25_04e04f8911d39a0c0305e82c3301", "+3f2504e04f8911d39a0c0305e82c330",
    "urn:uuid:urn:uuid:" + ID, "uuid:" + ID, ID + "x" * 100,
])
def test_anything_else_is_not_a_user_id(value):
    assert canonical_user_id(value) is None and user_uuid(value) is None


def test_stricter_than_the_uuid_constructor():
    odd = "3f25_04e04f8911d39a0c0305e82c330"  # uuid.UUID accepts this (int() skips the underscore)
    assert uuid.UUID(odd)
    assert canonical_user_id(odd) is None
