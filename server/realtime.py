"""Socket.IO server: handshake authentication, the `auth` event, binding sockets to users, and the
wrapper every client event goes through (auth, rate, size, schema) before the domains' handlers.
Resume lives in calls/resume.py, presence registration and the heartbeat in presence/registry.py,
the per-socket token bucket in ratelimit.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import socketio
import structlog
from aiohttp import web

from server import emit, wire
from server.accounts.sessions import Principal, SessionCache, authenticate, authenticate_hash, hash_token, suspended
from server.calls import cooldowns, departures, invites, resume, rooms
from server.calls import events as _call_events  # (also registers the handlers)
from server.deps import Deps
from server.errors import ApiError
from server.events import EVENTS, EventSpec, Sender, obj
from server.fanout import NodeManager
from server.httpio import client_ip, ip_scope, validate
from server.ops import metrics
from server.presence import events as _presence_events  # noqa: F401  (registers handlers)
from server.presence import gate
from server.presence.audience import Audience
from server.presence.deck import Deck
from server.presence.registry import Registry
from server.ratelimit import TokenBucket
from server.referrals import notifications as referral_notifications
from server.settings import Settings
from server.timers import STORE_DOWN, Sweeper, now_ms

log = structlog.get_logger(__name__)
SIO = web.AppKey("sio", socketio.AsyncServer)
REALTIME = web.AppKey("realtime", object)

AUTH_SCHEMA = obj([], sessionToken={"type": "string", "maxLength": 512},
                  capabilities={"type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 32}})
KNOWN_CAPS = frozenset({"deadline", "resume", "typed-errors", "busy", "queue-snapshot"})


def attach(app: web.Application, settings: Settings) -> socketio.AsyncServer:
    manager = NodeManager(settings.redis_url)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=list(settings.origins),  # Origin allow-list on the handshake
        ping_interval=25,
        ping_timeout=60,
        max_http_buffer_size=1_000_000,
        # One client's events are handled in arrival order (an offer before its candidates);
        # different clients still run concurrently.
        async_handlers=False,
        logger=False,
        engineio_logger=False,
    )
    wire.install(sio)
    sio.attach(app)
    app[SIO] = sio
    app.on_shutdown.append(close_sockets)
    return sio


class Realtime:
    def __init__(self, deps: Deps, sio: socketio.AsyncServer) -> None:
        self.deps = deps
        self.sio = sio
        self.local: dict[str, Sender] = {}  # authenticated sockets on this node
        self.buckets: dict[str, TokenBucket] = {}  # every socket of this node, authenticated or not
        self.scope_of: dict[str, str] = {}  # sid -> its client address scope (httpio.ip_scope)
        self.per_scope: dict[str, int] = {}  # sockets held per address scope
        self.deadlines: dict[str, asyncio.TimerHandle] = {}  # authentication deadlines
        self.tasks: set[asyncio.Task[Any]] = set()
        self.room_seen: dict[str, str] = {}  # sid -> the call it was last told of (resume.replay_after_gap)
        self.closed = False
        self.sweeper = Sweeper(deps, {
            "invite": invites.expire,
            "deadline": rooms.on_deadline,
            "grace": departures.on_grace,
            "persist": rooms.on_persist,
            "cooldown": cooldowns.on_timer,
        })
        self.registry = Registry(
            deps, sio, self.local,
            on_dead_sid=lambda d, sid: departures.socket_gone(d, sid, explicit=False),
            before_reregister=lambda: resume.recover_after_loss(deps, lost=True),
            on_beat=lambda: resume.recover_after_loss(deps),
            on_returned=lambda uid, room: resume.partner_reconnected(deps, uid, room),
            on_nodes=self._nodes_seen, on_reconcile=self._cut_expired)
        if deps.settings.session_cache_seconds > 0:
            deps.sessions = SessionCache(deps.settings.session_cache_seconds)
        if isinstance(sio.manager, NodeManager):
            sio.manager.controls["access"] = self._access_changed
            sio.manager.controls["sessions"] = self._sessions_revoked
            sio.manager.controls["card"] = lambda msg: deps.deck.forget(str(msg.get("user", "")))
            sio.manager.emit_hooks.append(deps.deck.on_emit)
            audience = Audience(deps, lambda sid: s.user_id if (s := self.local.get(sid)) is not None else None)
            sio.manager.room_hooks[emit.QUEUE] = (audience.entered, audience.left)
            sio.manager.narrowers[emit.QUEUE] = audience.narrow
            sio.manager.watched = resume.CALL_STATE_EVENTS
            sio.manager.delivery_hooks.append(self._delivered)
            sio.manager.on_listener_back = self._listener_back
        sio.on("connect", self.on_connect)
        sio.on("disconnect", self.on_disconnect)
        sio.on("auth", self.on_auth)
        for spec in EVENTS.values():
            sio.on(spec.name, self._wrap(spec))

    def _access_changed(self, msg: dict[str, Any]) -> None:
        uid = str(msg.get("user", ""))
        if self.deps.sessions is not None:
            self.deps.sessions.forget_user(uid)
        local_sids = list(self.sio.manager.rooms.get("/", {}).get(emit.user_room(uid), {}))
        gate.invalidate(self.deps, local_sids, self.local, uid)

    def _delivered(self, event: str, data: Any, sids: list[str]) -> None:
        resume.note_delivery(self.room_seen, self.local, event, data, sids)

    async def _listener_back(self) -> None:
        """The cross-node listener was down: call-critical events other nodes sent meanwhile were lost
        for this node's sockets. Each gets the current state of its call, once (issue 11 §7)."""
        try:
            await resume.replay_after_gap(self.deps, list(self.local.values()), self.room_seen)
        except STORE_DOWN as exc:
            log.warning("listener_gap_replay_failed", error=repr(exc))
        except Exception:
            log.exception("listener_gap_replay_failed")

    def _nodes_seen(self, me: str, alive: set[str]) -> None:
        if isinstance(self.sio.manager, NodeManager):
            window = self.deps.settings.node_dead_after_seconds + 2 * self.deps.settings.node_heartbeat_seconds
            self.sio.manager.saw_nodes(bool(alive - {me}), window)

    # ---- connection ----
    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Admit a socket, or refuse it. Whatever happens here (Postgres failing included) either
        leaves a fully registered socket or refuses the connection with nothing kept (issue 12 §2):
        python-socketio leaves a half-open connection behind any other exception."""
        s = self.deps.settings
        if len(self.local) >= s.max_sockets:  # the node cap counts authenticated sockets only
            metrics.SOCKET_CONNECTS.labels("refused").inc()
            raise socketio.exceptions.ConnectionRefusedError("Server at capacity, please try again shortly")
        request = environ.get("aiohttp.request")
        scope = ip_scope(client_ip(request, s.trusted_proxy_hops)) if request is not None else "unknown"
        if self.per_scope.get(scope, 0) >= s.max_sockets_per_address:
            metrics.SOCKET_CONNECTS.labels("refused").inc()
            raise socketio.exceptions.ConnectionRefusedError("Too many connections from your network")
        admitted = False
        self.buckets[sid] = TokenBucket(s.socket_event_burst)
        self.scope_of[sid] = scope
        self.per_scope[scope] = self.per_scope.get(scope, 0) + 1
        try:
            # Unauthenticated sockets get a deadline (cancelled by bind): idle ones cannot pile up.
            self.deadlines[sid] = asyncio.get_running_loop().call_later(
                s.socket_auth_deadline_seconds, self._auth_deadline, sid)
            token = auth.get("token") if isinstance(auth, dict) else None
            if isinstance(token, str) and token:
                try:
                    principal = await self._authenticate(token)
                except ApiError as exc:
                    if exc.code == "banned":
                        raise socketio.exceptions.ConnectionRefusedError("Account suspended") from None
                    principal = None  # the later `auth` event gets auth:failed
                if principal is not None:
                    # Emits are only delivered once the CONNECT packet is out: bind right after this handler.
                    self._spawn(self._bind_when_connected(sid, principal, _caps(auth), hash_token(token)))
            admitted = True  # unauthenticated until the `auth` event (§3.1)
        except socketio.exceptions.ConnectionRefusedError:
            raise
        except Exception as exc:  # a store outage: refuse now, the client retries
            log.warning("connect_refused_store", sid=sid, error=repr(exc))
            raise socketio.exceptions.ConnectionRefusedError("Service temporarily unavailable, try again") from None
        finally:
            metrics.SOCKET_CONNECTS.labels("ok" if admitted else "refused").inc()
            if not admitted:
                self._forget(sid)

    def _forget(self, sid: str) -> None:
        """Drop this node's per-socket bookkeeping (refused connect or disconnect)."""
        self.buckets.pop(sid, None)
        self.room_seen.pop(sid, None)
        handle = self.deadlines.pop(sid, None)
        if handle is not None:
            handle.cancel()
        scope = self.scope_of.pop(sid, None)
        if scope is not None:
            left = self.per_scope.get(scope, 0) - 1
            if left > 0:
                self.per_scope[scope] = left
            else:
                self.per_scope.pop(scope, None)

    def _auth_deadline(self, sid: str) -> None:
        self.deadlines.pop(sid, None)
        if sid not in self.local and sid in self.buckets:
            log.info("socket_auth_deadline", sid=sid)
            self._spawn(self.sio.disconnect(sid))

    async def _bind_when_connected(self, sid: str, principal: Principal, caps: frozenset[str],
                                   token_hash: bytes) -> None:
        for _ in range(200):
            if self.sio.manager.is_connected(sid, "/"):
                break
            await asyncio.sleep(0.005)
        else:
            return
        try:
            await self.bind(sid, principal, caps, token_hash)
        except Exception:
            log.exception("bind_failed", sid=sid)

    async def _authenticate(self, token: Any) -> Principal:
        """`authenticate` through this node's session cache (issue 12 §3): reconnect storms and
        repeated `auth` events with one token cost one query. The socket itself re-reads its session
        every SESSION_RECHECK_SECONDS (`_session_ok`)."""
        cache = self.deps.sessions
        if cache is None or not isinstance(token, str) or not token or len(token) > 256:
            return await authenticate(self.deps, token if isinstance(token, str) else None)
        principal: Principal = await cache.authenticate(self.deps, hash_token(token))
        if principal.banned:
            raise suspended()
        return principal

    def _sessions_revoked(self, msg: dict[str, Any]) -> None:
        ids = msg.get("ids")
        if self.deps.sessions is not None:
            self.deps.sessions.forget_sessions([str(i) for i in ids] if isinstance(ids, list) else [])

    async def on_auth(self, sid: str, data: Any = None) -> None:
        if not self._take(sid):  # `auth` spends from the socket's bucket like every event
            return
        data = data if isinstance(data, dict) else {}
        try:
            validate(data, AUTH_SCHEMA)
            principal = await self._authenticate(data.get("sessionToken"))
        except ApiError as exc:
            if exc.code == "banned":
                await emit.to_sid(self.deps, sid, "auth:banned", {"message": exc.extra.get("message", exc.message),
                                                                  "banned": True})
                await self.sio.disconnect(sid)
                return
            await emit.to_sid(self.deps, sid, "auth:failed", {"message": exc.message})
            return
        except STORE_DOWN as exc:
            log.warning("auth_store_unavailable", sid=sid, error=repr(exc))
            await emit.to_sid(self.deps, sid, "auth:failed", {"message": "Service temporarily unavailable, try again"})
            return
        await self.bind(sid, principal, _caps(data), hash_token(data["sessionToken"]))

    async def bind(self, sid: str, principal: Principal, caps: frozenset[str], token_hash: bytes) -> None:
        uid, sess = str(principal.user_id), str(principal.session_id)
        current = self.local.get(sid)
        if current is not None and current.user_id == uid:
            current.caps = caps or current.caps
            current.access, current.access_at = (principal.paid_status, principal.ban_status), time.monotonic()
            current.token_hash, current.expires_at = token_hash, principal.expires_at.timestamp()
            current.session_id, current.checked_at = sess, time.monotonic()
            await emit.to_sid(self.deps, sid, "auth:success", {"userId": uid, "serverNow": now_ms()})
            return
        if current is not None:  # the same socket now speaks for another account
            await self._unbind(sid, explicit=True)
        s = self.deps.settings
        if len(self.local) >= s.max_sockets or \
                len(self.sio.manager.rooms.get("/", {}).get(emit.user_room(uid), {})) >= s.max_sockets_per_user:
            await emit.to_sid(self.deps, sid, "auth:failed", {"message": "Too many connections, try again shortly"})
            await self.sio.disconnect(sid)
            return
        sender = Sender(sid, uid, sess, caps, (principal.paid_status, principal.ban_status), token_hash,
                        principal.expires_at.timestamp())
        self.local[sid] = sender
        handle = self.deadlines.pop(sid, None)
        if handle is not None:
            handle.cancel()
        await self.sio.enter_room(sid, emit.user_room(uid))
        sender.bound_ms = now_ms()  # from here on, every emit to the user reaches this socket
        arrival = await self.registry.register(sender)
        if self.local.get(sid) is not sender or not self.sio.manager.is_connected(sid, "/"):
            # The socket went away while we were binding it (or while `auth` waited on Postgres, before
            # it was ours to unbind): its disconnect found nothing to remove.
            self.local.pop(sid, None)
            await departures.socket_gone(self.deps, sid, explicit=False)
            return
        structlog.contextvars.bind_contextvars(user_id=uid)
        await emit.to_sid(self.deps, sid, "auth:success", {"userId": uid, "serverNow": now_ms()})
        await referral_notifications.deliver_unread(self.deps, sid, uid)  # once per connection (D26)
        if arrival.first_socket:
            await emit.to_queue(self.deps, "presence:update", {"userId": uid, "online": True, "available": False})
        await resume.resume_socket(self.deps, sender, arrival)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self._forget(sid)
        explicit = reason == self.sio.reason.CLIENT_DISCONNECT
        await self._unbind(sid, explicit)

    async def _unbind(self, sid: str, explicit: bool) -> None:
        if self.local.pop(sid, None) is None:
            return
        try:
            await departures.socket_gone(self.deps, sid, explicit)
        except STORE_DOWN as exc:  # an outage: the reconciliation takes the registration out later
            log.warning("disconnect_cleanup_deferred", sid=sid, error=repr(exc))
        except Exception:
            log.exception("disconnect_cleanup_failed", sid=sid)

    async def _cut_expired(self) -> None:
        """Periodic (the registry's reconcile period): a socket whose session expired is cut even when
        idle, not only on its next event (issue 12 §7)."""
        now = time.time()
        for sender in [x for x in self.local.values() if x.expires_at <= now]:
            await self._session_ok(sender)

    # ---- every client event ----
    def _wrap(self, spec: EventSpec) -> Any:
        name = spec.name
        counted = {o: metrics.SOCKET_EVENTS.labels(name, o)  # label lookups once, not per event
                   for o in ("ok", "error", "refused", "rate_limited", "invalid")}
        # Signalling relays (ICE trickle: many per second per call) bind no log context up front: only
        # a line they actually write gets it (issue 10, hot path). Other events bind it for every line
        # their handler writes.
        lazy_context = name in RELAY_EVENTS
        fast_check = _call_events.FAST_CHECKS.get(name)  # relays: a plain check, jsonschema only on doubt
        recheck_s = self.deps.settings.session_recheck_seconds

        async def handler(sid: str, data: Any = None) -> None:
            deps = self.deps
            sender = self.local.get(sid)
            if sender is None:
                counted["refused"].inc()
                msg = "Please wait for authentication to complete" if name == "call:invite" \
                    else "Not authenticated"
                return await emit.call_error(deps, sid, "NOT_AUTHENTICATED", msg)
            if not self._take(sid):
                return counted["rate_limited"].inc()
            # The session check, inline while the socket's session is fresh (the common case).
            if (time.time() >= sender.expires_at or time.monotonic() - sender.checked_at >= recheck_s) \
                    and not await self._session_ok(sender):
                return counted["refused"].inc()
            try:
                size = len(json.dumps(data)) if data is not None else 0
            except (TypeError, ValueError):
                size = spec.max_bytes + 1
            if size > spec.max_bytes:
                counted["invalid"].inc()
                return await emit.call_error(deps, sid, "PAYLOAD_TOO_LARGE", f"{name} payload too large")
            try:
                if fast_check is None or not fast_check(data):
                    validate(data if data is not None else {}, spec.schema)
            except ApiError as exc:
                counted["invalid"].inc()
                return await emit.call_error(deps, sid, "INVALID_PAYLOAD", f"{name}: {exc.message}")
            payload = data if isinstance(data, dict) else {}
            if lazy_context:
                try:
                    await spec.handler(deps, sender, payload)
                except Exception as exc:
                    with structlog.contextvars.bound_contextvars(**_context(sid, sender, name, payload)):
                        await self._failed(sid, exc, counted)
                    return None
                counted["ok"].inc()
                return None
            # Every line logged while handling the event names the socket, the user, the event and
            # the call room it is about (JSON logs in production; merged by logs.configure_logging).
            with structlog.contextvars.bound_contextvars(**_context(sid, sender, name, payload)):
                try:
                    await spec.handler(deps, sender, payload)
                except Exception as exc:
                    await self._failed(sid, exc, counted)
                    return None
                counted["ok"].inc()
            return None

        return handler

    async def _failed(self, sid: str, exc: Exception, counted: dict[str, Any]) -> None:
        """An event handler raised (inside the event's log context): log, tell the socket, count."""
        counted["error"].inc()
        if isinstance(exc, STORE_DOWN):
            log.warning("event_store_unavailable", error=repr(exc))
            await emit.call_error(self.deps, sid, "UNAVAILABLE", "Service temporarily unavailable, try again")
        else:
            log.error("event_failed", exc_info=exc)
            await emit.call_error(self.deps, sid, "INTERNAL", "Something went wrong")

    async def _session_ok(self, sender: Sender) -> bool:
        """A socket speaks for its session only while the session lives (issue 12 §7): past its
        expiry, or when the last read is older than SESSION_RECHECK_SECONDS, the session is read
        again (which also slides it, as any use does); an expired, revoked or banned session cuts
        the socket."""
        s = self.deps.settings
        if time.time() < sender.expires_at and time.monotonic() - sender.checked_at < s.session_recheck_seconds:
            return True
        try:
            principal = await authenticate_hash(self.deps, sender.token_hash)
        except STORE_DOWN as exc:  # an outage is not a verdict on the session: checked again next event
            log.warning("session_recheck_deferred", sid=sender.sid, error=repr(exc))
            return True
        except ApiError as exc:
            if self.local.get(sender.sid) is sender:
                log.info("socket_session_ended", sid=sender.sid, code=exc.code)
                event = "auth:banned" if exc.code == "banned" else "auth:failed"
                await emit.call_error(self.deps, sender.sid, "NOT_AUTHENTICATED", "Your session has ended")
                await emit.to_sid(self.deps, sender.sid, event, {"message": "Your session has ended"})
                await self.sio.disconnect(sender.sid)
            return False
        sender.expires_at, sender.checked_at = principal.expires_at.timestamp(), time.monotonic()
        sender.access, sender.access_at = (principal.paid_status, principal.ban_status), time.monotonic()
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _take(self, sid: str) -> bool:
        """Token bucket per socket: excess events are dropped with one RATE_LIMITED notice per second."""
        s = self.deps.settings
        b = self.buckets.get(sid)
        if b is None:
            return False
        verdict = b.take(s.socket_events_per_second, s.socket_event_burst)
        if verdict == "warn":
            self._spawn(emit.call_error(self.deps, sid, "RATE_LIMITED", "Too many events, slow down"))
        return verdict == "ok"

    async def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.sweeper.stop()
        await self.registry.stop()
        # Our sockets vanish with the process: apply the grace rules (clients may reconnect to
        # another node in time), then close them so the web server is not kept waiting.
        for sid in list(self.local):
            await self._unbind(sid, explicit=False)
        for sid in list(self.buckets):
            with contextlib.suppress(Exception):
                await self.sio.disconnect(sid, ignore_queue=True)


