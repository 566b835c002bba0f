"""Operators' view of one node: /metrics (separate port, or the main port behind a token), /ready
turning 503 for each thing the node needs (including the cross-node pub/sub listener), the drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
import socketio
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.deps import DEPS
from server.ops import drain
from server.settings import Settings
from server.stack import free_port
from tests.conftest import reset_state
from tests.rt import Peer, make_user

TOKEN = "scrape-token-for-tests"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Any, metrics_port: int) -> Any:
    await reset_state(settings)
    return await aiohttp_client(create_app(settings.with_(metrics_port=metrics_port, metrics_token=TOKEN,
                                                          drain_delay_seconds=0.2)))


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, labels[k]) in ls for k in labels))


async def test_http_store_and_socket_metrics_move(client, db, metrics_port):
    before = await scrape(metrics_port)
    user = await make_user(client, db, "Metra")
    assert (await client.get("/user/me", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get(f"/no/such/{user['userId']}")).status == 404
    assert (await client.get("/static/index.html")).status == 200
    peer = await Peer(str(client.make_url("/")), user["sessionToken"], user["userId"]).connect()
    try:
        during = await scrape(metrics_port)
        assert total(during, "napalm_sockets_connected") == 1
        assert total(during, "napalm_sockets_authenticated") == 1
        assert 0 <= total(during, "napalm_heartbeat_age_seconds") < 5
        assert total(during, "napalm_draining") == 0
    finally:
        await peer.close()
    after = await scrape(metrics_port)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # Route templates, never raw paths (a user id in a label would explode the series count).
    assert delta("napalm_http_requests_total", route="/auth/guest", method="POST", status="200") == 1
    assert delta("napalm_http_requests_total", route="/user/me", status="401") == 1
    assert delta("napalm_http_requests_total", route="unmatched", status="404") == 1
    assert delta("napalm_http_requests_total", route="/static/", status="200") == 1
    assert not any("Metra" in str(k) or user["userId"] in str(k) for k in after)
    assert delta("napalm_http_request_duration_seconds_count", route="/auth/guest") == 1
    assert delta("napalm_postgres_query_duration_seconds_count", outcome="ok") >= 2
    assert delta("napalm_redis_command_duration_seconds_count", outcome="ok") >= 2
    # The socket is gone from the gauges once it closed.
    for _ in range(50):
        if total(after, "napalm_sockets_connected") == 0:
            break
        await asyncio.sleep(0.05)
        after = await scrape(metrics_port)
    assert total(after, "napalm_sockets_connected") == 0 and total(after, "napalm_sockets_authenticated") == 0


async def test_metrics_on_the_main_port_need_the_token(client):
    assert (await client.get("/metrics")).status == 401
    resp = await client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200 and "napalm_http_requests_total" in await resp.text()


async def test_metrics_without_a_token_are_not_on_the_main_port(settings, aiohttp_client):
    await reset_state(settings)
    cl = await aiohttp_client(create_app(settings))
    resp = await cl.get("/metrics", headers={"Authorization": "Bearer "})
    assert resp.status == 404


async def test_ready_fails_when_the_pubsub_listener_dies(client, db):
    user = await make_user(client, db, "Listener")
    peer = await Peer(str(client.make_url("/")), user["sessionToken"], user["userId"]).connect()
    await peer.close()  # the first socket started the node's pub/sub listener
    resp = await client.get("/ready")
    assert resp.status == 200 and (await resp.json())["checks"]["pubsub"] == "ok"
    listener = client.app[DEPS].sio.manager.thread
    listener.cancel()  # dies without a word, like a listener stuck after a network fault
    await asyncio.gather(listener, return_exceptions=True)
    resp = await client.get("/ready")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "not_ready"
    assert body["checks"]["pubsub"].startswith("error") and body["checks"]["postgres"] == "ok"


async def test_ready_fails_when_redis_is_unreachable(client):
    deps = client.app[DEPS]
    saved = deps.redis
    from server.redis import create_redis

    deps.redis = create_redis(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        resp = await client.get("/ready")
        body = await resp.json()
        assert resp.status == 503 and body["checks"]["redis"].startswith("error")
    finally:
        await deps.redis.aclose()
        deps.redis = saved


async def test_drain_stops_readiness_refuses_new_sockets_and_hands_sockets_over(client, db, metrics_port):
    url = str(client.make_url("/"))
    user = await make_user(client, db, "Drainee")
    sio = socketio.AsyncClient(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.2)
    connects: list[float] = []
    reasons: list[str] = []
    sio.on("connect", lambda: connects.append(time.monotonic()))
    sio.on("disconnect", lambda reason=None: reasons.append(str(reason)))
    await sio.connect(url, auth={"token": user["sessionToken"]}, transports=["websocket"], wait_timeout=5)
    task = asyncio.create_task(drain.drain(client.app))
    try:
        await asyncio.sleep(0.05)
        resp = await client.get("/ready")
        assert resp.status == 503 and (await resp.json())["checks"]["drain"] == "draining"
        refused = await client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        assert refused.status == 503 and (await refused.json())["code"] == "draining"
        assert total(await scrape(metrics_port), "napalm_draining") == 1
        assert await task == 1
        for _ in range(60):
            if reasons:
                break
            await asyncio.sleep(0.05)
        # The transport dropped (not an io-level "server disconnect", after which clients stay away) ...
        assert reasons and reasons[0] != sio.reason.SERVER_DISCONNECT, reasons
        # ... so the client comes back by itself once a node takes sockets again.
        client.app[drain.DRAIN].draining = False
        for _ in range(100):
            if len(connects) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(connects) == 2, "the client did not reconnect by itself"
    finally:
        client.app[drain.DRAIN].draining = False
        await sio.disconnect()


def test_node_id_is_unique_per_start():
    a, b = Settings(), Settings()
    assert a.node_id != b.node_id
    assert Settings.from_env({"NODE_ID": "pinned"}).node_id == "pinned"


async def test_bans_and_payments_are_counted_where_every_domain_reports_access_changes(client, db, metrics_port):
    from server.accounts import access

    user = await make_user(client, db, "Counted")
    before = await scrape(metrics_port)
    deps = client.app[DEPS]
    for reason in ("paid", "ban", "refunded", "invite_code"):
        await access.changed(deps, user["userId"], reason)
    after = await scrape(metrics_port)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("napalm_bans_total") == 1
    assert delta("napalm_payments_total", outcome="paid") == 1
    assert delta("napalm_payments_total", outcome="refunded") == 1
    assert delta("napalm_payments_total") == 2
    assert delta("napalm_access_changes_total", reason="invite_code") == 1


async def test_a_scripted_call_moves_the_realtime_metrics(client, db, metrics_port):
    """Issue 14 leftover: events by outcome, connects, invites, call setup and finalisation, the
    invite-to-start and relay latencies and the timer lag are recorded where they happen."""
    from tests.rt import in_call

    before = await scrape(metrics_port)
    url = str(client.make_url("/"))
    a, b = await make_user(client, db, "Caller"), await make_user(client, db, "Callee", gender="male")
    pa = await Peer(url, a["sessionToken"], a["userId"]).connect()
    pb = await Peer(url, b["sessionToken"], b["userId"]).connect()
    try:
        await pa.emit("call:invite", {"toUserId": a["userId"], "requestedSeconds": 60})  # oneself: refused
        await pa.wait("call:declined")
        await pa.emit("room:chat", {"roomId": 5})  # invalid payload
        await pa.wait("call:error")
        start = await in_call(pa, pb, 60)
        room = start["roomId"]
        for p in (pa, pb):
            await p.emit("room:join", {"roomId": room})
            await p.wait("room:joined")
        await pa.emit("rtc:offer", {"roomId": room, "offer": {"type": "offer", "sdp": "v=0"}})
        await pb.wait("rtc:offer")
        # Calls in progress, cluster-wide (the durable live_calls records), read at scrape time.
        assert total(await scrape(metrics_port), "napalm_active_rooms") == 1
        await pa.emit("call:end", {"roomId": room})
        await pa.wait("session:finalized")
        await pb.wait("session:finalized")
        for _ in range(100):  # the record goes with the history write, right after the finalisation
            if total(await scrape(metrics_port), "napalm_active_rooms") == 0:
                break
            await asyncio.sleep(0.05)
        assert total(await scrape(metrics_port), "napalm_active_rooms") == 0
    finally:
        await pa.close()
        await pb.close()
    # A timer already 0.5 s overdue when scheduled (an unknown invite: its handler does nothing).
    import uuid

    from server import timers

    deps = client.app[DEPS]
    member = f"invite:{uuid.uuid4()}"
    await timers.schedule(deps, "invite", member.partition(":")[2], timers.now_ms() - 500)
    for _ in range(200):
        if await deps.redis.zscore("timers", member) is None:
            break
        await asyncio.sleep(0.02)
    after = await scrape(metrics_port)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("napalm_timer_lag_seconds_count", kind="invite") >= 1
    assert delta("napalm_timer_lag_seconds_sum", kind="invite") >= 0.5
    assert delta("napalm_socketio_connects_total", outcome="ok") == 2
    assert delta("napalm_socketio_events_total", event="call:invite", outcome="ok") == 2
    assert delta("napalm_socketio_events_total", event="room:chat", outcome="invalid") == 1
    assert delta("napalm_socketio_events_total", event="rtc:offer", outcome="ok") == 1
    assert delta("napalm_invites_total", outcome="refused") == 1
    assert delta("napalm_invites_total", outcome="sent") == 1
    assert delta("napalm_invites_total", outcome="accepted") == 1
    assert delta("napalm_call_setups_total") == 1
    assert delta("napalm_call_finalisations_total") == 1
    assert delta("napalm_invite_to_start_seconds_count") == 1
    assert delta("napalm_signal_relay_seconds_count") == 1
