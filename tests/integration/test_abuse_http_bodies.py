"""HTTP bodies are bounded in time and size (issue 12, item 9): a Content-Length no route accepts is
refused at once, bodies that stop arriving (or trickle) end with 408 and free what they held, and one
user's slow uploads cannot take a node's upload slots.

Requests are written by hand on raw sockets: a normal client cannot lie about its body. The limits
are configured small, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from test_media_samples import JPEG_HEAD, form, new_user, sample

from tests.helpers import auth

IDLE_S = 0.5
UPLOAD_MAX_S = 1.5
BODY_S = 0.5


@pytest.fixture
def settings(base_settings):
    return base_settings.with_(body_read_timeout_seconds=BODY_S, upload_idle_timeout_seconds=IDLE_S,
                               upload_max_seconds=UPLOAD_MAX_S, uploads_per_user_concurrent=1,
                               upload_slots_per_node=1, upload_slot_wait_seconds=0.3)


class Raw:
    """One TCP connection to the test server, written by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, client: Any) -> Raw:
        return cls(*await asyncio.open_connection(client.server.host, client.server.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        await self.send("\r\n".join(lines).encode())

    async def response(self, within: float = 10) -> tuple[int, dict[str, str], Any]:
        async def read() -> tuple[int, dict[str, str], Any]:
            status_line = await self.reader.readline()
            assert status_line, "connection closed without a response"
            headers = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            parsed = json.loads(body) if headers.get("content-type", "").startswith("application/json") else body
            return int(status_line.split()[1]), headers, parsed
        return await asyncio.wait_for(read(), within)

    async def response_while_sending(self, data: bytes, every: float) -> tuple[int, dict[str, str], Any]:
        """The response, while `data` keeps being sent every `every` seconds (a body that trickles)."""
        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    await self.send(data)
                    await asyncio.sleep(every)

        task = asyncio.create_task(trickle())
        try:
            return await self.response()
        finally:
            task.cancel()

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def raw(client: Any):
    conn = await Raw.open(client)
    try:
        yield conn
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("path,code", [("/auth/guest", "payload_too_large"), ("/auth/login", "payload_too_large"),
                                       ("/media/selfie", "file_too_large"), ("/media/video", "file_too_large")])
async def test_impossible_content_length_is_refused_at_once(client, settings, db, path, code):
    async with raw(client) as conn:
        started = time.monotonic()
        await conn.head("POST", path, {**JSON, "Content-Length": "99999999999"})
        status, _, body = await conn.response()
        assert time.monotonic() - started < BODY_S  # before any body timeout could have fired
    assert status == 413 and body["code"] == code
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_lying_content_length_is_answered_408_and_closed(client, db):
    async with raw(client) as conn:
        await conn.head("POST", "/auth/guest", {**JSON, "Content-Length": "1000"})
        await conn.send(b'{"name": "Ada", "gender": "female"}')  # 35 bytes of the promised 1000
        status, headers, body = await conn.response()
        assert status == 408 and body == {"error": "Request body not received in time", "code": "body_timeout"}
        # The connection ends (after aiohttp's lingering read of at most 10 s, which discards).
        assert headers.get("connection", "").lower() == "close"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_webhook_body_is_bounded_in_time_too(client, db):
    async with raw(client) as conn:
        await conn.head("POST", "/payment/webhook", {**JSON, "Content-Length": "1000", "Stripe-Signature": "t=1"})
        await conn.send(b'{"id": "evt_1"')
        status, _, body = await conn.response()
    assert status == 408 and body["code"] == "body_timeout"


async def test_chunked_body_that_never_ends_is_answered_408(client, db):
    async with raw(client) as conn:
        await conn.head("POST", "/auth/guest", {**JSON, "Transfer-Encoding": "chunked"})

        status, _, body = await conn.response_while_sending(b"1\r\n \r\n", 0.05)  # never the final chunk
        assert status == 408 and body["code"] == "body_timeout"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


def _multipart_head(token: str, length: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=XyZ",
            "Content-Length": str(length)}


PART_HEAD = (b'--XyZ\r\nContent-Disposition: form-data; name="selfie"; filename="a.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n")


async def _held(settings, user_id: str, expected: int, within: float = 10) -> None:
    """Until the user holds `expected` upload slots (the sentinel that a stalled upload is in)."""
    r = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + within
        while int(await r.get(f"slots:media:uploading:{user_id}") or 0) != expected:
            assert time.monotonic() < deadline, f"upload slots of {user_id} never reached {expected}"
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()


async def test_stalled_upload_ends_408_and_its_user_may_upload_once_at_a_time(client, settings):
    user_id, token = await new_user(client)
    other_id, other_token = await new_user(client)
    jpeg = sample(JPEG_HEAD, 20_000)
    async with raw(client) as conn:
        await conn.head("POST", "/media/selfie", _multipart_head(token, 500_000))
        await conn.send(PART_HEAD + JPEG_HEAD)  # then nothing more
        await _held(settings, user_id, 1)
        # The same user meanwhile: refused at once instead of taking another slot.
        resp = await client.post("/media/selfie", data=form("selfie", jpeg, "a.jpg", "image/jpeg"),
                                 headers=auth(token))
        assert resp.status == 429 and (await resp.json())["code"] == "upload_in_progress"
        status, _, body = await conn.response()
        assert status == 408 and body["code"] == "body_timeout"
    await _held(settings, user_id, 0)
    for t in (token, other_token):  # the slot is free again; the node's single slot too
        resp = await client.post("/media/selfie", data=form("selfie", jpeg, "a.jpg", "image/jpeg"), headers=auth(t))
        assert resp.status == 200, await resp.text()
    del other_id


async def test_trickling_upload_ends_at_the_upload_deadline(client, settings):
    user_id, token = await new_user(client)
    async with raw(client) as conn:
        await conn.head("POST", "/media/selfie", _multipart_head(token, 500_000))
        await conn.send(PART_HEAD + JPEG_HEAD)

        started = time.monotonic()
        # Never idle for IDLE_S, so only the total deadline can end it.
        status, _, body = await conn.response_while_sending(b"\x00" * 16, IDLE_S / 5)
        assert status == 408 and body["code"] == "body_timeout"
        assert time.monotonic() - started >= UPLOAD_MAX_S - 0.5  # the deadline, not the idle gap, ended it
    await _held(settings, user_id, 0)


async def test_a_full_node_answers_503_after_a_bounded_wait(client, settings):
    """UPLOAD_SLOTS_PER_NODE=1 here: a stalled upload holds the node's only slot, another user waits
    UPLOAD_SLOT_WAIT_SECONDS and is told to retry instead of hanging behind it."""
    user_id, token = await new_user(client)
    _, other = await new_user(client)
    async with raw(client) as conn:
        await conn.head("POST", "/media/selfie", _multipart_head(token, 500_000))
        await conn.send(PART_HEAD + JPEG_HEAD)
        await _held(settings, user_id, 1)
        # The stalled upload takes the node's slot once its part header is read: until then another
        # upload may still get through, after that it is told to retry.
        deadline = time.monotonic() + 10
        while True:
            resp = await client.post("/media/selfie", headers=auth(other),
                                     data=form("selfie", sample(JPEG_HEAD, 20_000), "a.jpg", "image/jpeg"))
            body = await resp.json()
            if resp.status == 503:
                break
            assert resp.status == 200 and time.monotonic() < deadline, body
        assert body["code"] == "upload_busy" and body["retryAfter"] >= 1
        status, _, _ = await conn.response()
        assert status == 408
