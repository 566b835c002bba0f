"""Postgres pool and the migration runner.

Migrations are `schema/NNNN_name.sql`, applied in order, each once, each in its own transaction.
A session-level advisory lock serialises nodes that start together.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from server.ops.metrics import observe_pg

log = structlog.get_logger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
_LOCK_KEY = 0x6E6170616C6D  # "napalm": any constant shared by every node


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(schema_dir: Path = SCHEMA_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(schema_dir.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        version, _, name = path.stem.partition("_")
        migrations.append(Migration(version, name, path.read_text()))
    return migrations


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _init_pool_connection(conn: asyncpg.Connection) -> None:
    await _init_connection(conn)
    conn.add_query_logger(observe_pg)  # statement latency for /metrics


async def _release_as_is(_conn: asyncpg.Connection) -> None:
    """A released connection goes back as it is: the app leaves no session state on pool connections
    (no SET, LISTEN, cursors or advisory locks; the migration lock has a connection of its own), and
    asyncpg itself still rolls back a transaction left open. Its default reset query
    (pg_advisory_unlock_all; CLOSE ALL; UNLISTEN *; RESET ALL) cost a Postgres round trip per
    release: 6 per call cycle, as many as the cycle's own statements."""


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 20,
                      command_timeout: float | None = None) -> asyncpg.Pool:
    """command_timeout bounds every statement: a stalled Postgres fails a call instead of hanging it."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_pool_connection,
                                     command_timeout=command_timeout, reset=_release_as_is)
    assert pool is not None
    return pool


async def migrate(dsn: str, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Apply pending migrations; returns the versions applied (empty when up to date)."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version text PRIMARY KEY,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
            done = {r["version"]: r["checksum"] for r in rows}
            for m in load_migrations(schema_dir):
                if m.version in done:
                    if done[m.version] != m.checksum:
                        log.warning("migration_changed_after_apply", version=m.version, name=m.name)
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version, m.name, m.checksum,
                    )
                applied_now.append(m.version)
                log.info("migration_applied", version=m.version, name=m.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
    return applied_now


async def pending_migrations(pool: asyncpg.Pool, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    try:
        rows = await pool.fetch("SELECT version FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        rows = []
    done = {r["version"] for r in rows}
    return [m.version for m in load_migrations(schema_dir) if m.version not in done]


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` if it does not exist (local stack and tests only)."""
    base, _, dbname = dsn.rpartition("/")
    dbname = dbname.split("?")[0]
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()
