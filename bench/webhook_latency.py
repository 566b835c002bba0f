"""Stripe webhook handling latency under 200 concurrent deliveries (issue 8's note).

Starts a throwaway local stack on free ports, the local Stripe emulator and one
`python -m server serve` node (REQUIRE_PAYMENT=true, pointed at the emulator). Then:
  1. N users each open a Checkout Session and pay it; the emulator holds the N
     `checkout.session.completed` events and delivers them all at the same moment (N distinct grants);
  2. one of those events is replayed N times at once (the dedupe path).
Latency is each delivery's HTTP round trip as the emulator (Stripe's side) sees it: signature check,
the grant transaction (event claim, payment row, user, own code, audit) and the response.

    .venv/bin/python bench/webhook_latency.py [--n 200]

Only loopback traffic; bounded in count and time. Everything it starts it stops again.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throwaway import Throwaway

from server.payments.emulator import EmulatorProcess
from server.stack import free_port


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(label: str, ms: list[float], wall: float) -> str:
    return (f"  {label:<34} n={len(ms):<4} p50 {pct(ms, 50):7.1f} ms   p99 {pct(ms, 99):7.1f} ms   "
            f"max {max(ms):7.1f} ms   mean {statistics.mean(ms):7.1f} ms   wall {wall:5.2f} s")


async def ctl(http: aiohttp.ClientSession, em: str, path: str, body: dict[str, Any] | None = None,
              method: str = "POST") -> Any:
    async with http.request(method, f"{em}/_emulator/{path}", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def bench(base: str, em: str, dsn: str, n: int, warm: int = 20) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        await ctl(http, em, "config", {"webhook_urls": [f"{base}/payment/webhook"], "hold": True})
        sessions = []
        for i in range(n + warm):
            async with http.post(f"{base}/auth/guest", json={"name": f"Payer {i}", "gender": "unspecified"}) as r:
                assert r.status == 200, await r.text()
                token = (await r.json())["sessionToken"]
            async with http.post(f"{base}/payment/create-checkout", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
                sessions.append((await r.json())["sessionId"])
        # Warm-up (not measured): the server's connection pools fill and every code path runs once.
        for sid in sessions[:warm]:
            await ctl(http, em, f"sessions/{sid}/pay", {})
        await ctl(http, em, "flush", {"concurrent": True})
        for sid in sessions[warm:]:
            await ctl(http, em, f"sessions/{sid}/pay", {})
        await ctl(http, em, "config", {"hold": False})
        state = await ctl(http, em, "events", method="GET")
        assert len(state["held"]) == n

        t0 = time.monotonic()
        flushed = await ctl(http, em, "flush", {"concurrent": True})
        wall_grants = time.monotonic() - t0
        state = await ctl(http, em, "events", method="GET")
        grants = [d for d in state["deliveries"] if d["event"] in set(flushed["delivered"])]
        assert all(d["status"] == 200 for d in grants), [d for d in grants if d["status"] != 200][:3]

        replay = flushed["delivered"][0]
        before = len(state["deliveries"])
        t0 = time.monotonic()
        async with http.post(f"{em}/_emulator/events/{replay}/resend", json={"times": n, "concurrent": True}) as r:
            statuses = (await r.json())["statuses"]
        wall_replays = time.monotonic() - t0
        assert statuses == [200] * n, statuses[:5]
        state = await ctl(http, em, "events", method="GET")
        replays = state["deliveries"][before:]

    conn = await asyncpg.connect(dsn)
    try:
        paid = await conn.fetchval("SELECT count(*) FROM users WHERE paid_status = 'paid'")
        codes = await conn.fetchval("SELECT count(*) FROM invite_codes WHERE owner_user_id IS NOT NULL")
        granted = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'payment_completed'")
    finally:
        await conn.close()
    print(f"webhook handling latency, one node, {n} concurrent deliveries (emulator-side HTTP round trip)")
    print(summary(f"{n} distinct completed events", [d["ms"] for d in grants], wall_grants))
    print(summary(f"{n} replays of one event", [d["ms"] for d in replays], wall_replays))
    print(f"  after both: {paid} paid users, {granted} grants, {codes} own invite codes "
          f"(expected {n + warm} each, {warm} of them from the warm-up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    emulator: EmulatorProcess | None = None
    with Throwaway(relay_base=24000) as t:
        try:
            emulator = EmulatorProcess(free_port(), "sk_test_bench", "whsec_bench", [], t.root / "emulator.log").start()
            t.serve(REQUIRE_PAYMENT="true", STRIPE_SECRET_KEY="sk_test_bench", STRIPE_WEBHOOK_SECRET="whsec_bench",
                    STRIPE_API_BASE=emulator.url, FRONTEND_URL=t.base, PUBLIC_URL=t.base,
                    GUEST_SIGNUPS_PER_IP_PER_HOUR="100000", PAYMENT_RECONCILE_INTERVAL_SECONDS="0")
            assert t.settings is not None
            asyncio.run(bench(t.base, emulator.url, t.settings.database_url, args.n))
        finally:
            if emulator is not None:
                emulator.stop()


if __name__ == "__main__":
    main()
