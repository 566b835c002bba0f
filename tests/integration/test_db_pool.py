"""The Postgres pool (server/db.py): a release costs no round trip, and a transaction left open is
still rolled back before the connection serves anyone else."""

import pytest

from server.db import create_pool


@pytest.fixture
async def pool(base_settings):
    p = await create_pool(base_settings.database_url, 1, 1)  # one connection: every acquire gets it back
    yield p
    await p.close()


async def test_a_release_sends_nothing_to_postgres(pool):
    sent: list[str] = []
    async with pool.acquire() as conn:
        conn.add_query_logger(lambda record: sent.append(record.query))
        assert await conn.fetchval("SELECT 1") == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 2") == 2
    assert sent == ["SELECT 1", "SELECT 2"]  # no reset query between them


async def test_a_transaction_left_open_is_rolled_back_on_release(pool):
    conn = await pool.acquire()
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS pool_probe (n int)")
    tx = conn.transaction()
    await tx.start()  # never committed: a handler that failed between start and commit
    await conn.execute("INSERT INTO pool_probe VALUES (1)")
    await pool.release(conn)
    async with pool.acquire() as again:
        assert not again.is_in_transaction()
        assert await again.fetchval("SELECT count(*) FROM pool_probe") == 0
