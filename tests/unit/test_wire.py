"""The socket writer's poll (server/wire.py) keeps engine.io's contract without a task per wait."""

import asyncio
from types import SimpleNamespace

import pytest
from engineio import exceptions

from server.wire import _poll


def _socket(window_s: float = 5.0) -> SimpleNamespace:
    return SimpleNamespace(queue=asyncio.Queue(), server=SimpleNamespace(ping_interval=window_s, ping_timeout=0))


async def test_everything_queued_comes_in_one_poll_in_order():
    s = _socket()
    for p in ("a", "b", "c"):
        s.queue.put_nowait(p)
    assert await _poll(s) == ["a", "b", "c"]
    assert s.queue.empty()


async def test_a_waiting_writer_wakes_for_the_next_packet():
    s = _socket()
    waiting = asyncio.ensure_future(_poll(s))
    await asyncio.sleep(0)
    s.queue.put_nowait("x")
    assert await waiting == ["x"]


async def test_a_close_marker_ends_the_writer_and_stays_for_the_next_reader():
    s = _socket()
    s.queue.put_nowait(None)
    assert await _poll(s) == []
    for p in ("a", None):
        s.queue.put_nowait(p)
    assert await _poll(s) == ["a"]
    assert s.queue.get_nowait() is None  # still there for whoever reads next


async def test_nothing_within_the_ping_window_is_queue_empty():
    s = _socket(window_s=0.05)
    with pytest.raises(exceptions.QueueEmpty):
        await _poll(s)
