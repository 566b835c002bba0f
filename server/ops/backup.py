"""Postgres backup and restore (`python -m server backup|restore`).

`backup` is `pg_dump --format=custom`: one consistent snapshot (a repeatable-read transaction) taken
while nodes keep serving. For point-in-time recovery in production, use the managed database's
continuous WAL archiving as well; this dump is the portable copy and the restore drill.

`restore` loads a dump into an EMPTY database (it refuses a database that has tables) in a single
transaction. Redis is never restored: it holds live state only (presence, rooms, timers), rebuilt
from Postgres; flush it before nodes start against a restored database.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg

from server.stack import _pg_bin


class BackupError(Exception):
    pass


def _run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(done.stderr.strip() or f"{Path(args[0]).name} exited with {done.returncode}")


def backup(dsn: str, out: Path) -> int:
    """Write a custom-format dump to `out` (atomically: a partial file never has the final name)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    _run([_pg_bin("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "--file", str(partial),
          "--dbname", dsn])
    partial.replace(out)
    return out.stat().st_size


async def _tables(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return [r["tablename"] for r in rows]


async def _empty_target(dsn: str) -> list[str]:
    from server.db import ensure_database

    await ensure_database(dsn)
    return await _tables(dsn)


def restore(dsn: str, src: Path) -> None:
    if not src.is_file():
        raise BackupError(f"{src}: no such backup file")
    existing = asyncio.run(_empty_target(dsn))
    if existing:
        raise BackupError(f"the target database is not empty ({len(existing)} tables): restore only into an "
                          "empty database")
    _run([_pg_bin("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
          "--dbname", dsn, str(src)])
