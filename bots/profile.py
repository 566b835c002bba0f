"""A bot's profile media: a small real JPEG selfie and a small real WebM intro video, made with PyAV.

The server sniffs magic bytes (PROTOCOL.md §6 D21) and lists only users with both a selfie and a
video in decks (`/room/queue`, §6 D16), so bots upload both to be callable from the deck. Both are
generated in memory in a few milliseconds and cached per process.
"""

from __future__ import annotations

import fractions
import functools
import io

import av

from bots.media import NumberedVideoTrack

SELFIE_SIZE = 128


def _robot_luma(size: int) -> bytes:
    """A grey square with two bright eyes and a mouth: recognisably a bot in a deck card."""
    rows = []
    for y in range(size):
        row = bytearray([90]) * size
        for x in range(size):
            eye = any((x - cx) ** 2 + (y - size * 3 // 8) ** 2 < (size // 10) ** 2 for cx in (size // 3, size * 2 // 3))
            mouth = size * 5 // 8 <= y < size * 11 // 16 and size // 4 <= x < size * 3 // 4
            if eye:
                row[x] = 235
            elif mouth:
                row[x] = 30
        rows.append(bytes(row))
    return b"".join(rows)


@functools.cache
def selfie_jpeg(size: int = SELFIE_SIZE) -> bytes:
    """A JPEG (baseline, yuvj420p) picture of `size` x `size` pixels."""
    frame = av.VideoFrame(size, size, "yuvj420p")
    y, u, v = frame.planes
    luma = _robot_luma(size)
    y.update(b"".join(luma[r * size:(r + 1) * size] + b"\0" * (y.line_size - size) for r in range(size)))
    u.update(bytes([160]) * u.buffer_size)  # a bluish tint
    v.update(bytes([110]) * v.buffer_size)
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width = ctx.height = size
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = fractions.Fraction(1, 25)
    packets = ctx.encode(frame) + ctx.encode(None)
    data = b"".join(bytes(p) for p in packets)
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    return data


@functools.cache
def intro_webm(seconds: float = 1.0, width: int = 160, height: int = 120, fps: int = 10) -> bytes:
    """A VP8 WebM of the bot's numbered test pattern (a few KB)."""
    track = NumberedVideoTrack(width, height, fps=fps)
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(max(1, int(seconds * fps))):
            frame = track.make_frame(i)
            frame.pts = i
            frame.time_base = fractions.Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = buf.getvalue()
    assert data[:4] == b"\x1a\x45\xdf\xa3", "not an EBML (WebM) file"
    return data
