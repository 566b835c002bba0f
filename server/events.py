"""Registry of client -> server Socket.IO events. Domains declare handlers with `@on(...)`;
realtime.py wraps each one with authentication, rate limiting, size and schema checks."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from server.deps import Deps


class Sender:
    """The authenticated socket an event came from, with what it may do (paid and ban status as
    of `access_at`, monotonic; None once `access.changed()` invalidated it)."""

    __slots__ = ("access", "access_at", "bound_ms", "caps", "checked_at", "expires_at", "session_id", "sid",
                 "token_hash", "user_id")

    def __init__(self, sid: str, user_id: str, session_id: str, caps: frozenset[str],
                 access: tuple[str, str] | None = None, token_hash: bytes = b"", expires_at: float = 0.0) -> None:
        self.sid = sid
        self.user_id = user_id
        self.session_id = session_id
        self.caps = caps
        self.access = access  # (paid_status, ban_status)
        self.access_at = time.monotonic()
        self.bound_ms = 0  # wall clock (ms) at which the socket joined its user room (realtime.bind)
        # The session the socket speaks for: its expiry (epoch s) and when it was last read (monotonic).
        self.token_hash = token_hash
        self.expires_at = expires_at
        self.checked_at = time.monotonic()


Handler = Callable[[Deps, Sender, dict[str, Any]], Awaitable[None]]

DEFAULT_MAX_BYTES = 64 * 1024
SDP_MAX_BYTES = 110 * 1024  # 100 KB of SDP plus the envelope

ID = {"type": "string", "minLength": 1, "maxLength": 64}
NO_PAYLOAD = {"type": ["object", "null", "string", "array", "number", "boolean"]}


@dataclass(frozen=True)
class EventSpec:
    name: str
    handler: Handler
    schema: dict[str, Any]
    max_bytes: int


EVENTS: dict[str, EventSpec] = {}


def on(name: str, schema: dict[str, Any] | None = None,
       max_bytes: int = DEFAULT_MAX_BYTES) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        EVENTS[name] = EventSpec(name, fn, schema or NO_PAYLOAD, max_bytes)
        return fn

    return register


def obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}
