"""The S3 bucket: every blocking boto3 call runs on a dedicated thread pool, off the event loop.

A separate pool (not asyncio.to_thread's default one) keeps long part uploads from starving other
blocking work in the process, such as bcrypt.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from server.deps import Deps

log = structlog.get_logger(__name__)

T = TypeVar("T")
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="s3")
CACHE_CONTROL = "max-age=31536000, immutable"  # a key is never rewritten: each upload gets a new one
StorageError = (BotoCoreError, ClientError)


async def _run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args, **kwargs))


def _is_missing(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    return str(err.get("Code")) in {"404", "NoSuchKey", "NotFound"} or \
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    content_type: str


class Storage:
    def __init__(self, deps: Deps) -> None:
        s = deps.settings
        self.s3 = deps.s3
        self.bucket = s.s3_bucket
        self.sse = s.s3_sse

    def _sse(self) -> dict[str, str]:
        return {"ServerSideEncryption": self.sse} if self.sse else {}

    async def put(self, key: str, body: bytes | bytearray, content_type: str) -> None:
        await _run(self.s3.put_object, Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
                   CacheControl=CACHE_CONTROL, **self._sse())

    async def start_multipart(self, key: str, content_type: str) -> MultipartUpload:
        resp = await _run(self.s3.create_multipart_upload, Bucket=self.bucket, Key=key,
                          ContentType=content_type, CacheControl=CACHE_CONTROL, **self._sse())
        return MultipartUpload(self, key, resp["UploadId"])

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = await _run(self.s3.head_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return ObjectInfo(int(resp["ContentLength"]), str(resp.get("ContentType") or ""))

    async def read_head(self, key: str, n: int) -> bytes:
        """The first `n` bytes (a ranged GET: the object itself is never downloaded)."""
        def read() -> bytes:
            resp = self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{n - 1}")
            with resp["Body"] as body:
                return bytes(body.read(n))
        return await _run(read)

    async def delete(self, key: str) -> None:
        await _run(self.s3.delete_object, Bucket=self.bucket, Key=key)

    async def delete_quietly(self, key: str) -> None:
        """Best effort: a leftover object is garbage, never a reason to fail the request."""
        try:
            await self.delete(key)
        except StorageError:
            log.warning("media_delete_failed", key=key, exc_info=True)

    async def list_keys(self, prefix: str) -> list[str]:
        def list_all() -> list[str]:
            keys: list[str] = []
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
            return keys
        return await _run(list_all)

    async def delete_prefix(self, prefix: str) -> list[str]:
        """Delete every object under `prefix` and abort its unfinished multipart uploads (which hold
        stored parts too); returns whatever is still listed afterwards (empty on success)."""
        def purge() -> list[str]:
            uploads = self.s3.get_paginator("list_multipart_uploads")
            for page in uploads.paginate(Bucket=self.bucket, Prefix=prefix):
                for up in page.get("Uploads", []):
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
            objects = self.s3.get_paginator("list_objects_v2")
            for page in objects.paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            left = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=10)
            return [o["Key"] for o in left.get("Contents", [])]
        return await _run(purge)

    # Signing is local computation (no network call), so it runs inline.
    def presign_post(self, key: str, content_type: str, max_bytes: int, expires_in: int) -> dict[str, Any]:
        fields: dict[str, str] = {"Content-Type": content_type}
        conditions: list[Any] = [{"Content-Type": content_type}, ["content-length-range", 1, max_bytes]]
        if self.sse:
            fields["x-amz-server-side-encryption"] = self.sse
            conditions.append({"x-amz-server-side-encryption": self.sse})
        return dict(self.s3.generate_presigned_post(self.bucket, key, Fields=fields, Conditions=conditions,
                                                    ExpiresIn=expires_in))

    def presign_put(self, key: str, content_type: str, length: int,
                    expires_in: int) -> tuple[str, dict[str, str]]:
        """A PUT URL whose signature covers the exact Content-Length and Content-Type."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentType": content_type,
                                  "ContentLength": length, **self._sse()}
        url = self.s3.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in)
        headers = {"Content-Type": content_type}
        if self.sse:
            headers["x-amz-server-side-encryption"] = self.sse
        return str(url), headers


class MultipartUpload:
    def __init__(self, storage: Storage, key: str, upload_id: str) -> None:
        self.storage = storage
        self.key = key
        self.upload_id = upload_id
        self.parts: list[dict[str, Any]] = []

    async def add_part(self, data: bytes | bytearray) -> None:
        st = self.storage
        number = len(self.parts) + 1
        resp = await _run(st.s3.upload_part, Bucket=st.bucket, Key=self.key, UploadId=self.upload_id,
                          PartNumber=number, Body=data)
        self.parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    async def complete(self) -> None:
        st = self.storage
        await _run(st.s3.complete_multipart_upload, Bucket=st.bucket, Key=self.key, UploadId=self.upload_id,
                   MultipartUpload={"Parts": self.parts})

    async def abort(self) -> None:
        st = self.storage
        try:
            await _run(st.s3.abort_multipart_upload, Bucket=st.bucket, Key=self.key, UploadId=self.upload_id)
        except StorageError:
            log.warning("media_abort_failed", key=self.key, exc_info=True)
