"""The test bots' command line against a real server process, media relayed by the session's coturn.

A server node runs as `python -m server serve` with the stack's environment, REQUIRE_PAYMENT=false
and short timers; every bot is a separate `python -m bots ...` process, exactly as a tester runs
them. Relay-only ICE, so media can only flow through coturn with the server's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from server.settings import Settings
from server.stack import REPO, Stack
from tests.conftest import reset_state
from tests.multinode.conftest import BASE_ENV, Node

pytestmark = pytest.mark.e2e

BOT_TIMEOUT_S = 50


@pytest.fixture(scope="module")
def bot_server(stack: Stack, base_settings: Settings) -> Iterator[Node]:
    # Nobody left "available" by earlier tests: --invite-first must find the waiting bot.
    asyncio.run(reset_state(base_settings))
    env = {**os.environ, **stack.env(), **BASE_ENV, "REQUIRE_PAYMENT": "false", "PYTHONUNBUFFERED": "1",
           "INVITE_TTL_MS": "15000"}
    env.pop("PYTEST_CURRENT_TEST", None)
    node = Node("bots-server", env).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def no_server_errors(bot_server: Node) -> Iterator[None]:
    mark = bot_server.log_size()
    yield
    errors = bot_server.errors_since(mark)
    assert not errors, "server errors during the test:\n" + "\n".join(errors[:20])


class BotProc:
    """One `python -m bots ...` process; stdout and stderr are collected while it runs."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers: list[asyncio.Task[None]] = []
        self._grew = asyncio.Event()

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    async def start(self) -> BotProc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PYTEST_CURRENT_TEST", None)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bots", *self.args, cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [asyncio.create_task(self._read(self.proc.stdout, self._out)),
                         asyncio.create_task(self._read(self.proc.stderr, self._err))]
        return self

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        while line := await stream.readline():
            into.append(line.decode(errors="replace"))
            self._grew.set()

    async def wait_line(self, text: str, timeout: float = 30) -> None:  # noqa: ASYNC109
        """Until `text` appears on stderr (a progress line)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while text not in self.stderr:
            left = end - loop.time()
            assert left > 0 and self.proc is not None and self.proc.returncode is None, \
                f"no {text!r} on stderr\n{self.explain()}"
            self._grew.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), min(left, 0.5))

    async def finish(self, timeout: float = BOT_TIMEOUT_S) -> int:  # noqa: ASYNC109
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(*self._readers)
        return self.proc.returncode if self.proc.returncode is not None else -1

    async def kill(self) -> None:
        """Stop a bot the test no longer waits for (after a failure)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
            await asyncio.gather(*self._readers)

    def summary(self) -> Any:
        lines = [ln for ln in self.stdout.splitlines() if ln.strip()]
        assert lines, f"no summary on stdout; stderr:\n{self.stderr[-3000:]}"
        return json.loads(lines[-1])

    def explain(self) -> str:
        return f"argv={self.args}\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-5000:]}"


def _in_relay_range(stack: Stack, pair: dict[str, Any]) -> bool:
    low, high = stack.relay_ports
    return low <= pair["local"]["port"] <= high and low <= pair["remote"]["port"] <= high


async def _is_bot(settings: Settings, user_ids: list[str]) -> list[bool]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT id::text, is_bot FROM users WHERE id = ANY($1::uuid[])", user_ids)
    finally:
        await conn.close()
    found = {r["id"]: r["is_bot"] for r in rows}
    return [found.get(u, False) for u in user_ids]


async def test_two_bot_processes_make_a_relayed_call(bot_server, stack, base_settings, artifacts,
                                                     no_server_errors):
    url = bot_server.url
    t0 = time.monotonic()
    waiter = await BotProc("run", "--server", url, "--wait", "--relay", "--seconds", "4", "--timeout", "40",
                           "--name", "WaitBot", "--chat", "hi from the waiter", "--json").start()
    caller = await BotProc("run", "--server", url, "--invite-first", "--relay", "--seconds", "4",
                           "--timeout", "30", "--name", "CallBot", "--chat", "hello from the caller",
                           "--json").start()
    rc_caller, rc_waiter = await asyncio.gather(caller.finish(), waiter.finish())
    elapsed = time.monotonic() - t0
    assert rc_waiter == 0, waiter.explain()
    assert rc_caller == 0, caller.explain()
    w, c = waiter.summary(), caller.summary()

    assert w["ok"] and c["ok"]
    assert (w["role"], c["role"]) == ("callee", "caller")
    assert w["roomId"] == c["roomId"] and w["roomId"]
    assert c["peerUserId"] == w["userId"] and w["peerUserId"] == c["userId"]
    assert c["isInitiator"] is True and w["isInitiator"] is False
    assert w.get("sessionId") and w.get("sessionId") == c.get("sessionId")
    for me, other in ((w, c), (c, w)):
        assert me["framesReceived"] >= 30, me
        assert me["framesDecoded"] >= 0.9 * me["framesReceived"], me
        assert me["framesReceived"] <= other["framesSent"], (me, other)
        assert me["peerReceivedPackets"] > 0, me
        assert me["audio"]["frames"] > 0 and me["audio"]["loudFrames"] > 0, me["audio"]
        pair = me["candidatePair"]
        assert (pair["local"]["type"], pair["remote"]["type"]) == ("relay", "relay"), pair
        assert _in_relay_range(stack, pair), pair
        assert me["endedBy"] in ("seconds", "peer"), me
        assert me["timeToConnectedMs"] is not None and me["timeToConnectedMs"] < 15000, me
    assert [m["text"] for m in w["chat"]["received"]] == ["hello from the caller"], w["chat"]
    assert [m["text"] for m in c["chat"]["received"]] == ["hi from the waiter"], c["chat"]
    assert "MEDIA CONNECTED" in waiter.stderr and "MEDIA CONNECTED" in caller.stderr
    assert await _is_bot(base_settings, [w["userId"], c["userId"]]) == [True, True]

    report = {"elapsedSeconds": round(elapsed, 1), "waiter": w, "caller": c}
    (artifacts / "bots_call.json").write_text(json.dumps(report, indent=2))
    print("\nbot CLI call:", json.dumps({k: {f: s[f] for f in ("timeToConnectedMs", "acceptToConnectedMs",
                                                               "framesSent", "framesReceived", "framesLost",
                                                               "receivedFps")}
                                        for k, s in (("waiter", w), ("caller", c))}))


