async def test_health_is_ok_without_dependencies(client):
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and isinstance(body["timestamp"], int)


async def test_ready_checks_postgres_redis_and_migrations(client):
    resp = await client.get("/ready")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready",
                                 "checks": {"postgres": "ok", "migrations": "ok", "redis": "ok",
                                                         "pubsub": "ok"}}
