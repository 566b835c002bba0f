"""aiortc peer connections built from the server's ICE configuration, and what ICE ended up using.

`iceServers` is passed exactly as GET /turn/credentials returns it (PROTOCOL.md §2.8). aiortc (via
aioice) uses only the FIRST STUN URL and the FIRST usable TURN URL it finds; `turn_transport`
reorders the TURN URLs so the wanted one ("udp", "tcp" or "tls") comes first.

aiortc's getStats() has no candidate-pair entries, so `selected_pair` reads the nominated pair from
the ICE transport (aioice connection) and `stats_summary` merges it with the RTP counters getStats()
does report. With bad TURN credentials aiortc raises nothing: the offer simply has no relay
candidates, so callers should check `sdp_candidates(...)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aioice.turn import TurnClientTcpProtocol
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy

_TRANSPORT_OF = {"udp": ("turn:", "transport=udp"), "tcp": ("turn:", "transport=tcp"), "tls": ("turns:", "")}


def _urls(entry: Mapping[str, Any]) -> list[str]:
    urls = entry.get("urls")
    if isinstance(urls, str):
        return [urls]
    if isinstance(urls, list) and all(isinstance(u, str) for u in urls):
        return list(urls)
    raise ValueError(f"iceServers entry without urls: {entry!r}")


def _matches(url: str, transport: str) -> bool:
    scheme, suffix = _TRANSPORT_OF[transport]
    if not url.startswith(scheme):
        return False
    if transport == "udp" and "transport=" not in url:
        return True  # turn: without ?transport= means UDP
    return suffix in url


def to_rtc_ice_servers(ice_servers: Iterable[Mapping[str, Any]],
                       turn_transport: str | None = None) -> list[RTCIceServer]:
    """RTCIceServer objects for aiortc from the JSON list; optionally put one TURN transport first."""
    if turn_transport is not None and turn_transport not in _TRANSPORT_OF:
        raise ValueError(f"turn_transport must be one of {sorted(_TRANSPORT_OF)}")
    out: list[RTCIceServer] = []
    for entry in ice_servers:
        urls = _urls(entry)
        if turn_transport is not None:
            urls.sort(key=lambda u: 0 if _matches(u, turn_transport) else 1)
        kwargs: dict[str, Any] = {}
        if entry.get("username") is not None:
            kwargs["username"] = entry["username"]
        if entry.get("credential") is not None:
            kwargs["credential"] = entry["credential"]
        out.append(RTCIceServer(urls=urls, **kwargs))
    if turn_transport is not None:
        # aiortc takes the first TURN URL over all entries: move an entry that has the wanted one first.
        out.sort(key=lambda s: 0 if any(_matches(u, turn_transport) for u in _urls({"urls": s.urls})) else 1)
    return out


def rtc_configuration(ice_servers: Iterable[Mapping[str, Any]], relay_only: bool = False,
                      turn_transport: str | None = None) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=to_rtc_ice_servers(ice_servers, turn_transport),
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL,
    )


def create_peer_connection(ice_servers: Iterable[Mapping[str, Any]], relay_only: bool = False,
                           turn_transport: str | None = None) -> RTCPeerConnection:
    return RTCPeerConnection(rtc_configuration(ice_servers, relay_only, turn_transport))


def sdp_candidates(sdp: str) -> list[dict[str, Any]]:
    """The a=candidate lines of an SDP as dicts (type, protocol, address, port, foundation...)."""
    out = []
    for line in sdp.splitlines():
        if not line.startswith("a=candidate:"):
            continue
        parts = line[len("a=candidate:"):].split()
        if len(parts) < 8:
            continue
        c: dict[str, Any] = {"foundation": parts[0], "component": int(parts[1]),
                             "protocol": parts[2].lower(), "priority": int(parts[3]),
                             "address": parts[4], "port": int(parts[5]), "type": parts[7]}
        rest = parts[8:]
        for key, value in zip(rest[::2], rest[1::2], strict=False):
            if key in ("raddr", "rport", "tcptype"):
                c[key] = int(value) if key == "rport" else value
        out.append(c)
    return out


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    """The aioice connections under a peer connection (one per transport; one with max-bundle)."""
    seen: dict[int, Any] = {}
    dtls_transports = [t.sender.transport for t in pc.getTransceivers() if t.sender.transport is not None]
    if pc.sctp is not None:
        dtls_transports.append(pc.sctp.transport)
    for dtls in dtls_transports:
        conn = getattr(dtls.transport, "_connection", None)
        if conn is not None:
            seen[id(conn)] = conn
    return list(seen.values())


def _candidate(c: Any) -> dict[str, Any]:
    return {"type": c.type, "protocol": c.transport.lower(), "address": c.host, "port": c.port}


def _turn_leg(pair: Any) -> str | None:
    """How a relay candidate reaches the TURN server: "udp", "tcp" or "tls" (None if not relayed)."""
    transport = getattr(pair.protocol, "transport", None)
    inner = getattr(transport, "_TurnTransport__inner_protocol", None)  # aioice keeps it private
    if inner is None:
        return None
    if isinstance(inner, TurnClientTcpProtocol):
        sock_transport = getattr(inner, "transport", None)
        tls = sock_transport is not None and sock_transport.get_extra_info("sslcontext") is not None
        return "tls" if tls else "tcp"
    return "udp"


def selected_pair(pc: RTCPeerConnection) -> dict[str, Any] | None:
    """The nominated ICE candidate pair: {"local": {type, protocol, address, port, turnTransport},
    "remote": {...}}. A relay local candidate means our media goes through the TURN server;
    turnTransport says whether we reach it over UDP, TCP or TLS."""
    for conn in _ice_connections(pc):
        nominated = getattr(conn, "_nominated", {})
        pair = nominated.get(1) or next(iter(nominated.values()), None)
        if pair is not None:
            local = _candidate(pair.local_candidate)
            local["turnTransport"] = _turn_leg(pair)
            return {"local": local, "remote": _candidate(pair.remote_candidate)}
    return None


async def stats_summary(pc: RTCPeerConnection) -> dict[str, Any]:
    """getStats() RTP counters per kind, plus the selected candidate pair."""
    report = await pc.getStats()
    out: dict[str, Any] = {"inbound": {}, "outbound": {}, "selectedPair": selected_pair(pc)}
    for s in report.values():
        if s.type == "inbound-rtp":
            out["inbound"][s.kind] = {"packets": s.packetsReceived, "lost": s.packetsLost, "jitter": s.jitter}
        elif s.type == "outbound-rtp":
            out["outbound"][s.kind] = {"packets": s.packetsSent, "bytes": s.bytesSent}
        elif s.type == "transport":
            out["transport"] = {"packetsSent": s.packetsSent, "packetsReceived": s.packetsReceived,
                                "bytesSent": s.bytesSent, "bytesReceived": s.bytesReceived}
    return out


async def wait_connected(pc: RTCPeerConnection, within: float) -> float:
    """Wait for connectionState "connected"; returns the seconds waited. Raises TimeoutError, or
    ConnectionError if the connection failed or closed first."""
    start = time.monotonic()
    done = asyncio.get_running_loop().create_future()

    def check() -> None:
        state = pc.connectionState
        if done.done():
            return
        if state == "connected":
            done.set_result(None)
        elif state in ("failed", "closed"):
            done.set_exception(ConnectionError(f"peer connection {state}"))

    pc.add_listener("connectionstatechange", check)
    try:
        check()
        await asyncio.wait_for(done, within)
    finally:
        pc.remove_listener("connectionstatechange", check)
    return time.monotonic() - start
