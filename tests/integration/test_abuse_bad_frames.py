"""Malformed Engine.IO / Socket.IO input is logged once each, briefly, at a bounded rate (issue 12,
item 8, socket side): no traceback, past BAD_FRAME_LOGS_PER_MINUTE only a count.

A real node (`python -m server serve`) with JSON logs, because what is checked is what the process
writes. Bad frames are POSTed on an Engine.IO polling session, as a raw client would."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import aiohttp
import pytest

from tests.multinode.conftest import BASE_ENV, Node

RATE = 3
# Engine.IO packet types and Socket.IO packets that python-engineio / python-socketio cannot parse.
BAD = ["\x00", "4x", "9", "42[", "42[\"a\"", "4{", "43x[]", "4\u00ff\u00fe", "b!!", "44/x,{"]


@pytest.fixture(scope="module")
def node(stack) -> Iterator[Node]:
    env = {**os.environ, **stack.env(), **BASE_ENV, "BAD_FRAME_LOGS_PER_MINUTE": str(RATE),
           "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    n = Node("bad-frames", env).start()
    try:
        yield n
    finally:
        n.stop()


def _lines(node: Node, offset: int) -> list[str]:
    with open(node.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


async def _session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/socket.io/?EIO=4&transport=polling") as r:
        body = await r.text()
    return json.loads(body[body.index("{"):])["sid"]


async def test_bad_frames_are_logged_briefly_and_boundedly(node):
    start = node.log_size()
    rounds = 3
    async with aiohttp.ClientSession() as http:
        for _ in range(rounds):
            for frame in BAD:
                sid = await _session(http, node.url)
                async with http.post(f"{node.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                     data=frame.encode()) as r:
                    assert r.status < 500, (frame, r.status)
        # Sentinel: a request after the bad frames; its access line marks the end of their logging.
        async with http.get(f"{node.url}/health?sentinel=1") as r:
            assert r.status == 200
    for _ in range(200):
        lines = _lines(node, start)
        if any("sentinel" in ln or "/health" in ln for ln in lines):
            break
        await asyncio.sleep(0.05)
    lines = _lines(node, start)
    text = "\n".join(lines)
    logged = len(text.encode())
    print(f"{rounds * len(BAD)} bad frames -> {logged} bytes, {len(lines)} lines")
    assert "Traceback" not in text
    bad = [json.loads(ln) for ln in lines if '"bad_socket_frame"' in ln]
    assert 1 <= len(bad) <= RATE, lines
    assert all(len(ln) < 600 for ln in lines if '"bad_socket_frame"' in ln)
    assert not any('"status": 500' in ln or '"status":500' in ln for ln in lines)
