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
* A packet for a socket whose websocket writer is parked on an empty queue is written by the sender
  itself (AsyncSocket.send below): the writer would only be woken to write that one frame, and a
  broadcast to N sockets woke N writers. Order is kept: the path is taken only while nothing is
  queued and the writer is not mid-write, and each frame reaches the transport when it is sent. It is
  never taken for a client that is behind (data still buffered for it), so a write there cannot wait.
  A broadcast (fanout.py) builds the frame once and writes the same bytes to each such socket.
* Each socket's reader waits for the next packet in its own task, under one idle timer per ping
  window: engine.io's handler made a task and a wait_for (a timer, a future) per received packet,
  and kept both alive on every idle socket.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import socketio
from aiohttp.web import WebSocketResponse
from engineio import async_socket, exceptions, packet
from engineio.async_drivers import aiohttp as eio_aiohttp

DIRECT_MAX = 16 * 1024  # bytes: a frame the sender writes itself stays far below any high-water mark


class PlainWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    async def __call__(self, environ: dict[str, Any]) -> Any:
        request = environ["aiohttp.request"]
        self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.transport = request.transport
        self.environ = environ
        await self.handler(self)
        return self._sock

    def write_now(self, frame: bytes) -> bool:
        """Write a whole frame (text_frame()) if that cannot wait for the client: nothing is buffered
        ahead of it (the client keeps up) and it is far below the transport's high-water mark. A sender
        writing for a slow client would otherwise stall its whole broadcast (or the cross-node listener)
        on that client. False: nothing was written."""
        t = self.transport
        if t is None or t.is_closing() or t.get_write_buffer_size() or self._sock.closed or len(frame) > DIRECT_MAX:
            return False
        t.write(frame)
        return True

    async def send(self, message: str | bytes) -> None:  # the base class asks inspect on every call
        if isinstance(message, bytes):
            await self._sock.send_bytes(message)
        else:
            await self._sock.send_str(message)


class SlimQueue:
    """The part of asyncio.Queue engine.io uses (put, get, task_done, join, empty) for one socket's
    outgoing packets. The writer task is its only reader in practice; more readers are served too.
    Items are read from a moving head (a slow client's backlog drains in linear time)."""

    __slots__ = ("_getters", "_head", "_items", "_joiners", "_unfinished")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._head = 0
        self._getters: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self._joiners: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return self._head == len(self._items)

    def qsize(self) -> int:
        return len(self._items) - self._head

    def parked(self) -> bool:
        """Nothing queued and a reader waiting for it."""
        return bool(self._getters) and self._head == len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._unfinished += 1
        _wake(self._getters)
        self._getters = None

    async def put(self, item: Any) -> None:  # unbounded, as engine.io creates it
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if self._head == len(self._items):
            raise asyncio.QueueEmpty
        item = self._items[self._head]
        self._head += 1
        if self._head == len(self._items):
            self._items.clear()
            self._head = 0
        elif self._head >= 64 and 2 * self._head >= len(self._items):
            del self._items[:self._head]  # amortised: what was read is dropped in halves
            self._head = 0
        return item

    async def get(self) -> Any:
        while self._head == len(self._items):
            waiter = asyncio.get_running_loop().create_future()
            self._getters = [*(self._getters or ()), waiter]
            try:
                await waiter
            finally:  # a cancelled reader leaves no waiter behind (a woken one was dropped by the put)
                if self._getters is not None and waiter in self._getters:
                    self._getters.remove(waiter)
        return self.get_nowait()

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


def text_frame(data: str) -> bytes:
    """A final, unmasked, uncompressed websocket text frame (RFC 6455 5.2): what a server sends."""
    payload = data.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def write_now(socket: Any, pkt: Any) -> bool:
    """Write engine.io packet `pkt` to `socket` here and now if that can neither wait nor overtake a
    queued packet (module docstring). A broadcast builds the frame once for all its recipients (the
    packet keeps it). False: nothing was written; send it the usual way."""
    ws = socket.direct_ws
    if ws is None or pkt.binary or socket.closed or not socket.queue.parked():
        return False
    last_ping = socket.last_ping
    if last_ping and time.time() - last_ping > socket.server.ping_timeout:
        return False  # the usual way finds the client gone and closes the socket
    frame = getattr(pkt, "ws_frame", None)
    if frame is None:
        frame = pkt.ws_frame = text_frame(pkt.encode())
    return bool(ws.write_now(frame))


