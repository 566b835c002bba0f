"""Magic-byte typing (PROTOCOL.md §6 D21), key layout, and the streaming writer's bounded parts."""

from __future__ import annotations

import base64
import io
import json
import uuid
from types import SimpleNamespace

import boto3
import pytest
from botocore.config import Config

from server.errors import ApiError
from server.media import service
from server.media.rules import SELFIE, VIDEO, base_mime, new_key, parse_key
from server.media.sniff import JPEG, MP4, PNG, QUICKTIME, WEBM, WEBP, sniff
from server.media.storage import Storage
from server.media.urls import media_url
from server.settings import Settings

MB = 1024 * 1024


@pytest.mark.parametrize(("head", "expected"), [
    (b"\xff\xd8\xff\xdb" + b"\x00" * 60, JPEG),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 60, PNG),
    (b"RIFF\x24\x00\x00\x00WEBPVP8L", WEBP),
    (b"RIFF\x24\x00\x00\x00AVI LIST", None),  # AVI shares RIFF but is not accepted
    (b"\x00\x00\x00\x1cftypmp42\x00\x00\x00\x00mp42isom", MP4),
    (b"\x00\x00\x00\x18ftypM4V \x00\x00\x00\x01M4V ", MP4),
    (b"\x00\x00\x00\x1cftypXYZW\x00\x00\x00\x00isomXYZW", MP4),  # unknown major, MP4 compatible brand
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", QUICKTIME),
    (b"\x00\x00\x00\x08wide\x00\x00\x00\x10mdat", QUICKTIME),  # QuickTime without ftyp
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", None),  # HEIC image
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", None),  # AVIF image
    (b"GIF89a\x01\x00\x01\x00", None),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
    (b"<?xml version='1.0'?><svg/>", None),
    (b"<!DOCTYPE html><script>alert(1)</script>", None),
    (b"%PDF-1.7", None),
    (b"\xff\xd8", None),  # truncated JPEG marker
    (b"\x1a\x45\xdf\xa3", None),  # EBML magic with no header
    (b"\x1a\x45\xdf\xa3\x8f\x42\x82\x88matroska", None),  # Matroska, not WebM
    (b"\x1a\x45\xdf\xa3\x87\x42\x82\x84webm", WEBM),
    (b"\x1a\x45\xdf\xa3\xff" + b"\xff" * 30, None),  # garbage header
    (b"", None),
])
def test_sniff(head, expected):
    assert sniff(head) == expected


