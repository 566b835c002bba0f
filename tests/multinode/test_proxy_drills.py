"""Through the deployment's own sticky proxy (deploy/haproxy/haproxy.cfg, HAProxy from Debian) in front of
the nodes: the JavaScript socket.io-client over WebSocket and polling-only, a node SIGKILLed mid-call,
a rolling restart of every node with graceful drain, and /metrics during a scripted call.
Figures (resume p50/p95, calls lost) are printed and written to test-artifacts/multinode/drills.json."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.multinode.conftest import LOGS, Node, eventually
from tests.multinode.proxy import Proxy, proxy  # noqa: F401  (fixture)
from tests.multinode.test_js_client import _run, node_bin  # noqa: F401  (fixture)
from tests.rt import Peer

TOKEN = "drill-metrics-token"
CAPS = ["resume", "deadline", "typed-errors", "busy"]
FIGURES = LOGS / "drills.json"


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    # As deployed: a draining node keeps its sockets until the proxy's health checks (every 1 s, 2 failures)
    # have taken it out of the pool, so reconnecting clients go straight to the other nodes.
    return {"METRICS_TOKEN": TOKEN, "DRAIN_DELAY_SECONDS": "2.5"}


@pytest.fixture(autouse=True)
def _pool_up(proxy: Proxy) -> None:  # noqa: F811
    proxy.wait_all_up()  # a node restarted by the previous test is back in the proxy's pool


def record(name: str, figures: dict[str, Any]) -> None:
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = figures
    FIGURES.write_text(json.dumps(data, indent=1))
    print(f"\n{name}: {figures}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


async def scrape(http: aiohttp.ClientSession, node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(f"{node.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, labels[k]) in ls for k in labels))


class Resumer(Peer):
    """A recording client that reconnects by itself (as socket.io-client does) and notes when its
    transport dropped and when call:resume arrived."""

    def __init__(self, url: str, user: dict[str, Any], name: str) -> None:
        super().__init__(url, user["sessionToken"], user["userId"], name)
        self.sio.reconnection = True
        self.sio.reconnection_delay = 0.1
        self.sio.reconnection_delay_max = 0.5
        self.sio.randomization_factor = 0.5
        self.dropped_at: list[float] = []
        self.sio.on("disconnect", lambda reason=None: self.dropped_at.append(time.monotonic()))

    async def resumed_after(self, since: int, room: str, timeout: float) -> float:  # noqa: ASYNC109
        """Seconds from the last transport drop to the next call:resume for `room` (after `since` ones)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.all("call:resume")
            if len(got) > since:
                assert got[since]["roomId"] == room, got[since]
                return time.monotonic() - self.dropped_at[-1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.name}: no call:resume within {timeout}s; events {[e for e, _ in self.events]}")

    async def close(self) -> None:
        self.sio.reconnection = False
        await super().close()


async def open_calls(users: Any, proxy: Proxy, n1: Node, count: int) -> list[tuple[Resumer, Resumer, str]]:  # noqa: F811
    made = await users.many(n1, 2 * count, "D")
    clients = [Resumer(proxy.url, u, f"D{i}") for i, u in enumerate(made)]
    await asyncio.gather(*(c.connect(capabilities=CAPS) for c in clients))
    calls = []

    async def one(a: Resumer, b: Resumer) -> None:
        await b.emit("queue:join")
        await b.wait("queue:update", where=lambda d: d["userId"] == b.user_id)
        await a.emit("call:invite", {"toUserId": b.user_id, "requestedSeconds": 300})
        notify = await b.wait("call:notify", timeout=10)
        await b.emit("call:accept", {"inviteId": notify["inviteId"], "requestedSeconds": 300})
        room = (await a.wait("call:start", timeout=10))["roomId"]
        await b.wait("call:start", timeout=10)
        for p in (a, b):
            await p.emit("room:join", {"roomId": room})
            await p.wait("room:joined")
        calls.append((a, b, room))

    pairs = [(clients[2 * i], clients[2 * i + 1]) for i in range(count)]
    for i in range(0, len(pairs), 5):  # a few at a time: the nodes share two cores with the test
        await asyncio.gather(*(one(a, b) for a, b in pairs[i:i + 5]))
    return calls


async def close_all(calls: list[tuple[Resumer, Resumer, str]]) -> None:
    await asyncio.gather(*(p.close() for a, b, _ in calls for p in (a, b)))


