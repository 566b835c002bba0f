"""Test-side control of the local Stripe emulator (server/payments/emulator.py): its switches, the
hosted page's Pay button, refunds and disputes, and the record of webhook deliveries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from server.settings import Settings


def stripe_settings(base: Settings, emulator: Any, **changes: Any) -> Settings:
    return base.with_(stripe_secret_key=emulator.secret_key, stripe_webhook_secret=emulator.webhook_secret,
                      stripe_api_base=emulator.url, require_payment=True, **changes)


class Stripe:
    def __init__(self, url: str) -> None:
        self.url = url

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with aiohttp.ClientSession() as http, http.request(method, self.url + path, json=body) as resp:
            data = await resp.json()
            assert resp.status == 200, data
            return data

    async def reset(self, webhook_url: str) -> None:
        await self._call("POST", "/_emulator/reset")
        await self.config(webhook_urls=[webhook_url])

    async def config(self, **switches: Any) -> dict[str, Any]:
        return await self._call("POST", "/_emulator/config", switches)

    async def pay(self, session_id: str, async_method: bool = False) -> dict[str, Any]:
        return await self._call("POST", f"/_emulator/sessions/{session_id}/pay", {"async": async_method})

    async def action(self, session_id: str, action: str, **body: Any) -> dict[str, Any]:
        return await self._call("POST", f"/_emulator/sessions/{session_id}/{action}", body)

    async def flush(self, order: str = "fifo") -> dict[str, Any]:
        return await self._call("POST", "/_emulator/flush", {"order": order})

    async def resend(self, event_id: str, times: int, concurrent: bool) -> list[int]:
        return (await self._call("POST", f"/_emulator/events/{event_id}/resend",
                                 {"times": times, "concurrent": concurrent}))["statuses"]

    async def events(self) -> dict[str, Any]:
        return await self._call("GET", "/_emulator/events")

    async def event(self, kind: str) -> dict[str, Any]:
        return next(e for e in (await self.events())["events"] if e["type"] == kind)

    async def delivered(self, kind: str, timeout: float = 10.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """Wait until an event of this type got a final answer (2xx, or retries exhausted); its deliveries."""
        end = time.monotonic() + timeout
        while True:
            state = await self.events()
            ids = {e["id"] for e in state["events"] if e["type"] == kind}
            done = [d for d in state["deliveries"] if d["event"] in ids]
            if ids and done and state["pending_tasks"] == 0:
                return done
            assert time.monotonic() < end, f"no delivery of {kind}: {state['deliveries']}"
            await asyncio.sleep(0.05)
