"""The restore drill: a database filled through the API is backed up with `python -m server backup`,
restored with `python -m server restore` into a fresh database, and a node started on the restored copy
serves every user, session, call and code as before. Every table is compared row for row, so tables
that other domains add later (reports, payments, ...) are covered without changing this test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg

from server.app import create_app
from server.deps import DEPS
from tests.helpers import auth
from tests.rt import in_call, make_user


def run_cli(stack: Any, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env(), "LOG_LEVEL": "WARNING"}
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


async def table_digests(dsn: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent digest of every public table's content."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        out = {}
        for t in tables:
            row = await conn.fetchrow(
                f'SELECT count(*) AS n, coalesce(md5(string_agg(x::text, \'|\' ORDER BY x::text)), \'\') AS d '
                f'FROM "{t}" x')
            out[t] = (row["n"], row["d"])
        return out
    finally:
        await conn.close()


async def fill(client: Any, db: asyncpg.Connection, sockets: Any) -> dict[str, Any]:
    a = await make_user(client, db, "Backup Alice")
    b = await make_user(client, db, "Backup Bob", gender="male")
    linked = await client.post("/auth/link", json={"sessionToken": a["sessionToken"], "email": "alice@example.com",
                                                   "password": "correct horse battery"})
    assert linked.status == 200, await linked.text()
    code = await client.post("/referral/generate", json={"targetUserId": b["userId"]}, headers=auth(a["sessionToken"]))
    assert code.status == 200, await code.text()
    pa, pb = await sockets(a, "A"), await sockets(b, "B")
    room = (await in_call(pa, pb, seconds=120))["roomId"]
    rds = client.app[DEPS].redis
    started = int(await rds.hget(f"room:{room}", "started"))
    await rds.hset(f"room:{room}", "started", started - 30_000)  # a 30 s call: it goes into the history
    await pa.emit("call:end", {"roomId": room})
    await pa.wait("session:finalized")
    for _ in range(100):
        if await db.fetchval("SELECT count(*) FROM call_history") == 2:
            break
        await asyncio.sleep(0.05)
    return {"a": a, "b": b, "room": room, "code": (await code.json())["referralCode"]}


async def test_backup_then_restore_into_a_fresh_database_loses_nothing(client, db, sockets, settings, stack,
                                                                       aiohttp_client, tmp_path):
    filled = await fill(client, db, sockets)
    before = await table_digests(settings.database_url)
    assert before["users"][0] == 2 and before["call_history"][0] == 2 and before["sessions"][0] >= 2

    dump = tmp_path / "napalm.dump"
    done = run_cli(stack, "backup", "--out", str(dump))
    assert done.returncode == 0, done.stderr
    assert dump.stat().st_size > 0 and not (tmp_path / "napalm.dump.partial").exists()

    fresh = settings.database_url.rpartition("/")[0] + f"/restored_{uuid.uuid4().hex[:8]}"
    done = run_cli(stack, "restore", "--from", str(dump), database_url=fresh)
    assert done.returncode == 0, done.stderr
    assert "flush Redis" in done.stdout
    assert await table_digests(fresh) == before

    # Restoring over data is refused and changes nothing.
    again = run_cli(stack, "restore", "--from", str(dump), database_url=fresh)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert await table_digests(fresh) == before
    missing = run_cli(stack, "restore", "--from", str(tmp_path / "nope.dump"), database_url=fresh)
    assert missing.returncode == 2 and "no such backup file" in missing.stderr

    # A node on the restored database, with Redis rebuilt from scratch, serves everyone as before.
    await client.app[DEPS].redis.flushdb()
    node = await aiohttp_client(create_app(settings.with_(database_url=fresh)))
    a, b = filled["a"], filled["b"]
    me = await node.get("/user/me", headers=auth(b["sessionToken"]))
    assert me.status == 200 and (await me.json())["userId"] == b["userId"]
    login = await node.post("/auth/login", json={"email": "alice@example.com", "password": "correct horse battery"})
    logged_in = await login.json()
    assert login.status == 200 and logged_in["userId"] == a["userId"]
    hist = await node.get("/room/history", headers=auth(logged_in["sessionToken"]))
    entries = (await hist.json())["history"]
    assert len(entries) == 1 and entries[0]["roomId"] == filled["room"]
    info = await node.get(f"/referral/info/{filled['code']}")
    assert info.status == 200, await info.text()
