"""A test bot that makes real calls against any deployment of the server, like the web client does.

One `Bot` is one user: it signs up as a guest marked `isBot` (or uses a given session token),
uploads a tiny selfie and intro video so it is listed in decks, connects over Socket.IO, and then
either waits for an invite and accepts it, or invites a given user (or the first one in
`/room/queue`). In the room it does offer/answer/ICE as PROTOCOL.md §3/§4 describe, with TURN
credentials from `/turn/credentials` (relay only on request), sends numbered video and a tone
(bots/media.py), counts and decodes the frames it receives, reports `call:connected` (E11),
optionally chats, and ends the call after `seconds` of media, at the agreed duration, or when the
server finalises the session. `run()` returns a JSON-able summary; `summary["ok"]` says whether the
call succeeded.

Signalling notes (ENVIRONMENT.md, aiortc): aiortc gathers all candidates before
setLocalDescription returns, so the offer/answer SDP already carries them and the bot trickles
nothing. Candidates trickled by a browser peer (`rtc:ice`) are added with addIceCandidate, queued
until the remote description is set; aioice accepts them while its checks run.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from bots import media, profile, rtc

CAPABILITIES = ["deadline", "resume", "typed-errors", "busy"]
# Endings that count as a call that went as planned.
GOOD_ENDINGS = {"seconds", "deadline", "peer", "server-deadline"}
ACCESS_HINT = ("the server requires payment for the queue and calls: start it with REQUIRE_PAYMENT=false, "
               "or grant the bot access (`python -m server user grant-access <userId>`) and pass --token")


class BotError(Exception):
    """A step failed; `ended_by` names how (e.g. 'declined:offline', 'no-invite', 'error')."""

    def __init__(self, message: str, ended_by: str = "error") -> None:
        super().__init__(message)
        self.ended_by = ended_by


@dataclass
class BotOptions:
    server: str
    token: str | None = None
    name: str = "Bot"
    gender: str = "unspecified"
    mode: str = "wait"  # "wait" | "invite" | "invite-first"
    invite_user: str | None = None
    seconds: float | None = None  # end this long after media connected (default: the agreed duration)
    requested_seconds: int = 60  # duration asked for in call:invite / call:accept (server clamps 60-1800)
    relay: bool = False
    turn_transport: str | None = None  # "udp" | "tcp" | "tls": which TURN leg to prefer
    chat: str | None = None
    upload_media: bool = True
    width: int = 640
    height: int = 480
    fps: float = 30.0
    wait_timeout: float | None = None  # for an invite (wait), someone to invite (invite-first), or an answer
    calls: int = 1  # wait mode: calls to take before exiting (0 = until stopped)
    connect_timeout: float = 30.0  # call:start -> connected with the remote track
    quiet: bool = False


@dataclass
class _Inbox:
    """Control events in arrival order; `take` removes and returns the first match."""

    items: list[tuple[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: bool = False  # Bot.stop(): interruptible waits give up

    def put(self, event: str, data: Any) -> None:
        self.items.append((event, data))
        del self.items[:-500]
        self.changed.set()

    def drop(self, names: Iterable[str]) -> None:
        wanted = set(names)
        self.items = [(e, d) for e, d in self.items if e not in wanted]

    async def take(self, names: Iterable[str], timeout: float | None,  # noqa: ASYNC109
                   where: Callable[[str, Any], bool] | None = None,
                   interruptible: bool = True) -> tuple[str, Any]:
        wanted = set(names)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.stopped and interruptible:
                raise BotError("stopped (Ctrl-C or SIGTERM)", "interrupted")
            for i, (e, d) in enumerate(self.items):
                if e in wanted and (where is None or where(e, d)):
                    del self.items[i]
                    return e, d
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"none of {sorted(wanted)} within {timeout:.0f}s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


class Bot:
    def __init__(self, opts: BotOptions, http: aiohttp.ClientSession | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.base = opts.server.rstrip("/")
        self._http = http
        self._own_http = http is None
        self._log = log
        self.t0 = time.monotonic()
        self.token: str | None = opts.token
        self.user_id = ""
        self.name = opts.name
        self.paid_status = ""
        # handle_sigint=False: python-socketio's own SIGINT handler cancels every task of the loop, which
        # would cut a call without call:end; the CLI installs its own (Bot.stop).
        self.sio = socketio.AsyncClient(reconnection=True, reconnection_attempts=5, reconnection_delay=1,
                                        handle_sigint=False)
        self.inbox = _Inbox()
        self.signals: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.available = asyncio.Event()  # set once waiting for invites (queue:join done)
        self.stopping = False
        self._call: Call | None = None
        self._ice: dict[str, Any] | None = None
        self.summary: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []  # summaries of finished calls
        self._install_handlers()

    # ------------------------------------------------------------------ plumbing
    def say(self, msg: str) -> None:
        if self.opts.quiet:
            return
        line = f"[{time.monotonic() - self.t0:7.2f}s] {self.name}: {msg}"
        if self._log is not None:
            self._log(line)
        else:
            print(line, file=sys.stderr, flush=True)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _request(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, headers=self._headers(), **kw) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = {"error": (await resp.text())[:200]}
            return resp.status, body

    def _install_handlers(self) -> None:
        signal_events = ("rtc:offer", "rtc:answer", "rtc:ice")

        @self.sio.on("*")
        async def _any(event: str, data: Any = None) -> None:
            # No await before queueing: handlers run as tasks, and this keeps arrival order.
            if event in signal_events:
                self.signals.put_nowait((event, data))
            else:
                self.inbox.put(event, data)

        @self.sio.on("connect_error")
        async def _refused(data: Any = None) -> None:
            self.inbox.put("connect_error", data)

        @self.sio.on("disconnect")
        async def _gone(reason: Any = None) -> None:
            self.inbox.put("disconnect", reason)

    # ------------------------------------------------------------------ account
    async def sign_in(self) -> None:
        """Sign up a guest (marked as a bot), or check the given token; then upload profile media."""
        if self.token:
            status, me = await self._request("GET", "/user/me")
            if status != 200:
                raise BotError(f"token rejected by GET /user/me: {status} {me.get('error')}")
            self.user_id, self.name = me["userId"], self.opts.name if self.opts.name != "Bot" else me["name"]
            self.paid_status = me.get("paidStatus", "")
            has_media = bool(me.get("selfieUrl")) and bool(me.get("videoUrl"))
        else:
            status, body = await self._request("POST", "/auth/guest",
                                               json={"name": self.opts.name, "gender": self.opts.gender,
                                                     "isBot": True})
            if status != 200:
                raise BotError(f"guest signup failed: {status} {body.get('error')} {body.get('message') or ''}")
            self.token, self.user_id = body["sessionToken"], body["userId"]
            self.paid_status = body.get("paidStatus", "")
            has_media = False
        self.say(f"signed in as {self.user_id} ({self.paid_status or 'unknown access'})")
        if self.opts.upload_media and not has_media:
            await self._upload("selfie", "selfie.jpg", "image/jpeg", profile.selfie_jpeg())
            await self._upload("video", "intro.webm", "video/webm", profile.intro_webm())
            self.say("uploaded selfie and intro video")

    async def _upload(self, field_name: str, filename: str, content_type: str, data: bytes) -> None:
        form = aiohttp.FormData()
        form.add_field(field_name, data, filename=filename, content_type=content_type)
        status, body = await self._request("POST", f"/media/{field_name}", data=form)
        if status != 200:
            raise BotError(f"POST /media/{field_name} failed: {status} {body.get('error')}")

    async def ice_servers(self) -> list[dict[str, Any]]:
        """`iceServers` from GET /turn/credentials, reused until 5 minutes before they expire."""
        now_ms = time.time() * 1000
        if self._ice is None or self._ice.get("expiresAt", 0) - now_ms < 300_000:
            status, body = await self._request("GET", "/turn/credentials")
            if status == 402:  # no access, so no relay: the paywall stops the bot later, with its reason
                self.say("no TURN credentials without access")
                return []
            if status != 200:
                if self.opts.relay:
                    raise BotError(f"GET /turn/credentials failed ({status} {body.get('error')}): "
                                   "relay-only needs TURN")
                self.say(f"GET /turn/credentials failed ({status}); trying without TURN")
                return []
            self._ice = body
        return list(self._ice["iceServers"])

    # ------------------------------------------------------------------ socket
    async def connect(self) -> None:
        await self.sio.connect(self.base, auth={"token": self.token, "capabilities": CAPABILITIES},
                               transports=["websocket"], wait_timeout=10)
        try:
            event, data = await self.inbox.take(["auth:success", "auth:failed", "auth:banned", "connect_error",
                                                 "error"], 10)
        except TimeoutError:
            raise BotError("no auth:success within 10 s") from None
        if event != "auth:success":
            raise BotError(f"socket auth refused: {event} {data or ''}")
        self.say("socket connected and authenticated")

    def _error_text(self, event: str, data: Any) -> str:
        if isinstance(data, dict):
            text = f"{data.get('code', event)}: {data.get('message', '')}"
            if data.get("code") == "PAYMENT_REQUIRED" or "payment required" in str(data.get("message")).lower():
                text += f" ({ACCESS_HINT})"
            return text
        return f"{event}: {data}"

    async def _typed(self, event: str, data: Any) -> tuple[str, Any]:
        """The server sends a legacy `error {message}` next to the typed `call:error {code}` (E10):
        prefer the typed one when it follows."""
        if event == "error":
            with contextlib.suppress(TimeoutError):
                return await self.inbox.take(["call:error"], 0.5)
        return event, data

    # ------------------------------------------------------------------ getting into a call
    async def wait_for_call(self) -> tuple[dict[str, Any], float]:
        """queue:join, then accept the first invite; returns (call:start, accept time)."""
        self.inbox.drop(["queue:update", "call:error", "error"])
        await self.sio.emit("queue:join")
        with contextlib.suppress(TimeoutError):
            # The server echoes our own queue:update (or refuses with call:error) to the queue room.
            event, data = await self.inbox.take(
                ["queue:update", "call:error"], 3,
                where=lambda e, d: e == "call:error" or (isinstance(d, dict) and d.get("userId") == self.user_id
                                                         and d.get("available") is True))
            if event == "call:error":
                raise BotError(f"queue:join refused: {self._error_text(event, data)}")
        self.available.set()
        self.say(f"online and available as {self.user_id}; waiting for an invite")
        deadline = None if self.opts.wait_timeout is None else time.monotonic() + self.opts.wait_timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                _, notify = await self.inbox.take(["call:notify"], left)
            except TimeoutError:
                raise BotError(f"no invite within {self.opts.wait_timeout:.0f}s", "no-invite") from None
            caller = notify.get("fromUser") or {}
            self.say(f"invite {notify['inviteId'][:8]} from {caller.get('name')} ({caller.get('userId')}), "
                     f"{notify.get('requestedSeconds')} s: accepting")
            t_accept = time.monotonic()
            await self.sio.emit("call:accept", {"inviteId": notify["inviteId"],
                                                "requestedSeconds": self.opts.requested_seconds})
            invite_id = notify["inviteId"]

            def about_this_invite(e: str, d: Any, invite_id: str = invite_id) -> bool:
                return e != "call:error" or d.get("inviteId") in (None, invite_id)

            try:
                event, data = await self.inbox.take(["call:start", "call:error", "error"], 10,
                                                    where=about_this_invite)
            except TimeoutError:
                raise BotError("accepted, but no call:start within 10 s") from None
            if event == "call:start":
                return data, t_accept
            event, data = await self._typed(event, data)
            self.say(f"accept failed ({self._error_text(event, data)}); waiting for another invite")

    async def pick_first(self) -> str:
        """The first user in /room/queue without a cooldown, polling until one shows up."""
        deadline = time.monotonic() + (self.opts.wait_timeout or 60.0)
        shown = False
        while True:
            status, body = await self._request("GET", "/room/queue")
            if status == 402:
                raise BotError(f"GET /room/queue: 402 Payment required ({ACCESS_HINT})", "payment-required")
            if status != 200:
                raise BotError(f"GET /room/queue failed: {status} {body.get('error')}")
            users = [u for u in body.get("users", []) if u.get("userId") != self.user_id and not u.get("hasCooldown")]
            if users:
                u = users[0]
                self.say(f"first available: {u.get('name')} ({u['userId']}) of {len(users)}")
                return str(u["userId"])
            if time.monotonic() >= deadline:
                raise BotError(f"nobody available in /room/queue within {self.opts.wait_timeout or 60:.0f}s",
                               "nobody-available")
            if not shown:
                self.say("nobody available yet; polling /room/queue")
                shown = True
            for _ in range(10):
                if self.stopping:
                    raise BotError("stopped (Ctrl-C or SIGTERM)", "interrupted")
                await asyncio.sleep(0.1)

    async def invite(self, to_user: str) -> tuple[dict[str, Any], float]:
        """call:invite, then wait for call:start; returns (call:start, invite time)."""
        t_invite = time.monotonic()
        await self.sio.emit("call:invite", {"toUserId": to_user, "requestedSeconds": self.opts.requested_seconds})
        self.say(f"invited {to_user} for {self.opts.requested_seconds} s")
        try:
            event, data = await self.inbox.take(["call:invite-sent", "call:declined", "call:error", "error",
                                                 "call:start"], 10)
        except TimeoutError:
            raise BotError("no answer to call:invite within 10 s") from None
        if event == "call:declined":
            raise BotError(f"invite declined: {data.get('reason')}", f"declined:{data.get('reason')}")
        if event in ("call:error", "error"):
            event, data = await self._typed(event, data)
            raise BotError(f"invite refused: {self._error_text(event, data)}", "invite-refused")
        if event == "call:start":
            return data, t_invite
        invite_id = data.get("inviteId")
        expires = data.get("expiresAt")
        window = (expires / 1000 - time.time()) if isinstance(expires, int | float) else 20.0
        timeout = self.opts.wait_timeout if self.opts.wait_timeout is not None else max(window, 0) + 30
        self.say(f"invite {str(invite_id)[:8]} delivered; waiting for an answer")
        try:
            event, data = await self.inbox.take(
                ["call:start", "call:declined"], timeout,
                where=lambda e, d: e == "call:start" or d.get("inviteId") == invite_id)
        except TimeoutError:
            raise BotError(f"no answer to the invite within {timeout:.0f}s", "no-answer") from None
        if event == "call:declined":
            raise BotError(f"invite declined: {data.get('reason')}", f"declined:{data.get('reason')}")
        return data, t_invite

    # ------------------------------------------------------------------ the call
    async def call(self, start: dict[str, Any], t_asked: float) -> dict[str, Any]:
        """One call from its call:start; `t_asked` is when we accepted (callee) or invited (caller)."""
        self._call = Call(self, start, t_asked, accepted_here=self.opts.mode == "wait")
        try:
            return await self._call.run()
        finally:
            self._call = None

    def stop(self) -> None:
        """Ctrl-C: end the current call properly (call:end, wait for session:finalized, summary), or stop
        waiting. Safe to call from a signal handler on the loop."""
        self.stopping = True
        self.inbox.stopped = True
        self.inbox.changed.set()
        if self._call is not None:
            self._call.state_changed.set()

    # ------------------------------------------------------------------ whole run
    def _fresh_summary(self) -> dict[str, Any]:
        return {"ok": False, "role": "callee" if self.opts.mode == "wait" else "caller", "name": self.name,
                "userId": self.user_id or None, "roomId": None, "timeToConnectedMs": None, "framesSent": 0,
                "framesReceived": 0, "framesLost": 0, "candidatePair": None, "endedBy": None,
                "chat": {"sent": [], "received": []}, "error": None}

    async def run(self, setup_gate: asyncio.Semaphore | None = None,
                  on_call: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Sign in, connect, get into a call per the mode, make the call; always returns a summary
        (of the last call, or of the failure). In wait mode with `calls` != 1 the bot goes back to
        the queue after each call; `on_call` gets each finished call's summary, and `self.calls`
        keeps them. `setup_gate` bounds how many bots of a swarm sign in and connect at once."""
        wanted = self.opts.calls if self.opts.mode == "wait" else 1
        self.summary = self._fresh_summary()
        try:
            async with setup_gate or contextlib.nullcontext():
                await self.sign_in()
                self.summary.update(userId=self.user_id, name=self.name)
                await self.ice_servers()
                await self.connect()
            while True:
                self.summary = self._fresh_summary()
                if self.opts.mode == "wait":
                    start, t_asked = await self.wait_for_call()
                else:
                    target = self.opts.invite_user if self.opts.mode == "invite" else await self.pick_first()
                    if not target:
                        raise BotError("no user to invite")
                    start, t_asked = await self.invite(target)
                self.summary.update(await self.call(start, t_asked))
                self.calls.append(self.summary)
                if on_call is not None:
                    on_call(self.summary)
                if wanted and len(self.calls) >= wanted:
                    break
                self.available.clear()
                self.say(f"call {len(self.calls)} done ({'ok' if self.summary['ok'] else 'FAILED'}); "
                         "back to the queue")
        except BotError as exc:
            self.summary.update(endedBy=self.summary.get("endedBy") or exc.ended_by, error=str(exc))
            self.say(f"FAILED: {exc}")
        except Exception as exc:  # a bot reports, it does not crash the swarm
            self.summary.update(endedBy=self.summary.get("endedBy") or "error", error=f"{type(exc).__name__}: {exc}")
            self.say(f"FAILED: {type(exc).__name__}: {exc}")
        finally:
            await self.close()
        self.summary["userId"] = self.user_id or None
        return self.summary

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.sio.connected:
                await asyncio.wait_for(self.sio.disconnect(), 3)
        if self._own_http and self._http is not None:
            await self._http.close()


