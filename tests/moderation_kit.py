"""Helpers shared by the moderation tests (integration, multinode, browser)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg


async def met(db: asyncpg.Connection, a: str, b: str, messages: list[dict[str, Any]] | None = None,
              seconds: int = 60) -> str:
    """Record a finished call between a and b (one history row each, as rooms.persist writes them);
    returns its room id."""
    room, session = str(uuid.uuid4()), str(uuid.uuid4())
    names = {r["id"]: r["name"] for r in await db.fetch("SELECT id, name FROM users WHERE id = ANY($1::uuid[])",
                                                         [a, b])}
    for me, other in ((a, b), (b, a)):
        await db.execute(
            """INSERT INTO call_history (session_id, user_id, room_id, partner_id, partner_name, started_at,
                   ended_at, duration_seconds, agreed_seconds, end_reason, messages)
               VALUES ($1, $2, $3, $4, $5, now() - make_interval(secs => $6), now(), $6, 300, 'ended', $7::jsonb)""",
            session, me, room, other, names[uuid.UUID(other)], seconds, json.dumps(messages or []))
    return room


async def make_moderator(client: Any, db: asyncpg.Connection, email: str, role: str = "moderator",
                         password: str = "moderator pass 1", name: str = "Mod") -> dict[str, Any]:
    """A permanent account (guest + link, as a person would) given a role; returns the guest body
    plus email and password."""
    resp = await client.post("/auth/guest", json={"name": name, "gender": "unspecified"})
    g = await resp.json()
    resp = await client.post("/auth/link", json={"sessionToken": g["sessionToken"], "email": email,
                                                 "password": password})
    assert resp.status == 200, await resp.text()
    await db.execute("UPDATE users SET role = $2 WHERE id = $1", g["userId"], role)
    return {**g, "email": email, "password": password}


async def post_json(http: Any, url: str, body: Any, token: str | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST a JSON body with an aiohttp session (optionally as `token`): (status, JSON answer)."""
    h = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    async with http.post(url, json=body, headers=h) as resp:
        return resp.status, await resp.json()


async def moderator_on(http: Any, db: asyncpg.Connection, node: Any, users: Any) -> tuple[dict[str, Any], str]:
    """A moderator account of the multinode `users` fixture, signed in at /admin/login on `node`:
    (user, admin token)."""
    mod = await users.make(node, "Mod")
    status, body = await post_json(http, f"{node.url}/auth/link", {"sessionToken": mod["sessionToken"],
                                                                   "email": "mod@example.com",
                                                                   "password": "moderator pass 1"})
    assert status == 200, body
    async with users.lock:
        await db.execute("UPDATE users SET role = 'moderator' WHERE id = $1", mod["userId"])
    status, body = await post_json(http, f"{node.url}/admin/login", {"username": "mod@example.com",
                                                                     "password": "moderator pass 1"})
    assert status == 200, body
    return mod, body["adminToken"]
