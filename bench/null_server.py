"""The null server for `make bench`: a minimal in-memory python-socketio server doing the same event
choreography as ours (queue:update on join, leave and call start) with no checks and no storage, and
like ours without permessage-deflate (server/wire.py's websocket; engine.io's own socket writer, not
ours). Its numbers are the floor of this stack (aiohttp +
python-socketio + the generator) on this machine. The handshake token is taken as the user id.

  python bench/null_server.py PORT [--bare]

--bare: accept connections and nothing else (the bare python-socketio memory baseline).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from server.ops import heap
from server.wire import PlainWebSocket  # (ours runs the same websocket)


def build(bare: bool = False) -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", async_handlers=False)
    if not bare:  # the bare memory baseline keeps python-socketio's defaults (deflate included)
        sio.eio._async = {**sio.eio._async, "websocket": PlainWebSocket}
    app = web.Application()
    sio.attach(app)
    if bare:
        return app
    user_of: dict[str, str] = {}
    sid_of: dict[str, str] = {}
    available: set[str] = set()
    invites: dict[str, tuple[str, str]] = {}
    rooms: dict[str, tuple[str, str]] = {}
    tasks: set[asyncio.Task[Any]] = set()

    async def greet(sid: str, uid: str) -> None:
        for _ in range(2500):  # until the CONNECT packet is out (as realtime.py binds), at most 5 s
            if sio.manager.is_connected(sid, "/"):
                await sio.emit("auth:success", {"userId": uid}, to=sid)
                return
            await asyncio.sleep(0.002)

    @sio.on("connect")
    async def connect(sid: str, _environ: Any, auth: Any = None) -> None:
        uid = auth.get("token") if isinstance(auth, dict) else None
        if uid:
            user_of[sid], sid_of[uid] = uid, sid
            t = asyncio.create_task(greet(sid, uid))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    @sio.on("disconnect")
    async def disconnect(sid: str, *_: Any) -> None:
        uid = user_of.pop(sid, None)
        if uid:
            sid_of.pop(uid, None)
            available.discard(uid)

    # queue:update to the queue room on every real change of availability: join, leave, call start
    # (PROTOCOL.md §3: join/leave/start/end; ours and this one both leave the end to the clients' join).
    @sio.on("queue:join")
    async def queue_join(sid: str, *_: Any) -> None:
        available.add(user_of[sid])
        await sio.enter_room(sid, "queue")
        await sio.emit("queue:update", {"userId": user_of[sid], "available": True}, to="queue")

    @sio.on("queue:leave")
    async def queue_leave(sid: str, *_: Any) -> None:
        await sio.leave_room(sid, "queue")
        if user_of[sid] in available:
            available.discard(user_of[sid])
            await sio.emit("queue:update", {"userId": user_of[sid], "available": False}, to="queue")

    @sio.on("call:invite")
    async def invite(sid: str, d: dict[str, Any]) -> None:
        me, to = user_of[sid], d["toUserId"]
        if to not in available or to not in sid_of:
            await sio.emit("call:declined", {"inviteId": "", "reason": "offline"}, to=sid)
            return
        iid = str(uuid.uuid4())
        invites[iid] = (me, to)
        await sio.emit("call:notify", {"inviteId": iid, "fromUser": {"userId": me, "name": "x"},
                                       "requestedSeconds": d.get("requestedSeconds", 300), "ttlMs": 20000},
                       to=sid_of[to])

    @sio.on("call:accept")
    async def accept(sid: str, d: dict[str, Any]) -> None:
        a, b = invites.pop(d["inviteId"])
        room = str(uuid.uuid4())
        rooms[room] = (a, b)
        available.discard(a)
        available.discard(b)
        for uid, peer, init in ((a, b, True), (b, a, False)):
            await sio.emit("call:start", {"roomId": room, "agreedSeconds": 300, "isInitiator": init,
                                          "peerUser": {"userId": peer, "name": "x"}}, to=sid_of[uid])
        for uid in (a, b):
            await sio.emit("queue:update", {"userId": uid, "available": False}, to="queue")

    @sio.on("room:join")
    async def room_join(sid: str, d: dict[str, Any]) -> None:
        await sio.enter_room(sid, d["roomId"])
        await sio.emit("room:joined", {"roomId": d["roomId"]}, to=sid)

    def relay(event: str, field: str) -> Any:
        async def handler(sid: str, d: dict[str, Any]) -> None:
            await sio.emit(event, {field: d[field], "from": user_of[sid]}, to=d["roomId"], skip_sid=sid)
        return handler

    sio.on("rtc:offer", relay("rtc:offer", "offer"))
    sio.on("rtc:answer", relay("rtc:answer", "answer"))
    sio.on("rtc:ice", relay("rtc:ice", "candidate"))

    @sio.on("call:end")
    async def end(sid: str, d: dict[str, Any]) -> None:
        pair = rooms.pop(d["roomId"], None)
        if pair:
            await sio.emit("session:finalized", {"sessionId": d["roomId"]}, to=d["roomId"])

    return app


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    app = build(bare="--bare" in sys.argv)
    app.on_startup.append(heap.freeze_startup_heap)  # as ours: the floor gets the same process tuning
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
