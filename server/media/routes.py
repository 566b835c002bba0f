"""HTTP: /media/* (PROTOCOL.md §2.3, §7 E5).

Multipart bodies are read part by part with request.multipart(), which the app's 64 KB
client_max_size does not bound, so these routes enforce their own limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, web
from aiohttp.client_exceptions import ClientPayloadError

from server.accounts.sessions import require_user
from server.deps import deps_of
from server.errors import ApiError, bad_request
from server.httpio import BodyClock, body_limit, read_json
from server.media import service
from server.media.rules import KINDS, SELFIE, VIDEO, Kind

routes = web.RouteTableDef()

CHUNK_BYTES = 256 * 1024
ENVELOPE_BYTES = 256 * 1024  # multipart boundaries and part headers on top of the file itself
OTHER_FIELDS_BYTES = 64 * 1024  # total for parts other than the file (the client sends none)

KIND_PROP = {"enum": list(KINDS), "x-error": "kind must be selfie or video"}
UPLOAD_URL_SCHEMA = {
    "type": "object",
    "required": ["kind", "contentType", "contentLength"],
    "properties": {
        "kind": KIND_PROP,
        "contentType": {"type": "string", "minLength": 1, "maxLength": 200,
                        "x-error": "contentType is required"},
        "contentLength": {"type": "integer", "x-error": "contentLength must be an integer"},
    },
}
CONFIRM_SCHEMA = {
    "type": "object",
    "required": ["kind", "key"],
    "properties": {"kind": KIND_PROP, "key": {"type": "string", "minLength": 1, "maxLength": 512,
                                               "x-error": "key is required"}},
}


def _malformed() -> ApiError:
    return bad_request("Malformed multipart body", code="malformed_multipart")


async def _chunks(part: BodyPartReader, clock: BodyClock) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await clock.read(part.read_chunk, CHUNK_BYTES)
        except (ValueError, AssertionError):
            raise _malformed() from None
        except (ClientPayloadError, ConnectionError):
            raise bad_request("Upload interrupted", code="upload_interrupted") from None
        if not chunk:
            return
        yield chunk


async def _file_part(request: web.Request, kind: Kind, clock: BodyClock) -> BodyPartReader:
    """The part named after the kind; other parts are skipped, within a small budget."""
    if not request.content_type.startswith("multipart/"):
        raise service.no_file()
    try:
        reader = await request.multipart()
        skipped = 0
        while True:
            part = await clock.read(reader.next)
            if part is None:
                raise service.no_file()
            if not isinstance(part, BodyPartReader):
                raise _malformed()  # nested multipart
            if part.name == kind.name:
                return part
            while chunk := await clock.read(part.read_chunk, 8192):
                skipped += len(chunk)
                if skipped > OTHER_FIELDS_BYTES:
                    raise ApiError(413, "payload_too_large", "Too much form data besides the file")
    except (ValueError, AssertionError, KeyError):
        raise _malformed() from None
    except (ClientPayloadError, ConnectionError):
        raise bad_request("Upload interrupted", code="upload_interrupted") from None


async def _multipart_upload(request: web.Request, kind: Kind) -> web.Response:
    principal = await require_user(request)
    deps = deps_of(request)
    await service.check_rate(deps, principal.user_id)
    s = deps.settings
    # Reading the body is bounded in time (slow or stalled uploads end with 408 and free their slots).
    clock = BodyClock(s.upload_idle_timeout_seconds, s.upload_max_seconds)
    async with service.user_upload_slot(deps, principal.user_id):
        part = await _file_part(request, kind, clock)
        return web.json_response(await service.receive(deps, principal.user_id, kind, _chunks(part, clock)))


@routes.post("/media/selfie")
@body_limit(SELFIE.max_bytes + ENVELOPE_BYTES, lambda: service.too_large(SELFIE))
async def upload_selfie(request: web.Request) -> web.Response:
    return await _multipart_upload(request, SELFIE)


@routes.post("/media/video")
@body_limit(VIDEO.max_bytes + ENVELOPE_BYTES, lambda: service.too_large(VIDEO))
async def upload_video(request: web.Request) -> web.Response:
    return await _multipart_upload(request, VIDEO)


@routes.post("/media/upload-url")
async def upload_url(request: web.Request) -> web.Response:
    principal = await require_user(request)
    body = await read_json(request, UPLOAD_URL_SCHEMA)
    result = await service.issue_upload(deps_of(request), principal.user_id, KINDS[body["kind"]],
                                        body["contentType"], body["contentLength"])
    return web.json_response(result)


@routes.post("/media/confirm")
async def confirm(request: web.Request) -> web.Response:
    principal = await require_user(request)
    body = await read_json(request, CONFIRM_SCHEMA)
    return web.json_response(await service.confirm(deps_of(request), principal.user_id, KINDS[body["kind"]],
                                                   body["key"]))


@routes.get("/media/status")
async def media_status(request: web.Request) -> web.Response:
    principal = await require_user(request)
    return web.json_response(await service.status(deps_of(request), principal.user_id))
