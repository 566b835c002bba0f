"""Debian's Chromium driven by Playwright, for tests of the browser stub (frontend-stub/).

Facts from ENVIRONMENT.md: no browser download (`playwright install` is never run), a persistent
context because `--user-data-dir` is refused in `launch()` args, a fake camera and microphone, and
loopback allowed in peer connections.

Network: the pages call the two server nodes and coturn of the test session, which listen on the
host's 127.0.0.1, so Chromium cannot run in its own network namespace (`unshare --net` gives it a
loopback of its own, where none of them exist). Media is kept on loopback by the stub's `?relay=1`
(iceTransportPolicy "relay"): Chromium gathers no host or server-reflexive candidates and sends every
packet to coturn on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


def require_chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (deploy/bootstrap.sh test installs the Debian package)")
    return CHROMIUM


class BrowserLog:
    """Console messages and page errors, kept for the failure message and written as an artifact."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.t0 = time.monotonic()

    def add(self, kind: str, text: str) -> None:
        self.lines.append(f"{time.monotonic() - self.t0:7.3f} {kind}: {text}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.console.log"
        path.write_text("\n".join(self.lines) + "\n")
        return path


@asynccontextmanager
async def open_page(pw: Any, profile: Path, name: str, log_dir: Path) -> AsyncIterator[tuple[Any, BrowserLog]]:
    """One Chromium (its own profile, so its own localStorage session) with one page."""
    ctx = await pw.chromium.launch_persistent_context(
        str(profile), executable_path=require_chromium(), headless=True, args=ARGS,
        viewport={"width": 1000, "height": 820})
    log = BrowserLog(name)
    try:
        page = ctx.pages[0] if ctx.pages else await ctx.new_page()
        page.on("console", lambda m: log.add(f"console.{m.type}", m.text))
        page.on("pageerror", lambda e: log.add("pageerror", str(e)))
        page.on("requestfailed", lambda r: log.add("requestfailed", f"{r.method} {r.url} {r.failure}"))
        yield page, log
    finally:
        log.save(log_dir)
        await ctx.close()


async def stats(page: Any) -> dict[str, Any]:
    """window.__stats() of the stub: inbound/outbound RTP counters, selected pair, timeline."""
    return await page.evaluate("window.__stats()")


def brief(s: dict[str, Any]) -> str:
    return json.dumps({k: s.get(k) for k in ("connectionState", "inbound", "outbound", "pair")})