async def finish_and_check_history(calls: list[tuple[Resumer, Resumer, str]], rds: Any, db: Any) -> None:
    """Every call still active; ended now, each writes its history exactly once (two rows, one session)."""
    states = [await rds.hget(f"room:{room}", "state") for _, _, room in calls]
    assert states == ["active"] * len(calls), f"calls lost: {states.count(None)} gone, states {set(states)}"
    for _, _, room in calls:
        started = int(await rds.hget(f"room:{room}", "started"))
        await rds.hset(f"room:{room}", "started", started - 30_000)  # long enough for the history
    await asyncio.gather(*(a.emit("call:end", {"roomId": room}) for a, _, room in calls))
    finals = await asyncio.gather(*(p.wait("session:finalized", timeout=10) for a, b, _ in calls for p in (a, b)))
    sessions = {f["sessionId"] for f in finals}
    assert len(sessions) == len(calls)

    async def written() -> bool:
        return await db.fetchval("SELECT count(*) FROM call_history") >= 2 * len(calls)

    assert await eventually(written, within=10)
    rows = await db.fetch("SELECT session_id::text AS s, count(*) AS n FROM call_history GROUP BY session_id")
    assert {r["s"] for r in rows} == sessions and all(r["n"] == 2 for r in rows)


# ---- the JavaScript client through the proxy ----
async def test_js_client_over_websocket_through_the_proxy(node_bin, users, n1, proxy):  # noqa: F811
    a = await users.make(n1, "JsProxyCaller")
    b = await users.make(n1, "JsProxyCallee", gender="male")
    result = await _run(node_bin, {
        "callerUrl": proxy.url, "calleeUrl": proxy.url,
        "caller": {"token": a["sessionToken"], "userId": a["userId"]},
        "callee": {"token": b["sessionToken"], "userId": b["userId"]}, "seconds": 60,
    })
    assert result["transports"] == {"caller": "websocket", "callee": "websocket"}
    assert result["agreedSeconds"] == 60


@pytest.mark.allow_server_errors  # checked below: only the client's own close racing its last poll
async def test_js_client_polling_only_through_the_proxy_sticks_to_one_node(node_bin, users, cluster, n1, proxy):  # noqa: F811
    """Long-polling is many HTTP requests per session: each must reach the node holding the session. The
    proxy's cookie pins them (a browser keeps cookies; Node's client does with withCredentials)."""
    marks = {n.name: n.log_size() for n in cluster.nodes}
    a = await users.make(n1, "JsPollCaller")
    b = await users.make(n1, "JsPollCallee", gender="male")
    result = await _run(node_bin, {
        "callerUrl": proxy.url, "calleeUrl": proxy.url, "withCredentials": True,
        "caller": {"token": a["sessionToken"], "userId": a["userId"]},
        "callee": {"token": b["sessionToken"], "userId": b["userId"]},
        "callerTransports": ["polling"], "calleeTransports": ["polling"], "seconds": 90,
    })
    assert result["transports"] == {"caller": "polling", "callee": "polling"}
    assert result["agreedSeconds"] == 90
    # A request that reached a node not holding its session would log "Invalid session". When the client
    # exits, a last poll may cross its own close ("Session is disconnected"): harmless.
    errors = [line for n in cluster.nodes for line in n.errors_since(marks[n.name])]
    assert all("Session is disconnected" in line for line in errors), errors


