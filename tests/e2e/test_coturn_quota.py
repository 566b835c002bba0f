"""The real coturn bounds the relays of one user (issue 12, item 6), whatever number of credentials
the user collects, and only users who may call get credentials at all.

coturn runs here with the project's local config, the test session's secret and realm, and a
user-quota of 3 (production: 40), so the test needs a handful of allocations, not hundreds. The
allocations are made by aioice's TURN client, which exposes coturn's STUN error code (486 =
Allocation Quota Reached).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from server.stack import REPO, free_port
from tests.e2e.conftest import sign, turn_credentials, turn_entry
from tests.helpers import auth, guest

pytestmark = pytest.mark.e2e

QUOTA = 3


@pytest.fixture(scope="module")
def quota_turn(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A coturn of our own with user-quota=3; returns its port."""
    port = free_port()
    low = 31000 + (os.getpid() % 50) * 30  # below the ephemeral range, apart from the stack's relays
    root = tmp_path_factory.mktemp("quota-turn")
    log = open(root / "turn.log", "wb")
    proc = subprocess.Popen(
        [shutil.which("turnserver") or "/usr/bin/turnserver", "-c", str(REPO / "turn" / "turnserver.local.conf"),
         "--listening-port", str(port), "--min-port", str(low), "--max-port", str(low + 29),
         "--static-auth-secret", stack.turn_secret, "--realm", stack.turn_realm, "--user-quota", str(QUOTA),
         "--allow-loopback-peers", "--pidfile", str(root / "turn.pid"), "--log-file", "stdout", "--simple-log"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=root)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (root / "turn.log").read_text()
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


async def _allocate(port: int, username: str, password: str) -> tuple[Any, int | None]:
    """(transport, None) on success, (None, STUN error code) on refusal."""
    try:
        transport, _ = await asyncio.wait_for(
            create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), username, password), 10)
    except stun.TransactionFailed as exc:
        return None, int(exc.response.attributes["ERROR-CODE"][0])
    return transport, None


async def test_quota_holds_per_user_across_credentials(client, stack, quota_turn):
    a, body = await turn_credentials(client, name="A")
    cred = turn_entry(body)
    held = []
    try:
        for _ in range(QUOTA):
            transport, err = await _allocate(quota_turn, cred["username"], cred["credential"])
            assert err is None
            held.append(transport)
        assert (await _allocate(quota_turn, cred["username"], cred["credential"]))[1] == 486
        # Another credential of the same user (what GET /turn/credentials returns a second later, or
        # next hour) opens no new quota: coturn counts per user id, not per username.
        expiry = int(cred["username"].split(":")[0])
        for later in (expiry + 1, expiry + 3600):
            other = f"{later}:{a['userId']}"
            assert (await _allocate(quota_turn, other, sign(stack.turn_secret, other)))[1] == 486
        # Other users are unaffected.
        _, body_b = await turn_credentials(client, name="B")
        cred_b = turn_entry(body_b)
        transport_b, err = await _allocate(quota_turn, cred_b["username"], cred_b["credential"])
        assert err is None
        held.append(transport_b)
        # The cap is on relays held at once: one released, one can be taken again.
        held.pop(0).close()
        deadline = time.monotonic() + 10
        while True:
            transport, err = await _allocate(quota_turn, cred["username"], cred["credential"])
            if err is None:
                held.append(transport)
                break
            assert err == 486 and time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        for t in held:
            t.close()


async def test_users_who_may_not_call_get_no_credential(client):
    g = await guest(client, name="Unpaid")  # the paywall is on and this guest has not paid
    resp = await client.get("/turn/credentials", headers=auth(g["sessionToken"]))
    assert resp.status == 402
    assert "iceServers" not in await resp.json()
