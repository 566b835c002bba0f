"""Operator commands run as real subprocesses against the test database."""

import asyncio
import os
import subprocess
import sys

import pytest

from tests.helpers import auth
from tests.rt import make_user


@pytest.fixture
def settings(base_settings):
    # Sessions cached far longer than any test here: a change seen at once was signalled, not expired.
    return base_settings.with_(session_cache_seconds=60)


def run_cli(stack, *args):
    env = {**os.environ, **stack.env(), "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_grant_access_by_email_is_audited(client, db, stack):
    u = await make_user(client, db, paid=False)
    await client.post("/auth/link", json={"sessionToken": u["sessionToken"], "email": "Op@Example.com",
                                          "password": "long enough"})
    done = await asyncio.to_thread(run_cli, stack, "user", "grant-access", "OP@example.com")
    assert done.returncode == 0, done.stderr
    assert "granted access" in done.stdout and "warning" not in done.stdout
    me = await (await client.get("/user/me", headers=auth(u["sessionToken"]))).json()
    assert me["paidStatus"] == "paid"
    row = await db.fetchrow("SELECT actor_label, action, target_user_id FROM audit_log")
    assert (row["actor_label"], row["action"], str(row["target_user_id"])) == ("cli", "grant_access", u["userId"])
    assert (await client.get("/room/queue", headers=auth(u["sessionToken"]))).status == 200


async def test_set_role_by_id(client, db, stack):
    u = await make_user(client, db)
    done = run_cli(stack, "user", "set-role", u["userId"], "moderator")
    assert done.returncode == 0, done.stderr
    assert await db.fetchval("SELECT role FROM users WHERE id = $1", u["userId"]) == "moderator"
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'set_role'") == 1


async def test_unknown_user_and_bad_role_fail_cleanly(client, db, stack):
    missing = run_cli(stack, "user", "grant-access", "nobody@example.com")
    assert missing.returncode == 2 and "no user" in missing.stderr
    bad = run_cli(stack, "user", "set-role", "nobody@example.com", "emperor")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_grant_access_reaches_a_running_node_at_once(client, db, stack):
    """The node has the user's session cached as unpaid; the command tells it (through Redis), so
    the next requests see the access long before the cache would have expired."""
    u = await make_user(client, db, paid=False)
    assert (await client.get("/room/queue", headers=auth(u["sessionToken"]))).status == 402  # now cached
    done = await asyncio.to_thread(run_cli, stack, "user", "grant-access", u["userId"])
    assert done.returncode == 0 and "warning" not in done.stdout, (done.stdout, done.stderr)
    for _ in range(100):  # the node reads the signal from its Redis listener: well under the 60 s cache
        status = (await client.get("/room/queue", headers=auth(u["sessionToken"]))).status
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
