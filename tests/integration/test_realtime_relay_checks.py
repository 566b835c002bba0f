"""The signalling relays skip jsonschema for payloads a plain check accepts (issue 10, hot path). That
check must never let through what the event's schema refuses: a malformed rtc:ice / rtc:offer /
rtc:answer is still answered INVALID_PAYLOAD, and a well-formed one is still relayed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from server.calls.events import FAST_CHECKS
from server.errors import ApiError
from server.events import EVENTS
from server.httpio import validate

ROOM = "5f0c6d1e-8a4b-4c1e-9f7a-1b2c3d4e5f60"
GOOD: dict[str, list[dict[str, Any]]] = {
    "rtc:ice": [
        {"roomId": ROOM, "candidate": {"candidate": "candidate:1 1 udp 2122260223 10.0.0.2 54321 typ host",
                                       "sdpMid": "0", "sdpMLineIndex": 0}},
        {"roomId": ROOM, "candidate": {"candidate": "", "sdpMid": None, "sdpMLineIndex": None,
                                       "usernameFragment": None}},
        {"roomId": "r", "candidate": {"candidate": "c" * 2048, "sdpMLineIndex": 255, "usernameFragment": "u" * 256},
         "extra": 1},
    ],
    "rtc:offer": [{"roomId": ROOM, "offer": {"type": "offer", "sdp": "v=0\r\n"}},
                  {"roomId": ROOM, "offer": {"sdp": "s" * (100 * 1024)}}],
    "rtc:answer": [{"roomId": ROOM, "answer": {"type": "answer", "sdp": "v=0\r\n"}}],
}


def _mutations(event: str, good: dict[str, Any]) -> list[Any]:
    """Payloads one step away from a valid one, most of them invalid."""
    out: list[Any] = [None, [], "x", 1, {}, {"roomId": ROOM}]
    for key in list(good):
        d = copy.deepcopy(good)
        del d[key]
        out.append(d)
        for bad in (None, 1, 1.5, True, "", "r" * 65, [], {}, "x" * 200_000):
            d = copy.deepcopy(good)
            d[key] = bad
            out.append(d)
        if isinstance(good[key], dict):
            for inner in [*good[key], "type", "sdpMid", "sdpMLineIndex", "usernameFragment"]:
                for bad in (None, -1, 256, 1.0, True, False, "", "offer", "answer", "z" * 3000, "z" * 200_000, {}, []):
                    d = copy.deepcopy(good)
                    d[key][inner] = bad
                    out.append(d)
    return out


def _schema_ok(event: str, data: Any) -> bool:
    try:
        validate(data if data is not None else {}, EVENTS[event].schema)
    except ApiError:
        return False
    return True


@pytest.mark.parametrize("event", sorted(FAST_CHECKS))
def test_the_plain_relay_check_accepts_nothing_the_schema_refuses(event: str) -> None:
    fast = FAST_CHECKS[event]
    checked = 0
    for good in GOOD[event]:
        assert fast(good) and _schema_ok(event, good)  # the common case takes the fast path
        for data in _mutations(event, good):
            if fast(data):
                assert _schema_ok(event, data), (event, data)
            checked += 1
    assert checked > 100