# ---- metrics during a scripted call ----
async def test_metrics_move_during_a_call_and_are_not_served_through_the_proxy(users, cluster, proxy, http, rds, db):  # noqa: F811
    async with http.get(f"{proxy.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 404  # the proxy never routes /metrics
    before = [await scrape(http, n) for n in cluster.nodes]
    calls = await open_calls(users, proxy, cluster[0], 1)
    try:
        during = [await scrape(http, n) for n in cluster.nodes]
        assert sum(total(s, "napalm_sockets_authenticated") for s in during) == 2
        assert sum(total(s, "napalm_sockets_connected") for s in during) == 2
        assert all(0 <= total(s, "napalm_heartbeat_age_seconds") < 2 for s in during)
        signups = sum(total(d, "napalm_http_requests_total", route="/auth/guest", status="200")
                      - total(b, "napalm_http_requests_total", route="/auth/guest", status="200")
                      for b, d in zip(before, during, strict=True))
        assert signups == 2
        pg_count = "napalm_postgres_query_duration_seconds_count"
        pg = sum(total(d, pg_count) - total(b, pg_count) for b, d in zip(before, during, strict=True))
        assert pg > 0
        await finish_and_check_history(calls, rds, db)
    finally:
        await close_all(calls)

    async def all_gone() -> bool:
        after = [await scrape(http, n) for n in cluster.nodes]
        return sum(total(s, "napalm_sockets_connected") for s in after) == 0

    assert await eventually(all_gone, within=5)


# ---- failures ----
async def test_node_sigkilled_through_the_proxy_users_resume_on_the_survivor(users, cluster, proxy, http, rds, db):  # noqa: F811
    calls = await open_calls(users, proxy, cluster[0], 4)
    try:
        per_node = [total(await scrape(http, n), "napalm_sockets_authenticated") for n in cluster.nodes]
        victim = cluster[per_node.index(max(per_node))]
        clients = [p for a, b, _ in calls for p in (a, b)]
        rooms = {p.user_id: room for a, b, room in calls for p in (a, b)}
        seen = {p.user_id: len(p.all("call:resume")) for p in clients}
        await asyncio.to_thread(victim.kill)

        async def noticed() -> bool:  # every client of the victim saw its transport drop
            return sum(1 for p in clients if p.dropped_at) >= max(per_node)
        await eventually(noticed, within=10)
        moved = [p for p in clients if p.dropped_at]
        assert len(moved) == max(per_node) > 0
        times = await asyncio.gather(*(p.resumed_after(seen[p.user_id], rooms[p.user_id], 15) for p in moved))
        figures = {"nodes": len(cluster.nodes), "calls": len(calls), "users_on_killed_node": len(moved),
                   "resume_p50_s": pct(times, 0.5), "resume_p95_s": pct(times, 0.95),
                   "resume_max_s": round(max(times), 3)}
        record("sigkill", figures)
        assert figures["resume_p95_s"] < 10
        await finish_and_check_history(calls, rds, db)
    finally:
        await close_all(calls)


@pytest.mark.timeout(240)
async def test_rolling_restart_with_drain_loses_no_call(users, cluster, proxy, http, rds, db):  # noqa: F811
    """20 calls in progress; each node in turn gets SIGTERM (drain), exits and starts again."""
    calls = await open_calls(users, proxy, cluster[0], 20)
    clients = [p for a, b, _ in calls for p in (a, b)]
    rooms = {p.user_id: room for a, b, room in calls for p in (a, b)}
    times: list[float] = []
    resumed_users: set[str] = set()
    try:
        for node in cluster.nodes:
            seen = {p.user_id: len(p.all("call:resume")) for p in clients}
            drops = {p.user_id: len(p.dropped_at) for p in clients}
            on_node = total(await scrape(http, node), "napalm_sockets_authenticated")
            t0 = time.monotonic()
            await asyncio.to_thread(node.stop)  # SIGTERM: drain, then exit (clients keep running meanwhile)
            drained_in = time.monotonic() - t0

            def dropped(drops: dict[str, int] = drops) -> list[Resumer]:
                return [p for p in clients if len(p.dropped_at) > drops[p.user_id]]

            async def noticed(on_node: float = on_node) -> bool:  # a loaded test noticed 6 of 26 drops late once
                return len(dropped()) >= on_node
            await eventually(noticed, within=10)
            moved = dropped()
            assert len(moved) == on_node > 0
            got = await asyncio.gather(*(p.resumed_after(seen[p.user_id], rooms[p.user_id], 15) for p in moved))
            times.extend(got)
            resumed_users.update(p.user_id for p in moved)
            print(f"{node.name}: drained and exited in {drained_in:.2f}s, {len(moved)} users moved")
            await asyncio.to_thread(node.start)
            await asyncio.to_thread(proxy.wait_all_up)
        states = [await rds.hget(f"room:{room}", "state") for _, _, room in calls]
        lost = sum(1 for s in states if s != "active")
        figures = {"nodes": len(cluster.nodes), "calls": len(calls), "calls_lost": lost,
                   "users_resumed": len(resumed_users), "resumes": len(times),
                   "resume_p50_s": pct(times, 0.5), "resume_p95_s": pct(times, 0.95),
                   "resume_max_s": round(max(times), 3) if times else None}
        record("rolling_restart", figures)
        assert lost == 0
        assert resumed_users == {p.user_id for p in clients}  # every user was handed over at least once
        await finish_and_check_history(calls, rds, db)
    finally:
        await close_all(calls)
