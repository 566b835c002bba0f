"""Periodic per-node work (retrying account deletions, lifting timed bans, reconciling payments):
one loop shape, run for the app's lifetime and cancelled with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog

log = structlog.get_logger(__name__)


@asynccontextmanager
async def every(seconds: float, job: Callable[[], Awaitable[object]], name: str) -> AsyncIterator[None]:
    """Run `job` every `seconds` while the context is open. A failed run is logged and the next one
    comes at its time: a job must be idempotent and narrow its own expected errors."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                log.exception("periodic_job_failed", job=name)

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
