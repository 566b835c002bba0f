"""error_middleware on a tiny app: every failure is JSON {error, code}, never HTML or a traceback."""

from __future__ import annotations

import pytest
from aiohttp import web

from server.errors import ApiError, bad_request, error_middleware, rate_limited, unauthorized

SECRET = "hunter2-in-an-exception"


async def _boom(_request: web.Request) -> web.Response:
    raise RuntimeError(f"unexpected failure with {SECRET}")


async def _api_error(_request: web.Request) -> web.Response:
    raise ApiError(401, "invalid_credentials", "Invalid credentials", message="Guest accounts have no password")


async def _limited(_request: web.Request) -> web.Response:
    raise rate_limited("Too many login attempts", 7, message="Try later")


async def _redirect(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/elsewhere")


async def _payload(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"ok": True})


async def _missing_file(_request: web.Request) -> web.StreamResponse:
    from pathlib import Path

    return web.FileResponse(Path("/nonexistent/file.txt"))


@pytest.fixture
async def client(aiohttp_client):
    app = web.Application(middlewares=[error_middleware], client_max_size=1024)
    app.router.add_get("/boom", _boom)
    app.router.add_get("/api-error", _api_error)
    app.router.add_get("/limited", _limited)
    app.router.add_get("/redirect", _redirect)
    app.router.add_post("/payload", _payload)
    app.router.add_get("/file", _missing_file)
    return await aiohttp_client(app)


async def test_unexpected_exception_is_a_json_500_without_details(client, capfd):
    resp = await client.get("/boom", headers={"Accept": "text/html"})
    assert resp.status == 500
    assert resp.content_type == "application/json"
    assert await resp.json() == {"error": "Internal server error", "code": "internal"}
    text = await resp.text()
    assert SECRET not in text and "Traceback" not in text and "RuntimeError" not in text


async def test_api_error_keeps_message_and_flags(client):
    resp = await client.get("/api-error")
    assert resp.status == 401
    assert await resp.json() == {"error": "Invalid credentials", "code": "invalid_credentials",
                                 "message": "Guest accounts have no password"}


async def test_rate_limited_carries_retry_after_and_message(client):
    resp = await client.get("/limited")
    assert resp.status == 429
    assert await resp.json() == {"error": "Too many login attempts", "code": "rate_limited", "retryAfter": 7,
                                 "message": "Try later"}


@pytest.mark.parametrize("method,path,status,code", [
    ("GET", "/missing", 404, "not_found"),
    ("POST", "/boom", 405, "method_not_allowed"),
    ("GET", "/file", 404, "not_found"),
])
async def test_http_exceptions_become_json(client, method, path, status, code):
    resp = await client.request(method, path, headers={"Accept": "text/html"})
    assert resp.status == status and resp.content_type == "application/json"
    assert (await resp.json())["code"] == code


async def test_405_keeps_the_allow_header(client):
    resp = await client.post("/boom")
    assert "GET" in resp.headers["Allow"]


async def test_413_is_json(client):
    resp = await client.post("/payload", data=b"x" * 2048)
    assert resp.status == 413
    assert await resp.json() == {"error": "Request body too large", "code": "payload_too_large"}


async def test_redirects_pass_through(client):
    resp = await client.get("/redirect", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/elsewhere"


def test_message_keyword_never_clashes_with_the_error_text():
    # A `message=` keyword is the body's optional `message` field (PROTOCOL §1.3), not the `error` text.
    assert ApiError(403, "x", "Account suspended", message="m").extra == {"message": "m"}
    assert unauthorized("Session invalidated", message="m").extra == {"message": "m"}
    assert bad_request("Bad", code="c", message="m").extra == {"message": "m"}
    assert rate_limited("Too many", 3, code="c", message="m").extra == {"retryAfter": 3, "message": "m"}
