"""Graceful drain (SIGTERM): stop being ready, refuse new sockets, hand the users over in batches.

1. /ready answers 503 and new Socket.IO handshakes get 503 (the proxy retries them on another node).
2. After DRAIN_DELAY_SECONDS (the load balancer has seen the 503 by then), live sockets are closed at
   the Engine.IO level in batches. Clients see "transport close" (not "io server disconnect"), so they
   reconnect by themselves, through the proxy, to another node, where resume puts them back in their
   call within the disconnect grace. Media is peer-to-peer and never notices.
3. Then the normal shutdown runs (timers held by this node stay in Redis for the others).
A second SIGTERM (or SIGINT) stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_runner import GracefulExit

from server.deps import DEPS, SETTINGS
from server.ops import metrics

log = structlog.get_logger(__name__)


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.task: asyncio.Task[None] | None = None


DRAIN = web.AppKey("drain", Drain)


def draining(app: web.Application) -> bool:
    d = app.get(DRAIN)
    return d is not None and d.draining


@web.middleware
async def refuse_new_sockets(request: web.Request, handler: Any) -> web.StreamResponse:
    """While draining, a Socket.IO handshake (no sid yet) is refused; existing sessions go on."""
    if draining(request.app) and request.path.startswith("/socket.io") and "sid" not in request.query:
        return web.json_response({"error": "This node is restarting, please reconnect", "code": "draining"},
                                 status=503, headers={"Retry-After": "1"})
    return await handler(request)


def _sessions(app: web.Application) -> list[str]:
    """Every Engine.IO session of this node, including any whose Socket.IO connection is already gone
    (left open, it would keep the web server waiting at exit)."""
    deps = app.get(DEPS)
    if deps is None or deps.sio is None:
        return []
    return list(deps.sio.eio.sockets)


async def _hand_over(sio: Any, eio_sid: str) -> None:
    """Drop the transport under the session, as a network change would: the client (JS or Python)
    reconnects by itself. Neither a Socket.IO DISCONNECT nor an Engine.IO CLOSE packet is sent: after
    those, clients stay away."""
    socket = sio.eio.sockets.get(eio_sid)
    if socket is None:
        return
    opened_by = sio.environ.get(eio_sid, {})  # the request that opened the session
    with contextlib.suppress(Exception):
        # Runs the disconnect handlers (the disconnect grace starts; it is not an explicit leave) ...
        await socket.close(wait=False, abort=True)
        # ... then ends the websocket writer / the pending long-poll, which closes the transport.
        await socket.queue.put(None)
        sio.eio.sockets.pop(eio_sid, None)
        metrics.DRAIN_EVENTS.inc()
        request = opened_by.get("aiohttp.request")
        if opened_by.get("HTTP_UPGRADE", "").lower() == "websocket" and request is not None \
                and request.transport is not None:
            # A session opened as a websocket owns its TCP connection: cut it, so the client notices at
            # once rather than after a close handshake a busy, exiting node may never finish.
            request.transport.abort()


async def drain(app: web.Application) -> int:
    """Run steps 1-2; returns the number of sockets handed over."""
    s = app[SETTINGS]
    d = app[DRAIN]
    d.draining = True
    log.warning("drain_started", sockets=len(_sessions(app)), delay=s.drain_delay_seconds)
    await asyncio.sleep(s.drain_delay_seconds)
    sio = app[DEPS].sio
    handed = 0
    sids = _sessions(app)
    for i in range(0, len(sids), max(1, s.drain_batch_size)):
        batch = sids[i:i + s.drain_batch_size]
        await asyncio.gather(*(_hand_over(sio, sid) for sid in batch))
        handed += len(batch)
        if i + s.drain_batch_size < len(sids):
            await asyncio.sleep(s.drain_batch_interval_seconds)
    log.warning("drain_done", sockets=handed)
    return handed


def _exit() -> None:
    raise GracefulExit()


async def install_sigterm(app: web.Application) -> None:
    """on_startup of a served node (web.run_app installed its own handlers before startup: we replace
    SIGTERM's). Not used by in-process test apps."""
    loop = asyncio.get_running_loop()
    d = app[DRAIN]

    async def _drain_then_exit() -> None:
        try:
            await drain(app)
        finally:
            loop.call_soon(_exit)

    def on_sigterm() -> None:
        if d.task is not None:  # a second SIGTERM: stop now
            _exit()
        d.task = loop.create_task(_drain_then_exit())

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
