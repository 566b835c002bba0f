"""Request helpers: client IP behind trusted proxies, bearer tokens, schema messages, storable strings."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from server.errors import ApiError
from server.httpio import _storable, bearer_token, client_ip, validate


def _req(headers=None, remote="203.0.113.9"):
    req = make_mocked_request("GET", "/", headers=headers or {})
    return req.clone(remote=remote)


@pytest.mark.parametrize("xff,hops,expected", [
    (None, 0, "203.0.113.9"),
    ("1.1.1.1", 0, "203.0.113.9"),                 # no trusted proxy: the header is ignored
    ("1.1.1.1", 1, "1.1.1.1"),
    ("6.6.6.6, 1.1.1.1", 1, "1.1.1.1"),            # a spoofed left entry is ignored
    ("6.6.6.6, 1.1.1.1, 10.0.0.2", 2, "1.1.1.1"),
    ("1.1.1.1", 2, "203.0.113.9"),                 # chain shorter than the hop count
    ("not-an-ip", 1, None),
    ("2001:db8::1", 1, "2001:db8::1"),
])
def test_client_ip(xff, hops, expected):
    headers = {"X-Forwarded-For": xff} if xff else {}
    assert client_ip(_req(headers), hops) == expected


@pytest.mark.parametrize("header,token", [
    (None, None), ("", None), ("Bearer", None), ("bearer   ", None),
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER   abc  ", "abc"), ("abc", "abc"),
])
def test_bearer_token(header, token):
    assert bearer_token(_req({"Authorization": header} if header is not None else {})) == token


SCHEMA = {
    "type": "object",
    "required": ["name", "gender"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "x-error": "Name is required"},
        "gender": {"enum": ["female", "male"], "x-error": "Invalid gender"},
        "age": {"type": "integer"},
    },
}


@pytest.mark.parametrize("data,message", [
    ({}, "Name is required"),
    ({"gender": "female"}, "Name is required"),
    ({"name": "Ada"}, "Invalid gender"),
    ({"name": "", "gender": "female"}, "Name is required"),
    ({"name": "Ada", "gender": "robot"}, "Invalid gender"),
    ({"name": "Ada", "gender": "female", "age": "x"}, "Invalid age"),
])
def test_validate_messages(data, message):
    with pytest.raises(ApiError) as exc:
        validate(data, SCHEMA)
    assert (exc.value.status, exc.value.message) == (400, message)


def test_validate_accepts_valid_data():
    validate({"name": "Ada", "gender": "male", "age": 3}, SCHEMA)


@pytest.mark.parametrize("value,ok", [
    ({"a": "b"}, True), ({"a": ["b", {"c": "d"}]}, True), ({"a": "\x00"}, False), ({"\x00": 1}, False),
    ({"a": ["\ud800"]}, False), ({"a": {"b": "ok\udfff"}}, False), ({"a": "é😀"}, True),
])
def test_storable(value, ok):
    assert _storable(value) is ok


@pytest.mark.parametrize("ip,scope", [
    ("198.51.100.7", "198.51.100.7"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),
    (None, "unknown"),
    ("not-an-ip", "unknown"),
])
def test_ip_scope(ip, scope):
    from server.httpio import ip_scope

    assert ip_scope(ip) == scope
