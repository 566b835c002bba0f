"""A finished test app must not stay alive in the test process. aiohttp caches each route's middleware
chain in a module-level LRU cache keyed by the app; without tests/conftest.py's release_finished_apps a
worker kept hundreds of apps (pools, Socket.IO server, boto3 client each), and full garbage
collections of that heap blocked the shared event loop for seconds mid-test (a realtime wait of 5 s
failed in test_accounts_delete while an invite sat behind one)."""

from __future__ import annotations

import gc
import weakref

from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.conftest import release_finished_apps, reset_state


async def _served_and_closed(settings) -> weakref.ref:
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        resp = await client.get("/health")
        assert resp.status == 200
        await resp.release()
        return weakref.ref(client.app)
    finally:
        await client.close()


async def test_a_finished_app_is_released(settings):
    await reset_state(settings)
    first = await _served_and_closed(settings)
    await _served_and_closed(settings)  # takes over what a node keeps per process (the metrics source)
    release_finished_apps()
    gc.collect()
    kept = first()
    assert kept is None, f"a closed app is still referenced by {[type(r).__name__ for r in gc.get_referrers(kept)]}"
