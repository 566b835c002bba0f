"""A real python-socketio client that records every event, for realtime tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import socketio

from tests.helpers import guest


class Peer:
    def __init__(self, url: str, token: str | None, user_id: str = "", name: str = "") -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.user_id = user_id
        self.name = name
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self._seen: dict[str, int] = {}
        self._changed = asyncio.Event()
        self.dropped = False

        @self.sio.on("*")
        async def _any(event: str, data: Any = None) -> None:
            self.events.append((event, data))
            self._changed.set()

        @self.sio.on("connect_error")
        async def _refused(data: Any = None) -> None:
            self.events.append(("connect_error", data))

    async def connect(self, capabilities: list[str] | None = None, auth_event: bool = True,
                      token: str | None = None, headers: dict[str, str] | None = None) -> Peer:
        auth: dict[str, Any] = {}
        tok = token if token is not None else self.token
        if tok:
            auth["token"] = tok
        if capabilities:
            auth["capabilities"] = capabilities
        await self.sio.connect(self.url, auth=auth or None, transports=["websocket"], wait_timeout=5,
                               headers=headers or {})
        if tok:
            await self.wait("auth:success")
        return self

    async def emit(self, event: str, data: Any = None) -> None:
        await self.sio.emit(event, data)

    def all(self, event: str) -> list[Any]:
        return [d for e, d in self.events if e == event]

    def mark(self) -> int:
        """A position in the event log: wait(since=mark) ignores everything that arrived before it."""
        return len(self.events)

    async def wait(self, event: str, timeout: float = 5.0,  # noqa: ASYNC109
                   where: Callable[[Any], bool] | None = None, since: int = 0) -> Any:
        """The next `event` not yet returned by wait() (optionally matching `where`, and arrived
        at or after position `since`, so a late broadcast from an earlier step cannot match)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            start = max(self._seen.get(event, 0), since)
            matches = [i for i, (e, d) in enumerate(self.events) if e == event and i >= start
                       and (where is None or where(d))]
            if matches:
                self._seen[event] = matches[0] + 1
                return self.events[matches[0]][1]
            left = deadline - loop.time()
            if left <= 0:
                got = [e for e, _ in self.events]
                raise AssertionError(f"{self.name or self.user_id[:8]}: no {event!r} within {timeout}s; got {got}"
                                     f"{server_awaits()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def quiet(self, event: str, within: float = 0.5) -> None:
        """Assert that no new `event` arrives within `within` seconds."""
        before = len(self.all(event))
        await asyncio.sleep(within)
        assert len(self.all(event)) == before, f"unexpected {event}: {self.all(event)[before:]}"

    async def drop(self) -> None:
        """Cut the connection without a Socket.IO/Engine.IO close (network loss): the server sees
        'transport close', which starts the disconnect grace."""
        self.dropped = True
        ws = self.sio.eio.ws
        transport = getattr(getattr(ws, "_conn", None), "transport", None) if ws is not None else None
        if transport is not None:
            transport.abort()
        elif ws is not None:
            await ws.close()
        for _ in range(100):  # let the client notice, without it sending anything
            if not self.sio.connected:
                break
            await asyncio.sleep(0.02)

    async def leave(self) -> None:
        """An explicit disconnect, as the room page's unmount sends it. python-socketio's own
        disconnect() queues the DISCONNECT packet and closes the websocket at once, so the server
        may see a plain transport close; here the packet goes out first."""
        from socketio import packet

        await self.sio._send_packet(self.sio.packet_class(packet.DISCONNECT, namespace="/"))
        await asyncio.sleep(0.1)
        await self.close()

    async def disconnected(self, within: float = 2.0) -> bool:
        """True once the server has closed this socket (waits up to `within` seconds)."""
        for _ in range(int(within / 0.05)):
            if not self.sio.connected:
                return True
            await asyncio.sleep(0.05)
        return not self.sio.connected

    async def close(self) -> None:
        """A clean client-side disconnect (what the room page does on unmount)."""
        if self.sio.connected and not self.dropped:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sio.disconnect(), 3)


def server_awaits() -> str:
    """Where the server's pending tasks are waiting (their frames in server/), for a timeout message:
    the test app runs in the test's event loop, so an event that never came is usually an await of a
    handler that never returned (a store call, a pool, a lock)."""
    root = str(Path(__file__).resolve().parent.parent / "server")
    lines = []
    for task in asyncio.all_tasks():
        frames: list[str] = []
        aw, innermost = task.get_coro(), ""
        while aw is not None and len(frames) < 60:  # the await chain, outermost first
            frame = getattr(aw, "cr_frame", None) or getattr(aw, "gi_frame", None) or getattr(aw, "ag_frame", None)
            if frame is not None:
                innermost = f"{frame.f_code.co_filename.rsplit('site-packages/', 1)[-1]}:{frame.f_lineno}"
                if frame.f_code.co_filename.startswith(root):
                    frames.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}")
                    innermost = ""
            aw = getattr(aw, "cr_await", None) or getattr(aw, "gi_yieldfrom", None) or getattr(aw, "ag_await", None)
        if frames:
            lines.append(f"  {task.get_name()}: {' -> '.join(frames)}{f' (in {innermost})' if innermost else ''}")
    return "\nserver tasks still waiting:\n" + "\n".join(sorted(lines)) if lines else ""


async def make_user(client: Any, db: asyncpg.Connection, name: str = "Ada", *, paid: bool = True,
                    media: bool = True, gender: str = "female") -> dict[str, Any]:
    """Sign up a guest through the API, then give it access and media directly in the database."""
    g = await guest(client, name=name, gender=gender)
    await db.execute(
        "UPDATE users SET paid_status = $2, selfie_key = $3, video_key = $4 WHERE id = $1",
        g["userId"], "paid" if paid else "unpaid",
        f"users/{g['userId']}/selfie-1.jpg" if media else None,
        f"users/{g['userId']}/intro-1.webm" if media else None,
    )
    return g


async def peer(url: str, user: dict[str, Any], name: str = "", **kw: Any) -> Peer:
    return await Peer(url, user["sessionToken"], user["userId"], name).connect(**kw)


async def in_call(caller: Peer, callee: Peer, seconds: int = 300) -> dict[str, Any]:
    """Drive invite -> accept -> call:start on both sides; returns the caller's call:start."""
    await callee.emit("queue:join")
    await callee.wait("queue:update", where=lambda d: d["userId"] == callee.user_id)
    await caller.emit("call:invite", {"toUserId": callee.user_id, "requestedSeconds": seconds})
    notify = await callee.wait("call:notify")
    await callee.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": seconds})
    start = await caller.wait("call:start")
    await callee.wait("call:start")
    return start
