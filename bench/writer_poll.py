"""CPU per packet of a socket writer's wait (server/wire.py: its poll on its queue) against engine.io's
own poll on asyncio.Queue, in the same run: 1,000 writers, each woken once per round with one packet.
This is the queued path, taken by a client that is behind; a broadcast to clients that keep up wakes
no writer at all (wire.write_now).

  .venv/bin/python bench/writer_poll.py [--sockets 1000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import uvloop
from engineio import async_socket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from server.wire import SlimQueue, _poll

ENGINEIO_POLL = async_socket.AsyncSocket.poll


async def _cpu_us_per_packet(poll, make_queue, sockets: int, rounds: int) -> float:
    socks = [SimpleNamespace(queue=make_queue(), server=SimpleNamespace(ping_interval=25, ping_timeout=60))
             for _ in range(sockets)]
    got, target, done = 0, 0, asyncio.Event()

    async def writer(s: SimpleNamespace) -> None:
        nonlocal got
        while True:
            n = len(await poll(s))  # (not `got += len(await ...)`: that reads `got` before the await)
            got += n
            if got >= target:
                done.set()

    tasks = [asyncio.ensure_future(writer(s)) for s in socks]
    await asyncio.sleep(0.05)
    started = time.process_time()
    for r in range(rounds):
        target = (r + 1) * sockets
        done.clear()
        for s in socks:
            s.queue.put_nowait(r)
        await done.wait()
    spent = time.process_time() - started
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return spent / (rounds * sockets) * 1e6


async def main(sockets: int, rounds: int) -> None:
    ours, theirs = [], []
    for _ in range(5):  # interleaved, so machine noise hits both alike
        theirs.append(await _cpu_us_per_packet(ENGINEIO_POLL, asyncio.Queue, sockets, rounds))
        ours.append(await _cpu_us_per_packet(_poll, SlimQueue, sockets, rounds))
    a, b = statistics.median(theirs), statistics.median(ours)
    print(f"== socket writer wait, {sockets} writers: engine.io poll {a:.1f} us/packet, ours {b:.1f} us/packet "
          f"(x{a / b:.1f} less CPU)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    uvloop.run(main(args.sockets, args.rounds))
