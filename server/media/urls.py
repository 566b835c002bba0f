"""Readable URLs for stored media: a CDN base if configured, else a presigned GET (pure signing, no
network call per user).

A presigned GET also pins the response Content-Type to the type the key's extension stands for
(the extension comes from the sniffed bytes), so an object can never be served as, say, HTML.
"""

from __future__ import annotations

from typing import Any

from server.deps import Deps
from server.media.sniff import BY_EXT


def media_url(deps: Deps, key: str | None, ttl_s: int | None = None) -> str | None:
    if not key:
        return None
    s = deps.settings
    if s.media_cdn_base:
        return f"{s.media_cdn_base.rstrip('/')}/{key}"
    params: dict[str, Any] = {"Bucket": s.s3_bucket, "Key": key}
    media = BY_EXT.get(key.rsplit(".", 1)[-1])
    if media is not None:
        params["ResponseContentType"] = media.mime
    return str(deps.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s or s.media_url_ttl_seconds))
