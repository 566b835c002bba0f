"""Prometheus metrics (official client). Every metric object lives here; domains import and call them.

Wired from the outside of the domains: HTTP in `http_metrics` (middleware), Postgres through asyncpg's
query logger (db.py), Redis through `InstrumentedRedis` (redis.py), sockets / heartbeat read from the
node's realtime state at scrape time. Metric objects for the realtime core and the money / moderation
domains to call (events, invites, rooms, setups, bans, payments) are declared below with their labels.

Served on a port of its own (METRICS_PORT, never published through the proxy) and, when
METRICS_TOKEN is set, at /metrics on the main port behind `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SETUP = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)

# ---- HTTP (middleware) ----
HTTP_REQUESTS = Counter("napalm_http_requests_total", "HTTP requests by route template, method and status",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("napalm_http_request_duration_seconds", "HTTP request latency by route template",
                         ["method", "route"], buckets=_LATENCY)

# ---- stores ----
PG_LATENCY = Histogram("napalm_postgres_query_duration_seconds", "Postgres statement latency", ["outcome"],
                       buckets=_LATENCY)
REDIS_LATENCY = Histogram("napalm_redis_command_duration_seconds", "Redis command latency by command",
                          ["command", "outcome"], buckets=_LATENCY)

# ---- realtime (called by the realtime core) ----
# outcome: ok | invalid | rate_limited | refused | error
SOCKET_EVENTS = Counter("napalm_socketio_events_total", "Socket.IO client events by name and outcome",
                        ["event", "outcome"])
SOCKET_CONNECTS = Counter("napalm_socketio_connects_total", "Socket.IO connection attempts by outcome",
                          ["outcome"])
# outcome: sent | accepted | declined | expired | cancelled | busy | refused
INVITES = Counter("napalm_invites_total", "Invites by outcome", ["outcome"])
ACTIVE_ROOMS = Gauge("napalm_active_rooms", "Active rooms (set by whoever counts them; cluster-wide value)")
CALL_SETUPS = Counter("napalm_call_setups_total", "Calls started (call:start sent to both sides)")
CALL_FINALISED = Counter("napalm_call_finalisations_total", "Calls finalised by reason", ["reason"])
INVITE_TO_START = Histogram("napalm_invite_to_start_seconds", "Latency from call:invite to call:start",
                            buckets=_SETUP)
RELAY_LATENCY = Histogram("napalm_signal_relay_seconds", "Server-side latency of a relayed signal (offer, answer, "
                          "candidate) from receipt to emit", buckets=_LATENCY)
TIMER_LAG = Histogram("napalm_timer_lag_seconds", "How late a timer fired (fired - due)", ["kind"],
                      buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0))
GC_PAUSE = Histogram("napalm_gc_pause_seconds", "Garbage collector pauses of this node (the event loop waits) "
                     "by generation", ["generation"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                               0.1, 0.25, 0.5, 1.0))
# ---- money and moderation (called by those domains) ----
BANS = Counter("napalm_bans_total", "Bans applied")
PAYMENTS = Counter("napalm_payments_total", "Access changes from payments by outcome (paid, refunded, disputed)",
                   ["outcome"])
ACCESS_CHANGES = Counter("napalm_access_changes_total", "Committed access changes (accounts/access.changed) by reason",
                         ["reason"])
_PAYMENT_REASONS = frozenset({"paid", "refunded", "disputed"})
DRAIN_EVENTS = Counter("napalm_drain_disconnects_total", "Sockets handed over by a graceful drain")

_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def route_label(request: web.Request) -> str:
    """The route template (bounded cardinality), never the raw path."""
    if request.path.startswith("/socket.io"):
        return "/socket.io/"
    info = request.match_info.route.resource if request.match_info.route else None
    if info is None:
        return "unmatched"
    canonical = info.canonical
    return "/static/" if canonical.startswith("/static") else canonical


@web.middleware
async def http_metrics(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_label(request)
        if route != "/socket.io/" or request.method != "GET" or "transport=websocket" not in request.query_string:
            # A websocket "request" lasts as long as the socket: keep it out of the latency histogram.
            HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(request.method, route, str(status)).inc()


def access_changed(reason: str) -> None:
    """Counted at the one place every domain reports a committed ban, payment, code or QR unlock."""
    ACCESS_CHANGES.labels(reason).inc()
    if reason == "ban":
        BANS.inc()
    elif reason in _PAYMENT_REASONS:
        PAYMENTS.labels(reason).inc()


def observe_pg(record: Any) -> None:
    """asyncpg query logger callback (LoggedQuery: elapsed, exception)."""
    PG_LATENCY.labels("error" if record.exception is not None else "ok").observe(record.elapsed)


class NodeState(Collector):
    """Gauges read at scrape time from this process's realtime state (no bookkeeping in the core)."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, float]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = self.source() if self.source is not None else {}
        for name, doc in (("sockets_connected", "Socket.IO connections open on this node"),
                          ("sockets_authenticated", "Authenticated sockets on this node"),
                          ("heartbeat_age_seconds", "Seconds since this node last wrote its heartbeat"),
                          ("draining", "1 while this node drains (SIGTERM received)")):
            if name in values:
                yield GaugeMetricFamily(f"napalm_{name}", doc, value=values[name])


NODE_STATE = NodeState()
REGISTRY.register(NODE_STATE)


def exposition() -> web.Response:
    resp = web.Response(body=generate_latest(REGISTRY))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


Refresh = Callable[[], Awaitable[None]]


async def protected(request: web.Request, token: str, refresh: Refresh) -> web.Response:
    """/metrics on the main port: 404 without a configured token, 401 with a wrong one."""
    if not token:
        raise web.HTTPNotFound()
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return web.json_response({"error": "Metrics token required", "code": "unauthorized"}, status=401)
    await refresh()
    return exposition()


def metrics_app(refresh: Refresh) -> web.Application:
    """The app behind METRICS_PORT: only /metrics (scraped inside the cluster, never routed publicly).
    `refresh` sets the scrape-time values that need a store read first."""

    async def metrics(_request: web.Request) -> web.Response:
        await refresh()
        return exposition()

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
