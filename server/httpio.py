"""Request parsing shared by every route: JSON bodies checked against a JSON Schema, request bodies
bounded in size and time, client IP (and the per-address key limits count under).

Schemas may carry an `x-error` message on a property: a missing or invalid property then answers
with that exact text (the original client matches some error strings, PROTOCOL.md §1.3).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from aiohttp import web
from jsonschema import Draft202012Validator

from server.deps import SETTINGS
from server.errors import ApiError, bad_request

# The authenticated user of a request, set by the auth function and read by the access log.
USER_ID = web.RequestKey("user_id", UUID)

T = TypeVar("T")
Handler = TypeVar("Handler", bound=Callable[..., Any])

_validators: dict[int, Draft202012Validator] = {}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    v = _validators.get(id(schema))
    if v is None:
        Draft202012Validator.check_schema(schema)
        v = _validators[id(schema)] = Draft202012Validator(schema)
    return v


def _message(err: Any) -> str:
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else ""
        prop = err.schema.get("properties", {}).get(missing, {})
        return prop.get("x-error") or f"{missing} is required"
    if "x-error" in err.schema:
        return str(err.schema["x-error"])
    where = ".".join(str(p) for p in err.absolute_path) or "body"
    return f"Invalid {where}"


def _storable(value: Any) -> bool:
    """False if any string (key or value) holds NUL or a lone surrogate: valid JSON escapes
    (\\u0000, \\ud800) that Postgres text and UTF-8 cannot hold (they would surface as 500s)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return False
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def validate(data: Any, schema: dict[str, Any]) -> None:
    v = _validator(schema)
    if v.is_valid(data):  # the common case, without collecting and sorting errors
        return
    err = next(iter(sorted(v.iter_errors(data), key=lambda e: len(e.absolute_path))), None)
    if err is not None:
        raise bad_request(_message(err), code="validation_failed")


# ---- request bodies: bounded in size (at once, from Content-Length) and in time ----

def payload_too_large() -> ApiError:
    return ApiError(413, "payload_too_large", "Request body too large")


def body_timeout() -> ApiError:
    """408; error_middleware closes the connection (the rest of the body is never read)."""
    return ApiError(408, "body_timeout", "Request body not received in time")


def body_limit(max_bytes: int, error: Callable[[], ApiError] = payload_too_large) -> Callable[[Handler], Handler]:
    """Mark a route that takes bodies larger than the app's client_max_size (uploads). `body_guard`
    refuses a larger Content-Length with `error()` before the handler runs."""
    def mark(handler: Handler) -> Handler:
        handler.body_limit = (max_bytes, error)  # type: ignore[attr-defined]
        return handler
    return mark


@web.middleware
async def body_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """A declared Content-Length over the route's limit is refused at once: otherwise the read would
    wait for bytes that may never come (`Content-Length: 99999999999`)."""
    length = request.content_length
    if length is not None and request.match_info.http_exception is None \
            and not request.path.startswith("/socket.io/"):  # python-socketio bounds its own bodies
        max_bytes, error = getattr(request.match_info.handler, "body_limit",
                                   (request.client_max_size, payload_too_large))
        if length > max_bytes:
            raise error()
    return await handler(request)


class BodyClock:
    """Bounds the reads of one request body in time: `idle_s` without progress, `total_s` in all.
    aiohttp has no body-read timeout of its own (only keep-alive, between requests)."""

    def __init__(self, idle_s: float, total_s: float) -> None:
        self.idle_s = idle_s
        self.end = time.monotonic() + total_s

    async def read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        left = min(self.idle_s, self.end - time.monotonic())
        if left <= 0:
            raise body_timeout()
        try:
            async with asyncio.timeout(left):
                return await fn(*args)
        except TimeoutError:
            raise body_timeout() from None


async def read_body(request: web.Request) -> bytes:
    """The whole body, within BODY_READ_TIMEOUT_SECONDS (408) and client_max_size (413)."""
    timeout = request.config_dict[SETTINGS].body_read_timeout_seconds
    return await BodyClock(timeout, timeout).read(request.read)


async def read_json(request: web.Request, schema: dict[str, Any]) -> dict[str, Any]:
    """Parse the body as a JSON object (an empty body counts as `{}`, §1.1) and validate it."""
    raw = await read_body(request)  # bounded by client_max_size -> 413, and in time -> 408
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("Invalid JSON body", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("JSON body must be an object", code="invalid_json")
    if not _storable(data):
        raise bad_request("Invalid characters in JSON body", code="invalid_json")
    validate(data, schema)
    return data


def client_ip(request: web.Request, trusted_hops: int) -> str | None:
    """The caller's IP. With N trusted proxies in front, it is the Nth X-Forwarded-For entry from
    the right (entries further left are client-controlled and spoofable, §6 D10)."""
    ip = request.remote
    if trusted_hops > 0:
        chain = [p.strip() for p in request.headers.get("X-Forwarded-For", "").split(",") if p.strip()]
        if len(chain) >= trusted_hops:
            ip = chain[-trusted_hops]
    try:
        return str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        return None


def ip_scope(ip: str | None) -> str:
    """The key per-address limits count under: an IPv4 address as is, an IPv6 address by its /64
    (one subscriber is handed a whole /64, so limits per single IPv6 address are free to dodge), an
    IPv4-mapped IPv6 address as its IPv4 address. Unknown or unparsable: "unknown" (one shared key)."""
    try:
        addr = ipaddress.ip_address(ip or "")
    except ValueError:
        return "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "bearer":  # "Bearer" alone (trailing space stripped in transit) is no token
        header = rest.strip()
    return header or None


__all__ = ["USER_ID", "ApiError", "BodyClock", "bearer_token", "body_guard", "body_limit", "body_timeout",
           "client_ip", "ip_scope", "read_body", "read_json", "validate"]
