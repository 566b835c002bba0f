"""N bots in one process, paired: the first half wait for invites, the second half invite them.

Each pair is one call; the swarm succeeds when every bot's call succeeded and both bots of each pair
report the same room. `table()` renders the per-bot summaries for a terminal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp

from bots.client import Bot, BotOptions


async def run_swarm(base: BotOptions, n: int, setup_concurrency: int = 8,
                    on_bot: Callable[[Bot], None] | None = None) -> list[dict[str, Any]]:
    """Run n (even) bots in n/2 calls; returns the summaries, waiters first. `on_bot` sees each bot
    as it is created (the CLI registers them for Ctrl-C)."""
    if n < 2 or n % 2:
        raise ValueError("a swarm needs an even number of bots (>= 2)")
    half = n // 2
    gate = asyncio.Semaphore(setup_concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        waiters = [Bot(replace(base, mode="wait", name=f"SwarmW{i + 1}", token=None,
                               wait_timeout=base.wait_timeout or 60.0), http) for i in range(half)]
        for waiter in waiters:
            if on_bot is not None:
                on_bot(waiter)

        waiting = [asyncio.create_task(b.run(gate)) for b in waiters]

        async def caller_run(i: int) -> dict[str, Any]:
            w = waiters[i]
            ready = asyncio.create_task(w.available.wait())
            await asyncio.wait([ready, waiting[i]], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not w.available.is_set():
                return {"ok": False, "role": "caller", "name": f"SwarmC{i + 1}", "endedBy": "partner-failed",
                        "error": "its waiting partner failed before it was available", "framesSent": 0,
                        "framesReceived": 0, "framesLost": 0}
            bot = Bot(replace(base, mode="invite", invite_user=w.user_id, name=f"SwarmC{i + 1}", token=None), http)
            if on_bot is not None:
                on_bot(bot)
            if w.stopping:
                bot.stop()
            return await bot.run(gate)

        calling = [asyncio.create_task(caller_run(i)) for i in range(half)]
        results = await asyncio.gather(*waiting, *calling)
    summaries = list(results)
    for i in range(half):
        w_sum, c_sum = summaries[i], summaries[half + i]
        if w_sum.get("ok") and c_sum.get("ok") and w_sum.get("roomId") != c_sum.get("roomId"):
            for s in (w_sum, c_sum):
                s["ok"] = False
                s["error"] = "the pair's bots report different rooms"
    return summaries


def _pair(s: dict[str, Any]) -> str:
    p = s.get("candidatePair")
    if not p:
        return "-"
    leg = p["local"].get("turnTransport")
    return f"{p['local']['type']}/{p['remote']['type']}" + (f" ({leg})" if leg else "")


def table(summaries: list[dict[str, Any]]) -> str:
    head = ("bot", "role", "room", "conn ms", "sent", "recv", "lost", "fps", "pair", "ended", "ok")
    rows = [head]
    for s in summaries:
        rows.append((
            str(s.get("name", "?")), str(s.get("role", "?")), (s.get("roomId") or "-")[:8],
            str(s.get("timeToConnectedMs") if s.get("timeToConnectedMs") is not None else "-"),
            str(s.get("framesSent", 0)), str(s.get("framesReceived", 0)), str(s.get("framesLost", 0)),
            f"{s.get('receivedFps') or 0:.1f}", _pair(s), str(s.get("endedBy") or "-"),
            "yes" if s.get("ok") else "NO",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ok = [s for s in summaries if s.get("ok")]
    times = sorted(s["timeToConnectedMs"] for s in summaries if s.get("timeToConnectedMs") is not None)
    fps = [s["receivedFps"] for s in summaries if s.get("receivedFps")]
    tail = f"{len(ok)}/{len(summaries)} bots ok, {len(summaries) // 2} calls"
    if times:
        tail += f"; call:start -> media connected median {times[len(times) // 2]} ms, max {times[-1]} ms"
    if fps:
        tail += f"; received {sum(fps) / len(fps):.1f} fps on average"
    failures = [f"  {s.get('name')}: {s.get('error')}" for s in summaries if not s.get("ok") and s.get("error")]
    return "\n".join([*lines, "", tail, *failures])
