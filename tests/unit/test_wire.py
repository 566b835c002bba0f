"""The socket writer's poll and each socket's packet queue (server/wire.py) keep engine.io's contract
(asyncio.Queue's, for the queue) without a task per wait or four deques per socket."""

import asyncio
from types import SimpleNamespace

import pytest
from engineio import exceptions

from server.wire import SlimQueue, _poll

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
async def test_two_readers_each_get_one_packet(make_queue):
    q = make_queue()
    readers = [asyncio.ensure_future(q.get()) for _ in range(2)]
    await asyncio.sleep(0)
    q.put_nowait(1)
    q.put_nowait(2)
    assert sorted(await asyncio.wait_for(asyncio.gather(*readers), 1)) == [1, 2]
