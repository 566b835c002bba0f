"""QR code PNGs for invite codes (PROTOCOL §2.7 GET /payment/qr/:code), rendered with segno off the
event loop and kept in a small per-process cache (a code's image never changes)."""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict

import segno

TARGET_PX = 300  # the original's width; we use the largest whole module size that fits
BORDER = 2  # quiet-zone modules (the original's margin)
_CACHE_MAX = 512
_cache: OrderedDict[str, bytes] = OrderedDict()


def invite_url(frontend_url: str, code: str) -> str:
    return f"{frontend_url.rstrip('/')}/onboarding?inviteCode={code}"


def render(data: str) -> bytes:
    qr = segno.make(data, error="m", micro=False)
    width = qr.symbol_size(scale=1, border=BORDER)[0]
    buf = io.BytesIO()
    qr.save(buf, kind="png", scale=max(1, TARGET_PX // width), border=BORDER)
    return buf.getvalue()


async def png(frontend_url: str, code: str) -> bytes:
    url = invite_url(frontend_url, code)
    cached = _cache.get(url)
    if cached is not None:
        _cache.move_to_end(url)
        return cached
    image = await asyncio.to_thread(render, url)
    _cache[url] = image
    while len(_cache) > _CACHE_MAX:
        _cache.popitem(last=False)
    return image
