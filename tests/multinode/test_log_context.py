"""Log lines written while a node handles a Socket.IO event carry the socket, the user, the event and
the call room (issue 14 §3: JSON logs with request id / sid / user id / room id)."""

from __future__ import annotations

import json

import pytest

from tests.multinode.conftest import eventually


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    return {"LOG_LEVEL": "INFO"}


def _records(node, offset: int) -> list[dict]:
    with open(node.log_path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


async def test_event_log_lines_name_sid_user_event_and_room(users, peers, n1, n2):
    a, b = await users.make(n1, "Caller"), await users.make(n2, "Callee", gender="male")
    start1, start2 = n1.log_size(), n2.log_size()
    pa, pb = await peers(n1, a, "A"), await peers(n2, b, "B")
    await pb.emit("queue:join")
    await pb.wait("queue:update", where=lambda d: d["userId"] == b["userId"])
    await pa.emit("call:invite", {"toUserId": b["userId"], "requestedSeconds": 60})
    notify = await pb.wait("call:notify")
    await pb.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 60})
    room = (await pa.wait("call:start"))["roomId"]
    await pa.emit("call:end", {"roomId": room})
    await pa.wait("session:finalized")
    await pb.wait("session:finalized")  # the sentinel: both nodes are done with the call

    invite = next(r for r in _records(n1, start1) if r.get("event") == "invite_created")
    assert invite["sid"] == pa.sio.get_sid() and invite["user_id"] == a["userId"]
    assert invite["event_name"] == "call:invite" and "room_id" not in invite
    started = next(r for r in _records(n2, start2) if r.get("event") == "call_started")
    assert started["sid"] == pb.sio.get_sid() and started["user_id"] == b["userId"]
    assert started["event_name"] == "call:accept" and started["room_id"] == room
    async def finalized_line() -> list[dict]:  # written right after session:finalized goes out
        return [r for r in _records(n1, start1) if r.get("event") == "call_finalized"]

    ended = (await eventually(finalized_line, within=5))[0]
    assert ended["sid"] == pa.sio.get_sid() and ended["event_name"] == "call:end" and ended["room_id"] == room
