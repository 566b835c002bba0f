"""Presigned uploads (PROTOCOL.md §7 E5): POST /media/upload-url, the client's own upload to the
local S3 server, POST /media/confirm, GET /media/status.

The local S3 server enforces nothing of a presigned policy (ENVIRONMENT.md), so the signed policy is
decoded and asserted here, and every rule is shown to hold at confirm time regardless of the store.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest
from test_media_samples import (
    JPEG_HEAD,
    MB,
    MP4_HEAD,
    PNG_HEAD,
    SELFIE_MAX,
    TEXT,
    VIDEO_MAX,
    WEBM_HEAD,
    fetch,
    new_user,
    sample,
    user_objects,
)

from server.app import create_app
from server.media.service import UPLOADS_PER_HOUR
from tests.conftest import reset_state
from tests.helpers import auth


async def _issue(client, token, kind="selfie", content_type="image/jpeg", length=1000):
    resp = await client.post("/media/upload-url", json={"kind": kind, "contentType": content_type,
                                                        "contentLength": length}, headers=auth(token))
    return resp.status, await resp.json()


async def _post_to_s3(grant, data, content_type=None):
    """What a browser does with the grant: every field, then the file last."""
    fd = aiohttp.FormData()
    for name, value in grant["fields"].items():
        fd.add_field(name, content_type if (name == "Content-Type" and content_type) else value)
    fd.add_field("file", data, filename="upload.bin", content_type=content_type or grant["contentType"])
    async with aiohttp.ClientSession() as http, http.post(grant["uploadUrl"], data=fd) as resp:
        return resp.status


async def _confirm(client, token, kind, key):
    resp = await client.post("/media/confirm", json={"kind": kind, "key": key}, headers=auth(token))
    return resp.status, await resp.json()


def _policy(grant):
    return json.loads(base64.b64decode(grant["fields"]["policy"]))


# ---- the grant ----
async def test_upload_url_signs_a_short_lived_policy_for_exactly_one_key(client, settings):
    user_id, token = await new_user(client)
    before = time.time()
    status, grant = await _issue(client, token, "selfie", "image/jpeg", 400_000)
    assert status == 200, grant
    assert grant["method"] == "POST" and grant["maxBytes"] == SELFIE_MAX
    assert grant["contentType"] == "image/jpeg"
    assert re.fullmatch(rf"users/{user_id}/selfie-\d{{13}}\.jpg", grant["key"])
    assert grant["uploadUrl"].startswith(settings.s3_endpoint_url)
    assert 0 < grant["expiresAt"] / 1000 - before <= 300 + 1

    policy = _policy(grant)
    expiration = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert before < expiration <= time.time() + 300  # the expired-presign rule: <= 5 minutes
    conditions = policy["conditions"]
    assert ["content-length-range", 1, SELFIE_MAX] in conditions
    assert {"key": grant["key"]} in conditions  # the exact key, no starts-with
    assert {"Content-Type": "image/jpeg"} in conditions
    assert {"bucket": settings.s3_bucket} in conditions
    assert not any(isinstance(c, list) and c[0] == "starts-with" for c in conditions)
    assert grant["fields"]["key"] == grant["key"] and grant["fields"]["Content-Type"] == "image/jpeg"

    # The E5 PUT form: its signature covers Content-Length and Content-Type.
    put = grant["put"]
    assert put["method"] == "PUT" and put["headers"] == {"Content-Type": "image/jpeg"}
    assert "content-length" in put["url"] and "X-Amz-Expires=300" in put["url"]


async def test_video_grant_takes_the_recorders_content_type(client):
    user_id, token = await new_user(client)
    status, grant = await _issue(client, token, "video", "video/webm;codecs=vp9", 10 * MB)
    assert status == 200
    assert grant["key"].startswith(f"users/{user_id}/intro-") and grant["key"].endswith(".webm")
    assert ["content-length-range", 1, VIDEO_MAX] in _policy(grant)["conditions"]
    assert {"Content-Type": "video/webm"} in _policy(grant)["conditions"]


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"kind": "selfie", "contentType": "image/svg+xml", "contentLength": 100}, 415, "unsupported_media_type"),
    ({"kind": "video", "contentType": "image/png", "contentLength": 100}, 415, "unsupported_media_type"),
    ({"kind": "selfie", "contentType": "image/jpeg", "contentLength": SELFIE_MAX + 1}, 413, "file_too_large"),
    ({"kind": "video", "contentType": "video/mp4", "contentLength": VIDEO_MAX + 1}, 413, "file_too_large"),
    ({"kind": "selfie", "contentType": "image/jpeg", "contentLength": 0}, 400, "empty_file"),
    ({"kind": "avatar", "contentType": "image/jpeg", "contentLength": 10}, 400, "validation_failed"),
    ({"kind": "selfie", "contentType": "image/jpeg"}, 400, "validation_failed"),
])
async def test_upload_url_validation(client, body, status, code):
    _, token = await new_user(client)
    resp = await client.post("/media/upload-url", json=body, headers=auth(token))
    assert resp.status == status
    assert (await resp.json())["code"] == code


async def test_upload_url_is_rate_limited_pernew_user(client):
    _, token = await new_user(client)
    for _ in range(UPLOADS_PER_HOUR):
        assert (await _issue(client, token))[0] == 200
    status, body = await _issue(client, token)
    assert status == 429 and body["retryAfter"] > 0 and "Too many" in body["error"]


# ---- end to end ----
async def test_presigned_post_then_confirm_end_to_end(client, db, s3, settings):
    user_id, token = await new_user(client)
    data = sample(JPEG_HEAD, 250_000, random=True)
    _, grant = await _issue(client, token, "selfie", "image/jpeg", len(data))
    assert await _post_to_s3(grant, data) in (200, 201, 204)
    status, body = await _confirm(client, token, "selfie", grant["key"])
    assert status == 200, body
    assert set(body) == {"selfieUrl"}
    assert await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id)) == grant["key"]
    code, ctype, fetched = await fetch(body["selfieUrl"])
    assert code == 200 and fetched == data and ctype == "image/jpeg"

    status_body = await (await client.get("/media/status", headers=auth(token))).json()
    assert (await fetch(status_body["selfieUrl"]))[2] == data and status_body["processing"] is False

    # A grant is confirmed once.
    assert (await _confirm(client, token, "selfie", grant["key"]))[0] == 404


async def test_presigned_put_then_confirm_replaces_the_multipart_video(client, db, s3, settings):
    user_id, token = await new_user(client)
    form = aiohttp.FormData()
    form.add_field("video", sample(WEBM_HEAD, 5000), filename="intro.webm", content_type="video/webm")
    assert (await client.post("/media/video", data=form, headers=auth(token))).status == 200
    old = await db.fetchval("SELECT video_key FROM users WHERE id = $1", uuid.UUID(user_id))

    data = sample(MP4_HEAD, 3 * MB, random=True)
    _, grant = await _issue(client, token, "video", "video/mp4", len(data))
    async with aiohttp.ClientSession() as http, \
            http.put(grant["put"]["url"], data=data, headers=grant["put"]["headers"]) as resp:
        assert resp.status == 200
    status, body = await _confirm(client, token, "video", grant["key"])
    assert status == 200 and body["processing"] is False
    assert (await fetch(body["videoUrl"]))[2] == data
    assert user_objects(s3, settings.s3_bucket, user_id) == [grant["key"]]
    assert old != grant["key"]


# ---- confirm enforces the rules the store did not ----
async def test_confirm_rejects_an_oversize_object_and_deletes_it(client, db, s3, settings):
    user_id, token = await new_user(client)
    _, grant = await _issue(client, token, "selfie", "image/jpeg", 1000)
    # The local store accepts what the policy forbids.
    assert await _post_to_s3(grant, sample(JPEG_HEAD, SELFIE_MAX + 1)) in (200, 201, 204)
    status, body = await _confirm(client, token, "selfie", grant["key"])
    assert status == 413 and body["code"] == "file_too_large"
    assert user_objects(s3, settings.s3_bucket, user_id) == []
    assert await db.fetchval("SELECT selfie_key FROM users WHERE id = $1", uuid.UUID(user_id)) is None


@pytest.mark.parametrize(("kind", "declared", "data", "stored_type"), [
    ("selfie", "image/jpeg", TEXT, None),  # a text file declared as JPEG
    ("selfie", "image/jpeg", sample(PNG_HEAD, 3000), None),  # a PNG under a .jpg key
    ("selfie", "image/jpeg", sample(JPEG_HEAD, 3000), "text/html"),  # right bytes, served as HTML
    ("video", "video/webm", sample(PNG_HEAD, 3000), None),  # a PNG as a video
], ids=["text-as-jpeg", "png-under-jpg-key", "served-as-html", "png-as-video"])
async def test_confirm_rejects_a_wrong_type_and_deletes_it(client, s3, settings, kind, declared, data,
                                                           stored_type):
    user_id, token = await new_user(client)
    _, grant = await _issue(client, token, kind, declared, len(data))
    assert await _post_to_s3(grant, data, content_type=stored_type) in (200, 201, 204)
    status, body = await _confirm(client, token, kind, grant["key"])
    assert status == 415 and body["code"] == "unsupported_media_type", body
    assert user_objects(s3, settings.s3_bucket, user_id) == []


async def test_confirm_rejects_an_empty_object_and_deletes_it(client, s3, settings):
    user_id, token = await new_user(client)
    _, grant = await _issue(client, token, "selfie", "image/jpeg", 10)
    s3.put_object(Bucket=settings.s3_bucket, Key=grant["key"], Body=b"", ContentType="image/jpeg")
    status, body = await _confirm(client, token, "selfie", grant["key"])
    assert status == 400 and body["code"] == "empty_file"
    assert user_objects(s3, settings.s3_bucket, user_id) == []


async def test_confirm_of_another_users_key_is_403_and_leaves_it_alone(client, db, s3, settings):
    victim_id, victim_token = await new_user(client)
    _, attacker_token = await new_user(client)
    _, grant = await _issue(client, victim_token, "selfie", "image/jpeg", 1000)
    await _post_to_s3(grant, sample(JPEG_HEAD, 1000))
    status, body = await _confirm(client, attacker_token, "selfie", grant["key"])
    assert status == 403 and isinstance(body["error"], str)
    for key in (grant["key"], "users/../" + grant["key"], f"/{grant['key']}", "selfie.jpg"):
        assert (await _confirm(client, attacker_token, "selfie", key))[0] == 403
    assert user_objects(s3, settings.s3_bucket, victim_id) == [grant["key"]]  # untouched
    # The owner can still confirm it.
    assert (await _confirm(client, victim_token, "selfie", grant["key"]))[0] == 200


async def test_confirm_of_a_missing_object_or_an_unissued_key(client, s3, settings):
    user_id, token = await new_user(client)
    _, grant = await _issue(client, token, "selfie", "image/jpeg", 1000)
    status, body = await _confirm(client, token, "selfie", grant["key"])  # nothing uploaded yet
    assert status == 404 and body["code"] == "upload_not_found"
    # The grant survives a premature confirm.
    await _post_to_s3(grant, sample(JPEG_HEAD, 1000))
    assert (await _confirm(client, token, "selfie", grant["key"]))[0] == 200

    made_up = f"users/{user_id}/selfie-{int(time.time() * 1000) + 5}.jpg"
    s3.put_object(Bucket=settings.s3_bucket, Key=made_up, Body=sample(JPEG_HEAD, 100),
                  ContentType="image/jpeg")
    assert (await _confirm(client, token, "selfie", made_up))[0] == 404  # never issued
    assert (await _confirm(client, token, "selfie", f"users/{user_id}/avatar.jpg"))[0] == 400
    _, video_grant = await _issue(client, token, "video", "video/webm", 1000)
    assert (await _confirm(client, token, "selfie", video_grant["key"]))[0] == 400  # kind mismatch


async def test_presigned_grants_carry_server_side_encryption_when_configured(base_settings, aiohttp_client):
    sse_settings = base_settings.with_(s3_sse="AES256")
    await reset_state(sse_settings)
    client = await aiohttp_client(create_app(sse_settings))
    _, token = await new_user(client)
    _, grant = await _issue(client, token, "selfie", "image/png", 1000)
    assert grant["fields"]["x-amz-server-side-encryption"] == "AES256"
    assert {"x-amz-server-side-encryption": "AES256"} in _policy(grant)["conditions"]
    assert grant["put"]["headers"]["x-amz-server-side-encryption"] == "AES256"


async def test_cdn_base_replaces_signed_urls(base_settings, aiohttp_client):
    cdn_settings = base_settings.with_(media_cdn_base="https://media.example.test/")
    await reset_state(cdn_settings)
    client = await aiohttp_client(create_app(cdn_settings))
    user_id, token = await new_user(client)
    form = aiohttp.FormData()
    form.add_field("selfie", sample(JPEG_HEAD, 1000), filename="selfie.jpg", content_type="image/jpeg")
    body = await (await client.post("/media/selfie", data=form, headers=auth(token))).json()
    expected = rf"https://media\.example\.test/users/{user_id}/selfie-\d{{13}}\.jpg"
    assert re.fullmatch(expected, body["selfieUrl"])
