"""Synthetic media for test bots: numbered video frames, a tone, and receivers that count them.

Every video frame carries its sequence number as two bands of 32 large blocks across the top half
of the picture (band 2 is the negative of band 1), so a receiver can read the number back after VP8
or H.264 compression at any resolution: each bit is "band-1 cell brighter than band-2 cell", which
needs no absolute threshold. 32 bits = 4 marker bits + 20 sequence bits (Gray code) + CRC-8. The receiver
counts frames, decodes numbers, and from gaps in the numbers computes loss and reordering.

Pure PyAV (no numpy): planes are filled from bytes.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_RATE = 48000
AUDIO_PTIME = 0.020
AUDIO_SAMPLES = int(AUDIO_RATE * AUDIO_PTIME)

CELLS = 32
MARKER = (1, 0, 1, 1)
SEQ_BITS = 20
SEQ_MOD = 1 << SEQ_BITS
CRC_BITS = 8
assert len(MARKER) + SEQ_BITS + CRC_BITS == CELLS

HIGH, LOW = 235, 16  # video-range luma extremes
MIN_CONTRAST = 40  # a cell pair closer than this is unreadable (frame too damaged)


# ------------------------------------------------------------------ the code
def crc8(data: bytes, poly: int = 0x07) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_bits(seq: int) -> list[int]:
    """The 32 cell bits for a sequence number (taken modulo 2**20)."""
    seq %= SEQ_MOD
    crc = crc8(struct.pack(">I", seq)[1:])
    gray = seq ^ (seq >> 1)  # consecutive frames differ in one sequence cell: less for the codec to redo
    bits = list(MARKER)
    bits += [(gray >> (SEQ_BITS - 1 - i)) & 1 for i in range(SEQ_BITS)]
    bits += [(crc >> (CRC_BITS - 1 - i)) & 1 for i in range(CRC_BITS)]
    return bits


def decode_bits(bits: list[int]) -> int | None:
    """The sequence number, or None if the marker or CRC does not match."""
    if len(bits) != CELLS or tuple(bits[: len(MARKER)]) != MARKER:
        return None
    gray = 0
    for b in bits[len(MARKER): len(MARKER) + SEQ_BITS]:
        gray = (gray << 1) | b
    seq = 0
    while gray:
        seq ^= gray
        gray >>= 1
    crc = 0
    for b in bits[len(MARKER) + SEQ_BITS:]:
        crc = (crc << 1) | b
    return seq if crc8(struct.pack(">I", seq)[1:]) == crc else None


def _bands(height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Row ranges of band 1 and band 2 (top and second quarter of the picture)."""
    q = height // 4
    return (0, q), (q, 2 * q)


def _cell_span(width: int, i: int) -> tuple[int, int]:
    return (i * width) // CELLS, ((i + 1) * width) // CELLS


def render_luma(seq: int, width: int, height: int, line_size: int | None = None) -> bytes:
    """The Y plane (rows padded to `line_size`) of frame `seq`: the code in the top half and a
    moving diagonal gradient below, so the encoder has real motion to code."""
    line_size = line_size or width
    pad = b"\x00" * (line_size - width)
    bits = encode_bits(seq)
    row1 = bytearray()
    row2 = bytearray()
    for i, bit in enumerate(bits):
        a, b = _cell_span(width, i)
        row1 += bytes([HIGH if bit else LOW]) * (b - a)
        row2 += bytes([LOW if bit else HIGH]) * (b - a)
    (b1s, b1e), (b2s, b2e) = _bands(height)
    out = bytearray()
    out += (bytes(row1) + pad) * (b1e - b1s)
    out += (bytes(row2) + pad) * (b2e - b2s)
    ramp = bytes((x * 3) & 0xFF for x in range(2 * width + height))
    shift = (seq * 4) % width
    for y in range(b2e, height):
        start = shift + y
        out += ramp[start: start + width] + pad
    return bytes(out)


