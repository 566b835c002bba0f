"""Readable URLs for stored media: a CDN base if configured, else a presigned GET (pure signing, no
network call per user).

A presigned GET also pins the response Content-Type to the type the key's extension stands for
(the extension comes from the sniffed bytes), so an object can never be served as, say, HTML.
"""

from __future__ import annotations

import time
from typing import Any

from server.deps import Deps
from server.media.sniff import BY_EXT

# Signed URLs are reused until half their lifetime is gone (signing is CPU work on the event loop, and
# decks list the same users to everyone). Bounded: cleared when it grows past _SIGNED_MAX entries.
_signed: dict[tuple[str, str, str, int], tuple[str, float]] = {}
_SIGNED_MAX = 100_000


def media_url(deps: Deps, key: str | None, ttl_s: int | None = None) -> str | None:
    if not key:
        return None
    s = deps.settings
    if s.media_cdn_base:
        return f"{s.media_cdn_base.rstrip('/')}/{key}"
    cache_key = (s.s3_endpoint_url, s.s3_bucket, key, ttl_s or s.media_url_ttl_seconds)
    hit = _signed.get(cache_key)
    now = time.monotonic()
    if hit is not None and hit[1] > now:
        return hit[0]
    params: dict[str, Any] = {"Bucket": s.s3_bucket, "Key": key}
    media = BY_EXT.get(key.rsplit(".", 1)[-1])
    if media is not None:
        params["ResponseContentType"] = media.mime
    ttl = ttl_s or s.media_url_ttl_seconds
    url = str(deps.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl))
    if len(_signed) >= _SIGNED_MAX:
        _signed.clear()
    _signed[cache_key] = (url, now + ttl / 2)
    return url