_ENGINEIO_SEND = async_socket.AsyncSocket.send  # taken at import, before install() replaces it


async def send_queued(socket: Any, pkt: Any) -> None:
    """engine.io's own send (its checks, then the socket's queue): for a packet write_now() refused."""
    await _ENGINEIO_SEND(socket, pkt)


async def _send(self: Any, pkt: Any) -> None:
    """The direct path (module docstring), else engine.io's own send."""
    if not write_now(self, pkt):
        await send_queued(self, pkt)


async def _websocket_handler(self: Any, ws: Any) -> None:
    """engine.io 4.x AsyncSocket._websocket_handler: the upgrade handshake as there; the writer offers
    the direct path while it runs; the reader waits without a task or a timer per packet."""
    server = self.server

    async def websocket_wait() -> Any:
        data = await ws.wait()
        if data and len(data) > server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return data

    if self.connected:
        # the socket was already connected, so this is an upgrade
        self.upgrading = True
        try:
            pkt = await websocket_wait()
        except OSError:
            return
        decoded = packet.Packet(encoded_packet=pkt)
        if decoded.packet_type != packet.PING or decoded.data != "probe":
            server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
            self.upgrading = False
            return
        await ws.send(packet.Packet(packet.PONG, data="probe").encode())
        await self.queue.put(packet.Packet(packet.NOOP))  # end poll
        try:
            pkt = await websocket_wait()
        except OSError:
            self.upgrading = False
            return
        decoded = packet.Packet(encoded_packet=pkt)
        if decoded.packet_type != packet.UPGRADE:
            self.upgraded = False
            server.logger.info("%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.",
                               self.sid, pkt)
            self.upgrading = False
            return
        self.upgraded = True
        self.upgrading = False
    else:
        self.connected = True
        self.upgraded = True

    async def writer() -> None:
        self.direct_ws = ws
        try:
            while True:
                try:
                    packets = await self.poll()
                except exceptions.QueueEmpty:
                    break
                if not packets:
                    break  # the close marker
                try:
                    for pkt in packets:
                        await ws.send(pkt.encode())
                except BaseException:  # as engine.io: any failure ends the writer
                    break
        finally:
            self.direct_ws = None
        await ws.close()

    writer_task = asyncio.ensure_future(writer())
    server.logger.info("%s: Upgrade to websocket successful", self.sid)

    # The client pings (answers the server's pings) within the ping window, or is gone.
    window = server.ping_interval + server.ping_timeout
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None  # (a coroutine run by a task)
    waiting_since: float | None = None
    expired = False
    timer: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal timer, expired
        now = loop.time()
        if waiting_since is not None and now >= waiting_since + window:
            expired = True
            me.cancel()
            return
        timer = loop.call_at((waiting_since if waiting_since is not None else now) + window, check)

    timer = loop.call_at(loop.time() + window, check)
    try:
        while True:
            waiting_since = loop.time()
            try:
                p = await websocket_wait()
            except asyncio.CancelledError:
                if expired:
                    me.uncancel()
                break  # as engine.io, a cancelled reader still ends the socket below (disconnect handlers)
            except BaseException:  # as engine.io: a broken transport ends the reader
                break
            finally:
                waiting_since = None
            if p is None:
                break  # connection closed by client
            try:
                await self.receive(packet.Packet(encoded_packet=p))
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                server.logger.info("Receive error -- socket is closed")
                break
            except Exception:
                server.logger.exception("Unknown receive error")
    finally:
        if timer is not None:
            timer.cancel()

    await self.queue.put(None)  # unlock the writer task so it can exit
    await writer_task
    await self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)


def install(sio: socketio.AsyncServer) -> None:
    sio.eio._async = {**sio.eio._async, "websocket": PlainWebSocket}  # per server, not the module's dict
    sio.eio.create_queue = SlimQueue  # each engine.io socket's queue (base_socket.py), on this server only
    # The socket class is fixed inside engine.io (no per-server hook): the method is replaced on it.
    async_socket.AsyncSocket.poll = _poll
    async_socket.AsyncSocket.send = _send
    async_socket.AsyncSocket._websocket_handler = _websocket_handler
    async_socket.AsyncSocket.direct_ws = None
