"""The migration runner on real Postgres: empty database, idempotence, concurrent appliers, failures;
and /ready answering 503 while a migration is pending."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from server.db import ensure_database, load_migrations, migrate, pending_migrations

ALL = [m.version for m in load_migrations()]


def _dsn(settings, name: str) -> str:
    base, _, _ = settings.database_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def fresh_db(base_settings):
    """A brand-new empty database on the test server; dropped afterwards."""
    created: list[str] = []

    async def make() -> str:
        name = f"mig_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(_dsn(base_settings, "postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        created.append(name)
        return _dsn(base_settings, name)

    yield make
    admin = await asyncpg.connect(_dsn(base_settings, "postgres"))
    try:
        for name in created:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    finally:
        await conn.close()


async def _applied(dsn: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY 1")
        return [(r["version"], r["n"]) for r in rows]
    finally:
        await conn.close()


def test_migration_files_are_numbered_and_ordered():
    assert ALL and ALL[0] == "0001"
    assert ALL == sorted(ALL) and len(set(ALL)) == len(ALL)
    assert all(len(v) == 4 and v.isdigit() for v in ALL)


async def test_applies_to_an_empty_database_and_reapplying_is_a_noop(fresh_db):
    dsn = await fresh_db()
    assert await _tables(dsn) == set()
    assert await migrate(dsn) == ALL
    tables = await _tables(dsn)
    expected = {"schema_migrations", "users", "sessions", "call_history", "cooldowns", "invite_codes",
                "invite_code_redemptions", "reports", "ban_records", "ip_bans", "referral_codes",
                "referral_notifications", "payments", "stripe_events", "audit_log"}
    assert expected <= tables
    assert await _applied(dsn) == [(v, 1) for v in ALL]
    assert await migrate(dsn) == []
    assert await migrate(dsn) == []
    assert await _applied(dsn) == [(v, 1) for v in ALL]
    assert await _tables(dsn) == tables


async def test_four_concurrent_appliers_all_succeed_and_apply_each_version_once(fresh_db):
    dsn = await fresh_db()
    results = await asyncio.gather(*[migrate(dsn) for _ in range(4)])
    assert sorted(results, key=len, reverse=True) == [ALL, [], [], []]
    assert await _applied(dsn) == [(v, 1) for v in ALL]


async def test_a_failing_migration_rolls_back_and_releases_the_lock(fresh_db, tmp_path: Path):
    dsn = await fresh_db()
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE b (id int); SELECT no_such_function();")
    (tmp_path / "README.md").write_text("not a migration")
    (tmp_path / "12_bad_name.sql").write_text("not a migration either")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(dsn, tmp_path)
    assert await _applied(dsn) == [("0001", 1)]
    assert await _tables(dsn) == {"schema_migrations", "a"}  # 0002's table b was rolled back
    # The lock was released: the fixed migration applies at once.
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE b (id int);")
    assert await asyncio.wait_for(migrate(dsn, tmp_path), 10) == ["0002"]
    assert await _tables(dsn) == {"schema_migrations", "a", "b"}


async def test_an_edited_applied_migration_is_not_reapplied(fresh_db, tmp_path: Path):
    dsn = await fresh_db()
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id int);")
    assert await migrate(dsn, tmp_path) == ["0001"]
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id int); -- edited")
    assert await migrate(dsn, tmp_path) == []


async def test_pending_migrations_on_empty_and_current_databases(fresh_db):
    from server.db import create_pool

    dsn = await fresh_db()
    pool = await create_pool(dsn, 1, 2)
    try:
        assert await pending_migrations(pool) == ALL
        await migrate(dsn)
        assert await pending_migrations(pool) == []
    finally:
        await pool.close()


async def test_ensure_database_creates_once(base_settings):
    name = f"ens_{uuid.uuid4().hex[:12]}"
    dsn = _dsn(base_settings, name)
    try:
        await ensure_database(dsn)
        await ensure_database(dsn)  # exists already: no error
        conn = await asyncpg.connect(dsn)
        await conn.close()
    finally:
        admin = await asyncpg.connect(_dsn(base_settings, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def ops_app(base_settings, aiohttp_client):
    """Only the ops routes over real Postgres/Redis clients: /ready's own logic, whatever the other
    domains need at startup (the full app refuses to start on an empty database)."""
    from aiohttp import web

    from server.db import create_pool
    from server.deps import DEPS, Deps
    from server.errors import error_middleware
    from server.ops.routes import routes
    from server.redis import create_redis

    made = []

    async def make(database_url: str, redis_url: str):
        app = web.Application(middlewares=[error_middleware])
        app.add_routes(routes)
        pool = await create_pool(database_url, 1, 2)
        redis = create_redis(redis_url)
        made.append((pool, redis))
        app[DEPS] = Deps(settings=base_settings, db=pool, redis=redis, s3=None)
        return await aiohttp_client(app)

    yield make
    for pool, redis in made:
        await redis.aclose()
        await pool.close()


async def test_ready_is_503_on_an_empty_database(fresh_db, base_settings, ops_app):
    dsn = await fresh_db()
    client = await ops_app(dsn, base_settings.redis_url)
    resp = await client.get("/ready")
    assert resp.status == 503
    body = await resp.json()
    assert body == {"status": "not_ready", "checks": {"postgres": "ok", "redis": "ok", "pubsub": "ok",
                                                      "migrations": "pending: " + ", ".join(ALL)}}
    assert (await client.get("/health")).status == 200  # liveness does not depend on the schema
    await migrate(dsn)
    resp = await client.get("/ready")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"


async def test_ready_is_503_when_redis_is_unreachable(base_settings, ops_app):
    from server.stack import free_port

    client = await ops_app(base_settings.database_url, f"redis://127.0.0.1:{free_port()}/0")
    resp = await client.get("/ready")
    assert resp.status == 503
    body = await resp.json()
    assert body["checks"]["postgres"] == "ok" and body["checks"]["migrations"] == "ok"
    assert body["checks"]["redis"].startswith("error")


async def test_full_app_ready_is_503_while_a_new_migration_is_pending(fresh_db, base_settings, aiohttp_client):
    # A deploy that ships a migration not yet applied: the newest version is missing from the table.
    from server.app import create_app

    dsn = await fresh_db()
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", ALL[-1])
        client = await aiohttp_client(create_app(base_settings.with_(database_url=dsn)))
        resp = await client.get("/ready")
        assert resp.status == 503
        assert (await resp.json())["checks"]["migrations"] == f"pending: {ALL[-1]}"
        await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, 'x', 'x')",
                           ALL[-1])
        resp = await client.get("/ready")
        assert resp.status == 200
    finally:
        await conn.close()
