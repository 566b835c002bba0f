"""Every error is JSON {error, code} (PROTOCOL.md §1.1, §1.3): 404, 405, 413, malformed bodies, types."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.helpers import auth, guest

JSON = {"Content-Type": "application/json"}


async def _json_error(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["code"], str) and body["code"]
    text = json.dumps(body).lower()
    assert "<html" not in text and "traceback" not in text
    assert resp.headers.get("X-Request-ID")
    return body


@pytest.mark.parametrize("method,path", [
    ("GET", "/nope"), ("POST", "/nope"), ("GET", "/auth"), ("GET", "/auth/guest/extra"),
    ("GET", "/static/does-not-exist.js"), ("GET", "/user/me/"), ("PUT", "/api/v1/x"),
])
async def test_unknown_route_is_404_json(client, method, path):
    body = await _json_error(await client.request(method, path), 404)
    assert body == {"error": "Not found", "code": "not_found"}


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/auth/guest", "POST"),
    ("PUT", "/auth/login", "POST"),
    ("DELETE", "/stats/live", "GET"),
    ("POST", "/health", "GET"),
    ("PATCH", "/auth/session", "GET"),
])
async def test_wrong_method_is_405_json_with_allow(client, method, path, allowed):
    resp = await client.request(method, path)
    body = await _json_error(resp, 405)
    assert body == {"error": "Method not allowed", "code": "method_not_allowed"}
    assert allowed in resp.headers["Allow"]


@pytest.mark.parametrize("path", ["/auth/guest", "/auth/login", "/auth/link"])
async def test_10mb_body_is_413_json_and_writes_nothing(client, db, path):
    payload = json.dumps({"name": "Ada", "gender": "female", "email": "a@x.io", "password": "x" * 10,
                          "pad": "x" * (10 * 1024 * 1024)})
    body = await _json_error(await client.post(path, data=payload, headers=JSON), 413)
    assert body == {"error": "Request body too large", "code": "payload_too_large"}
    assert await db.fetchval("SELECT count(*) FROM users") == 0
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_10mb_body_on_an_authenticated_route_is_413(client, db):
    g = await guest(client)
    payload = json.dumps({"socials": {"twitter": "x"}, "pad": "x" * (10 * 1024 * 1024)})
    await _json_error(await client.put("/user/me", data=payload, headers={**JSON, **auth(g["sessionToken"])}),
                      413)
    assert json.loads(await db.fetchval("SELECT socials::text FROM users")) == {}


async def test_body_just_over_the_limit_is_413_and_just_under_is_parsed(client, db):
    limit = client.app._client_max_size
    over = json.dumps({"name": "Ada", "gender": "female", "pad": "x" * limit})
    await _json_error(await client.post("/auth/guest", data=over, headers=JSON), 413)
    under = json.dumps({"name": "Ada", "gender": "female", "pad": "x" * (limit - 100)})
    assert len(under) <= limit
    assert (await client.post("/auth/guest", data=under, headers=JSON)).status == 200


async def test_compressed_body_is_limited_after_decompression(client, db):
    bomb = gzip.compress(json.dumps({"name": "Ada", "gender": "female", "pad": "0" * (10 * 1024 * 1024)}).encode())
    assert len(bomb) < 64 * 1024
    resp = await client.post("/auth/guest", data=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    await _json_error(resp, 413)
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize("raw", [b"{", b"{'name': 'Ada'}", b'{"name": "Ada",}', b"nope", b"\xff\xfe{}",
                                 b'{"name": "Ada"} trailing', b"NaN"])
async def test_malformed_json_is_400(client, db, raw):
    body = await _json_error(await client.post("/auth/guest", data=raw, headers=JSON), 400)
    assert body["code"] == "invalid_json"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize("raw", [b"[]", b'[{"name": "Ada", "gender": "female"}]', b'"Ada"', b"42", b"null",
                                 b"true"])
async def test_json_that_is_not_an_object_is_400(client, db, raw):
    body = await _json_error(await client.post("/auth/guest", data=raw, headers=JSON), 400)
    assert body == {"error": "JSON body must be an object", "code": "invalid_json"}
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize("path,payload", [
    ("/auth/guest", {"name": {"first": "Ada"}, "gender": "female"}),
    ("/auth/guest", {"name": "Ada", "gender": ["female"]}),
    ("/auth/guest", {"name": "Ada", "gender": "female", "referralCode": 5}),
    ("/auth/guest", {"name": "Ada", "gender": "female", "inviteCode": True}),
    ("/auth/login", {"email": 1, "password": 2}),
    ("/auth/login", {"email": "a@x.io", "password": ["x" * 10]}),
    ("/auth/link", {"sessionToken": 5, "email": "a@x.io", "password": "x" * 10}),
])
async def test_wrong_types_are_400(client, db, path, payload):
    await _json_error(await client.post(path, json=payload), 400)
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n"])
async def test_empty_body_counts_as_empty_object(client, raw):
    # §1.1: the client sends the JSON content type with no body on some routes.
    body = await _json_error(await client.post("/auth/guest", data=raw, headers=JSON), 400)
    assert body["error"] == "Name is required"
    body = await _json_error(await client.post("/auth/login", data=raw, headers=JSON), 400)
    assert body["error"] == "A valid email is required"


async def test_no_body_and_no_content_type_counts_as_empty_object(client):
    body = await _json_error(await client.post("/auth/guest"), 400)
    assert body["error"] == "Name is required"


@pytest.mark.parametrize("raw", [b'{"name": "A\\u0000B", "gender": "female"}',
                                 b'{"name": "\\ud800", "gender": "female"}',
                                 b'{"name": "Ada", "gender": "female", "referralCode": "AB\\u0000"}',
                                 b'{"name": "Ada", "gender": "female", "\\u0000": 1}'])
async def test_unstorable_strings_are_400_not_500(client, db, raw):
    await _json_error(await client.post("/auth/guest", data=raw, headers=JSON), 400)
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_deeply_nested_json_is_400_not_500(client):
    raw = b'{"name": "Ada", "gender": "female", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    resp = await client.post("/auth/guest", data=raw, headers=JSON)
    assert resp.status in (400, 413)
    await _json_error(resp, resp.status)


async def test_html_is_never_served_for_errors_even_when_asked(client):
    resp = await client.get("/nope", headers={"Accept": "text/html"})
    await _json_error(resp, 404)
    resp = await client.get("/auth/guest", headers={"Accept": "text/html"})
    await _json_error(resp, 405)


async def test_request_id_is_echoed_when_sane_and_replaced_when_not(client):
    resp = await client.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await client.get("/nope", headers={"X-Request-ID": "bad id\twith junk"})
    assert resp.headers["X-Request-ID"] != "bad id\twith junk" and len(resp.headers["X-Request-ID"]) == 32
