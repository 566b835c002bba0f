"""Peak memory of the server process while five 50 MB intro videos upload at once.

Starts a throwaway local stack (Postgres, Redis, S3 server, coturn) on free ports, runs
`python -m server serve` against it, uploads the videos concurrently through POST /media/video
(multipart, as the client sends them) and samples the server's VmRSS from /proc every 10 ms.

    .venv/bin/python bench/media_upload_memory.py [--uploads 5] [--mb 50]

Only loopback traffic; bounded in count and time. Everything it starts it stops again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throwaway import Throwaway

MB = 1024 * 1024
WEBM_HEAD = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d4287810442858102")


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found for {pid}")


class Sampler:
    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid, self.interval, self.peak, self.samples = pid, interval, 0, 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kb(self.pid))
            self.samples += 1
            await asyncio.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def upload(http: aiohttp.ClientSession, base: str, token: str, data: bytes) -> tuple[int, float]:
    form = aiohttp.FormData()
    form.add_field("video", data, filename="intro.webm", content_type="video/webm;codecs=vp9")
    t0 = time.monotonic()
    async with http.post(f"{base}/media/video", data=form, headers={"Authorization": f"Bearer {token}"}) as resp:
        await resp.read()
        return resp.status, time.monotonic() - t0


async def bench(base: str, pid: int, uploads: int, size: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        tokens = []
        for i in range(uploads):
            async with http.post(f"{base}/auth/guest", json={"name": f"Bench {i}", "gender": "unspecified"}) as r:
                assert r.status == 200, await r.text()
                tokens.append((await r.json())["sessionToken"])
        # Warm up every code path once (imports, boto3 endpoint resolution, connection pools).
        status, _ = await upload(http, base, tokens[0], WEBM_HEAD + b"\x00" * (6 * MB))
        assert status == 200
        await asyncio.sleep(0.5)
        data = WEBM_HEAD + os.urandom(size - len(WEBM_HEAD))
        before = rss_kb(pid)

        with Sampler(pid) as one:
            status, secs_one = await upload(http, base, tokens[0], data)
        assert status == 200, status

        with Sampler(pid) as many:
            t0 = time.monotonic()
            results = await asyncio.gather(*(upload(http, base, t, data) for t in tokens))
            wall = time.monotonic() - t0
        assert all(s == 200 for s, _ in results), results
        await asyncio.sleep(1.0)
        after = rss_kb(pid)

    mb = size / MB
    print(f"server pid {pid}; body {mb:.0f} MB per upload")
    print(f"  RSS before uploads           {before / 1024:8.1f} MiB")
    print(f"  peak RSS, 1 upload           {one.peak / 1024:8.1f} MiB  (+{(one.peak - before) / 1024:.1f}; "
          f"{secs_one:.2f} s, {one.samples} samples)")
    print(f"  peak RSS, {uploads} concurrent       {many.peak / 1024:8.1f} MiB  (+{(many.peak - before) / 1024:.1f}; "
          f"wall {wall:.2f} s, {uploads * mb / wall:.0f} MB/s total, {many.samples} samples)")
    print(f"  RSS 1 s after                {after / 1024:8.1f} MiB")
    print(f"  VmHWM (process lifetime)     {rss_kb(pid, 'VmHWM') / 1024:8.1f} MiB")
    print(f"  bytes received concurrently  {uploads * mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    with Throwaway(relay_base=23000) as t:
        t.serve()
        assert t.server is not None
        asyncio.run(bench(t.base, t.server.pid, args.uploads, args.mb * MB))


if __name__ == "__main__":
    main()
