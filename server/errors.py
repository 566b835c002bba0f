"""One error type for the whole API and the middleware that renders every error as JSON.

The `error` strings are the original server's: the unmodified client matches substrings of them
(PROTOCOL.md §1.3). `code` is our stable machine-readable addition (§7 E10).
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, /, **extra: Any) -> None:
        # Positional-only, so a `message=` keyword lands in the body's optional `message` field (§1.3).
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def response(self) -> web.Response:
        return web.json_response({"error": self.message, "code": self.code, **self.extra}, status=self.status)


# Shorthands for the errors many routes share.
def unauthorized(message: str = "Authorization required", /, **extra: Any) -> ApiError:
    return ApiError(401, "unauthorized", message, **extra)


def bad_request(message: str, /, code: str = "invalid_request", **extra: Any) -> ApiError:
    return ApiError(400, code, message, **extra)


def not_found(message: str = "Not found", code: str = "not_found") -> ApiError:
    return ApiError(404, code, message)


def rate_limited(message: str, retry_after: int, /, code: str = "rate_limited", **extra: Any) -> ApiError:
    return ApiError(429, code, message, retryAfter=retry_after, **extra)


def payment_required() -> ApiError:
    """For routes that need access (accounts/access.has_access)."""
    return ApiError(402, "payment_required", "Payment required", requiresPayment=True,
                    message="Unlock access with a payment or an invite code.")


_STORE_DOWN = (RedisConnectionError, RedisTimeoutError, asyncpg.PostgresConnectionError,
               asyncpg.InterfaceError, ConnectionRefusedError, TimeoutError)

_HTTP_CODES = {
    400: ("invalid_request", "Bad request"),
    401: ("unauthorized", "Authorization required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def _error(status: int) -> web.Response:
    code, message = _HTTP_CODES.get(status, ("http_error", "Error"))
    return web.json_response({"error": message, "code": code}, status=status)


def _servable(path: Path) -> int:
    """The status a FileResponse for `path` would answer with: 200, or 404/403 (empty bodies)."""
    try:
        mode = path.stat().st_mode
    except PermissionError:
        return 403
    except OSError:
        return 404
    return 200 if stat.S_ISREG(mode) else 403


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response = await handler(request)
        # A static FileResponse only discovers a missing file while it is being sent, and then answers
        # with an empty body: check first so that the client gets JSON like every other error.
        path = getattr(response, "_path", None)
        if isinstance(response, web.FileResponse) and isinstance(path, Path):
            status = await asyncio.to_thread(_servable, path)
            if status != 200:
                return _error(status)
        return response
    except ApiError as exc:
        resp = exc.response()
        if exc.status == 408:  # a body that stopped arriving: its rest is never read, so the connection ends
            resp.force_close()
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        resp = web.json_response({"error": message, "code": code}, status=exc.status, headers=headers)
        return resp
    except _STORE_DOWN as exc:  # Redis or Postgres unreachable: the client may retry, it is not a bug
        log.warning("store_unavailable", path=request.path, method=request.method, error=repr(exc))
        return web.json_response({"error": "Service temporarily unavailable", "code": "unavailable"},
                                 status=503, headers={"Retry-After": "2"})
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return web.json_response({"error": "Internal server error", "code": "internal"}, status=500)
