"""Socket.IO server: handshake authentication and dispatch to the domains' event handlers."""

from __future__ import annotations

import contextlib
from typing import Any

import socketio
import structlog
from aiohttp import web

from server.accounts.sessions import authenticate
from server.deps import Deps
from server.errors import ApiError
from server.settings import Settings

log = structlog.get_logger(__name__)
SIO = web.AppKey("sio", socketio.AsyncServer)


def attach(app: web.Application, settings: Settings) -> socketio.AsyncServer:
    manager = socketio.AsyncRedisManager(settings.redis_url, channel="napalm:sio")
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=list(settings.allowed_origins),
        ping_interval=25,
        ping_timeout=60,
        max_http_buffer_size=1_000_000,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app)
    app[SIO] = sio
    return sio


async def start(app: web.Application, deps: Deps) -> None:
    sio = app[SIO]
    deps.sio = sio

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str):
            return  # accepted unauthenticated; waits for the `auth` event (PROTOCOL §3.1)
        try:
            principal = await authenticate(deps, token)
        except ApiError as exc:
            if exc.code == "banned":
                raise socketio.exceptions.ConnectionRefusedError("Account suspended") from None
            return
        await sio.save_session(sid, {"user_id": str(principal.user_id)})
        await sio.emit("auth:success", {"userId": str(principal.user_id)}, to=sid)


async def stop(app: web.Application) -> None:
    sio = app[SIO]
    manager = sio.manager
    task = getattr(manager, "thread", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    with contextlib.suppress(Exception):
        await sio.shutdown()
