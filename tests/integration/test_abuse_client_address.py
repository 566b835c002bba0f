"""Client addresses behind a proxy (issue 12, item 10): the server says once when requests come
through a proxy it does not trust, and per-address limits count an IPv6 client by its /64."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from server.app import create_app
from tests.conftest import reset_state


async def _app(aiohttp_client, settings):
    await reset_state(settings)
    return await aiohttp_client(create_app(settings))


async def _signup(client, xff):
    resp = await client.post("/auth/guest", json={"name": "Ada", "gender": "female"},
                             headers={"X-Forwarded-For": xff})
    return resp.status


async def test_untrusted_proxy_is_reported_once(aiohttp_client, base_settings):
    client = await _app(aiohttp_client, base_settings.with_(trusted_proxy_hops=0))
    with capture_logs() as logs:
        assert (await client.get("/stats/live")).status == 200  # no proxy header: nothing to say
        assert not [e for e in logs if e["event"] == "proxy_hops_not_configured"]
        for _ in range(3):
            await client.get("/stats/live", headers={"X-Forwarded-For": "198.51.100.7"})
    warnings = [e for e in logs if e["event"] == "proxy_hops_not_configured"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert "TRUSTED_PROXY_HOPS" in warnings[0]["hint"]


async def test_trusted_proxy_is_not_reported(aiohttp_client, base_settings):
    client = await _app(aiohttp_client, base_settings.with_(trusted_proxy_hops=1))
    with capture_logs() as logs:
        await client.get("/stats/live", headers={"X-Forwarded-For": "198.51.100.7"})
    assert not [e for e in logs if e["event"] == "proxy_hops_not_configured"]


@pytest.fixture
def limited(base_settings):
    return base_settings.with_(trusted_proxy_hops=1, guest_signups_per_ip_per_hour=2)


async def test_ipv6_clients_are_limited_per_64(aiohttp_client, limited):
    client = await _app(aiohttp_client, limited)
    # Two addresses of one /64 share one budget (a subscriber holds the whole /64).
    assert await _signup(client, "2001:db8:1:2::1") == 200
    assert await _signup(client, "2001:db8:1:2:ffff:ffff:ffff:fffe") == 200
    assert await _signup(client, "2001:db8:1:2::3") == 429
    # The neighbouring /64 is someone else.
    assert await _signup(client, "2001:db8:1:3::1") == 200


async def test_ipv4_clients_are_limited_per_address(aiohttp_client, limited):
    client = await _app(aiohttp_client, limited)
    for _ in range(2):
        assert await _signup(client, "198.51.100.7") == 200
    assert await _signup(client, "198.51.100.7") == 429
    assert await _signup(client, "::ffff:198.51.100.7") == 429  # the same IPv4 client, IPv4-mapped
    assert await _signup(client, "198.51.100.8") == 200
