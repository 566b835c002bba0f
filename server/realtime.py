"""Socket.IO server: handshake authentication, the `auth` event, (re)binding sockets to users with
resume (§7 E3), and the wrapper every client event goes through (auth, rate, size, schema)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import asyncpg
import socketio
import structlog
from aiohttp import web
from aiohttp.web import WebSocketResponse
from engineio.async_drivers import aiohttp as eio_aiohttp

from server import emit
from server.accounts.sessions import Principal, authenticate
from server.calls import cooldowns, departures, invites, resume, rooms, state
from server.calls import events as _call_events  # noqa: F401  (registers handlers)
from server.calls.cooldowns import rebuild_if_lost
from server.deps import Deps
from server.errors import ApiError
from server.events import EVENTS, EventSpec, Sender, obj
from server.fanout import NodeManager
from server.httpio import validate
from server.presence import events as _presence_events  # noqa: F401  (registers handlers)
from server.presence import gate
from server.presence import state as presence
from server.presence.deck import Deck
from server.referrals import notifications as referral_notifications
from server.settings import Settings
from server.timers import STORE_DOWN, Sweeper, now_ms

log = structlog.get_logger(__name__)
SIO = web.AppKey("sio", socketio.AsyncServer)
REALTIME = web.AppKey("realtime", object)

AUTH_SCHEMA = obj([], sessionToken={"type": "string", "maxLength": 512},
                  capabilities={"type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 32}})
KNOWN_CAPS = frozenset({"deadline", "resume", "typed-errors", "busy", "queue-snapshot"})


class _PlainWebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """The engine.io websocket without permessage-deflate: a compressor per socket costs more memory
    than the small signalling messages it would save (the issue measured 3.5x a bare socket)."""

    async def __call__(self, environ: dict[str, Any]) -> Any:
        self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ
        await self.handler(self)
        return self._sock


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
    sio.eio._async = {**sio.eio._async, "websocket": _PlainWebSocket}  # per server, not the module's dict
    sio.attach(app)
    app[SIO] = sio
    app.on_shutdown.append(close_sockets)
    return sio


class _Bucket:
    __slots__ = ("last", "tokens", "warned")

    def __init__(self, burst: int) -> None:
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.warned = 0.0


class Realtime:
    def __init__(self, deps: Deps, sio: socketio.AsyncServer) -> None:
        self.deps = deps
        self.sio = sio
        self.local: dict[str, Sender] = {}  # authenticated sockets on this node
        self.buckets: dict[str, _Bucket] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.sweeper = Sweeper(deps, {
            "invite": invites.expire,
            "deadline": rooms.on_deadline,
            "grace": departures.on_grace,
            "persist": rooms.on_persist,
            "cooldown": cooldowns.on_timer,
        }, on_dead_sid=lambda d, sid: departures.socket_gone(d, sid, explicit=False),
            on_registry_lost=self.reregister, on_nodes=self._nodes_seen, on_reconcile=self.reconcile)
        if isinstance(sio.manager, NodeManager):
            sio.manager.controls["access"] = self._access_changed
            sio.manager.emit_hooks.append(deps.deck.on_emit)
        sio.on("connect", self.on_connect)
        sio.on("disconnect", self.on_disconnect)
        sio.on("auth", self.on_auth)
        for spec in EVENTS.values():
            sio.on(spec.name, self._wrap(spec))

    def _access_changed(self, msg: dict[str, Any]) -> None:
        uid = str(msg.get("user", ""))
        local_sids = list(self.sio.manager.rooms.get("/", {}).get(emit.user_room(uid), {}))
        gate.invalidate(self.deps, local_sids, self.local, uid)

    def _nodes_seen(self, me: str, alive: set[str]) -> None:
        if isinstance(self.sio.manager, NodeManager):
            window = self.deps.settings.node_dead_after_seconds + 2 * self.deps.settings.node_heartbeat_seconds
            self.sio.manager.saw_nodes(bool(alive - {me}), window)

    # ---- connection ----
    async def on_connect(self, sid: str, _environ: dict[str, Any], auth: Any = None) -> None:
        s = self.deps.settings
        if len(self.buckets) >= s.max_sockets:
            raise socketio.exceptions.ConnectionRefusedError("Server at capacity, please try again shortly")
        self.buckets[sid] = _Bucket(s.socket_event_burst)
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            return  # unauthenticated until the `auth` event (§3.1)
        try:
            principal = await authenticate(self.deps, token)
        except ApiError as exc:
            if exc.code == "banned":
                self.buckets.pop(sid, None)
                raise socketio.exceptions.ConnectionRefusedError("Account suspended") from None
            return  # the later `auth` event gets auth:failed
        caps = _caps(auth)
        # Emits are only delivered once the CONNECT packet is out: bind right after this handler.
        self._spawn(self._bind_when_connected(sid, principal, caps))

    async def _bind_when_connected(self, sid: str, principal: Principal, caps: frozenset[str]) -> None:
        for _ in range(200):
            if self.sio.manager.is_connected(sid, "/"):
                break
            await asyncio.sleep(0.005)
        else:
            return
        try:
            await self.bind(sid, principal, caps)
        except Exception:
            log.exception("bind_failed", sid=sid)

    async def on_auth(self, sid: str, data: Any = None) -> None:
        data = data if isinstance(data, dict) else {}
        try:
            validate(data, AUTH_SCHEMA)
            principal = await authenticate(self.deps, data.get("sessionToken"))
        except ApiError as exc:
            if exc.code == "banned":
                await emit.to_sid(self.deps, sid, "auth:banned", {"message": exc.extra.get("message", exc.message),
                                                                  "banned": True})
                await self.sio.disconnect(sid)
                return
            await emit.to_sid(self.deps, sid, "auth:failed", {"message": exc.message})
            return
        await self.bind(sid, principal, _caps(data))

    async def bind(self, sid: str, principal: Principal, caps: frozenset[str]) -> None:
        uid, sess = str(principal.user_id), str(principal.session_id)
        current = self.local.get(sid)
        if current is not None and current.user_id == uid:
            current.caps = caps or current.caps
            current.access, current.access_at = (principal.paid_status, principal.ban_status), time.monotonic()
            await emit.to_sid(self.deps, sid, "auth:success", {"userId": uid, "serverNow": now_ms()})
            return
        if current is not None:  # the same socket now speaks for another account
            await self._unbind(sid, explicit=True)
        sender = Sender(sid, uid, sess, caps, (principal.paid_status, principal.ban_status))
        self.local[sid] = sender
        await self.sio.enter_room(sid, emit.user_room(uid))
        sender.bound_ms = now_ms()  # from here on, every emit to the user reaches this socket
        await self.sio.enter_room(sid, emit.session_room(sess))
        arrival = await presence.add_socket(self.deps.redis, uid, sid, self.deps.settings.node_id, sess)
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
        await self._resume(sender, arrival)

    async def _resume(self, sender: Sender, arrival: presence.Arrival) -> None:
        """E3: put a (re)connected socket back into its call and replay what it missed."""
        deps, sid, uid = self.deps, sender.sid, sender.user_id
        if arrival.room_id:
            room = await state.get_room(deps.redis, arrival.room_id)
            if room.get("state") == "active":
                partner = room["b"] if room["a"] == uid else room["a"]
                await self.sio.enter_room(sid, emit.member_room(arrival.room_id, uid))
                peer = await _card(deps, partner)
                await emit.to_sid(deps, sid, "call:resume", {
                    "roomId": arrival.room_id, "peerUser": peer, "isInitiator": room["a"] == uid,
                    "agreedSeconds": int(room["agreed"]), "endsAt": int(room["deadline"]), "serverNow": now_ms()})
                if arrival.was_away:
                    await self._partner_reconnected(uid, arrival.room_id)
        if arrival.finalized:
            session_id, _, _room = arrival.finalized.partition("|")
            await emit.to_sid(deps, sid, "session:finalized", {"sessionId": session_id})
        if arrival.incoming_invite:
            await _renotify(deps, sid, arrival.incoming_invite)

    async def _partner_reconnected(self, user_id: str, room_id: str) -> None:
        room = await state.get_room(self.deps.redis, room_id)
        if room.get("state") == "active":
            partner = room["b"] if room["a"] == user_id else room["a"]
            await emit.to_member(self.deps, room_id, partner, "room:partner-reconnected", {"userId": user_id})

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.buckets.pop(sid, None)
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

    async def reconcile(self) -> None:
        """Periodic: a sid registered in Redis for this node that this node does not hold is a ghost
        (a cleanup that failed halfway, a Redis error after the local pop): take it out, so its user
        goes offline within one period (issue 11 §3)."""
        registered = await presence.node_sids(self.deps.redis, self.deps.settings.node_id)
        ghosts = [sid for sid in registered if sid not in self.local and not self.sio.manager.is_connected(sid, "/")]
        for sid in ghosts:
            try:
                await departures.socket_gone(self.deps, sid, explicit=False)
            except Exception:
                log.exception("ghost_cleanup_failed", sid=sid)
        if ghosts:
            log.warning("ghosts_removed", sockets=len(ghosts))

    async def reregister(self) -> None:
        """Redis has no record of this node (start-up, or Redis lost its data): put this node's
        live sockets back into presence and reload durable cooldowns (first: whoever sees these users
        online again must also see their cooldowns). A slow or failed load does not hold the heartbeat
        up: it is retried on the next beat (its marker is only set once loaded)."""
        try:
            await asyncio.wait_for(rebuild_if_lost(self.deps), 2)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("cooldowns_rebuild_deferred", error=repr(exc))
        try:  # calls Redis lost come back from their durable record (idempotent across nodes)
            await asyncio.wait_for(resume.restore_calls(self.deps), 5)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.error("calls_restore_failed", error=repr(exc))
        readded = []
        for sender in list(self.local.values()):
            if sender.sid in self.local:
                arrival = await presence.add_socket(self.deps.redis, sender.user_id, sender.sid,
                                                    self.deps.settings.node_id, sender.session_id)
                readded.append(sender.sid)
                if arrival.was_away and arrival.room_id:
                    # This node was frozen long enough to be reaped (SIGSTOP, a long pause): the partner
                    # was told we were gone; the call goes on (issue 11 §6).
                    await self._partner_reconnected(sender.user_id, arrival.room_id)
        # Users whose sockets are in the queue room were in the deck: put them back (not if in a call).
        queued = self.sio.manager.rooms.get("/", {}).get(emit.QUEUE, {})
        for uid in {self.local[sid].user_id for sid in readded if sid in queued and sid in self.local}:
            await presence.join_queue(self.deps.redis, uid)
        # A socket that disconnected while we re-added it was removed before our add: undo it.
        for sid in readded:
            if sid not in self.local:
                await presence.remove_socket(self.deps.redis, sid, explicit=True, grace_due_ms=0)
        if readded:
            log.warning("presence_rebuilt", sockets=len(readded))

    # ---- every client event ----
    def _wrap(self, spec: EventSpec) -> Any:
        async def handler(sid: str, data: Any = None) -> None:
            deps = self.deps
            sender = self.local.get(sid)
            if sender is None:
                msg = "Please wait for authentication to complete" if spec.name == "call:invite" \
                    else "Not authenticated"
                return await emit.call_error(deps, sid, "NOT_AUTHENTICATED", msg)
            if not self._take(sid):
                return None
            try:
                size = len(json.dumps(data)) if data is not None else 0
            except (TypeError, ValueError):
                size = spec.max_bytes + 1
            if size > spec.max_bytes:
                return await emit.call_error(deps, sid, "PAYLOAD_TOO_LARGE", f"{spec.name} payload too large")
            try:
                validate(data if data is not None else {}, spec.schema)
            except ApiError as exc:
                return await emit.call_error(deps, sid, "INVALID_PAYLOAD", f"{spec.name}: {exc.message}")
            try:
                await spec.handler(deps, sender, data if isinstance(data, dict) else {})
            except STORE_DOWN as exc:
                log.warning("event_store_unavailable", event_name=spec.name, sid=sid, error=repr(exc))
                await emit.call_error(deps, sid, "UNAVAILABLE", "Service temporarily unavailable, try again")
            except Exception:
                log.exception("event_failed", event_name=spec.name, sid=sid)
                await emit.call_error(deps, sid, "INTERNAL", "Something went wrong")
            return None

        return handler

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
        now = time.monotonic()
        b.tokens = min(float(s.socket_event_burst), b.tokens + (now - b.last) * s.socket_events_per_second)
        b.last = now
        if b.tokens >= 1:
            b.tokens -= 1
            return True
        if now - b.warned >= 1:
            b.warned = now
            self._spawn(emit.call_error(self.deps, sid, "RATE_LIMITED", "Too many events, slow down"))
        return False

    async def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.sweeper.stop()
        # Our sockets vanish with the process: apply the grace rules (clients may reconnect to
        # another node in time), then close them so the web server is not kept waiting.
        for sid in list(self.local):
            await self._unbind(sid, explicit=False)
        for sid in list(self.buckets):
            with contextlib.suppress(Exception):
                await self.sio.disconnect(sid, ignore_queue=True)


def _caps(auth: Any) -> frozenset[str]:
    raw = auth.get("capabilities") if isinstance(auth, dict) else None
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(c for c in raw if isinstance(c, str) and c in KNOWN_CAPS)


async def _card(deps: Deps, user_id: str) -> dict[str, Any]:
    c = (await deps.deck.cards_of(deps, [user_id])).get(user_id)
    return c.public if c is not None else {"userId": user_id, "name": ""}


async def _renotify(deps: Deps, sid: str, invite_id: str) -> None:
    """E3(d): a callee who reconnects sees the pending invite again if more than 5 s are left."""
    inv = await state.get_invite(deps.redis, invite_id)
    if not inv:
        return
    left = int(inv["window_end"]) - now_ms()
    if left <= 5000:
        return
    await emit.to_sid(deps, sid, "call:notify", {"inviteId": invite_id, "fromUser": await _card(deps, inv["from"]),
                                                 "requestedSeconds": int(inv["s1"]), "ttlMs": left,
                                                 "expiresAt": int(inv["window_end"])})


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
    rt.sweeper.start()  # its first heartbeat finds this node new and loads cooldowns (reregister)


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
