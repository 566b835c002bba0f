"""bcrypt hashing, always off the event loop (one hash at cost 12 takes ~250 ms of CPU)."""

from __future__ import annotations

import asyncio

import bcrypt

MIN_BYTES = 8
MAX_BYTES = 72  # bcrypt ignores everything past 72 bytes; longer passwords are refused, not truncated

# Verified against when the account does not exist, so timing does not reveal which emails exist.
_dummy_hashes: dict[int, bytes] = {}


def policy_error(password: str) -> str | None:
    size = len(password.encode())
    if size < MIN_BYTES:
        return f"Password must be at least {MIN_BYTES} characters"
    if size > MAX_BYTES:
        return f"Password must be at most {MAX_BYTES} bytes"
    return None


async def hash_password(password: str, rounds: int) -> str:
    digest = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt(rounds=rounds))
    return digest.decode()


async def verify_password(password: str, hashed: str | None, rounds: int) -> bool:
    if hashed:
        target = hashed.encode()
    else:
        target = _dummy_hashes.get(rounds) or _dummy_hashes.setdefault(
            rounds, await asyncio.to_thread(bcrypt.hashpw, b"no-such-account", bcrypt.gensalt(rounds=rounds)))
    ok = await asyncio.to_thread(bcrypt.checkpw, password.encode()[:MAX_BYTES], target)
    return ok and hashed is not None
