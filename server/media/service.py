"""Selfie and intro-video uploads (PROTOCOL.md §2.3, §7 E5, fixing §6 D21).

Multipart uploads stream to S3 in bounded parts: the type is decided from the first bytes before
anything is written, the size is counted as bytes arrive, and a rejected upload is aborted, so
nothing is stored. Presigned uploads are checked after the fact (HEAD for the size, a ranged GET for
the magic bytes) because the store may enforce none of the signed policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import structlog

from server import ratelimit
from server.deps import Deps
from server.errors import ApiError, bad_request
from server.media import store
from server.media.rules import Kind, base_mime, new_key, parse_key, user_prefix
from server.media.sniff import BY_MIME, SNIFF_BYTES, MediaType, sniff
from server.media.storage import MultipartUpload, Storage, StorageError
from server.media.urls import media_url
from server.presence import deck
from server.referrals import notifications as referral_notifications

log = structlog.get_logger(__name__)

PART_BYTES = 5 * 1024 * 1024  # S3's minimum part size: per-upload memory stays near this
PRESIGN_TTL_S = 300  # presigned POST/PUT lifetime (issue: <= 5 min)
TICKET_TTL_S = 3600  # how long an issued key may be confirmed
UPLOADS_PER_HOUR = 60  # per user: multipart uploads + presign requests
# Multipart uploads streamed at once per process (UPLOAD_SLOTS_PER_NODE): bounds memory at about this
# many part buffers.
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _upload_slots(count: int) -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _slots.get(loop)
    if sem is None:
        sem = _slots[loop] = asyncio.Semaphore(count)
    return sem


@contextlib.asynccontextmanager
async def _node_upload_slot(deps: Deps) -> AsyncIterator[None]:
    """One of this process's upload slots, waited for a bounded time (then 503: try again)."""
    sem = _upload_slots(deps.settings.upload_slots_per_node)
    wait = deps.settings.upload_slot_wait_seconds
    try:
        async with asyncio.timeout(wait):
            await sem.acquire()
    except TimeoutError:
        raise ApiError(503, "upload_busy", "Too many uploads in progress, try again shortly",
                       retryAfter=max(1, int(wait))) from None
    try:
        yield
    finally:
        sem.release()


@contextlib.asynccontextmanager
async def user_upload_slot(deps: Deps, user_id: UUID) -> AsyncIterator[None]:
    """One of the user's UPLOADS_PER_USER_CONCURRENT slots (across nodes), so that a few slow uploads
    of one account cannot take every slot of a node. 429 at once if all are held."""
    s = deps.settings
    key = f"media:uploading:{user_id}"
    # The TTL only matters if a node dies mid-upload: longer than any upload can take.
    if not await ratelimit.acquire_slot(deps.redis, key, s.uploads_per_user_concurrent,
                                        s.upload_max_seconds + 120):
        raise ApiError(429, "upload_in_progress", "Another upload is still in progress", retryAfter=5,
                       message="Wait for your other upload to finish.")
    try:
        yield
    finally:
        await asyncio.shield(ratelimit.release_slot(deps.redis, key))


# ---- errors (all JSON, 4xx for client mistakes: §6 D21) ----
def too_large(kind: Kind) -> ApiError:
    return ApiError(413, "file_too_large", f"File too large (max {kind.max_bytes // (1024 * 1024)} MB)",
                    maxBytes=kind.max_bytes)


def wrong_type(kind: Kind) -> ApiError:
    return ApiError(415, "unsupported_media_type", f"Unsupported file type for {kind.name}",
                    accepted=kind.mimes)


def no_file() -> ApiError:
    return bad_request("No file uploaded", code="no_file")


def empty_file() -> ApiError:
    return bad_request("Empty file", code="empty_file")


def storage_unavailable() -> ApiError:
    return ApiError(503, "storage_unavailable", "Upload failed: storage unavailable")


def upload_not_found() -> ApiError:
    return ApiError(404, "upload_not_found", "Upload not found")


