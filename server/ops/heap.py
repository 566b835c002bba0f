"""The node process's garbage collector: what it walks and how long it stops the node.

CPython's full collection walks every tracked object and stops the event loop while it does: on a
node under load (130k objects, most of them made while starting: modules, compiled schemas, store
clients) each took 50-150 ms, and every call setup in flight waited that long. What a node builds
before it serves lives as long as the process, so it is moved out of the collector's reach once
(`gc.freeze`); full collections then walk only what serving made. Every pause is measured
(`napalm_gc_pause_seconds`), so a tail that comes back shows where it comes from.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import structlog
from aiohttp import web

from server.ops.metrics import GC_PAUSE

log = structlog.get_logger(__name__)


class PauseClock:
    """gc callback: observes each collection's duration by generation."""

    def __init__(self) -> None:
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - self._started)


def measure_pauses() -> None:
    if not any(isinstance(cb, PauseClock) for cb in gc.callbacks):
        gc.callbacks.append(PauseClock())


async def freeze_startup_heap(_app: web.Application) -> None:
    """on_startup, after every other startup step: collect what starting left as garbage, then freeze
    the rest (it is reachable and stays so)."""
    gc.collect()
    gc.freeze()
    log.info("heap_frozen", objects=gc.get_freeze_count())
