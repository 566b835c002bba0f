"""The happy path driven by the JavaScript socket.io-client 4.x (tests/js/happy_path.mjs), the library the
original web client uses, with caller and callee on different nodes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent.parent / "js"


@pytest.fixture(scope="module")
def node_bin() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (deploy/bootstrap.sh installs it for `make test`)")
    if not (JS / "node_modules" / "socket.io-client" / "package.json").exists():
        npm = shutil.which("npm")
        assert npm, "npm is not installed"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS, check=True, timeout=300)
    version = json.loads((JS / "node_modules" / "socket.io-client" / "package.json").read_text())["version"]
    assert version.startswith("4."), version
    return node


async def _run(node_bin: str, cfg: dict) -> dict:
    proc = await asyncio.create_subprocess_exec(
        node_bin, str(JS / "happy_path.mjs"), json.dumps(cfg), cwd=JS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [ln for ln in out.decode().splitlines() if ln.strip()]
    assert lines, f"no output; exit {proc.returncode}; stderr: {err.decode()[-2000:]}"
    result = json.loads(lines[-1])
    assert proc.returncode == (0 if result.get("ok") else 1)
    assert result["ok"], f"{result.get('error')}\nevents: {result.get('events')}\nstderr: {err.decode()[-2000:]}"
    return result


async def test_js_client_happy_path_across_nodes(node_bin, users, n1, n2, db):
    a = await users.make(n1, "JsCaller")
    b = await users.make(n2, "JsCallee", gender="male")
    result = await _run(node_bin, {
        "callerUrl": n1.url, "calleeUrl": n2.url,
        "caller": {"token": a["sessionToken"], "userId": a["userId"]},
        "callee": {"token": b["sessionToken"], "userId": b["userId"]},
        "seconds": 60, "holdSeconds": 5.2,
    })
    assert result["transports"] == {"caller": "websocket", "callee": "websocket"}
    assert result["reason"] == "ended" and result["agreedSeconds"] == 60
    for side in ("caller", "callee"):
        names = result["events"][side]
        assert names.count("call:start") == 1 and "call:error" not in names and "error" not in names, names
    assert result["events"]["callee"].count("session:finalized") == 1  # its own late call:end: told already
    rows = await db.fetch("SELECT user_id::text, duration_seconds FROM call_history WHERE session_id = $1",
                          result["sessionId"])
    assert sorted(r["user_id"] for r in rows) == sorted([a["userId"], b["userId"]])
    print("socket.io-client steps (ms):", {s["step"]: s["ms"] for s in result["steps"]}, "total", result["totalMs"])


async def test_js_client_polling_only_callee(node_bin, users, n1, n2):
    """The fallback transport (long-polling) for one side, the other side on websocket, on the other node."""
    a = await users.make(n2, "JsCaller2")
    b = await users.make(n1, "JsCallee2")
    result = await _run(node_bin, {
        "callerUrl": n2.url, "calleeUrl": n1.url,
        "caller": {"token": a["sessionToken"], "userId": a["userId"]},
        "callee": {"token": b["sessionToken"], "userId": b["userId"]},
        "calleeTransports": ["polling"], "seconds": 90,
    })
    assert result["transports"] == {"caller": "websocket", "callee": "polling"}
    assert result["agreedSeconds"] == 90