class Call:
    """One call from call:start to session:finalized."""

    def __init__(self, bot: Bot, start: dict[str, Any], t_asked: float, accepted_here: bool) -> None:
        self.bot = bot
        self.opts = bot.opts
        self.start = start
        self.room_id: str = start["roomId"]
        self.initiator = bool(start.get("isInitiator"))
        self.agreed = int(start.get("agreedSeconds") or 60)
        self.t_start = time.monotonic()
        # The accept: our own call:accept (callee), or the call:start it caused (caller).
        self.t_accept = t_asked if accepted_here else self.t_start
        self.t_invite = None if accepted_here else t_asked
        self.pc: RTCPeerConnection | None = None
        self.video: media.NumberedVideoTrack | None = None
        self.audio: media.ToneAudioTrack | None = None
        self.video_rx: media.VideoReceiver | None = None
        self.audio_rx: media.AudioReceiver | None = None
        self.got_video = asyncio.Event()
        self.state_changed = asyncio.Event()
        self.pending_ice: list[dict[str, Any]] = []
        self.remote_set = False
        self.sent_end = False
        self.finalized = False
        self.chat_sent: list[str] = []
        self.t_connected: float | None = None
        self.notes: dict[str, Any] = {}
        self.pair: dict[str, Any] | None = None
        self.peer_received: int | None = None
        self.packets_sent: int | None = None
        # Leftovers of a previous call on this socket must not leak into this one.
        while not bot.signals.empty():
            bot.signals.get_nowait()
        bot.inbox.drop(["session:finalized", "peer:disconnected", "room:joined", "call:deadline", "room:chat"])

    def say(self, msg: str) -> None:
        self.bot.say(msg)

    def _ms(self, t: float | None, since: float) -> int | None:
        return None if t is None else round((t - since) * 1000)

    async def run(self) -> dict[str, Any]:
        peer = self.start.get("peerUser") or {}
        self.say(f"call:start room {self.room_id} with {peer.get('name')} ({peer.get('userId')}), "
                 f"{'initiator' if self.initiator else 'responder'}, agreed {self.agreed} s")
        out: dict[str, Any] = {"roomId": self.room_id, "isInitiator": self.initiator, "agreedSeconds": self.agreed,
                               "peerUserId": peer.get("userId"), "sessionId": self.start.get("sessionId")}
        signalling: asyncio.Task[None] | None = None
        ended_by = "error"
        reason = None
        error = None
        try:
            await self._setup()
            signalling = asyncio.create_task(self._signalling())
            await self._join()
            if self.initiator:
                await self._offer()
            await self._until_connected(signalling)
            ended_by, reason = await self._in_call(signalling)
        except BotError as exc:
            ended_by, error = exc.ended_by, str(exc)
            self.say(f"call failed: {exc}")
        except Exception as exc:
            ended_by, error = "error", f"{type(exc).__name__}: {exc}"
            self.say(f"call failed: {error}")
        finally:
            if signalling is not None:
                signalling.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await signalling
            if not self.finalized and not self.sent_end:
                await self._end()  # don't leave the room hanging until the server deadline
            out.update(await self._stats())
            out.update(endedBy=ended_by, finalizeReason=reason, error=error)
            await self._close()
        received = out["framesReceived"]
        out["ok"] = (ended_by in GOOD_ENDINGS and self.t_connected is not None and received > 0
                     and out["framesSent"] > 0 and (out.get("peerReceivedPackets") or 0) > 0)
        if ended_by == "interrupted" and error is None:
            error = out["error"] = "stopped (Ctrl-C or SIGTERM)"
        if not out["ok"] and error is None:
            missing = []
            if received == 0:
                missing.append("no frames received")
            if not out.get("peerReceivedPackets"):
                missing.append("the peer reported no video received")
            out["error"] = "; ".join(missing) or f"call ended by {ended_by}"
        return out

    # -------------------------------------------------------------- setup and signalling
    async def _setup(self) -> None:
        ice = await self.bot.ice_servers()
        self.pc = pc = rtc.create_peer_connection(ice, relay_only=self.opts.relay,
                                                  turn_transport=self.opts.turn_transport)
        self.audio = media.ToneAudioTrack()
        self.video = media.NumberedVideoTrack(self.opts.width, self.opts.height, fps=self.opts.fps)
        pc.addTrack(self.audio)
        pc.addTrack(self.video)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video" and self.video_rx is None:
                self.video_rx = media.VideoReceiver(track)
                self.got_video.set()
                self.state_changed.set()
            elif track.kind == "audio" and self.audio_rx is None:
                self.audio_rx = media.AudioReceiver(track)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self.say(f"connection {pc.connectionState}")
            self.state_changed.set()

    async def _join(self) -> None:
        await self.bot.sio.emit("room:join", {"roomId": self.room_id})
        try:
            event, data = await self.bot.inbox.take(
                ["room:joined", "call:error"], 10,
                where=lambda e, d: isinstance(d, dict) and d.get("roomId") in (None, self.room_id))
        except TimeoutError:
            raise BotError("no room:joined within 10 s") from None
        if event == "call:error":
            raise BotError(f"room:join refused: {self.bot._error_text(event, data)}")
        self.say(f"joined the room (peer {'present' if data.get('peerPresent') else 'not joined yet'})")

    def _check_candidates(self, sdp: str, what: str) -> None:
        cands = rtc.sdp_candidates(sdp)
        types = sorted({c["type"] for c in cands})
        if not cands:
            raise BotError(f"our {what} has no ICE candidates: TURN allocation failed "
                           "(bad or expired credentials, or the TURN server is unreachable)", "no-candidates")
        self.notes[f"{what}Candidates"] = len(cands)
        self.say(f"{what} ready with {len(cands)} candidate(s): {', '.join(types)}")

    async def _offer(self) -> None:
        assert self.pc is not None
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers before returning
        desc = self.pc.localDescription
        self._check_candidates(desc.sdp, "offer")
        await self.bot.sio.emit("rtc:offer", {"roomId": self.room_id, "offer": {"type": desc.type, "sdp": desc.sdp}})

    async def _signalling(self) -> None:
        """Apply rtc:offer / rtc:answer / rtc:ice in arrival order."""
        assert self.pc is not None
        pc = self.pc
        while True:
            event, data = await self.bot.signals.get()
            try:
                if event == "rtc:offer" and not self.initiator:
                    offer = data["offer"]
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
                    self.remote_set = True
                    await self._flush_ice()
                    await pc.setLocalDescription(await pc.createAnswer())
                    desc = pc.localDescription
                    self._check_candidates(desc.sdp, "answer")
                    await self.bot.sio.emit("rtc:answer", {"roomId": self.room_id,
                                                           "answer": {"type": desc.type, "sdp": desc.sdp}})
                elif event == "rtc:answer" and self.initiator:
                    if pc.signalingState != "have-local-offer":
                        self.say(f"ignoring an answer in state {pc.signalingState}")
                        continue
                    answer = data["answer"]
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
                    self.remote_set = True
                    self.say("answer applied")
                    await self._flush_ice()
                elif event == "rtc:ice":
                    self.pending_ice.append(data.get("candidate") or {})
                    if self.remote_set:
                        await self._flush_ice()
                else:
                    self.say(f"ignoring {event} (we are the {'initiator' if self.initiator else 'responder'})")
            except BotError as exc:
                self.notes["signallingError"] = str(exc)
                self.state_changed.set()
                return
            except Exception as exc:
                self.notes["signallingError"] = f"{event}: {type(exc).__name__}: {exc}"
                self.say(f"signalling error on {event}: {type(exc).__name__}: {exc}")
                self.state_changed.set()
                return

    async def _flush_ice(self) -> None:
        assert self.pc is not None
        pending, self.pending_ice = self.pending_ice, []
        for c in pending:
            text = (c.get("candidate") or "").strip()
            if not text:
                await self.pc.addIceCandidate(None)  # end of candidates
                continue
            cand = candidate_from_sdp(text.removeprefix("a=").removeprefix("candidate:"))
            cand.sdpMid = c.get("sdpMid")
            cand.sdpMLineIndex = c.get("sdpMLineIndex")
            if cand.sdpMid is None and cand.sdpMLineIndex is None:
                cand.sdpMLineIndex = 0
            await self.pc.addIceCandidate(cand)
            self.notes["trickledCandidates"] = self.notes.get("trickledCandidates", 0) + 1

    async def _finalized(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        try:
            _, data = await self.bot.inbox.take(["session:finalized"], timeout, interruptible=False)
        except TimeoutError:
            return None
        return data if isinstance(data, dict) else {}

    def _on_finalized(self, data: Any) -> None:
        if isinstance(data, dict):
            self.finalized = True
            if data.get("sessionId"):
                self.notes["sessionId"] = data["sessionId"]

    def _check_broken(self, signalling: asyncio.Task[None]) -> None:
        assert self.pc is not None
        if self.pc.connectionState in ("failed", "closed"):
            raise BotError(f"peer connection {self.pc.connectionState}", "ice-failed")
        if "signallingError" in self.notes:
            raise BotError(self.notes["signallingError"], "signalling-error")
        for e, d in self.bot.inbox.items:
            if e == "session:finalized":
                self.finalized = True
                raise BotError(f"session finalised before media connected ({(d or {}).get('reason')})",
                               "finalized-early")

    async def _until_connected(self, signalling: asyncio.Task[None]) -> None:
        assert self.pc is not None
        deadline = self.t_start + self.opts.connect_timeout
        while not (self.pc.connectionState == "connected" and self.got_video.is_set()):
            self._check_broken(signalling)
            if self.bot.stopping:
                raise BotError("stopped before media connected", "interrupted")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BotError(f"no media connection within {self.opts.connect_timeout:.0f}s "
                               f"(connection {self.pc.connectionState}, ICE {self.pc.iceConnectionState})",
                               "connect-timeout")
            self.state_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.state_changed.wait(), min(left, 0.5))
        self.t_connected = time.monotonic()
        await self.bot.sio.emit("call:connected", {"roomId": self.room_id})
        await self._snapshot()
        pair = self.pair
        desc = f"{pair['local']['type']}/{pair['remote']['type']}" if pair else "unknown pair"
        self.say(f"MEDIA CONNECTED in {self._ms(self.t_connected, self.t_start)} ms after call:start ({desc})")

    async def _in_call(self, signalling: asyncio.Task[None]) -> tuple[str, str | None]:
        """Until our timer, the peer's end, the server's deadline, or a failure. (endedBy, reason)."""
        assert self.pc is not None and self.t_connected is not None
        limit = self.opts.seconds if self.opts.seconds is not None else float(self.agreed)
        end_at = self.t_connected + limit
        if self.opts.chat:
            await self.bot.sio.emit("room:chat", {"roomId": self.room_id, "text": self.opts.chat})
            self.chat_sent.append(self.opts.chat)
        next_report = time.monotonic() + 2.0
        while True:
            now = time.monotonic()
            for e, d in list(self.bot.inbox.items):
                if e == "session:finalized":
                    self.bot.inbox.items.remove((e, d))
                    return await self._ended_by_server(d)
                if e == "peer:disconnected":
                    self.bot.inbox.items.remove((e, d))
                    self.say("the peer disconnected")
            if self.pc.connectionState in ("failed", "closed"):
                # A peer that ended the call closes its connection; its session:finalized may still be
                # on its way to us. Only a connection lost without one is a failure.
                await self._snapshot()
                data = await self._finalized(3)
                if data is not None:
                    return await self._ended_by_server(data)
                self.say(f"connection {self.pc.connectionState}; ending the call")
                await self._end()
                return "ice-failed", None
            if self.bot.stopping:
                self.say("stopped: ending the call")
                await self._snapshot()
                await self._end()
                data = await self._finalized(3)
                self._on_finalized(data)
                return "interrupted", data.get("reason") if data else None
            if now >= end_at:
                self.say(f"{limit:.0f} s of media done; ending the call")
                await self._snapshot()  # before the peer, told by the server, closes its side
                await self._end()
                data = await self._finalized(5)
                self._on_finalized(data)
                reason = data.get("reason") if data else None
                return ("seconds" if self.opts.seconds is not None else "deadline"), reason
            if now >= next_report:
                self._report()
                await self._snapshot()
                next_report = now + 2.0
            self.bot.inbox.changed.clear()
            self.state_changed.clear()
            waits = [asyncio.ensure_future(self.bot.inbox.changed.wait()),
                     asyncio.ensure_future(self.state_changed.wait())]
            await asyncio.wait(waits, timeout=max(0.01, min(end_at, next_report) - now),
                               return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    async def _ended_by_server(self, data: Any) -> tuple[str, str | None]:
        await self._snapshot()
        self._on_finalized(data)
        reason = data.get("reason") if isinstance(data, dict) else None
        self.say(f"session finalised by the server (reason {reason})")
        if reason == "deadline":
            return "server-deadline", reason
        if reason in (None, "ended"):
            return "peer", reason
        return f"server-{reason}", reason

    async def _snapshot(self) -> None:
        """Keep the selected pair and what the peer reports receiving (RTCP receiver reports) while
        the connection is up: after the call ends, the peer closing its side can take them away."""
        if self.pc is None:
            return
        with contextlib.suppress(Exception):
            pair = rtc.selected_pair(self.pc)
            if pair is not None:
                self.pair = pair
            for sender in self.pc.getSenders():
                if sender.track is None or sender.track.kind != "video":
                    continue
                for st in (await sender.getStats()).values():
                    if st.type == "remote-inbound-rtp":
                        self.peer_received = max(self.peer_received or 0, st.packetsReceived)
                    elif st.type == "outbound-rtp":
                        self.packets_sent = max(self.packets_sent or 0, st.packetsSent)

    def _report(self) -> None:
        rx = self.video_rx.stats if self.video_rx else None
        sent = self.video.frames_sent if self.video else 0
        if rx is not None:
            self.say(f"video sent {sent}, received {rx.frames} (decoded {rx.decoded}, lost {rx.missing}, "
                     f"{rx.fps:.1f} fps)")

    async def _end(self) -> None:
        if self.sent_end:
            return
        self.sent_end = True
        with contextlib.suppress(Exception):
            await self.bot.sio.emit("call:end", {"roomId": self.room_id})

    async def _stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "timeToConnectedMs": self._ms(self.t_connected, self.t_start),
            "acceptToConnectedMs": self._ms(self.t_connected, self.t_accept),
            "inviteToConnectedMs": None if self.t_invite is None else self._ms(self.t_connected, self.t_invite),
            "framesSent": self.video.frames_sent if self.video else 0,
            "framesReceived": 0, "framesDecoded": 0, "framesLost": 0, "receivedFps": 0.0,
            "timeToFirstFrameMs": None, "candidatePair": None, "peerReceivedPackets": None,
            "audio": None, "video": None,
        }
        if self.video_rx is not None:
            s = self.video_rx.stats
            # Lost = never arrived (from the numbers); frames that arrived but could not be read are not lost.
            out.update(framesReceived=s.frames, framesDecoded=s.decoded, framesLost=s.missing,
                       receivedFps=round(s.fps, 1), video=s.summary())
            if s.first_frame_at is not None:
                out["timeToFirstFrameMs"] = self._ms(s.first_frame_at, self.t_start)
        if self.audio_rx is not None:
            out["audio"] = {**self.audio_rx.summary(), "sent": self.audio.frames_sent if self.audio else 0}
        if self.t_connected is not None:
            out["mediaSeconds"] = round(time.monotonic() - self.t_connected, 1)
        await self._snapshot()
        out.update(candidatePair=self.pair, peerReceivedPackets=self.peer_received, videoPacketsSent=self.packets_sent)
        received = [m for e, m in self.bot.inbox.items if e == "room:chat"]
        self.bot.inbox.drop(["room:chat", "room:joined", "call:deadline", "peer:disconnected"])
        out["chat"] = {"sent": self.chat_sent,
                       "received": [{"from": m.get("from"), "text": m.get("text")} for m in received
                                    if isinstance(m, dict) and m.get("from") != self.bot.user_id]}
        out.update({k: v for k, v in self.notes.items() if k != "signallingError"})
        return out

    async def _close(self) -> None:
        for rx in (self.video_rx, self.audio_rx):
            if rx is not None:
                with contextlib.suppress(Exception):
                    await rx.stop()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5)