async def test_swarm_of_four_bots_makes_two_calls(bot_server, stack, artifacts, no_server_errors):
    swarm = await BotProc("swarm", "--server", bot_server.url, "-n", "4", "--relay", "--seconds", "4",
                          "--json").start()
    rc = await swarm.finish()
    assert rc == 0, swarm.explain()
    summaries = swarm.summary()
    assert len(summaries) == 4 and all(s["ok"] for s in summaries), swarm.explain()
    rooms = {s["roomId"] for s in summaries}
    assert len(rooms) == 2, rooms
    for s in summaries:
        assert s["framesReceived"] > 0 and s["peerReceivedPackets"] > 0, s
        pair = s["candidatePair"]
        assert (pair["local"]["type"], pair["remote"]["type"]) == ("relay", "relay"), pair
        assert _in_relay_range(stack, pair), pair
    # The table went to stderr (stdout holds the JSON) with one row per bot and the tally.
    assert "4/4 bots ok, 2 calls" in swarm.stderr, swarm.stderr[-2000:]
    (artifacts / "bots_swarm.json").write_text(json.dumps(summaries, indent=2))


async def test_inviting_an_offline_user_fails_with_the_reason(bot_server, no_server_errors):
    async with aiohttp.ClientSession() as http, \
            http.post(f"{bot_server.url}/auth/guest", json={"name": "Offline", "gender": "female"}) as resp:
        assert resp.status == 200
        offline = (await resp.json())["userId"]
    bot = await BotProc("run", "--server", bot_server.url, "--invite", offline, "--relay", "--json").start()
    rc = await bot.finish(30)
    assert rc != 0, bot.explain()
    s = bot.summary()
    assert s["ok"] is False and s["endedBy"] == "declined:offline", s
    assert "invite declined: offline" in s["error"]
    assert "FAILED: invite declined: offline" in bot.stderr, bot.explain()
    # Human-readable output names the reason too.
    bot2 = await BotProc("run", "--server", bot_server.url, "--invite", offline, "--quiet").start()
    assert await bot2.finish(30) == 1
    assert "FAILED" in bot2.stdout and "reason             invite declined: offline" in bot2.stdout, bot2.explain()


async def test_ctrl_c_ends_the_call_properly(bot_server, no_server_errors):
    """SIGINT mid-call: the bot sends call:end (the peer hears session:finalized at once, not after the
    disconnect grace), prints its summary, and exits 130."""
    url = bot_server.url
    waiter = await BotProc("run", "--server", url, "--wait", "--relay", "--seconds", "40", "--timeout", "30",
                           "--size", "320x240", "--json").start()
    caller = await BotProc("run", "--server", url, "--invite-first", "--relay", "--seconds", "40", "--timeout", "30",
                           "--size", "320x240", "--json").start()
    try:
        await caller.wait_line("MEDIA CONNECTED")
        await caller.wait_line("video sent", timeout=10)  # a progress report: 2 s of media, receiver reports in
        assert caller.proc is not None
        caller.proc.send_signal(signal.SIGINT)
        assert await caller.finish(15) == 130, caller.explain()
        assert await waiter.finish(15) == 0, waiter.explain()
    finally:
        await caller.kill()
        await waiter.kill()
    c, w = caller.summary(), waiter.summary()
    assert c["endedBy"] == "interrupted" and c["ok"] is False and "stopped" in c["error"], c
    assert c["framesReceived"] > 0 and c["roomId"] == w["roomId"], c
    assert "interrupted: ending the call" in caller.stderr
    # The peer saw a normal end by the other side, well within the 3 s disconnect grace of the test server.
    assert w["ok"] and w["endedBy"] == "peer" and w["finalizeReason"] == "ended", w
    assert w["mediaSeconds"] < 10, w


def test_cli_rejects_an_odd_swarm_and_a_missing_mode():
    import subprocess

    odd = subprocess.run([sys.executable, "-m", "bots", "swarm", "--server", "http://127.0.0.1:9", "-n", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert odd.returncode == 2 and "even" in odd.stderr
    no_mode = subprocess.run([sys.executable, "-m", "bots", "run", "--server", "http://127.0.0.1:9"],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
    assert no_mode.returncode == 2 and "--wait" in no_mode.stderr

