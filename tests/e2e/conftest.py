"""Shared helpers for the media end-to-end tests: TURN credentials from our server, coturn's own
test client (`turnutils_uclient`), and HMAC signing done independently of server code."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import auth, grant_access, guest

UCLIENT = shutil.which("turnutils_uclient") or "/usr/bin/turnutils_uclient"


def sign(secret: str, username: str) -> str:
    """coturn's REST-API password, computed here rather than with server.ice (independent check)."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


async def turn_credentials(client: Any, name: str = "Bot") -> tuple[dict[str, Any], dict[str, Any]]:
    """(guest signup body, GET /turn/credentials body) for a new guest with access."""
    g = await grant_access(client, await guest(client, name=name))
    resp = await client.get("/turn/credentials", headers=auth(g["sessionToken"]))
    assert resp.status == 200, await resp.text()
    return g, await resp.json()


def turn_entry(body: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in body["iceServers"] if "credential" in s)


@dataclass
class UclientResult:
    returncode: int
    output: str

    @property
    def messages_received(self) -> int:
        """Echo messages received over the relay, from uclient's final "tot_recv_msgs=N" line."""
        best = 0
        for line in self.output.splitlines():
            if "tot_recv_msgs=" in line and "msz=" not in line:
                part = line.split("tot_recv_msgs=")[1].split(",")[0].strip()
                if part.isdigit():
                    best = max(best, int(part))
        return best


async def uclient(port: int, username: str, password: str, *flags: str, messages: int = 5,
                  time_limit: float = 30) -> UclientResult:
    """Run coturn's own TURN test client against 127.0.0.1:port. `-y` = two clients talking to
    each other through their relays (client-to-client); `-c` = no RTCP allocation."""
    argv = [UCLIENT, *flags, "-n", str(messages), "-u", username, "-w", password, "-p", str(port), "127.0.0.1"]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), time_limit)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return UclientResult(-9, out.decode(errors="replace") + "\n[killed: timeout]")
    return UclientResult(proc.returncode if proc.returncode is not None else -1, out.decode(errors="replace"))


@pytest.fixture(scope="session")
def uclient_available() -> None:
    if not shutil.which("turnutils_uclient") and not shutil.which(UCLIENT):
        pytest.fail("turnutils_uclient not found: install coturn (deploy/bootstrap.sh does)")
