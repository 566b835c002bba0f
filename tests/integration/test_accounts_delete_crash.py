"""A deletion interrupted by a crash is finished by another node (issue 13 §2).

A separate server process handles DELETE /user/me with an S3 endpoint that accepts connections and
never answers, so the request is stuck right after the account was marked deleted and its sessions
ended, before any object is removed. The process is then killed (SIGKILL: no cleanup). A second app
with the working S3 endpoint picks the unfinished job up on its own and completes it; the bucket
listing proves no object of the user is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid

import aiohttp
from test_media_samples import JPEG_HEAD, WEBM_HEAD, form, pending_multipart, sample, user_objects

from server.app import create_app
from server.stack import free_port
from tests.conftest import reset_state
from tests.helpers import auth, guest
from tests.multinode.conftest import BASE_ENV, Node


class BlackHole:
    """A TCP endpoint that reads requests and never answers (a hung S3)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connected = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connected.set()
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        writer.close()

    async def __aenter__(self) -> BlackHole:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_a_deletion_cut_short_by_a_crash_is_completed_by_another_node(
        settings, stack, s3, aiohttp_client):
    await reset_state(settings)
    bucket = settings.s3_bucket
    # This app must not finish the job before the crash: its retry loop is effectively off.
    first = await aiohttp_client(create_app(settings.with_(account_deletion_retry_seconds=3600)))
    a = await guest(first, name="Ada")
    resp = await first.post("/auth/link", json={"sessionToken": a["sessionToken"], "email": "ada@example.com",
                                                "password": "correct horse"})
    assert resp.status == 200
    for kind, head, name, ctype in (("selfie", JPEG_HEAD, "selfie.jpg", "image/jpeg"),
                                    ("video", WEBM_HEAD, "intro.webm", "video/webm")):
        resp = await first.post(f"/media/{kind}", data=form(kind, sample(head, 8192), name, ctype),
                                headers=auth(a["sessionToken"]))
        assert resp.status == 200
    s3.create_multipart_upload(Bucket=bucket, Key=f"users/{a['userId']}/intro-3000000000000.webm")
    assert len(user_objects(s3, bucket, a["userId"])) == 2
    uid = uuid.UUID(a["userId"])

    async with BlackHole() as hole:
        env = {**os.environ, **stack.env(), **BASE_ENV, "S3_ENDPOINT_URL": f"http://127.0.0.1:{hole.port}",
               "ACCOUNT_DELETION_RETRY_SECONDS": "3600", "ACCOUNT_DELETION_LEASE_SECONDS": "1",
               "PYTHONUNBUFFERED": "1"}
        env.pop("PYTEST_CURRENT_TEST", None)
        node = Node("delete-crash", env).start()
        try:
            async with aiohttp.ClientSession() as http:
                request = asyncio.create_task(http.delete(f"{node.url}/user/me", headers=auth(a["sessionToken"])))
                await asyncio.wait_for(hole.connected.wait(), 15)  # stuck in the S3 step
                node.kill()
                with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
                    await request
        finally:
            node.stop()

    conn = await _db(settings)
    try:
        # The crash state: the account is gone for its owner, but its objects are still stored.
        job = await conn.fetchrow("SELECT completed_at, attempts, lease_until FROM account_deletions "
                                  "WHERE user_id = $1", uid)
        assert job["completed_at"] is None and job["attempts"] == 1
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", uid) == 0
        assert (await first.get("/user/me", headers=auth(a["sessionToken"]))).status == 401
        resp = await first.post("/auth/login", json={"email": "ada@example.com", "password": "correct horse"})
        assert resp.status == 401  # no way back in while the job is unfinished
        assert len(user_objects(s3, bucket, a["userId"])) == 2

        # Its lease (1 s here, 2 min by default) lapses; any other node then takes the job over.
        await aiohttp_client(create_app(settings.with_(account_deletion_retry_seconds=0.2)))
        deadline = time.monotonic() + 15
        while await conn.fetchval("SELECT completed_at FROM account_deletions WHERE user_id = $1", uid) is None:
            assert time.monotonic() < deadline, "the unfinished deletion was not resumed"
            await asyncio.sleep(0.1)
        assert user_objects(s3, bucket, a["userId"]) == [] and pending_multipart(s3, bucket, a["userId"]) == []
        assert await conn.fetchval("SELECT name FROM users WHERE id = $1", uid) == "Deleted user"
        assert await conn.fetchval("SELECT attempts FROM account_deletions WHERE user_id = $1", uid) == 2
        actions = [r["action"] for r in await conn.fetch(
            "SELECT action FROM audit_log WHERE target_user_id = $1 ORDER BY id", uid)]
        assert actions == ["account.deletion_requested", "account.deleted"]
    finally:
        await conn.close()


async def _db(settings):
    import asyncpg

    return await asyncpg.connect(settings.database_url)
