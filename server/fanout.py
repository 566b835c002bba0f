"""Cross-node delivery of Socket.IO emits (the client manager python-socketio is given).

python-socketio's Redis manager awaits a PUBLISH for every emit, even to a socket on this node, and
retries a failed publish by building new Redis clients (a connection storm under bursts). Here:

* sockets on this node get the packet directly (encoded once, no task per recipient);
* an emit addressed to a sid of this node, or made while no other node is alive, publishes nothing;
* everything another node must deliver goes into a bounded outbox that one task publishes in
  pipelined batches over one connection: emit never waits for Redis, order is kept, a failed batch
  is retried a bounded number of times and then counted as dropped (never a connection storm);
* the listener reconnects with a backoff capped at LISTEN_BACKOFF_MAX_S (the library's grows to 60 s)
  and reports its health for /ready and metrics;
* control messages (`method: napalm:ctl`) carry node-to-node signals such as "the access of user X
  changed" to every node, this one included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from typing import Any

import redis.asyncio as aioredis
import socketio
import structlog
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from server import wire
from server.redis import DRIVER

log = structlog.get_logger(__name__)

CHANNEL = "napalm:sio"
CTL = "napalm:ctl"
OUTBOX_MAX = 20_000
BATCH_MAX = 200
PUBLISH_ATTEMPTS = 3
LISTEN_BACKOFF_MAX_S = 2.0
_CTL_MARK = f'"{CTL}"'.encode()

ControlHandler = Callable[[dict[str, Any]], Awaitable[None] | None]
EmitHook = Callable[[str, Any], None]
DeliveryHook = Callable[[str, Any, list[str]], None]


class Stats:
    __slots__ = (
        "delivered_local",
        "listener_errors",
        "listener_up",
        "publish_dropped",
        "publish_retries",
        "published",
        "skipped_publish",
    )

    def __init__(self) -> None:
        self.published = 0
        self.skipped_publish = 0
        self.publish_retries = 0
        self.publish_dropped = 0
        self.delivered_local = 0
        self.listener_errors = 0
        self.listener_up = False

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class NodeManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        # The listener's own connection; health checks keep a silent half-open socket from hiding.
        super().__init__(url, channel=channel, redis_options={"health_check_interval": 10,
                                                              "socket_keepalive": True, "driver_info": DRIVER})
        self.stats = Stats()
        # Publishing stops only once no other node has been seen for a whole dead-node window (a node
        # that just started says hello; a flushed Redis hides the others for a beat or two).
        self.others_alive = True
        self._other_seen = time.monotonic()
        self.controls: dict[str, ControlHandler] = {}
        self.emit_hooks: list[EmitHook] = []
        # Call-critical events delivered to this node's sockets (event, data, sids), for the replay
        # after a listener gap (realtime.py); only events named in `watched`, so relays cost nothing.
        self.watched: frozenset[str] = frozenset()
        self.delivery_hooks: list[DeliveryHook] = []
        # Called (in a task) when the listener is subscribed again after it was down: whatever other
        # nodes published meanwhile was lost for this node's sockets.
        self.on_listener_back: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._replays: set[asyncio.Task[None]] = set()
        # room -> (entered(sid), left(sid)), for rooms whose membership on this node is indexed elsewhere.
        self.room_hooks: dict[str, tuple[Callable[[str], None], Callable[[str], None]]] = {}
        # room -> which of its sockets an emit of (event, data) concerns (None: all of them), e.g. the
        # deck changes only the clients whose deck can show that user hear of (presence/audience.py).
        self.narrowers: dict[str, Callable[[str, Any], Collection[str] | None]] = {}
        self._outbox: asyncio.Queue[dict[str, Any]] | None = None
        self._publisher: asyncio.Task[None] | None = None
        # One connection for publishing: batches are pipelined, so one is enough and nothing churns.
        self._pub = aioredis.Redis.from_url(url, single_connection_client=True, socket_timeout=5,
                                            socket_connect_timeout=5, driver_info=DRIVER)

    def initialize(self) -> None:
        super().initialize()
        self.controls["hello"] = self.hello
        self._outbox = asyncio.Queue(OUTBOX_MAX)
        self._publisher = asyncio.create_task(self._publish_loop(), name="sio-publisher")

    def saw_nodes(self, others_alive: bool, window_s: float) -> None:
        now = time.monotonic()
        if others_alive:
            self._other_seen = now
        self.others_alive = now - self._other_seen < window_s

    def hello(self, msg: dict[str, Any]) -> None:
        if msg.get("host") != self.host_id:
            self._other_seen = time.monotonic()
            self.others_alive = True

    # ---- room membership (every local enter and leave, disconnect and close_room included, ends here)
    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if (hooks := self.room_hooks.get(room)) is not None:
            hooks[0](sid)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        if (hooks := self.room_hooks.get(room)) is not None:
            hooks[1](sid)

    # ---- emit: local first, publish only what another node must deliver
    async def emit(self, event: str, data: Any, namespace: str | None = None, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        room = to or room
        namespace = namespace or "/"
        if callback is not None:
            return await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, **kwargs)
        await self._deliver_local(event, data, namespace, room, skip_sid)
        if kwargs.get("ignore_queue") or not self.others_alive:
            self.stats.skipped_publish += 1
            return None
        if isinstance(room, str) and self.is_connected(room, namespace):
            self.stats.skipped_publish += 1  # a sid of this node: nobody else has it
            return None
        payload = list(data) if isinstance(data, tuple) else [data]
        self._enqueue({"method": "emit", "event": event, "data": payload, "binary": False, "namespace": namespace,
                       "room": room, "skip_sid": skip_sid, "callback": None, "host_id": self.host_id})
        return None

    async def _deliver_local(self, event: str, data: Any, namespace: str, room: Any, skip_sid: Any) -> None:
        for hook in self.emit_hooks:
            hook(event, room)
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        eio_pkts: list[Any] | None = None
        reached: list[str] | None = [] if event in self.watched else None
        sockets = self.server.eio.sockets
        for sid, eio_sid in self._recipients(event, data, namespace, room):
            if sid in skip:
                continue
            if reached is not None:
                reached.append(sid)
            if eio_pkts is None:  # encoded once, only if someone here receives it
                encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
                eio_pkts = [eio_packet.Packet(eio_packet.MESSAGE, p)
                            for p in (encoded if isinstance(encoded, list) else [encoded])]
            sock = sockets.get(eio_sid)
            for p in eio_pkts if sock is not None else ():  # (None: gone meanwhile)
                # The same frame bytes for every socket that keeps up (wire.py); else its queue.
                if not wire.write_now(sock, p):
                    with contextlib.suppress(Exception):  # a socket closing meanwhile
                        await wire.send_queued(sock, p)
            self.stats.delivered_local += 1
        if reached:
            for dhook in self.delivery_hooks:
                dhook(event, data, reached)

    def _recipients(self, event: str, data: Any, namespace: str, room: Any) -> Iterable[tuple[str, Any]]:
        narrow = self.narrowers.get(room) if isinstance(room, str) else None
        only = narrow(event, data) if narrow is not None else None
        if only is None:
            return self.get_participants(namespace, room)
        members = self.rooms[namespace].get(room, {})
        return [(sid, members[sid]) for sid in only if sid in members]

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        # A remote node's emit: deliver to our sockets (the library decodes the payload shape).
        data = message.get("data")
        if isinstance(data, list):
            data = data[0] if len(data) == 1 else tuple(data)
        await self._deliver_local(message["event"], data, message.get("namespace") or "/", message.get("room"),
                                  message.get("skip_sid"))

    # ---- publishing
    async def _publish(self, data: dict[str, Any]) -> None:
        """Every publish of the base class (disconnect, rooms of remote sids, close_room) goes through
        the outbox; like emits, nothing is published while no other node is alive to act on it."""
        if not self.others_alive:
            self.stats.skipped_publish += 1
            return
        self._enqueue(data)

    def _enqueue(self, message: dict[str, Any]) -> None:
        if self._outbox is None:
            return
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.stats.publish_dropped += 1
            log.error("publish_outbox_full", dropped=1)

    async def publish_control(self, kind: str, **fields: Any) -> None:
        """A signal to every node (this one included), sent at once rather than queued."""
        msg = json.dumps({"method": CTL, "kind": kind, **fields})
        await self._pub.publish(self.channel, msg)

    async def _publish_loop(self) -> None:
        assert self._outbox is not None
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < BATCH_MAX and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            encoded = [self.json.dumps(m) for m in batch]
            for attempt in range(PUBLISH_ATTEMPTS):
                try:
                    async with self._pub.pipeline(transaction=False) as pipe:
                        for m in encoded:
                            pipe.publish(self.channel, m)
                        await pipe.execute()
                    self.stats.published += len(batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if attempt + 1 == PUBLISH_ATTEMPTS:
                        self.stats.publish_dropped += len(batch)
                        log.error("publish_dropped", messages=len(batch), error=str(exc))
                    else:
                        self.stats.publish_retries += 1
                        await asyncio.sleep(0.1 * 2 ** attempt)

    # ---- listening
    async def _redis_listen_with_retries(self) -> Any:
        backoff = 0.1
        subscribed = False
        lost = False
        while True:
            try:
                if not subscribed:
                    self._redis_connect()
                    # Subscribe confirmations are wanted (the library drops them): one says a gap ended.
                    self.pubsub.ignore_subscribe_messages = False
                    await self.pubsub.subscribe(self.channel)
                    subscribed = True
                    self.stats.listener_up = True
                    backoff = 0.1
                async for message in self.pubsub.listen():
                    if lost and message.get("type") == "subscribe":
                        # Subscribed again (confirmed by Redis, not only sent) after a gap.
                        lost = False
                        self._listener_back()
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.listener_up = False
                self.stats.listener_errors += 1
                lost = True
                log.warning("sio_listener_retry", error=str(exc), retry_in_s=backoff)
                subscribed = False
                with contextlib.suppress(Exception):
                    await self.pubsub.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LISTEN_BACKOFF_MAX_S)

    def _listener_back(self) -> None:
        if self.on_listener_back is None:
            return
        log.warning("sio_listener_back")
        task = asyncio.create_task(self.on_listener_back(), name="listener-gap-replay")
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def _listen(self) -> Any:
        async for data in super()._listen():
            if isinstance(data, bytes) and _CTL_MARK in data[:64]:
                await self._control(data)
                continue
            yield data

    async def _control(self, raw: bytes) -> None:
        try:
            msg = json.loads(raw)
            handler = self.controls.get(msg.get("kind", ""))
            if handler is not None:
                res = handler(msg)
                if asyncio.iscoroutine(res):
                    await res
        except Exception:
            log.exception("control_message_failed")

    async def close(self) -> None:
        if self._publisher is not None:
            # Give queued cross-node messages a moment to leave (e.g. the grace notices of a shutdown).
            for _ in range(20):
                if self._outbox is None or self._outbox.empty():
                    break
                await asyncio.sleep(0.05)
            self._publisher.cancel()
            await asyncio.wait([self._publisher], timeout=1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pub.aclose(), 1)


async def signal(deps: Any, kind: str, **fields: Any) -> None:
    """Send a control message to every node. Handled here at once when this process runs a node;
    from any other process (a CLI command, a test) it only goes through Redis."""
    manager = getattr(deps.sio, "manager", None)
    if isinstance(manager, NodeManager):
        handler = manager.controls.get(kind)
        if handler is not None:
            res = handler({"kind": kind, **fields})
            if asyncio.iscoroutine(res):
                await res
    await deps.redis.publish(CHANNEL, json.dumps({"method": CTL, "kind": kind, **fields}))
