"""The node's collector policy (server/ops/heap.py): startup objects frozen, every pause measured."""

import gc
import weakref

import pytest
from prometheus_client import REGISTRY

from server.ops import heap


def _pauses(generation: str) -> float:
    return REGISTRY.get_sample_value("napalm_gc_pause_seconds_count", {"generation": generation}) or 0.0


@pytest.fixture
def clean_callbacks():
    before = list(gc.callbacks)
    yield
    gc.callbacks[:] = before


def test_each_collection_is_measured_once_by_generation(clean_callbacks):
    heap.measure_pauses()
    heap.measure_pauses()  # a second install (a second app in one process) does not count twice
    assert sum(isinstance(cb, heap.PauseClock) for cb in gc.callbacks) == 1
    gc.disable()  # only the collections below (other threads of the test process allocate too)
    try:
        full, young = _pauses("2"), _pauses("0")
        gc.collect()
        gc.collect(0)
        assert _pauses("2") == full + 1
        assert _pauses("0") == young + 1
    finally:
        gc.enable()
    assert REGISTRY.get_sample_value("napalm_gc_pause_seconds_sum", {"generation": "2"}) > 0


async def test_startup_objects_leave_the_collectors_reach_and_startup_garbage_is_freed_first():
    class Thing:  # objects made while starting, each in a reference cycle
        pass

    kept, dropped = Thing(), Thing()
    kept.me, dropped.me = kept, dropped  # type: ignore[attr-defined]
    gone = weakref.ref(dropped)
    del dropped  # garbage only a collection frees: it must not be frozen forever
    gc.disable()  # no automatic collection may free it before the hook does
    try:
        await heap.freeze_startup_heap(None)  # type: ignore[arg-type]
        assert gone() is None
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # full collections no longer walk it
    finally:
        gc.unfreeze()
        gc.enable()
    assert any(o is kept for o in gc.get_objects())
