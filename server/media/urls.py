"""Readable URLs for stored media: a CDN base if configured, else a presigned GET (pure signing, no
network call per user)."""

from __future__ import annotations

from server.deps import Deps


def media_url(deps: Deps, key: str | None) -> str | None:
    if not key:
        return None
    s = deps.settings
    if s.media_cdn_base:
        return f"{s.media_cdn_base.rstrip('/')}/{key}"
    return str(deps.s3.generate_presigned_url(
        "get_object", Params={"Bucket": s.s3_bucket, "Key": key}, ExpiresIn=s.media_url_ttl_seconds,
    ))
