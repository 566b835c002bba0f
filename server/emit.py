"""Where realtime events go. Socket.IO rooms used across the server:

  user:<userId>         every authenticated socket of a user (any node)
  queue                 sockets that sent queue:join (scoped presence, §7 E13)
  r:<roomId>:<userId>   a participant's sockets inside a call room (signalling goes only there)

With the Redis manager, an emit reaches matching sockets on every node.
"""

from __future__ import annotations

from typing import Any

from server.deps import Deps

QUEUE = "queue"


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def member_room(room_id: str, user_id: str) -> str:
    return f"r:{room_id}:{user_id}"


def in_room(deps: Deps, sid: str, room: str) -> bool:
    """Is this node's socket `sid` in `room` (a local lookup)?"""
    return sid in deps.sio.manager.rooms.get("/", {}).get(room, {})


async def to_sid(deps: Deps, sid: str, event: str, data: Any = None) -> None:
    await deps.sio.emit(event, data, to=sid)


async def to_user(deps: Deps, user_id: str, event: str, data: Any = None) -> None:
    await deps.sio.emit(event, data, to=user_room(user_id))


async def to_member(deps: Deps, room_id: str, user_id: str, event: str, data: Any = None) -> None:
    await deps.sio.emit(event, data, to=member_room(room_id, user_id))


async def to_queue(deps: Deps, event: str, data: Any) -> None:
    await deps.sio.emit(event, data, to=QUEUE)


async def call_error(deps: Deps, sid: str, code: str, message: str, **ids: Any) -> None:
    """The legacy `error {message}` plus the typed `call:error` (§7 E10)."""
    await deps.sio.emit("error", {"message": message}, to=sid)
    await deps.sio.emit("call:error", {"code": code, "message": message, **ids}, to=sid)

