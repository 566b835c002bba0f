"""Socket.IO handlers for invites and rooms: parse, then hand over to the domain."""

from __future__ import annotations

from typing import Any

from server.calls import enforce, invites, rooms
from server.deps import Deps
from server.events import ID, SDP_MAX_BYTES, Sender, obj, on
from server.ids import canonical_user_id

SECONDS: dict[str, Any] = {}  # any JSON value: numbers are clamped, anything else is invalid_duration
SDP = {"type": "string", "maxLength": 100 * 1024}


def _user_id(value: str) -> str:
    """One spelling of user ids past the socket edge (server/ids.py); a non-id stays as sent and
    matches nobody (invite answers user_not_found, rescind/extend INVITE_NOT_FOUND)."""
    return canonical_user_id(value) or value


@on("call:invite", obj(["toUserId"], toUserId=ID, requestedSeconds=SECONDS))
async def call_invite(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    if v := await invites.invite(deps, s, _user_id(d["toUserId"]), d.get("requestedSeconds", 300)):
        await enforce.deny(deps, s, v)


@on("call:accept", obj(["inviteId"], inviteId=ID, requestedSeconds=SECONDS))
async def call_accept(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    if v := await invites.accept(deps, s, d["inviteId"], d.get("requestedSeconds", 300)):
        await enforce.deny(deps, s, v)


@on("call:decline", obj(["inviteId"], inviteId=ID, reason={"enum": ["timeout", "user", None]}))
async def call_decline(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await invites.decline(deps, s, d["inviteId"], d.get("reason"))


@on("call:rescind", obj(["toUserId"], toUserId=ID))
async def call_rescind(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await invites.rescind(deps, s, _user_id(d["toUserId"]))


@on("call:extend-wait", obj(["toUserId"], toUserId=ID))
async def call_extend_wait(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await invites.extend_wait(deps, s, _user_id(d["toUserId"]))


@on("room:join", obj(["roomId"], roomId=ID))
async def room_join(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await rooms.join(deps, s, d["roomId"])


@on("rtc:offer", obj(["roomId", "offer"], roomId=ID, offer=obj(["sdp"], type={"const": "offer"}, sdp=SDP)),
    max_bytes=SDP_MAX_BYTES)
async def rtc_offer(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await rooms.relay(deps, s, d["roomId"], "offer", "offer", {"type": "offer", "sdp": d["offer"]["sdp"]})


@on("rtc:answer", obj(["roomId", "answer"], roomId=ID, answer=obj(["sdp"], type={"const": "answer"}, sdp=SDP)),
    max_bytes=SDP_MAX_BYTES)
async def rtc_answer(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await rooms.relay(deps, s, d["roomId"], "answer", "answer", {"type": "answer", "sdp": d["answer"]["sdp"]})


CANDIDATE = obj(
    ["candidate"],
    candidate={"type": "string", "maxLength": 2048},
    sdpMid={"type": ["string", "null"], "maxLength": 64},
    sdpMLineIndex={"type": ["integer", "null"], "minimum": 0, "maximum": 255},
    usernameFragment={"type": ["string", "null"], "maxLength": 256},
)


@on("rtc:ice", obj(["roomId", "candidate"], roomId=ID, candidate=CANDIDATE))
async def rtc_ice(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    c = d["candidate"]
    clean = {k: c.get(k) for k in ("candidate", "sdpMid", "sdpMLineIndex", "usernameFragment") if k in c}
    await rooms.relay(deps, s, d["roomId"], "ice", "candidate", clean)


@on("room:chat", obj(["roomId", "text"], roomId=ID, text={"type": "string", "maxLength": 2048}))
async def room_chat(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await rooms.chat(deps, s, d["roomId"], d["text"])


@on("room:giveSocial", obj(["roomId", "socials"], roomId=ID,
                           socials={"type": "object", "maxProperties": 10,
                                    "additionalProperties": {"type": "string", "maxLength": 64}}))
async def room_give_social(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await rooms.give_social(deps, s, d["roomId"], d["socials"])


@on("call:end", obj(["roomId"], roomId=ID))
async def call_end(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await rooms.end(deps, s, d["roomId"])


@on("call:connected", obj(["roomId"], roomId=ID))
async def call_connected(deps: Deps, s: Sender, d: dict[str, Any]) -> None:
    await rooms.connected(deps, s, d["roomId"])


# ---- the signalling relays' payload check, without jsonschema (issue 10, hot path) ----
# Each returns True only for payloads its schema above accepts (tests/integration/test_realtime_relay_checks.py
# holds them to that); anything else goes through the full validation, which also words the error.

def _room_ok(d: dict[str, Any]) -> bool:
    v = d.get("roomId")
    return isinstance(v, str) and 0 < len(v) <= 64


def _null_or_str(d: dict[str, Any], key: str, max_len: int) -> bool:
    v = d.get(key)
    return v is None or (isinstance(v, str) and len(v) <= max_len)


def ice_ok(d: Any) -> bool:
    if type(d) is not dict or not _room_ok(d):
        return False
    c = d.get("candidate")
    if type(c) is not dict:
        return False
    v, i = c.get("candidate"), c.get("sdpMLineIndex")
    return (isinstance(v, str) and len(v) <= 2048 and (i is None or (type(i) is int and 0 <= i <= 255))
            and _null_or_str(c, "sdpMid", 64) and _null_or_str(c, "usernameFragment", 256))


def _sdp_ok(kind: str) -> Any:
    def check(d: Any) -> bool:
        if type(d) is not dict or not _room_ok(d):
            return False
        s = d.get(kind)
        if type(s) is not dict or ("type" in s and s["type"] != kind):
            return False
        sdp = s.get("sdp")
        return isinstance(sdp, str) and len(sdp) <= 100 * 1024
    return check


FAST_CHECKS: dict[str, Any] = {"rtc:ice": ice_ok, "rtc:offer": _sdp_ok("offer"), "rtc:answer": _sdp_ok("answer")}
