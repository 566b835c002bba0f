"""Small helpers shared by tests: sign-ups and authenticated requests against a test client."""

from __future__ import annotations

from typing import Any


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def guest(client: Any, name: str = "Ada", gender: str = "female", **extra: Any) -> dict[str, Any]:
    resp = await client.post("/auth/guest", json={"name": name, "gender": gender, **extra})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def permanent(client: Any, email: str, password: str = "correct horse", name: str = "Ada") -> dict[str, Any]:
    g = await guest(client, name=name)
    resp = await client.post("/auth/link", json={"sessionToken": g["sessionToken"], "email": email,
                                                 "password": password})
    assert resp.status == 200, await resp.text()
    return g


async def grant_access(client: Any, user: dict[str, Any]) -> dict[str, Any]:
    """Give a test user access (as a payment would), in the test app's own database, and signal the
    change as a payment does (nodes drop the sessions and rights they cached)."""
    from uuid import UUID

    from server.accounts import access
    from server.deps import DEPS

    deps = client.app[DEPS]
    await deps.db.execute("UPDATE users SET paid_status = 'paid' WHERE id = $1", UUID(user["userId"]))
    await access.changed(deps, user["userId"], "paid")
    return user