def test_real_files_from_an_encoder_are_recognised():
    av = pytest.importorskip("av")

    def encode(fmt: str, codec: str) -> bytes:
        buf = io.BytesIO()
        container = av.open(buf, "w", format=fmt)
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame(64, 48, "yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        container.close()
        return buf.getvalue()

    assert sniff(encode("webm", "libvpx")) == WEBM
    assert sniff(encode("mp4", "h264")) == MP4
    assert sniff(encode("mov", "h264")) == QUICKTIME
    assert sniff(encode("matroska", "libvpx")) is None
    assert sniff(encode("avi", "mpeg4")) is None


def test_kinds_accept_only_their_types():
    assert SELFIE.accepts(JPEG) and SELFIE.accepts(WEBP) and not SELFIE.accepts(WEBM)
    assert VIDEO.accepts(QUICKTIME) and not VIDEO.accepts(PNG) and not VIDEO.accepts(None)
    assert (SELFIE.max_bytes, VIDEO.max_bytes) == (10 * MB, 50 * MB)


def test_key_layout_round_trips():
    uid = uuid.uuid4()
    key = new_key(uid, VIDEO, WEBM, now_ms=1_700_000_000_123)
    assert key == f"users/{uid}/intro-1700000000123.webm"
    parsed = parse_key(key)
    assert parsed is not None and parsed.user_id == str(uid) and parsed.stem == "intro" and parsed.ext == "webm"
    assert parse_key(new_key(uid, SELFIE, JPEG)).stem == "selfie"
    for bad in (f"users/{uid}/selfie.jpg", f"users/{uid}/../x/selfie-1700000000123.jpg",
                f"users/{uid}/selfie-1700000000123.jpg/x", f"/users/{uid}/selfie-1700000000123.jpg"):
        assert parse_key(bad) is None


def test_base_mime_drops_parameters():
    assert base_mime("video/webm;codecs=vp9") == "video/webm"
    assert base_mime(" Video/MP4 ; codecs=avc1") == "video/mp4"


# ---- presigned policy and URLs, signed locally (no store involved) ----
def _deps(**settings):
    s = Settings(**settings)
    s3 = boto3.session.Session().client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", aws_access_key_id="k",
        aws_secret_access_key="s", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    return SimpleNamespace(settings=s, s3=s3)


def test_presigned_post_policy_conditions():
    deps = _deps(s3_sse="aws:kms")
    post = Storage(deps).presign_post("users/u/selfie-1.jpg", "image/jpeg", 10 * MB, 300)
    policy = json.loads(base64.b64decode(post["fields"]["policy"]))
    conds = policy["conditions"]
    assert {"key": "users/u/selfie-1.jpg"} in conds and {"Content-Type": "image/jpeg"} in conds
    assert ["content-length-range", 1, 10 * MB] in conds
    assert {"x-amz-server-side-encryption": "aws:kms"} in conds
    assert post["fields"]["x-amz-server-side-encryption"] == "aws:kms"


def test_signed_get_url_pins_the_content_type_and_ttl():
    deps = _deps(media_url_ttl_seconds=3600)
    url = media_url(deps, "users/u/selfie-1700000000123.png")
    assert "response-content-type=image%2Fpng" in url and "X-Amz-Expires=3600" in url
    assert media_url(deps, None) is None
    assert media_url(_deps(media_cdn_base="https://cdn.test"), "users/u/x.jpg") == "https://cdn.test/users/u/x.jpg"


# ---- the streaming writer ----
class FakeUpload:
    def __init__(self, store, key):
        self.store, self.key, self.parts, self.aborted, self.completed = store, key, [], False, False

    async def add_part(self, data):
        self.parts.append(len(data))

    async def complete(self):
        self.completed = True

    async def abort(self):
        self.aborted = True


class FakeStorage:
    def __init__(self):
        self.puts, self.uploads = [], []

    async def put(self, key, body, content_type):
        self.puts.append((key, len(body), content_type))

    async def start_multipart(self, key, content_type):
        self.uploads.append(FakeUpload(self, key))
        return self.uploads[-1]


async def _chunks(data: bytes, size: int = 256 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def test_stream_writes_bounded_parts_and_completes():
    store = FakeStorage()
    data = b"\x1a\x45\xdf\xa3\x87\x42\x82\x84webm" + b"\x00" * (23 * MB)
    key = await service._stream(store, uuid.uuid4(), VIDEO, _chunks(data))
    assert key.endswith(".webm") and not store.puts
    (upload,) = store.uploads
    assert upload.completed and not upload.aborted and sum(upload.parts) == len(data)
    assert all(service.PART_BYTES <= p < service.PART_BYTES + 256 * 1024 for p in upload.parts[:-1])


async def test_stream_small_file_is_one_put():
    store = FakeStorage()
    await service._stream(store, uuid.uuid4(), SELFIE, _chunks(b"\xff\xd8\xff" + b"\x00" * 1000))
    assert len(store.puts) == 1 and store.puts[0][2] == "image/jpeg" and not store.uploads


async def test_stream_aborts_when_the_limit_is_crossed_mid_way():
    store = FakeStorage()
    data = b"\xff\xd8\xff" + b"\x00" * (10 * MB)
    with pytest.raises(ApiError) as err:
        await service._stream(store, uuid.uuid4(), SELFIE, _chunks(data))
    assert err.value.status == 413
    assert store.uploads and store.uploads[0].aborted and not store.uploads[0].completed and not store.puts


async def test_stream_rejects_the_type_before_touching_storage():
    store = FakeStorage()
    with pytest.raises(ApiError) as err:
        await service._stream(store, uuid.uuid4(), VIDEO, _chunks(b"\x89PNG\r\n\x1a\n" + b"\x00" * (8 * MB)))
    assert err.value.status == 415 and not store.uploads and not store.puts


async def test_stream_aborts_when_the_client_goes_away():
    store = FakeStorage()

    async def broken():
        yield b"\x1a\x45\xdf\xa3\x87\x42\x82\x84webm" + b"\x00" * (6 * MB)
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        await service._stream(store, uuid.uuid4(), VIDEO, broken())
    assert store.uploads[0].aborted
