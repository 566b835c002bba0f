"""CORS for ALLOWED_ORIGINS (PROTOCOL.md §1.1): preflights, allowed and refused origins, errors too."""

from __future__ import annotations

import json

import pytest

from tests.helpers import auth, guest

ALLOWED = "http://localhost:3000"  # in the test settings' allowed_origins
OTHER = "https://evil.example"


def _preflight(origin: str, method: str = "POST", headers: str = "authorization,content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


def _split(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",")}


@pytest.mark.parametrize("path,method", [("/auth/guest", "POST"), ("/user/me", "GET"), ("/user/me", "PUT"),
                                         ("/auth/link", "POST"), ("/auth/logout", "POST")])
async def test_preflight_from_an_allowed_origin(client, path, method):
    resp = await client.options(path, headers=_preflight(ALLOWED, method))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert {"authorization", "content-type"} <= _split(resp.headers["Access-Control-Allow-Headers"])
    assert {"get", "post", "put", "options"} <= _split(resp.headers["Access-Control-Allow-Methods"])
    assert int(resp.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in resp.headers.getall("Vary", [])


@pytest.mark.parametrize("origin", [OTHER, "null", ALLOWED + "/", "http://localhost:3001",
                                    "HTTP://LOCALHOST:3000"])
async def test_preflight_from_another_origin_gets_no_allow_origin(client, origin):
    resp = await client.options("/auth/guest", headers=_preflight(origin))
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert resp.status == 403
    assert (await resp.json())["code"] == "cors_rejected"


async def test_simple_request_from_an_allowed_origin(client):
    resp = await client.post("/auth/guest", json={"name": "Ada", "gender": "female"}, headers={"Origin": ALLOWED})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in resp.headers.getall("Vary", [])
    assert "x-request-id" in _split(resp.headers["Access-Control-Expose-Headers"])


async def test_request_from_another_origin_has_no_allow_origin(client):
    resp = await client.get("/health", headers={"Origin": OTHER})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "Origin" in resp.headers.getall("Vary", [])  # caches must key on the Origin


async def test_request_without_origin_has_no_cors_headers(client):
    resp = await client.get("/health")
    assert "Access-Control-Allow-Origin" not in resp.headers


async def _error(client, method, path, status, **kw):
    resp = await client.request(method, path, **kw)
    assert resp.status == status, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    body = await resp.json()
    assert body["error"] and body["code"]


async def test_error_responses_carry_cors_headers(client):
    o = {"Origin": ALLOWED}
    await _error(client, "GET", "/nope", 404, headers=o)
    await _error(client, "GET", "/auth/guest", 405, headers=o)
    await _error(client, "GET", "/user/me", 401, headers=o)
    await _error(client, "GET", "/user/me", 401, headers={**o, **auth("nope")})
    await _error(client, "POST", "/auth/guest", 400, headers=o, json={"name": ""})
    await _error(client, "POST", "/auth/guest", 400, headers={**o, "Content-Type": "application/json"},
                 data=b"{bad")
    await _error(client, "POST", "/auth/guest", 413, headers={**o, "Content-Type": "application/json"},
                 data=json.dumps({"pad": "x" * (1024 * 1024)}))
    await _error(client, "POST", "/auth/login", 401, headers=o, json={"email": "a@x.io", "password": "x" * 10})


async def test_403_and_409_carry_cors_headers(client, db):
    o = {"Origin": ALLOWED}
    await _error(client, "POST", "/auth/guest", 403, headers=o,
                 json={"name": "Ada", "gender": "female", "inviteCode": "A" * 16})
    a, b = await guest(client, name="A"), await guest(client, name="B")
    await client.post("/auth/link", json={"sessionToken": a["sessionToken"], "email": "a@x.io",
                                          "password": "x" * 10})
    await _error(client, "POST", "/auth/link", 409, headers=o,
                 json={"sessionToken": b["sessionToken"], "email": "a@x.io", "password": "x" * 10})


async def test_options_without_preflight_headers_is_not_a_preflight(client):
    resp = await client.options("/auth/guest", headers={"Origin": ALLOWED})
    assert resp.status == 405
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert (await resp.json())["code"] == "method_not_allowed"
