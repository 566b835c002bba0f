"""The shared resources every domain needs, built once per process by app.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from server.settings import Settings


@dataclass
class Deps:
    settings: Settings
    db: asyncpg.Pool
    redis: aioredis.Redis
    s3: Any  # boto3 S3 client (thread-safe; blocking calls go through asyncio.to_thread)
    sio: Any = None  # socketio.AsyncServer, set by realtime.py
    deck: Any = None  # presence.deck.Deck: this node's card cache and deck snapshot, set by realtime.py
    sessions: Any = None  # accounts.sessions.SessionCache, set by realtime.py (None: read Postgres each time)


SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)


def deps_of(request: web.Request) -> Deps:
    return request.app[DEPS]
