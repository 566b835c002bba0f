"""Engine.IO adaptations for a crowd (issue 10 §2, §4), installed on each Socket.IO server by
realtime.attach().

* Websockets without permessage-deflate: a compressor per socket costs more memory than the small
  signalling messages it would save (the issue measured 3.5x a bare socket).
* Each socket's writer waits for its next packets without a task per wait: engine.io's poll() wraps
  queue.get() in asyncio.wait_for, which on Python 3.11 creates a task each time, i.e. one task per
  packet per recipient. A profile of one node under 1,000 users put 15% of its CPU there
  (_ensure_future 8.6%, wait_for 6.1%). asyncio.timeout (3.11+) bounds the same wait in place.
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio
from aiohttp.web import WebSocketResponse
from engineio import async_socket, exceptions
from engineio.async_drivers import aiohttp as eio_aiohttp


class PlainWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    async def __call__(self, environ: dict[str, Any]) -> Any:
        self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ
        await self.handler(self)
        return self._sock


async def _poll(self: Any) -> list[Any]:
    """engine.io 4.x AsyncSocket.poll, the same contract: the queued packets (at least one), [] once the
    socket is closing (a None in the queue, kept for the next reader), QueueEmpty after the ping window."""
    try:
        if self.queue.empty():
            async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                first = await self.queue.get()
        else:
            first = self.queue.get_nowait()
        self.queue.task_done()
    except (TimeoutError, asyncio.CancelledError):
        raise exceptions.QueueEmpty() from None
    if first is None:
        return []
    packets = [first]
    while not self.queue.empty():
        pkt = self.queue.get_nowait()
        self.queue.task_done()
        if pkt is None:
            self.queue.put_nowait(None)
            break
        packets.append(pkt)
    return packets


def install(sio: socketio.AsyncServer) -> None:
    sio.eio._async = {**sio.eio._async, "websocket": PlainWebSocket}  # per server, not the module's dict
    # The socket class is fixed inside engine.io (no per-server hook): the method is replaced on it.
    async_socket.AsyncSocket.poll = _poll
