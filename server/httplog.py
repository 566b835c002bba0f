"""Malformed HTTP requests are logged briefly and at a bounded rate.

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
import time

import structlog
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger("http")
MESSAGE_CHARS = 120  # of the parser's message (it may quote the offending bytes)


class BadRequestLogFilter(logging.Filter):
    def __init__(self, per_minute: int) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.window = 0
        self.logged = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # anything else aiohttp logs is kept as it is
        window = int(time.monotonic() // 60)
        if window != self.window:
            self.window, self.logged = window, 0
        if self.logged >= self.per_minute:
            self.suppressed += 1
            return False
        self.logged += 1
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
        message = str(getattr(exc, "message", "") or exc).splitlines()[0][:MESSAGE_CHARS] if str(exc) else ""
        log.warning("bad_http_request", status=getattr(exc, "code", 400), error=type(exc).__name__,
                    detail=message, remote=remote, suppressed=self.suppressed)
        self.suppressed = 0
        return False


def install(per_minute: int) -> BadRequestLogFilter:
    """Attach the filter to aiohttp's server logger (once per process; a second call replaces it)."""
    logger = logging.getLogger("aiohttp.server")
    for old in [f for f in logger.filters if isinstance(f, BadRequestLogFilter)]:
        logger.removeFilter(old)
    flt = BadRequestLogFilter(per_minute)
    logger.addFilter(flt)
    return flt
