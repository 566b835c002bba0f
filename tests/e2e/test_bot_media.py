"""Bot <-> bot media, relay only, through the session's coturn, with credentials from our server.

Signalling is in-process (SDP objects handed across directly); the Socket.IO path is tested
elsewhere. Each bot sends numbered video and a tone; each side must receive >= 30 frames whose
decoded numbers increase, and the selected ICE pair must be relay/relay on both sides.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time

import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from bots import media, rtc
from tests.e2e.conftest import turn_credentials, turn_entry

pytestmark = pytest.mark.e2e

FRAMES = 30
WITHIN_S = 10.0


class Bot:
    def __init__(self, name: str, ice_servers: list[dict], relay_only: bool = True,
                 turn_transport: str | None = None) -> None:
        self.name = name
        self.pc: RTCPeerConnection = rtc.create_peer_connection(ice_servers, relay_only=relay_only,
                                                                turn_transport=turn_transport)
        self.video = media.NumberedVideoTrack(640, 480, fps=30)
        self.audio = media.ToneAudioTrack()
        self.pc.addTrack(self.audio)
        self.pc.addTrack(self.video)
        self.video_rx: media.VideoReceiver | None = None
        self.audio_rx: media.AudioReceiver | None = None
        self.got_video = asyncio.Event()

        @self.pc.on("track")
        def on_track(track) -> None:  # type: ignore[no-untyped-def]
            if track.kind == "video":
                self.video_rx = media.VideoReceiver(track)
                self.got_video.set()
            else:
                self.audio_rx = media.AudioReceiver(track)

    async def close(self) -> None:
        for rx in (self.video_rx, self.audio_rx):
            if rx is not None:
                await rx.stop()
        await self.pc.close()


async def _call(a: Bot, b: Bot) -> dict[str, float]:
    """Offer/answer handed across in-process. Returns timings in seconds."""
    t0 = time.monotonic()
    await a.pc.setLocalDescription(await a.pc.createOffer())  # aiortc gathers before returning
    t_offer = time.monotonic()
    await b.pc.setRemoteDescription(a.pc.localDescription)
    await b.pc.setLocalDescription(await b.pc.createAnswer())
    t_answer = time.monotonic()
    await a.pc.setRemoteDescription(b.pc.localDescription)
    await asyncio.gather(rtc.wait_connected(a.pc, WITHIN_S), rtc.wait_connected(b.pc, WITHIN_S))
    t_connected = time.monotonic()
    return {"gatherOffer": t_offer - t0, "answer": t_answer - t_offer, "connected": t_connected - t0,
            "answerToConnected": t_connected - t_answer}


@pytest.mark.parametrize("turn_transport", ["udp", "tcp"])
async def test_relay_only_bots_exchange_numbered_frames_both_ways(client, stack, artifacts, turn_transport):
    _, creds_a = await turn_credentials(client, name="BotA")
    _, creds_b = await turn_credentials(client, name="BotB")
    a = Bot("A", creds_a["iceServers"], turn_transport=turn_transport)
    b = Bot("B", creds_b["iceServers"], turn_transport=turn_transport)
    try:
        timings = await _call(a, b)

        # Each SDP holds only relay candidates, all on the session's coturn relay ports
        # (bad credentials would give zero candidates and no error).
        low, high = stack.relay_ports
        for bot in (a, b):
            cands = rtc.sdp_candidates(bot.pc.localDescription.sdp)
            assert cands, f"{bot.name}: no ICE candidates (TURN allocation failed?)"
            assert {c["type"] for c in cands} == {"relay"}, cands
            assert all(c["address"] == "127.0.0.1" and low <= c["port"] <= high for c in cands), cands

        t_media = time.monotonic()
        await asyncio.wait_for(asyncio.gather(a.got_video.wait(), b.got_video.wait()), WITHIN_S)
        assert a.video_rx is not None and b.video_rx is not None
        ok = await asyncio.gather(a.video_rx.wait_frames(FRAMES, WITHIN_S), b.video_rx.wait_frames(FRAMES, WITHIN_S))
        media_s = time.monotonic() - t_media
        assert all(ok), (a.video_rx.stats.summary(), b.video_rx.stats.summary())
        # Keep receiving ~1 s more to measure the steady frame rate.
        await asyncio.sleep(1.0)

        report: dict[str, object] = {"turnTransport": turn_transport, "timings": timings,
                                     "firstFramesSeconds": media_s}
        for rx_bot, tx_bot in ((a, b), (b, a)):
            assert rx_bot.video_rx is not None
            s = rx_bot.video_rx.stats
            assert s.frames >= FRAMES
            # The numbers drawn by the sender come back out of the decoder, in increasing order.
            assert s.decoded >= 0.9 * s.frames, s.summary()
            assert s.out_of_order == 0, s.summary()
            assert s.last_seq is not None and s.first_seq is not None and s.last_seq > s.first_seq
            assert s.last_seq < tx_bot.video.frames_sent
            assert s.lost <= 0.2 * (s.last_seq - s.first_seq + 1), s.summary()
            assert (s.width, s.height) == (640, 480)
            assert rx_bot.audio_rx is not None and rx_bot.audio_rx.frames > 0
            assert rx_bot.audio_rx.loud_frames > 0, rx_bot.audio_rx.summary()

            stats = await rtc.stats_summary(rx_bot.pc)
            pair = stats["selectedPair"]
            assert pair is not None
            assert (pair["local"]["type"], pair["remote"]["type"]) == ("relay", "relay"), pair
            assert low <= pair["local"]["port"] <= high and low <= pair["remote"]["port"] <= high, pair
            assert pair["local"]["turnTransport"] == turn_transport, pair
            assert stats["inbound"]["video"]["packets"] > 0 and stats["outbound"]["video"]["packets"] > 0
            report[rx_bot.name] = {"video": s.summary(), "audio": rx_bot.audio_rx.summary(),
                                   "selectedPair": pair, "sent": tx_bot.video.frames_sent}
        (artifacts / f"bot_media_{turn_transport}.json").write_text(json.dumps(report, indent=2))
        print(f"\nbot<->bot relay over TURN/{turn_transport}:", json.dumps(report))
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_bad_turn_credentials_give_no_candidates(client):
    """The trap ENVIRONMENT.md warns about: aiortc raises nothing, the offer just has no candidates."""
    _, creds = await turn_credentials(client)
    turn = dict(turn_entry(creds))
    turn["credential"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    servers = [s for s in creds["iceServers"] if "credential" not in s] + [turn]
    pc = rtc.create_peer_connection(servers, relay_only=True)
    try:
        pc.addTrack(media.NumberedVideoTrack(160, 120))
        await pc.setLocalDescription(await pc.createOffer())
        assert rtc.sdp_candidates(pc.localDescription.sdp) == []
    finally:
        await pc.close()


def test_frame_numbers_survive_vp8_at_low_bitrate():
    """The code drawn in each frame decodes after a real VP8 round trip at a starved bitrate
    (1023 -> 1024 flips many cells at once; the Gray-coded number keeps that to one)."""
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000)
    enc, dec = get_encoder(codec), get_decoder(codec)
    enc.target_bitrate = 100_000
    track = media.NumberedVideoTrack(320, 240)
    decoded = []
    for seq in range(1000, 1030):
        frame = track.make_frame(seq)
        frame.pts, frame.time_base = (seq - 1000) * 3000, fractions.Fraction(1, 90000)
        payloads, ts = enc.encode(frame, force_keyframe=seq == 1000)
        data = b"".join(VpxPayloadDescriptor.parse(p)[1] for p in payloads)
        decoded += [media.decode_frame(f) for f in dec.decode(JitterFrame(data=data, timestamp=ts))]
    assert len(decoded) == 30
    # Never a wrong number (marker + CRC-8); at most an occasional unreadable frame.
    assert all(got in (None, want) for got, want in zip(decoded, range(1000, 1030), strict=True)), decoded
    assert sum(got is not None for got in decoded) >= 27, decoded


def test_code_rejects_corruption_and_wraps():
    bits = media.encode_bits(123456)
    assert media.decode_bits(bits) == 123456
    for i in range(len(bits)):
        flipped = list(bits)
        flipped[i] ^= 1
        assert media.decode_bits(flipped) is None, i  # marker or CRC-8 catches every single-bit error
    assert media.decode_bits(media.encode_bits(media.SEQ_MOD + 5)) == 5


def test_ice_servers_json_to_aiortc_with_transport_preference():
    servers = [{"urls": ["stun:127.0.0.1:3478"]},
               {"urls": ["turn:h:3478?transport=udp", "turn:h:3478?transport=tcp", "turns:h:443?transport=tcp"],
                "username": "1:u", "credential": "c"}]
    out = rtc.to_rtc_ice_servers(servers, turn_transport="tls")
    assert out[0].urls[0] == "turns:h:443?transport=tcp" and out[0].username == "1:u"
    assert rtc.to_rtc_ice_servers(servers, turn_transport="tcp")[0].urls[0] == "turn:h:3478?transport=tcp"
    assert rtc.to_rtc_ice_servers(servers)[1].urls[0] == "turn:h:3478?transport=udp"
    assert rtc.to_rtc_ice_servers([{"urls": "stun:x"}])[0].urls == ["stun:x"]