def read_bits(luma: bytes, width: int, height: int, line_size: int) -> list[int] | None:
    """Sample the centre of each cell in both bands; None if any cell pair lacks contrast."""
    (b1s, b1e), (b2s, b2e) = _bands(height)
    rows1 = _centre_rows(b1s, b1e)
    rows2 = _centre_rows(b2s, b2e)
    bits: list[int] = []
    for i in range(CELLS):
        a, b = _cell_span(width, i)
        quarter = max((b - a) // 4, 0)
        xa, xb = a + quarter, max(b - quarter, a + quarter + 1)
        m1 = _mean(luma, rows1, xa, xb, line_size)
        m2 = _mean(luma, rows2, xa, xb, line_size)
        if abs(m1 - m2) < MIN_CONTRAST:
            return None
        bits.append(1 if m1 > m2 else 0)
    return bits


def _centre_rows(start: int, end: int) -> list[int]:
    mid = (start + end) // 2
    span = max((end - start) // 4, 1)
    return list(range(max(start, mid - span), min(end, mid + span)))


def _mean(luma: bytes, rows: list[int], xa: int, xb: int, line_size: int) -> float:
    total = 0
    count = 0
    for y in rows:
        chunk = luma[y * line_size + xa: y * line_size + xb]
        total += sum(chunk)
        count += len(chunk)
    return total / max(count, 1)


def decode_frame(frame: av.VideoFrame) -> int | None:
    """The sequence number drawn in a received frame, or None."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "nv12", "yuv422p", "yuv444p", "gray"):
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    bits = read_bits(bytes(plane), frame.width, frame.height, plane.line_size)
    return decode_bits(bits) if bits is not None else None


# ------------------------------------------------------------------ senders

async def _pace(start: float | None, offset_s: float) -> float:
    """Real-time pacing for a synthetic track: sleep until `start + offset_s`. Returns the start
    (the current time on the first frame)."""
    now = time.monotonic()
    if start is None:
        return now
    if start + offset_s > now:
        await asyncio.sleep(start + offset_s - now)
    return start

class NumberedVideoTrack(MediaStreamTrack):
    """Video whose frame n shows the number n (see module docstring). Paced in real time."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        super().__init__()
        if width % 2 or height % 2 or width < CELLS * 4 or height < 16:
            raise ValueError("width and height must be even, width >= 128, height >= 16")
        self.width, self.height, self.fps = width, height, fps
        self.seq = 0
        self.frames_sent = 0
        self._start: float | None = None
        self._chroma = b""

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._start = await _pace(self._start, self.seq / self.fps)
        frame = self.make_frame(self.seq)
        frame.pts = int(self.seq * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.seq += 1
        self.frames_sent += 1
        return frame

    def make_frame(self, seq: int) -> av.VideoFrame:
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        y, u, v = frame.planes
        y.update(render_luma(seq, self.width, self.height, y.line_size))
        for p in (u, v):
            if len(self._chroma) != p.buffer_size:
                self._chroma = bytes([128]) * p.buffer_size  # neutral grey, rows padded to line_size
            p.update(self._chroma)
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A continuous sine tone (default 440 Hz, -12 dBFS), 20 ms mono s16 frames at 48 kHz."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.25) -> None:
        super().__init__()
        self.frequency = frequency
        self.frames_sent = 0
        self._pts = 0
        self._start: float | None = None
        # One second of samples: a whole number of periods for integer frequencies, so it loops cleanly.
        peak = int(32767 * amplitude)
        samples = [int(peak * math.sin(2 * math.pi * frequency * n / AUDIO_RATE)) for n in range(AUDIO_RATE)]
        self._pcm = struct.pack(f"<{AUDIO_RATE}h", *samples)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._start = await _pace(self._start, self._pts / AUDIO_RATE)
        offset = (self._pts % AUDIO_RATE) * 2
        chunk = self._pcm[offset: offset + AUDIO_SAMPLES * 2]
        if len(chunk) < AUDIO_SAMPLES * 2:
            chunk += self._pcm[: AUDIO_SAMPLES * 2 - len(chunk)]
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(chunk)
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._pts += AUDIO_SAMPLES
        self.frames_sent += 1
        return frame


# ------------------------------------------------------------------ receivers
@dataclass
class VideoStats:
    frames: int = 0
    decoded: int = 0
    undecodable: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    max_seq: int | None = None
    unique: set[int] = field(default_factory=set)
    out_of_order: int = 0  # decoded numbers not greater than the previous one
    first_frame_at: float | None = None  # time.monotonic()
    last_frame_at: float | None = None
    width: int = 0
    height: int = 0
    frames_before_first: int = 0  # frames that arrived before the first decoded number
    frames_through_max: int = 0  # frames that arrived up to (and with) the highest decoded number

    @property
    def missing(self) -> int:
        """Frames that never arrived: numbers spanned by the decoded ones minus frames that arrived in
        that span (decoded or not). Unlike `lost`, an unreadable frame does not count."""
        if self.first_seq is None or self.max_seq is None:
            return 0
        return max(0, self.max_seq - self.first_seq + 1 - (self.frames_through_max - self.frames_before_first))

    @property
    def lost(self) -> int:
        """Numbers missing between the first and the highest decoded one."""
        if self.first_seq is None or self.max_seq is None:
            return 0
        return max(0, self.max_seq - self.first_seq + 1 - len(self.unique))

    @property
    def fps(self) -> float:
        if self.first_frame_at is None or self.last_frame_at is None or self.frames < 2:
            return 0.0
        span = self.last_frame_at - self.first_frame_at
        return (self.frames - 1) / span if span > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"frames": self.frames, "decoded": self.decoded, "undecodable": self.undecodable,
                "firstSeq": self.first_seq, "lastSeq": self.last_seq, "lost": self.lost,
                "missing": self.missing, "outOfOrder": self.out_of_order, "fps": round(self.fps, 1),
                "resolution": f"{self.width}x{self.height}"}


class _Consumer:
    """Reads a remote track until it ends, in a task; `wait_frames(n)` waits for n frames."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.frames = 0
        self.ended = False
        self._cond = asyncio.Condition()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                self.on_frame(frame)
                async with self._cond:
                    self._cond.notify_all()
        except MediaStreamError:
            pass
        finally:
            self.ended = True
            async with self._cond:
                self._cond.notify_all()

    def on_frame(self, frame: Any) -> None:
        self.frames += 1

    async def wait_frames(self, n: int, within: float) -> bool:
        """True once `n` frames have arrived; False on timeout or when the track ended first."""
        async def _wait() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: self.frames >= n or self.ended)

        try:
            await asyncio.wait_for(_wait(), within)
        except TimeoutError:
            return False
        return self.frames >= n

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, MediaStreamError):
            pass


class VideoReceiver(_Consumer):
    """Counts received frames and decodes their numbers."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.stats = VideoStats()
        super().__init__(track)

    def on_frame(self, frame: Any) -> None:
        super().on_frame(frame)
        s = self.stats
        now = time.monotonic()
        s.frames += 1
        s.first_frame_at = s.first_frame_at or now
        s.last_frame_at = now
        s.width, s.height = frame.width, frame.height
        seq = decode_frame(frame)
        if seq is None:
            s.undecodable += 1
            return
        s.decoded += 1
        if s.last_seq is not None and seq <= s.last_seq:
            s.out_of_order += 1
        if s.first_seq is None:
            s.first_seq = seq
            s.frames_before_first = s.frames - 1
        s.last_seq = seq
        if s.max_seq is None or seq >= s.max_seq:
            s.frames_through_max = s.frames
        s.max_seq = seq if s.max_seq is None else max(s.max_seq, seq)
        s.unique.add(seq)


class AudioReceiver(_Consumer):
    """Counts received audio frames and tracks the signal level (is the tone audible?)."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.peak = 0
        self.loud_frames = 0  # frames with RMS above -40 dBFS
        super().__init__(track)

    def on_frame(self, frame: Any) -> None:
        super().on_frame(frame)
        if frame.format.name != "s16":
            frame = av.AudioResampler(format="s16", layout=frame.layout.name, rate=frame.sample_rate) \
                .resample(frame)[0]
        raw = bytes(frame.planes[0])[: frame.samples * len(frame.layout.channels) * 2]
        samples = struct.unpack(f"<{len(raw) // 2}h", raw)
        if not samples:
            return
        self.peak = max(self.peak, max(abs(x) for x in samples))
        rms = math.sqrt(sum(x * x for x in samples) / len(samples))
        if rms > 327:  # -40 dBFS
            self.loud_frames += 1

    def summary(self) -> dict[str, Any]:
        return {"frames": self.frames, "loudFrames": self.loud_frames, "peak": self.peak}