RELAY_EVENTS = frozenset({"rtc:ice", "rtc:offer", "rtc:answer"})


def _context(sid: str, sender: Sender, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    room_id = payload.get("roomId")
    return {"sid": sid, "user_id": sender.user_id, "event_name": name,
            **({"room_id": room_id} if isinstance(room_id, str) else {})}


def _caps(auth: Any) -> frozenset[str]:
    raw = auth.get("capabilities") if isinstance(auth, dict) else None
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(c for c in raw if isinstance(c, str) and c in KNOWN_CAPS)


async def start(app: web.Application, deps: Deps) -> None:
    sio = app[SIO]
    deps.sio = sio
    deps.deck = Deck(deps.settings.deck_max_age_seconds, deps.settings.deck_min_rebuild_seconds)
    rt = Realtime(deps, sio)
    app[REALTIME] = rt
    if isinstance(sio.manager, NodeManager):
        # Listen and publish from the start, not from the first socket (python-socketio's lazy
        # default): a node without sockets still runs timers that emit to other nodes.
        if not sio.manager_initialized:
            sio.manager_initialized = True
            sio.manager.initialize()
        with contextlib.suppress(Exception):  # the others start publishing to us at once
            await sio.manager.publish_control("hello", host=sio.manager.host_id)
    rt.sweeper.start()
    rt.registry.start()  # its first heartbeat finds this node new and loads cooldowns (reregister)


async def close_sockets(app: web.Application) -> None:
    """on_shutdown: runs before aiohttp waits for open requests, so live websockets must go now."""
    rt = app.get(REALTIME)
    if isinstance(rt, Realtime):
        await rt.shutdown()


async def stop(app: web.Application) -> None:
    await close_sockets(app)  # idempotent; covers apps stopped without the shutdown signal
    sio = app[SIO]
    if isinstance(sio.manager, NodeManager):
        await sio.manager.close()
    task = getattr(sio.manager, "thread", None)
    if task is not None:
        task.cancel()
        await asyncio.wait([task], timeout=2)
    # Bounded: engine.io's service task can sit in a socket's close for a ping interval.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sio.shutdown(), 2)