async def check_rate(deps: Deps, user_id: UUID) -> None:
    window = await ratelimit.hit(deps.redis, f"media:{user_id}", 3600)
    if window.count > UPLOADS_PER_HOUR:
        raise ApiError(429, "rate_limited", "Too many uploads", retryAfter=window.retry_after_s,
                       message="Too many uploads, try again later.")


# ---- reading ----
def response(deps: Deps, kind: Kind, key: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {kind.url_field: media_url(deps, key)}
    if kind.name == "video":
        body["processing"] = False  # stored as uploaded: the URL is final at once
    return body


async def status(deps: Deps, user_id: UUID) -> dict[str, Any]:
    row = await store.keys(deps.db, user_id)
    return {
        "selfieUrl": media_url(deps, row["selfie_key"] if row else None),
        "videoUrl": media_url(deps, row["video_key"] if row else None),
        "processing": False,
    }


# ---- committing an accepted object ----
async def _commit(deps: Deps, storage: Storage, user_id: UUID, kind: Kind, key: str) -> dict[str, Any]:
    try:
        found, old = await store.swap_key(deps.db, user_id, kind.column, key)
    except Exception:
        await storage.delete_quietly(key)
        raise
    if not found:  # the account vanished mid-upload
        await storage.delete_quietly(key)
        raise ApiError(401, "unauthorized", "Invalid or expired session")
    if old and old != key:
        await storage.delete_quietly(old)
    await _sweep(deps, storage, user_id)
    log.info("media_stored", kind=kind.name, key=key, replaced=old)
    await deck.changed(deps, str(user_id))  # may make the user listable: no node keeps the old card
    if kind.name == "video":  # onboarding is complete: tell whoever this user was introduced to (E9)
        try:
            await referral_notifications.on_onboarded(deps, user_id)
        except Exception:
            log.exception("referral_notification_failed", user_id=str(user_id))
    return response(deps, kind, key)


async def _sweep(deps: Deps, storage: Storage, user_id: UUID) -> None:
    """Delete the user's stale objects that nothing references (e.g. presigned uploads never
    confirmed). Only keys older than any confirmable ticket, so uploads in flight are safe."""
    cutoff_ms = int((time.time() - TICKET_TTL_S - PRESIGN_TTL_S) * 1000)
    try:
        row = await store.keys(deps.db, user_id)
        current = {row["selfie_key"], row["video_key"]} if row else set()
        for key in await storage.list_keys(user_prefix(user_id)):
            parsed = parse_key(key)
            if key not in current and (parsed is None or parsed.ts_ms < cutoff_ms):
                await storage.delete_quietly(key)
    except StorageError:
        log.warning("media_sweep_failed", user_id=str(user_id), exc_info=True)


# ---- multipart (canonical path) ----
async def receive(deps: Deps, user_id: UUID, kind: Kind, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
    """Stream one uploaded file to S3; returns the response body."""
    storage = Storage(deps)
    async with _node_upload_slot(deps):
        try:
            key = await _stream(storage, user_id, kind, chunks)
        except StorageError:
            log.exception("media_upload_storage_error", kind=kind.name)
            raise storage_unavailable() from None
    return await _commit(deps, storage, user_id, kind, key)


async def _stream(storage: Storage, user_id: UUID, kind: Kind, chunks: AsyncIterator[bytes]) -> str:
    buf = bytearray()
    total = 0
    media: MediaType | None = None
    key = ""
    upload: MultipartUpload | None = None
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > kind.max_bytes:
                raise too_large(kind)
            buf += chunk
            if media is None and len(buf) >= SNIFF_BYTES:
                media = _accept(kind, buf)
                key = new_key(user_id, kind, media)
            if len(buf) >= PART_BYTES:
                assert media is not None
                if upload is None:
                    upload = await storage.start_multipart(key, media.mime)
                part, buf = buf, bytearray()  # hand the buffer over: no copy
                await upload.add_part(part)
                del part
        if total == 0:
            raise empty_file()
        if media is None:
            media = _accept(kind, buf)
            key = new_key(user_id, kind, media)
        if upload is None:
            await storage.put(key, buf, media.mime)
        else:
            if buf:
                await upload.add_part(buf)
            await upload.complete()
            upload = None
        return key
    finally:
        if upload is not None:  # rejected, failed or cancelled part-way: keep nothing
            await asyncio.shield(upload.abort())


def _accept(kind: Kind, head: bytes | bytearray) -> MediaType:
    media = sniff(bytes(head[:SNIFF_BYTES]))
    if media is None or not kind.accepts(media):
        raise wrong_type(kind)
    return media


# ---- presigned (E5) ----
def _ticket_key(key: str) -> str:
    return f"media:ticket:{key}"


async def issue_upload(deps: Deps, user_id: UUID, kind: Kind, content_type: str,
                       length: int) -> dict[str, Any]:
    media = BY_MIME.get(base_mime(content_type))
    if media is None or not kind.accepts(media):
        raise wrong_type(kind)
    if length > kind.max_bytes:
        raise too_large(kind)
    if length <= 0:
        raise empty_file()
    await check_rate(deps, user_id)
    storage = Storage(deps)
    key = new_key(user_id, kind, media)
    expires_at = int(time.time() * 1000) + PRESIGN_TTL_S * 1000
    post = storage.presign_post(key, media.mime, kind.max_bytes, PRESIGN_TTL_S)
    put_url, put_headers = storage.presign_put(key, media.mime, length, PRESIGN_TTL_S)
    ticket = json.dumps({"userId": str(user_id), "kind": kind.name, "mime": media.mime})
    await deps.redis.set(_ticket_key(key), ticket, ex=TICKET_TTL_S)
    return {
        "uploadUrl": post["url"],
        "method": "POST",
        "fields": post["fields"],  # send every field, then the file last, as multipart/form-data
        "key": key,
        "contentType": media.mime,
        "maxBytes": kind.max_bytes,
        "expiresAt": expires_at,
        # The E5 wire form: a PUT whose signature covers this exact Content-Length and Content-Type.
        "put": {"url": put_url, "method": "PUT", "headers": put_headers},
    }


async def confirm(deps: Deps, user_id: UUID, kind: Kind, key: str) -> dict[str, Any]:
    if not key.startswith(user_prefix(user_id)):
        raise ApiError(403, "forbidden", "Forbidden: not your upload")
    parsed = parse_key(key)
    if parsed is None or parsed.stem != kind.stem:
        raise bad_request("Invalid key", code="invalid_key")
    raw = await deps.redis.get(_ticket_key(key))
    ticket = json.loads(raw) if raw else None
    if not ticket or ticket.get("userId") != str(user_id) or ticket.get("kind") != kind.name:
        raise upload_not_found()
    storage = Storage(deps)
    try:
        info = await storage.head(key)
        if info is None:
            raise upload_not_found()  # not uploaded (yet): the ticket stays for a retry
        try:
            head = await storage.read_head(key, SNIFF_BYTES) if 0 < info.size <= kind.max_bytes else b""
            _check_object(kind, ticket["mime"], info.size, info.content_type, head)
        except ApiError:
            await storage.delete_quietly(key)
            await deps.redis.delete(_ticket_key(key))
            raise
    except StorageError:
        log.exception("media_confirm_storage_error", kind=kind.name)
        raise storage_unavailable() from None
    result = await _commit(deps, storage, user_id, kind, key)
    await deps.redis.delete(_ticket_key(key))
    return result


def _check_object(kind: Kind, declared: str, size: int, content_type: str, head: bytes) -> None:
    """The rules hold whatever the store enforced: size, magic bytes, and the served Content-Type."""
    if size == 0:
        raise empty_file()
    if size > kind.max_bytes:
        raise too_large(kind)
    media = _accept(kind, head)
    if media.mime != declared or base_mime(content_type) != media.mime:
        raise wrong_type(kind)
