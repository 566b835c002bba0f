"""Engine.IO adaptations for a crowd (issue 10 §2, §4), installed on each Socket.IO server by
realtime.attach().

* Websockets without permessage-deflate: a compressor per socket costs more memory than the small
  signalling messages it would save (the issue measured 3.5x a bare socket).
* Each socket's packet queue is a list and at most a waiter or two, made when needed: an
  asyncio.Queue (three deques and an Event with a fourth) cost 2.9 KB per idle socket, the largest
  item in a tracemalloc of 2,000 idle sockets.
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


class SlimQueue:
    """The part of asyncio.Queue engine.io uses (put, get, task_done, join, empty) for one socket's
    outgoing packets. The writer task is its only reader in practice; more readers are served too."""

    __slots__ = ("_getters", "_items", "_joiners", "_unfinished")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._joiners: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._unfinished += 1
        _wake(self._getters)
        self._getters = None

    async def put(self, item: Any) -> None:  # unbounded, as engine.io creates it
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._getters = [*(self._getters or ()), waiter]
            try:
                await waiter
            finally:  # a cancelled reader leaves no waiter behind (a woken one was dropped by the put)
                if self._getters is not None and waiter in self._getters:
                    self._getters.remove(waiter)
        return self._items.pop(0)

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0:
            _wake(self._joiners)
            self._joiners = None

    async def join(self) -> None:
        if self._unfinished:
            waiter = asyncio.get_running_loop().create_future()
            self._joiners = [*(self._joiners or ()), waiter]
            await waiter


def _wake(waiters: list[asyncio.Future[None]] | None) -> None:
    for w in waiters or ():
        if not w.done():
            w.set_result(None)


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
    sio.eio.create_queue = SlimQueue  # each engine.io socket's queue (base_socket.py), on this server only
    # The socket class is fixed inside engine.io (no per-server hook): the method is replaced on it.
    async_socket.AsyncSocket.poll = _poll

