"""Malformed HTTP requests are logged once each, briefly, at a bounded rate (issue 12, item 8, HTTP
side): no traceback, no status=500 line, and past BAD_REQUEST_LOGS_PER_MINUTE only a count.

A real node (`python -m server serve`) runs with JSON logs, because what is checked is what the
process writes; requests that aiohttp's parser rejects are sent on raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest

from tests.multinode.conftest import BASE_ENV, Node

RATE = 3
BAD = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to the plain port
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # header without a colon
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /auth/guest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"\xff\xfe\r\n\r\n",
]


@pytest.fixture(scope="module")
def node(stack) -> Iterator[Node]:
    env = {**os.environ, **stack.env(), **BASE_ENV, "BAD_REQUEST_LOGS_PER_MINUTE": str(RATE),
           "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    n = Node("bad-requests", env).start()
    try:
        yield n
    finally:
        n.stop()


async def _send(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _lines(node: Node, offset: int) -> list[str]:
    with open(node.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


async def test_malformed_requests_are_logged_briefly_and_boundedly(node):
    start = node.log_size()
    rounds = 10
    for _ in range(rounds):
        for raw in BAD:
            answer = await _send(node.port, raw)
            assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    # A sentinel request: once its access line is in the log, every line of the bad ones is too.
    assert (await _send(node.port, b"GET /stats/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) \
        .startswith(b"HTTP/1.1 200")
    deadline = asyncio.get_running_loop().time() + 10
    while not any('"/stats/live"' in line for line in _lines(node, start)):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    lines = _lines(node, start)
    text = "\n".join(lines)
    assert "Traceback" not in text and "status=500" not in text and '"status": 500' not in text
    logged = [json.loads(line) for line in lines if '"bad_http_request"' in line]
    sent = rounds * len(BAD)
    # At most RATE per minute (the run may straddle one minute boundary), and each line is short.
    assert 1 <= len(logged) <= 2 * RATE, logged
    assert all(len(json.dumps(e)) < 400 for e in logged), logged
    assert all(e["status"] == 400 and e["error"] and e["remote"] == "127.0.0.1" for e in logged)
    bytes_logged = sum(len(line) + 1 for line in lines if '"/stats/live"' not in line)
    assert bytes_logged < 400 * 2 * RATE, f"{bytes_logged} bytes for {sent} bad requests"
