"""The benchmark suite (`make bench`, not part of `make test`). Starts its own throwaway services, our
server (1 and 2 nodes) and the null server (bench/null_server.py), drives them with the JavaScript
socket.io-client load generator (bench/loadgen.mjs), prints a table and writes JSON to bench/results/.

The machine is shared and noisy: read the ratios against the baselines measured in the same run.
Abuse limits are raised for the run (BENCH_ENV below); the report lists them.

  .venv/bin/python bench/run.py [--users 20,100,200,1000] [--rounds 5] [--nodes 1,2]
                                [--only cycles,open,memory,relay,deck] [--memory 2000,5000,10000]
                                [--deck 1000,5000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.accounts.sessions import hash_token, new_token  # noqa: E402
from server.settings import Settings  # noqa: E402
from server.stack import Stack, free_port  # noqa: E402
from tests.multinode.conftest import Node  # noqa: E402

RESULTS = REPO / "bench" / "results"
# Limits a crowd on one loopback address would trip; raised for the benchmark only.
BENCH_ENV = {
    "SOCKET_EVENTS_PER_SECOND": "100000",
    "SOCKET_EVENT_BURST": "100000",
    "INVITES_PER_MINUTE": "100000",
    "MAX_SOCKETS": "20000",
    "MAX_SOCKETS_PER_ADDRESS": "1000000",  # every simulated client comes from this machine
    "GUEST_SIGNUPS_PER_IP_PER_HOUR": "1000000",
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "json",
    # A lone node stops publishing once no other node was seen for this window (+2 beats): the runs
    # start after it (SETTLE_S), so 1-node numbers are the steady state, not the start-up window. The
    # default (6 s), not less: a node whose loop is saturated by a crowd's fan-out beats late, and with
    # 3 s the other node reaped its live sockets mid-run (1,000 users, 2 nodes: node_reaped, 500 sockets).
    "NODE_DEAD_AFTER_SECONDS": "6",
}
SETTLE_S = 8.5


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class NullNode:
    def __init__(self, bare: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, str(REPO / "bench" / "null_server.py"), str(self.port)] + (["--bare"] if bare else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                import urllib.request

                urllib.request.urlopen(f"{self.url}/socket.io/?EIO=4&transport=polling", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("null server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # thousands of open websockets: aiohttp's graceful close is slow
            self.proc.kill()
            self.proc.wait(10)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="napalm-bench-"))
        self.stack = Stack(root=self.root, ports={n: free_port() for n in ("postgres", "redis", "s3", "turn")},
                           durable=False, relay_ports=(29000, 29099))
        self.settings: Settings | None = None
        self.env: dict[str, str] = {}
        self.out: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "benchEnv": BENCH_ENV, "runs": {}}

    # ---- services and users
    def up(self) -> None:
        self.stack.up()
        self.settings = Settings.from_env(self.stack.env())
        from server.__main__ import _prepare, ensure_bucket

        asyncio.run(_prepare(self.settings))
        ensure_bucket(self.settings)
        self.env = {**os.environ, **self.stack.env(), **BENCH_ENV, "PYTHONUNBUFFERED": "1"}

    def down(self) -> None:
        self.stack.down()
        shutil.rmtree(self.root, ignore_errors=True)

    def fresh_redis(self) -> None:
        """Each scenario's nodes start on an empty Redis: the presence the stopped nodes of an earlier
        scenario left behind would otherwise be reaped during this one's measurement (after the
        10k-socket memory run, 2,738 presence:update frames arrived during a 5 s relay run)."""
        assert self.settings
        flush = redis.Redis.from_url(self.settings.redis_url)
        try:
            flush.flushdb()
        finally:
            flush.close()

    def nodes(self, count: int, env: dict[str, str] | None = None, keep_redis: bool = False) -> list[Node]:
        if not keep_redis:
            self.fresh_redis()
        tag = uuid.uuid4().hex[:6]
        nodes = [Node(f"bench-{tag}-{i + 1}", {**self.env, **(env or {})}).start() for i in range(count)]
        time.sleep(SETTLE_S)
        return nodes

    async def make_users(self, count: int, prefix: str) -> list[dict[str, str]]:
        assert self.settings
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            ids = [uuid.uuid4() for _ in range(count)]
            await conn.executemany(
                """INSERT INTO users (id, name, gender, paid_status, selfie_key, video_key)
                   VALUES ($1, $2, 'female', 'paid', $3, $4)""",
                [(i, f"{prefix}{n}", f"users/{i}/selfie-1.jpg", f"users/{i}/intro-1.webm") for n, i in enumerate(ids)])
            tokens = [new_token() for _ in ids]
            exp = datetime.now(UTC) + timedelta(days=1)
            await conn.executemany(
                "INSERT INTO sessions (user_id, kind, token_hash, expires_at) VALUES ($1, 'guest', $2, $3)",
                [(i, hash_token(t), exp) for i, t in zip(ids, tokens, strict=True)])
        finally:
            await conn.close()
        return [{"userId": str(i), "token": t} for i, t in zip(ids, tokens, strict=True)]

    async def forget_pairs(self) -> None:
        """Cooldowns from an earlier scenario would block pairs of the next one."""
        assert self.settings
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await conn.execute("TRUNCATE cooldowns")
        finally:
            await conn.close()
        r = aioredis.from_url(self.settings.redis_url)
        try:
            keys = [k async for k in r.scan_iter("cd:*", count=1000)]
            if keys:
                await r.delete(*keys)
        finally:
            await r.aclose()

    async def counters(self) -> dict[str, int]:
        """Redis commands processed and Postgres transactions committed so far (whole server)."""
        assert self.settings
        r = aioredis.from_url(self.settings.redis_url)
        try:
            stats = await r.info("commandstats")
        finally:
            await r.aclose()
        per_cmd = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}
        redis_calls = sum(per_cmd.values())
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            xact = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = 'napalm'")
        finally:
            await conn.close()
        return {"redis_commands": redis_calls, "pg_transactions": int(xact), "per_cmd": per_cmd}  # type: ignore[dict-item]

    # ---- the generator
    def loadgen(self, spec: dict[str, Any], on_ready: Any = None) -> dict[str, Any]:
        path = self.root / f"spec-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(spec))
        busy0, total0 = _machine_jiffies()
        proc = subprocess.Popen(["node", str(REPO / "bench" / "loadgen.mjs"), str(path)], stdout=subprocess.PIPE,
                                stdin=subprocess.PIPE, text=True)
        assert proc.stdout and proc.stdin
        if on_ready is not None:
            first = json.loads(proc.stdout.readline())
            on_ready(first)
            proc.stdin.close()
            out = proc.stdout.read()
            proc.wait(1800)
        else:
            out, _ = proc.communicate(timeout=1800)
        lines = [json.loads(x) for x in out.splitlines() if x.strip()]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"load generator failed ({proc.returncode}): {out[-2000:]}")
        busy1, total1 = _machine_jiffies()
        # How busy all cores were during the run (generator, nodes, Redis, Postgres, everyone else): near
        # 1.0, the machine is the bottleneck and another node has no core to run on.
        return {**lines[-1], "machineBusy": round((busy1 - busy0) / max(total1 - total0, 1), 2)}

    # ---- scenarios
    async def cycles(self) -> None:
        users_axis = [int(x) for x in self.args.users.split(",")]
        results: dict[str, Any] = {}
        for n in users_axis:
            null = NullNode()
            try:
                users = [{"userId": f"n{i}", "token": f"n{i}"} for i in range(n)]
                t0 = _cpu_s(null.proc.pid)
                res = self.loadgen({"mode": "closed", "urls": [null.url], "users": users, "rounds": self.args.rounds})
                res["serverCpuSeconds"] = _cpu_s(null.proc.pid) - t0
                results[f"null/{n}"] = res
            finally:
                null.stop()
            for count in [int(x) for x in self.args.nodes.split(",")]:
                await self.forget_pairs()
                nodes = self.nodes(count)
                try:
                    users = await self.make_users(n, f"c{count}u")
                    c0 = await self.counters()
                    cpu0 = [_cpu_s(nd.proc.pid) for nd in nodes]  # type: ignore[union-attr]
                    prof = self.profile_start(nodes[0]) if self.args.profile and n == max(users_axis) \
                        and count == 1 else None
                    res = self.loadgen({"mode": "closed", "urls": [nd.url for nd in nodes], "users": users,
                                        "rounds": self.args.rounds})
                    if prof is not None:
                        res["profileTop"] = self.profile_stop(prof)
                    res["serverCpuSeconds"] = sum(_cpu_s(nd.proc.pid) - c for nd, c in zip(nodes, cpu0, strict=True))  # type: ignore[union-attr]
                    await asyncio.sleep(1.5)
                    c1 = await self.counters()
                    if res["ok"]:
                        ok = res["ok"]
                        res["redisCommandsPerCycle"] = round((c1["redis_commands"] - c0["redis_commands"]) / ok, 1)
                        res["pgTransactionsPerCycle"] = round((c1["pg_transactions"] - c0["pg_transactions"]) / ok, 1)
                        before: dict[str, int] = c0["per_cmd"]  # type: ignore[assignment]
                        res["redisPerCycleByCommand"] = dict(sorted(
                            ((k, round((v - before.get(k, 0)) / res["ok"], 1)) for k, v in c1["per_cmd"].items()  # type: ignore[attr-defined]
                             if v > before.get(k, 0)), key=lambda kv: -kv[1]))
                    results[f"ours-{count}node/{n}"] = res
                finally:
                    for nd in nodes:
                        nd.stop()
            self._print_cycles(results, n)
        self.out["runs"]["cycles"] = results

    def _print_cycles(self, results: dict[str, Any], n: int) -> None:
        print(f"\n== closed-loop cycles, {n} users, {self.args.rounds} rounds (ratios vs the null server of this run)")
        print(f"{'server':<14}{'cycles/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'setup p99':>10}{'failed':>8}"
              f"{'vs null':>9}{'gen CPU':>9}{'machine':>8}{'srv ms/cyc':>11}{'redis/cyc':>10}{'pg tx/cyc':>10}")
        null = results.get(f"null/{n}", {})
        for key, r in results.items():
            if not key.endswith(f"/{n}"):
                continue
            ratio = r["cyclesPerSecond"] / null["cyclesPerSecond"] if null.get("cyclesPerSecond") else float("nan")
            print(f"{key.split('/')[0]:<14}{r['cyclesPerSecond']:>10.1f}{r['cycleMs']['p50'] or 0:>9.1f}"
                  f"{r['cycleMs']['p99'] or 0:>9.1f}{r['setupMs']['p99'] or 0:>10.1f}{r['failed']:>8}"
                  f"{ratio:>9.2f}{r['generatorCpuShare']:>9.2f}{r.get('machineBusy', 0):>8.2f}"
                  f"{1000 * r.get('serverCpuSeconds', 0) / max(r['ok'], 1):>11.1f}"
                  f"{r.get('redisCommandsPerCycle', ''):>10}{r.get('pgTransactionsPerCycle', ''):>10}")
            if r["failReasons"]:
                print(f"{'':<14}failures: {r['failReasons']}")
            if r.get("redisPerCycleByCommand"):
                print(f"{'':<14}redis per cycle: " + ", ".join(
                    f"{k} {v}" for k, v in list(r["redisPerCycleByCommand"].items())[:8]))
            if r.get("eventsByType"):
                attempts = max(r["ok"] + r["failed"], 1)
                print(f"{'':<14}events received per cycle: " + ", ".join(
                    f"{k} {v / attempts:.0f}" for k, v in sorted(r["eventsByType"].items(), key=lambda kv: -kv[1])[:8]))
            steps = r.get("stepsMs") or {}
            if steps:
                print(f"{'':<14}steps p50/p99 ms: " + ", ".join(
                    f"{k} {v['p50']:.0f}/{v['p99']:.0f}" for k, v in steps.items() if v.get("p50") is not None))
            for line in r.get("profileTop", [])[:15]:
                print(f"{'':<14}{line}")

    async def open_loop(self) -> None:
        """Poisson arrivals at half of the closed-loop saturation rate (200 users, 1 node)."""
        n = 200
        sat = self.out["runs"].get("cycles", {}).get(f"ours-1node/{n}", {}).get("cyclesPerSecond")
        rate = self.args.open_rate or max(1.0, round((sat or 20) / 2, 1))
        results = {}
        null = NullNode()
        try:
            users = [{"userId": f"n{i}", "token": f"n{i}"} for i in range(n)]
            results["null"] = self.loadgen({"mode": "open", "urls": [null.url], "users": users, "rate": rate,
                                            "duration": self.args.open_seconds})
        finally:
            null.stop()
        await self.forget_pairs()
        nodes = self.nodes(1)
        try:
            users = await self.make_users(n, "open")
            results["ours-1node"] = self.loadgen({"mode": "open", "urls": [nodes[0].url], "users": users, "rate": rate,
                                                  "duration": self.args.open_seconds})
        finally:
            nodes[0].stop()
        print(f"\n== open loop: Poisson arrivals at {rate}/s (half the 1-node closed-loop rate), {n} users, "
              f"from 2 s after their joins")
        print(f"{'server':<14}{'done':>7}{'failed':>8}{'setup p50':>11}{'setup p99':>11}{'cycle p99':>11}"
              f"{'gen CPU':>9}")
        for key, r in results.items():
            print(f"{key:<14}{r['ok']:>7}{r['failed']:>8}{r['setupMs']['p50'] or 0:>11.1f}"
                  f"{r['setupMs']['p99'] or 0:>11.1f}"
                  f"{r['cycleMs']['p99'] or 0:>11.1f}{r['generatorCpuShare']:>9.2f}")
            print(f"{'':<14}slowest setups (s into the run, ms): "
                  + ", ".join(f"{at:.1f}s {ms}" for at, ms in r.get("slowestSetups", [])))
        self.out["runs"]["open"] = {"rate": rate, **results}

    async def memory(self) -> None:
        results = {}
        for k in [int(x) for x in self.args.memory.split(",")]:
            bare = NullNode(bare=True)
            try:
                users = [{"userId": f"m{i}", "token": f"m{i}"} for i in range(k)]
                results[f"bare/{k}"] = self._idle(bare.proc.pid, [bare.url], users, wait_auth=False)
            finally:
                bare.stop()
            nodes = self.nodes(1)
            try:
                users = await self.make_users(k, f"m{k}-")
                results[f"ours/{k}"] = self._idle(nodes[0].proc.pid, [nodes[0].url], users, wait_auth=True)  # type: ignore[union-attr]
            finally:
                nodes[0].stop()
            b, o = results[f"bare/{k}"], results[f"ours/{k}"]
            print(f"\n== idle memory, {k} sockets: ours {o['kbPerSocket']:.1f} KB/socket, bare python-socketio "
                  f"{b['kbPerSocket']:.1f} KB/socket (x{o['kbPerSocket'] / max(b['kbPerSocket'], 0.1):.2f})")
        self.out["runs"]["memory"] = results

    def _idle(self, pid: int, urls: list[str], users: list[dict[str, str]], wait_auth: bool) -> dict[str, Any]:
        time.sleep(0.5)
        before = _rss_kb(pid)
        seen: dict[str, Any] = {}

        def ready(_msg: Any) -> None:
            time.sleep(2)  # let per-socket work settle (bind, presence)
            seen["after"] = _rss_kb(pid)

        self.loadgen({"mode": "idle", "urls": urls, "users": users, "waitAuth": wait_auth}, on_ready=ready)
        return {"rssBeforeKb": before, "rssAfterKb": seen["after"],
                "kbPerSocket": (seen["after"] - before) / len(users)}

    async def relay(self) -> None:
        results = {}
        null = NullNode()
        try:
            users = [{"userId": "r0", "token": "r0"}, {"userId": "r1", "token": "r1"}]
            results["bare"] = self.loadgen({"mode": "relay", "urls": [null.url], "users": users,
                                            "relaySeconds": self.args.relay_seconds})
        finally:
            null.stop()
        await self.forget_pairs()
        nodes = self.nodes(1)
        try:
            users = await self.make_users(2, "relay")
            results["ours"] = self.loadgen({"mode": "relay", "urls": [nodes[0].url], "users": users,
                                            "relaySeconds": self.args.relay_seconds})
        finally:
            nodes[0].stop()
        ratio = results["ours"]["perSecond"] / results["bare"]["perSecond"]
        print(f"\n== rtc:ice relay between two members: ours {results['ours']['perSecond']:.0f}/s, "
              f"bare python-socketio {results['bare']['perSecond']:.0f}/s (x{ratio:.2f})")
        self.out["runs"]["relay"] = results

    async def deck(self) -> None:
        """GET /room/queue with N users online and available. The crowd is put into Redis's presence sets
        directly (bench shortcut: the route's cost does not depend on how they got there). With --deck-ab
        each crowd is measured a second time on a node without the HTTP session cache."""
        assert self.settings
        results: dict[str, Any] = {}
        axis = [int(x) for x in self.args.deck.split(",")]
        variants = {"": {}, "-no-session-cache": {"SESSION_CACHE_SECONDS": "0"}} if self.args.deck_ab else {"": {}}
        for n in axis:
            users = await self.make_users(n, f"d{n}-")
            self.fresh_redis()  # then the crowd, which the nodes below keep
            r = aioredis.from_url(self.settings.redis_url)
            try:
                ids = [u["userId"] for u in users]
                for i in range(0, n, 1000):
                    await r.sadd("available", *ids[i:i + 1000])
                    await r.sadd("online", *ids[i:i + 1000])
                for tag, env in variants.items():
                    profile = self.args.profile and n == max(axis) and not tag
                    res = await self._deck_run(users, env, profile)
                    results[f"{n}{tag}"] = res
                    print(f"\n== /room/queue with {n} online{tag.replace('-', ' ')}: p50 {res['p50']:.1f} ms, "
                          f"p99 {res['p99']:.1f} ms, {res['cards']} cards ({res['kb']:.0f} KB) per response, "
                          f"{res['pgTxPerRequest']:.2f} Postgres tx/request (sequential requests, n={res['n']})")
                    for line in res.pop("profileTop", [])[:15]:
                        print(f"    {line}")
            finally:
                await r.srem("available", *[u["userId"] for u in users])
                await r.srem("online", *[u["userId"] for u in users])
                await r.aclose()
        self.out["runs"]["deck"] = results

    async def _deck_run(self, users: list[dict[str, str]], env: dict[str, str], profile: bool) -> dict[str, Any]:
        n = len(users)
        nodes = self.nodes(1, env, keep_redis=True)
        url = f"{nodes[0].url}/room/queue"
        lat: list[float] = []
        shape: dict[str, Any] = {}
        try:
            async with aiohttp.ClientSession() as http:
                async def one(u: dict[str, str]) -> float:
                    t = time.perf_counter()
                    async with http.get(url, headers={"Authorization": f"Bearer {u['token']}"}) as resp:
                        raw = await resp.read()
                        body = json.loads(raw)
                        assert resp.status == 200 and body["totalAvailable"] >= n - 1, (resp.status, body)
                    shape.update(cards=len(body["users"]), kb=len(raw) / 1024)
                    return (time.perf_counter() - t) * 1000

                # 100 requesters, each asking again and again (as clients poll their deck); the warm-up
                # reads every one of them once (and slides their fresh sessions: a write each).
                requesters = users[:100]
                for u in requesters:
                    await one(u)
                await asyncio.sleep(11)  # the warm-up's counts published (see below)
                c0 = await self.counters()
                prof = self.profile_start(nodes[0]) if profile else None
                for i in range(self.args.deck_requests):
                    lat.append(await one(requesters[i % len(requesters)]))
                top = self.profile_stop(prof) if prof is not None else []
                # Postgres backends publish their counts when idle for 10 s (PG 15's stats interval).
                await asyncio.sleep(11)
                c1 = await self.counters()
        finally:
            nodes[0].stop()
        s = sorted(lat)
        return {"p50": statistics.median(s), "p99": s[int(0.99 * (len(s) - 1))], "n": len(s), **shape,
                "pgTxPerRequest": (c1["pg_transactions"] - c0["pg_transactions"]) / len(s), "profileTop": top}

    # ---- profile
    def profile_start(self, node: Node) -> tuple[subprocess.Popen[bytes], Path]:
        path = self.root / "profile.txt"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        proc = subprocess.Popen([spy, "record", "--pid", str(node.proc.pid), "-f", "raw", "-o", str(path),  # type: ignore[union-attr]
                                 "--nonblocking", "-r", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        return proc, path

    def profile_stop(self, prof: tuple[subprocess.Popen[bytes], Path]) -> list[str]:
        proc, path = prof
        proc.send_signal(2)
        proc.wait(30)
        return top_functions(path)


def top_functions(path: Path, n: int = 20) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed stacks) output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return ["(no profile: py-spy could not attach)"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, RESULTS / "profile-raw.txt")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    out = [f"profile: {total} samples; self-time top:"]
    out += [f"  {100 * c / total:5.1f}% self  {f}" for f, c in own.most_common(n)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", default="20,100,200,1000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", default="1,2")
    ap.add_argument("--only", default="cycles,open,memory,relay,deck")
    ap.add_argument("--memory", default="2000,5000,10000")
    ap.add_argument("--deck", default="1000,5000")
    ap.add_argument("--deck-requests", type=int, default=300)
    ap.add_argument("--deck-ab", action="store_true", help="also measure the deck without the HTTP session cache")
    ap.add_argument("--open-seconds", type=float, default=15)
    ap.add_argument("--open-rate", type=float, default=0.0,
                    help="open-loop arrivals/s (default: half the 1-node closed-loop rate at 200 users)")
    ap.add_argument("--relay-seconds", type=float, default=5)
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the 1-node run at the largest user count, and the deck at its largest crowd")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    b = Bench(args)
    b.up()
    try:
        only = set(args.only.split(","))
        for name in ("cycles", "open", "memory", "relay", "deck"):
            if name in only:
                asyncio.run(getattr(b, name if name != "open" else "open_loop")())
    finally:
        b.down()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = RESULTS / f"bench-{stamp}{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(b.out, indent=2))
    print(f"\nresults: {path}  (abuse limits raised for the run: {BENCH_ENV})")


if __name__ == "__main__":
    main()
