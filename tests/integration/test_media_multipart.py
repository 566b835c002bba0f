"""POST /media/selfie and /media/video (PROTOCOL.md §2.3, §6 D21) against the local S3 server:
stored by magic bytes, served by signed GET URLs, replaced objects deleted, nothing stored on
rejection (no object and no unfinished multipart upload)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid

import aiohttp
import pytest
from test_media_samples import (
    JPEG_HEAD,
    MB,
    MKV_HEAD,
    MOV_HEAD,
    MP4_HEAD,
    PNG_HEAD,
    SELFIE_MAX,
    SVG,
    TEXT,
    VIDEO_MAX,
    WEBM_HEAD,
    WEBP_HEAD,
    fetch,
    form,
    new_user,
    pending_multipart,
    sample,
    user_objects,
)

from server.app import create_app
from tests.conftest import reset_state
from tests.helpers import auth


@pytest.fixture
def settings(base_settings):
    # Some tests race several uploads of one user on purpose (the default lets 2 run at once).
    return base_settings.with_(uploads_per_user_concurrent=8)


async def _upload(client, token, kind, data, filename=None, content_type=None):
    field = "selfie" if kind == "selfie" else "video"
    filename = filename or ("selfie.jpg" if kind == "selfie" else "intro.webm")
    content_type = content_type or ("image/jpeg" if kind == "selfie" else "video/webm")
    resp = await client.post(f"/media/{kind}", data=form(field, data, filename, content_type),
                             headers=auth(token))
    return resp.status, await resp.json()


def _assert_nothing_stored(s3, settings, user_id):
    assert user_objects(s3, settings.s3_bucket, user_id) == []
    assert pending_multipart(s3, settings.s3_bucket, user_id) == []


# ---- accepted uploads ----
async def test_selfie_is_stored_under_the_user_and_the_signed_url_serves_the_bytes(client, db, s3, settings):
    user_id, token = await new_user(client)
    data = sample(JPEG_HEAD, 300_000, random=True)
    status, body = await _upload(client, token, "selfie", data)
    assert status == 200, body
    assert set(body) == {"selfieUrl"}

    key = await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert re.fullmatch(rf"users/{user_id}/selfie-\d{{13}}\.jpg", key)
    assert user_objects(s3, settings.s3_bucket, user_id) == [key]
    head = s3.head_object(Bucket=settings.s3_bucket, Key=key)
    assert head["ContentType"] == "image/jpeg" and head["ContentLength"] == len(data)

    code, ctype, fetched = await fetch(body["selfieUrl"])
    assert code == 200 and fetched == data and ctype == "image/jpeg"
    assert "X-Amz-Expires=3600" in body["selfieUrl"]  # valid for about an hour

    me = await (await client.get("/user/me", headers=auth(token))).json()
    assert (await fetch(me["selfieUrl"]))[2] == data
    status_body = await (await client.get("/media/status", headers=auth(token))).json()
    assert status_body["videoUrl"] is None and status_body["processing"] is False
    assert (await fetch(status_body["selfieUrl"]))[2] == data


@pytest.mark.parametrize(("head", "ext", "mime"), [(PNG_HEAD, "png", "image/png"),
                                                   (WEBP_HEAD, "webp", "image/webp")])
async def test_png_and_webp_selfies_are_typed_by_their_bytes(client, db, s3, settings, head, ext, mime):
    user_id, token = await new_user(client)
    # The client's filename and MIME type say JPEG; the bytes decide.
    status, _ = await _upload(client, token, "selfie", sample(head, 5000), "selfie.jpg", "image/jpeg")
    assert status == 200
    key = await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert key.endswith(f".{ext}")
    assert s3.head_object(Bucket=settings.s3_bucket, Key=key)["ContentType"] == mime


async def test_video_as_the_recorder_sends_it(client, db, s3, settings):
    user_id, token = await new_user(client)
    data = sample(WEBM_HEAD, 2 * MB, random=True)
    status, body = await _upload(client, token, "video", data, "intro.webm", "video/webm;codecs=vp9")
    assert status == 200, body
    assert body["processing"] is False and set(body) == {"videoUrl", "processing"}
    key = await db.fetchval("SELECT video_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert re.fullmatch(rf"users/{user_id}/intro-\d{{13}}\.webm", key)
    code, ctype, fetched = await fetch(body["videoUrl"])
    assert code == 200 and ctype == "video/webm" and fetched == data


@pytest.mark.parametrize(("head", "ext", "mime"), [(MP4_HEAD, "mp4", "video/mp4"),
                                                   (MOV_HEAD, "mov", "video/quicktime")])
async def test_safari_and_file_picker_videos_named_intro_webm(client, db, s3, settings, head, ext, mime):
    user_id, token = await new_user(client)
    status, _ = await _upload(client, token, "video", sample(head, 100_000), "intro.webm", "video/webm")
    assert status == 200
    key = await db.fetchval("SELECT video_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert key.endswith(f".{ext}")
    assert s3.head_object(Bucket=settings.s3_bucket, Key=key)["ContentType"] == mime


async def test_video_larger_than_one_part_streams_through_s3_multipart(client, db, s3, settings):
    user_id, token = await new_user(client)
    data = sample(WEBM_HEAD, 23 * MB + 12345, random=True)  # five parts, the last one short
    status, body = await _upload(client, token, "video", data)
    assert status == 200, body
    key = await db.fetchval("SELECT video_key FROM users WHERE id = $1", uuid.UUID(user_id))
    head = s3.head_object(Bucket=settings.s3_bucket, Key=key)
    assert head["ContentLength"] == len(data)
    _, _, fetched = await fetch(body["videoUrl"])
    assert hashlib.sha256(fetched).digest() == hashlib.sha256(data).digest()
    assert pending_multipart(s3, settings.s3_bucket, user_id) == []


async def test_a_video_of_exactly_the_limit_is_accepted(client, db, s3, settings):
    user_id, token = await new_user(client)
    status, body = await _upload(client, token, "video", sample(WEBM_HEAD, VIDEO_MAX))
    assert status == 200, body
    key = await db.fetchval("SELECT video_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert s3.head_object(Bucket=settings.s3_bucket, Key=key)["ContentLength"] == VIDEO_MAX


async def test_replacing_deletes_the_old_object(client, db, s3, settings):
    user_id, token = await new_user(client)
    await _upload(client, token, "selfie", sample(JPEG_HEAD, 1000))
    first = await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id))
    await asyncio.sleep(0.002)  # a later timestamp, so a new key
    status, _ = await _upload(client, token, "selfie", sample(PNG_HEAD, 2000, random=True))
    assert status == 200
    second = await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert second != first
    assert user_objects(s3, settings.s3_bucket, user_id) == [second]

    await _upload(client, token, "video", sample(WEBM_HEAD, 1000))
    await asyncio.sleep(0.002)
    await _upload(client, token, "video", sample(MP4_HEAD, 1000))
    video = await db.fetchval("SELECT video_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert user_objects(s3, settings.s3_bucket, user_id) == sorted([second, video])


async def test_concurrent_replacements_leave_exactly_the_referenced_object(client, db, s3, settings):
    user_id, token = await new_user(client)
    results = await asyncio.gather(*[
        _upload(client, token, "selfie", sample(JPEG_HEAD, 200_000 + i)) for i in range(4)])
    assert all(status == 200 for status, _ in results)
    key = await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert user_objects(s3, settings.s3_bucket, user_id) == [key]


async def test_unreferenced_stale_objects_of_the_user_are_swept(client, db, s3, settings):
    user_id, token = await new_user(client)
    stale = f"users/{user_id}/selfie-{int((time.time() - 3 * 3600) * 1000)}.jpg"  # never confirmed
    recent = f"users/{user_id}/intro-{int(time.time() * 1000)}.webm"  # a presigned upload awaiting confirm
    for key in (stale, recent):
        s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"x")
    await _upload(client, token, "selfie", sample(JPEG_HEAD, 1000))
    key = await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id))
    assert user_objects(s3, settings.s3_bucket, user_id) == sorted([key, recent])


# ---- rejections: JSON errors, nothing stored ----
async def test_selfie_one_byte_over_ten_mb_is_413(client, db, s3, settings):
    user_id, token = await new_user(client)
    status, body = await _upload(client, token, "selfie", sample(JPEG_HEAD, SELFIE_MAX + 1))
    assert status == 413 and body["code"] == "file_too_large" and body["maxBytes"] == SELFIE_MAX
    assert "too large" in body["error"]
    _assert_nothing_stored(s3, settings, user_id)
    assert await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id)) is None


async def test_video_one_byte_over_fifty_mb_is_413_and_the_multipart_upload_is_aborted(client, s3, settings):
    user_id, token = await new_user(client)
    status, body = await _upload(client, token, "video", sample(WEBM_HEAD, VIDEO_MAX + 1))
    assert status == 413 and body["maxBytes"] == VIDEO_MAX
    _assert_nothing_stored(s3, settings, user_id)


async def test_a_body_far_over_the_limit_is_refused_from_its_content_length(client, s3, settings):
    user_id, token = await new_user(client)
    t0 = time.monotonic()
    status, body = await _upload(client, token, "selfie", sample(JPEG_HEAD, 12 * MB))
    assert status == 413 and body["code"] == "file_too_large"
    assert time.monotonic() - t0 < 10
    _assert_nothing_stored(s3, settings, user_id)


@pytest.mark.parametrize(("kind", "data", "filename", "ctype"), [
    ("selfie", SVG, "selfie.svg", "image/svg+xml"),
    ("selfie", TEXT, "selfie.jpg", "image/jpeg"),
    ("selfie", b"<html><script>alert(1)</script></html>", "selfie.jpg", "image/jpeg"),
    ("selfie", sample(WEBM_HEAD, 5000), "selfie.jpg", "image/jpeg"),
    ("video", sample(PNG_HEAD, 5000), "intro.webm", "video/webm"),
    ("video", sample(MKV_HEAD, 5000), "intro.webm", "video/webm"),
    ("video", TEXT, "intro.mp4", "video/mp4"),
], ids=["svg", "text-named-jpg", "html", "webm-as-selfie", "png-as-video", "matroska", "text-as-video"])
async def test_wrong_type_is_415(client, s3, settings, kind, data, filename, ctype):
    user_id, token = await new_user(client)
    status, body = await _upload(client, token, kind, data, filename, ctype)
    assert status == 415 and body["code"] == "unsupported_media_type", body
    assert isinstance(body["error"], str) and body["accepted"]
    _assert_nothing_stored(s3, settings, user_id)


async def test_wrong_type_after_the_first_part_is_still_rejected_before_storing(client, s3, settings):
    user_id, token = await new_user(client)
    status, _ = await _upload(client, token, "video", b"GIF89a" + b"\x00" * (7 * MB))
    assert status == 415
    _assert_nothing_stored(s3, settings, user_id)


async def test_empty_file_is_400(client, s3, settings):
    user_id, token = await new_user(client)
    for kind in ("selfie", "video"):
        status, body = await _upload(client, token, kind, b"")
        assert status == 400 and body["code"] == "empty_file"
    _assert_nothing_stored(s3, settings, user_id)


async def test_missing_file_field_is_400_no_file_uploaded(client, s3, settings):
    user_id, token = await new_user(client)
    misnamed = form("file", sample(JPEG_HEAD, 100), "selfie.jpg", "image/jpeg")
    resp = await client.post("/media/selfie", data=misnamed, headers=auth(token))
    assert resp.status == 400 and (await resp.json())["error"] == "No file uploaded"
    resp = await client.post("/media/video", json={"video": "x"}, headers=auth(token))
    assert resp.status == 400 and (await resp.json())["error"] == "No file uploaded"
    resp = await client.post("/media/video", data=b"--x\r\n", headers={**auth(token),
                             "Content-Type": "multipart/form-data; boundary=zzz"})
    assert resp.status == 400 and "error" in await resp.json()
    _assert_nothing_stored(s3, settings, user_id)


async def test_other_form_fields_are_skipped_but_bounded(client, s3, settings):
    user_id, token = await new_user(client)
    fd = aiohttp.FormData()
    fd.add_field("note", "hello")
    fd.add_field("selfie", sample(JPEG_HEAD, 1000), filename="selfie.jpg", content_type="image/jpeg")
    resp = await client.post("/media/selfie", data=fd, headers=auth(token))
    assert resp.status == 200
    fd = aiohttp.FormData()
    fd.add_field("junk", b"j" * (100 * 1024), filename="junk.bin")
    fd.add_field("selfie", sample(JPEG_HEAD, 1000), filename="selfie.jpg", content_type="image/jpeg")
    resp = await client.post("/media/selfie", data=fd, headers=auth(token))
    assert resp.status == 413
    assert len(user_objects(s3, settings.s3_bucket, user_id)) == 1  # only the first upload


@pytest.mark.parametrize(("method", "path"), [
    ("post", "/media/selfie"), ("post", "/media/video"), ("post", "/media/upload-url"),
    ("post", "/media/confirm"), ("get", "/media/status"),
])
async def test_every_media_route_requires_a_session(client, method, path):
    resp = await getattr(client, method)(path)
    assert resp.status == 401
    assert (await resp.json())["error"] == "Authorization required"
    resp = await getattr(client, method)(path, headers=auth("not-a-token"))
    assert resp.status == 401


async def test_server_side_encryption_is_requested_when_configured(base_settings, aiohttp_client, s3):
    sse_settings = base_settings.with_(s3_sse="AES256")
    await reset_state(sse_settings)
    client = await aiohttp_client(create_app(sse_settings))
    user_id, token = await new_user(client)
    for kind, head, size in (("selfie", JPEG_HEAD, 1000), ("video", WEBM_HEAD, 6 * MB)):
        status, _ = await _upload(client, token, kind, sample(head, size))
        assert status == 200
    for key in user_objects(s3, sse_settings.s3_bucket, user_id):
        assert s3.head_object(Bucket=sse_settings.s3_bucket, Key=key)["ServerSideEncryption"] == "AES256"
