"""The socket writer's poll and each socket's packet queue (server/wire.py) keep engine.io's contract
(asyncio.Queue's, for the queue) without a task per wait or four deques per socket."""

import asyncio
from types import SimpleNamespace

import pytest
import socketio
from aiohttp._websocket.writer import WebSocketWriter
from engineio import async_socket, exceptions
from engineio import packet as eio_packet

from server.wire import SlimQueue, _poll, install, text_frame

QUEUES = pytest.mark.parametrize("make_queue", [SlimQueue, asyncio.Queue], ids=["slim", "asyncio"])


def _socket(window_s: float = 5.0, make_queue=SlimQueue) -> SimpleNamespace:
    return SimpleNamespace(queue=make_queue(), server=SimpleNamespace(ping_interval=window_s, ping_timeout=0))


@QUEUES
async def test_everything_queued_comes_in_one_poll_in_order(make_queue):
    s = _socket(make_queue=make_queue)
    for p in ("a", "b", "c"):
        s.queue.put_nowait(p)
    assert await _poll(s) == ["a", "b", "c"]
    assert s.queue.empty()


@QUEUES
async def test_a_waiting_writer_wakes_for_the_next_packet(make_queue):
    s = _socket(make_queue=make_queue)
    waiting = asyncio.ensure_future(_poll(s))
    await asyncio.sleep(0)
    s.queue.put_nowait("x")
    assert await waiting == ["x"]


@QUEUES
async def test_a_close_marker_ends_the_writer_and_stays_for_the_next_reader(make_queue):
    s = _socket(make_queue=make_queue)
    s.queue.put_nowait(None)
    assert await _poll(s) == []
    for p in ("a", None):
        s.queue.put_nowait(p)
    assert await _poll(s) == ["a"]
    assert s.queue.get_nowait() is None  # still there for whoever reads next


@QUEUES
async def test_nothing_within_the_ping_window_is_queue_empty(make_queue):
    s = _socket(window_s=0.05, make_queue=make_queue)
    with pytest.raises(exceptions.QueueEmpty):
        await _poll(s)


@QUEUES
async def test_join_waits_until_every_packet_is_done(make_queue):
    q = make_queue()
    await q.join()  # nothing queued: returns at once
    q.put_nowait("a")
    q.put_nowait("b")
    joined = asyncio.ensure_future(q.join())
    assert q.get_nowait() == "a"
    q.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    assert await q.get() == "b"
    q.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        q.task_done()


@QUEUES
async def test_an_empty_queue_raises_queue_empty_on_get_nowait(make_queue):
    with pytest.raises(asyncio.QueueEmpty):
        make_queue().get_nowait()


@QUEUES
async def test_a_cancelled_reader_loses_no_packet_and_leaves_no_waiter(make_queue):
    q = make_queue()
    first = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("x")  # wakes the reader, which is cancelled before it runs
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(q.get(), 1) == "x"
    late = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    q.put_nowait("y")
    assert await asyncio.wait_for(q.get(), 1) == "y"


@QUEUES
async def test_a_long_backlog_comes_out_in_order_while_more_arrive(make_queue):
    q = make_queue()
    out = []
    for i in range(1000):
        q.put_nowait(i)
        if i % 3 == 0:  # the reader keeps up only partly: the head moves while items are appended
            out.append(q.get_nowait())
    assert q.qsize() == 1000 - len(out)
    while not q.empty():
        out.append(await q.get())
    assert out == list(range(1000))
    assert q.qsize() == 0


@QUEUES
async def test_two_readers_each_get_one_packet(make_queue):
    q = make_queue()
    readers = [asyncio.ensure_future(q.get()) for _ in range(2)]
    await asyncio.sleep(0)
    q.put_nowait(1)
    q.put_nowait(2)
    assert sorted(await asyncio.wait_for(asyncio.gather(*readers), 1)) == [1, 2]


# ---- the websocket handler: the direct path and the reader's idle window (a real engine.io socket
# of a real, unbound server, over a scripted websocket)

class ScriptedWebSocket:
    def __init__(self, fail_sends: bool = False) -> None:
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.sent: list[str] = []
        self.closed = asyncio.Event()
        self.fail_sends = fail_sends
        self.behind = False  # data still buffered for the client
        self.written_now = 0

    def write_now(self, frame):
        if self.behind:
            return False
        assert frame[0] == 0x81 and frame[1] < 126  # a final text frame, short here
        self.sent.append(frame[2:].decode())
        self.written_now += 1
        return True

    async def wait(self):
        msg = await self.incoming.get()
        if msg is None:
            raise OSError("closed")  # as the aiohttp driver does for a close frame
        return msg

    async def send(self, message):
        if self.fail_sends:
            raise ConnectionResetError("Cannot write to closing transport")
        self.sent.append(message)

    async def close(self):
        self.closed.set()


