"""Sample files for the media tests (valid magic headers padded to any size), S3 inspection helpers,
and a check that the samples are what the sniffer takes them for."""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import pytest

from server.media.sniff import sniff

MB = 1024 * 1024
SELFIE_MAX = 10 * MB
VIDEO_MAX = 50 * MB

JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"
WEBP_HEAD = b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00"
# Chrome MediaRecorder's EBML header: DocType "webm".
WEBM_HEAD = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d4287810442858102")
MKV_HEAD = bytes.fromhex("1a45dfa3a34286810142f7810142f2810442f38108428288") + b"matroska" + \
    bytes.fromhex("4287810442858102")
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
MOV_HEAD = b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  "
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
TEXT = b"this is not a jpeg at all, just text\n" * 20


async def new_user(client: Any) -> tuple[str, str]:
    from tests.helpers import guest

    g = await guest(client)
    return g["userId"], g["sessionToken"]


def sample(head: bytes, size: int, random: bool = False) -> bytes:
    """`head` followed by filler up to `size` bytes (random filler for integrity checks)."""
    rest = size - len(head)
    return head + (os.urandom(rest) if random else b"\x00" * rest)


def form(field: str, data: bytes, filename: str, content_type: str) -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field(field, data, filename=filename, content_type=content_type)
    return fd


def user_objects(s3: Any, bucket: str, user_id: str) -> list[str]:
    resp = s3.list_objects_v2(Bucket=bucket, Prefix=f"users/{user_id}/")
    return sorted(o["Key"] for o in resp.get("Contents", []))


def pending_multipart(s3: Any, bucket: str, user_id: str) -> list[str]:
    resp = s3.list_multipart_uploads(Bucket=bucket, Prefix=f"users/{user_id}/")
    return [u["Key"] for u in resp.get("Uploads", [])]


async def fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


@pytest.mark.parametrize(("head", "mime"), [
    (JPEG_HEAD, "image/jpeg"), (PNG_HEAD, "image/png"), (WEBP_HEAD, "image/webp"), (WEBM_HEAD, "video/webm"),
    (MP4_HEAD, "video/mp4"), (MOV_HEAD, "video/quicktime"), (MKV_HEAD, None), (SVG, None), (TEXT, None),
])
def test_samples_sniff_as_intended(head, mime):
    found = sniff(sample(head, 8192))
    assert (found.mime if found else None) == mime
