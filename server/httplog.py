"""Malformed HTTP requests (and Engine.IO / Socket.IO frames) are logged briefly and at a bounded rate.

aiohttp answers a request its parser rejects (bad request line, header, chunk framing, ...) with a
400 before any application code runs, and logs it on the `aiohttp.server` logger as an error with a
full traceback (~2 KB per one-line request: free log amplification for anyone). This filter turns
those records into one short structured line each, at most `per_minute` per process, and counts the
rest into the next line's `suppressed`.

Why the 400 itself stays text/plain: aiohttp builds it in `RequestHandler.handle_error`, outside the
middleware chain, with the content type fixed; changing it would mean subclassing aiohttp's private
server classes (`AppRunner._make_server`, `Server.__call__`), which change between minor versions.
Clients never send such requests, and the proxy in front answers most of them itself.
"""

from __future__ import annotations

import logging
import os
import time

import structlog
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger("http")
MESSAGE_CHARS = 120  # of the parser's message (it may quote the offending bytes)


class _Budget(logging.Filter):
    """At most `per_minute` brief lines per process; the rest are counted into the next line."""

    def __init__(self, per_minute: int) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.window = 0
        self.logged = 0
        self.suppressed = 0

    def spend(self) -> int | None:
        """None: over budget (counted). Otherwise how many were suppressed before this one."""
        window = int(time.monotonic() // 60)
        if window != self.window:
            self.window, self.logged = window, 0
        if self.logged >= self.per_minute:
            self.suppressed += 1
            return None
        self.logged += 1
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


def _detail(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc)
    return text.splitlines()[0][:MESSAGE_CHARS] if text else ""


class BadRequestLogFilter(_Budget):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # anything else aiohttp logs is kept as it is
        suppressed = self.spend()
        if suppressed is None:
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        log.warning("bad_http_request", status=getattr(exc, "code", 400), error=type(exc).__name__,
                    detail=_detail(exc), remote=remote, suppressed=suppressed)
        return False


_SERVER_PKG = os.path.dirname(os.path.abspath(__file__)) + os.sep


class BadFrameLogFilter(_Budget):
    """python-engineio / python-socketio log a full traceback for every packet they cannot parse
    ("message async handler error", "post request handler error": ~2.8 KB per one-byte frame). An
    exception raised entirely inside those libraries is malformed client input: one brief line, at
    a bounded rate. An exception that passed through this project's code keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.startswith(_SERVER_PKG):
                return True  # our bug, not the client's: keep it whole
            tb = tb.tb_next
        suppressed = self.spend()
        if suppressed is None:
            return False
        log.warning("bad_socket_frame", where=record.getMessage()[:60], error=type(exc).__name__,
                    detail=_detail(exc), suppressed=suppressed)
        return False


def install(per_minute: int) -> BadRequestLogFilter:
    """Attach the filter to aiohttp's server logger (once per process; a second call replaces it)."""
    logger = logging.getLogger("aiohttp.server")
    for old in [f for f in logger.filters if isinstance(f, BadRequestLogFilter)]:
        logger.removeFilter(old)
    flt = BadRequestLogFilter(per_minute)
    logger.addFilter(flt)
    return flt


def install_frames(per_minute: int) -> BadFrameLogFilter:
    """The same for malformed Engine.IO / Socket.IO input (one budget for both libraries' loggers)."""
    flt = BadFrameLogFilter(per_minute)
    for name in ("engineio.server", "socketio.server"):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, BadFrameLogFilter)]:
            logger.removeFilter(old)
        logger.addFilter(flt)
    return flt