def _server(window_s: float = 30.0):
    sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=window_s / 2, ping_timeout=window_s / 2)
    install(sio)
    got: list[str] = []
    gone: list[str] = []

    @sio.eio.on("message")
    async def _message(_sid, data):
        got.append(data)

    @sio.eio.on("disconnect")
    async def _gone(_sid, reason):
        gone.append(reason)

    return sio.eio, got, gone


async def _settle(done) -> None:
    """Let the loop run until done() (at most 100 turns)."""
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0)


async def _hang_up(ws, handler) -> None:
    ws.incoming.put_nowait(None)
    await asyncio.wait_for(handler, 2)


async def _open(eio, ws):
    sock = async_socket.AsyncSocket(eio, "s1")
    eio.sockets["s1"] = sock
    handler = asyncio.ensure_future(sock._websocket_handler(ws))
    await _settle(sock.queue.parked)  # until the writer is parked on the empty queue
    assert sock.queue.parked()
    return sock, handler


async def test_a_packet_for_a_parked_writer_is_written_by_the_sender():
    eio, _, _ = _server()
    ws = ScriptedWebSocket()
    sock, handler = await _open(eio, ws)
    await sock.send(eio_packet.Packet(eio_packet.MESSAGE, "x"))
    assert ws.sent == ["4x"] and ws.written_now == 1  # at once: no writer had to run
    assert sock.queue.parked()
    await _hang_up(ws, handler)


async def test_packets_queued_first_keep_their_order():
    eio, _, _ = _server()
    ws = ScriptedWebSocket()
    sock, handler = await _open(eio, ws)
    sock.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, "a"))  # the writer is woken, not yet run
    await sock.send(eio_packet.Packet(eio_packet.MESSAGE, "b"))  # so this one queues behind it
    await _settle(lambda: len(ws.sent) == 2)
    assert ws.sent == ["4a", "4b"]
    await sock.send(eio_packet.Packet(eio_packet.MESSAGE, "c"))
    assert ws.sent == ["4a", "4b", "4c"]
    await _hang_up(ws, handler)


async def test_a_client_that_is_behind_gets_its_packets_through_its_writer():
    eio, _, _ = _server()
    ws = ScriptedWebSocket()
    sock, handler = await _open(eio, ws)
    ws.behind = True
    await sock.send(eio_packet.Packet(eio_packet.MESSAGE, "x"))
    assert ws.sent == []  # the sender did not write (a write there could wait for the client)
    await _settle(lambda: ws.sent)
    assert ws.sent == ["4x"] and ws.written_now == 0  # the socket's own writer did
    await _hang_up(ws, handler)


async def test_a_failed_write_ends_the_socket():
    eio, _, gone = _server()
    ws = ScriptedWebSocket(fail_sends=True)
    ws.behind = True
    sock, handler = await _open(eio, ws)
    await sock.send(eio_packet.Packet(eio_packet.MESSAGE, "x"))  # queued for the writer, whose send fails
    await asyncio.wait_for(ws.closed.wait(), 2)  # the writer failed with it too and closed the websocket
    assert sock.direct_ws is None
    await _hang_up(ws, handler)
    assert sock.closed and gone == ["transport close"]


async def test_received_packets_reach_the_server_and_a_silent_client_is_dropped_after_the_window():
    eio, got, gone = _server(window_s=0.3)
    ws = ScriptedWebSocket()
    sock, handler = await _open(eio, ws)
    for i in range(3):
        ws.incoming.put_nowait(f"4m{i}")
        await asyncio.sleep(0.2)  # each packet restarts the window: 0.6 s in all, over 0.3 s windows
    assert got == ["m0", "m1", "m2"]
    assert not handler.done()
    await asyncio.wait_for(handler, 2)  # then silence: the reader gives up after one window
    assert sock.closed and gone == ["transport close"]
    assert ws.closed.is_set()


@pytest.mark.parametrize("size", [0, 5, 125, 126, 300, 65535, 65536, 70000])
async def test_a_prebuilt_frame_is_byte_for_byte_what_aiohttp_writes(size):
    written = []
    transport = SimpleNamespace(write=written.append, is_closing=lambda: False)
    writer = WebSocketWriter(SimpleNamespace(_paused=False), transport)
    text = "é" * (size // 2) + "x" * (size % 2)  # multi-byte characters: the length is in bytes
    await writer.send_frame(text.encode(), 0x1)
    assert text_frame(text) == b"".join(written)
