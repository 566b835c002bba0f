"""Operator commands run as real subprocesses against the test database."""

import os
import subprocess
import sys

from tests.helpers import auth
from tests.rt import make_user


def run_cli(stack, *args):
    env = {**os.environ, **stack.env(), "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def test_grant_access_by_email_is_audited(client, db, stack):
    u = await make_user(client, db, paid=False)
    await client.post("/auth/link", json={"sessionToken": u["sessionToken"], "email": "Op@Example.com",
                                          "password": "long enough"})
    done = run_cli(stack, "user", "grant-access", "OP@example.com")
    assert done.returncode == 0, done.stderr
    assert "granted access" in done.stdout
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
