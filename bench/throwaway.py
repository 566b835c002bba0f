"""A throwaway local stack (Postgres, Redis, S3 server, coturn) on free ports and one
`python -m server serve` node on it, for the single-node benchmarks. Everything it starts it stops.

    with Throwaway(relay_base=23000) as t:
        t.serve(LOG_LEVEL="WARNING")  # migrations, bucket, the node; returns once /ready answers
        ... t.base, t.server.pid, t.settings ...
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.settings import Settings  # noqa: E402
from server.stack import Stack, free_port  # noqa: E402


class Throwaway:
    def __init__(self, relay_base: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="napalm-bench-"))
        base_port = relay_base + (os.getpid() % 20) * 200  # two benchmarks at once get distinct relay ranges
        self.stack = Stack(root=self.root, ports={n: free_port() for n in ("postgres", "redis", "s3", "turn")},
                           durable=False, relay_ports=(base_port, base_port + 199))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.settings: Settings | None = None

    def __enter__(self) -> Throwaway:
        try:
            self.stack.up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def serve(self, **env: str) -> str:
        full = {**os.environ, **self.stack.env(), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **env}
        self.settings = Settings.from_env(full)
        from server.__main__ import _prepare, ensure_bucket

        asyncio.run(_prepare(self.settings))
        ensure_bucket(self.settings)
        with open(self.root / "server.log", "wb") as log:
            self.server = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", str(self.port)],
                                           cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT)
        asyncio.run(wait_ready(self.base, self.server))
        return self.base

    def __exit__(self, *exc: Any) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
        self.stack.down()
        shutil.rmtree(self.root, ignore_errors=True)


async def wait_ready(base: str, proc: subprocess.Popen[bytes], limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with http.get(f"{base}/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not become ready")
