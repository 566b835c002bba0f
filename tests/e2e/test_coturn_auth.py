"""coturn itself accepts the credentials our server mints and rejects expired and forged ones.

The client is coturn's own `turnutils_uclient` (nobody here wrote it): it allocates relays and, with
`-y`, sends messages between two clients through them. Rejections are double-checked with aioice's
TURN client (a second independent implementation), which exposes the STUN error code (401).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from tests.e2e.conftest import sign, turn_credentials, turn_entry, uclient

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("uclient_available")]


async def _allocate_error(port: int, username: str, password: str) -> int | None:
    """Allocate a UDP relay with aioice; None on success, else the final STUN error code."""
    try:
        transport, _ = await asyncio.wait_for(
            create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), username, password), 10)
    except stun.TransactionFailed as exc:
        return int(exc.response.attributes["ERROR-CODE"][0])
    transport.close()
    return None


async def _rejected(stack, username: str, password: str) -> None:
    port = stack.ports["turn"]
    res = await uclient(port, username, password, "-y")
    assert res.returncode != 0, res.output
    assert "Cannot complete Allocation" in res.output, res.output
    assert res.messages_received == 0
    assert await _allocate_error(port, username, password) == 401


async def test_fresh_credential_from_our_server_is_accepted_over_udp_and_tcp(client, stack):
    g, body = await turn_credentials(client)
    turn = turn_entry(body)
    assert turn["username"].endswith(":" + g["userId"])
    assert any(u.endswith("transport=udp") for u in turn["urls"])
    assert any(u.endswith("transport=tcp") for u in turn["urls"])
    # Two clients talking to each other through their relays (-y), over UDP and over TCP (-t), at once
    # (uclient takes ~5 s whatever the message count).
    port = stack.ports["turn"]
    udp, tcp = await asyncio.gather(uclient(port, turn["username"], turn["credential"], "-y", messages=5),
                                    uclient(port, turn["username"], turn["credential"], "-t", "-y", messages=5))
    for res in (udp, tcp):
        assert res.returncode == 0, res.output
        assert res.messages_received > 0, res.output
        assert "Total lost packets 0 " in res.output, res.output
    assert await _allocate_error(port, turn["username"], turn["credential"]) is None


async def test_expired_credential_is_rejected(client, stack):
    g, _ = await turn_credentials(client)
    username = f"{int(time.time()) - 60}:{g['userId']}"
    await _rejected(stack, username, sign(stack.turn_secret, username))  # correctly signed, but expired


async def test_forged_credential_is_rejected(client, stack):
    g, _ = await turn_credentials(client)
    username = f"{int(time.time()) + 3600}:{g['userId']}"
    await _rejected(stack, username, sign("not-the-" + stack.turn_secret, username))


async def test_tampered_credential_is_rejected(client, stack):
    """A genuine credential reused with a longer expiry or another user id does not verify."""
    _, body = await turn_credentials(client)
    turn = turn_entry(body)
    expiry, user_id = turn["username"].split(":")
    await _rejected(stack, f"{int(expiry) + 86400}:{user_id}", turn["credential"])
    await _rejected(stack, f"{expiry}:00000000-0000-4000-8000-000000000000", turn["credential"])


async def test_coturn_logs_the_rejection(client, stack):
    g, _ = await turn_credentials(client)
    username = f"{int(time.time()) - 5}:{g['userId']}"
    await uclient(stack.ports["turn"], username, sign(stack.turn_secret, username), "-y", messages=1)
    log = stack.root / "logs" / "turn.log"
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = log.read_bytes().decode(errors="replace")
        if username in text:
            break
        await asyncio.sleep(0.1)
    assert f"Cannot find credentials of user <{username}>" in text
