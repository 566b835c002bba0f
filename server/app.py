"""Application assembly: routes, Socket.IO, and the lifetimes of the Postgres pool, Redis and S3 clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
from aiohttp import web
from botocore.config import Config

from server import realtime
from server.accounts import deletion
from server.accounts.routes import routes as account_routes
from server.calls.routes import routes as call_routes
from server.db import create_pool
from server.deps import DEPS, SETTINGS, Deps
from server.errors import error_middleware
from server.httpio import body_guard
from server.ice.routes import routes as ice_routes
from server.media.routes import routes as media_routes
from server.middleware import cors_middleware, proxy_hops_check, request_context
from server.moderation import page as moderator_page
from server.moderation import service as moderation
from server.moderation.ipbans import ip_ban_middleware
from server.moderation.routes import routes as moderation_routes
from server.ops import node as ops_node
from server.ops.drain import refuse_new_sockets
from server.ops.metrics import http_metrics
from server.ops.routes import routes as ops_routes
from server.payments import routes as payments
from server.presence.routes import routes as presence_routes
from server.redis import create_redis
from server.referrals.routes import routes as referral_routes
from server.settings import Settings

FRONTEND = Path(__file__).resolve().parent.parent / "frontend-stub"
JSON_BODY_LIMIT = 64 * 1024  # uploads stream through their own bounded readers


def make_s3_client(s: Settings):  # type: ignore[no-untyped-def]
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s.s3_endpoint_url or None,
        region_name=s.s3_region,
        aws_access_key_id=s.s3_access_key or None,
        aws_secret_access_key=s.s3_secret_key or None,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, max_pool_connections=32,
                      retries={"max_attempts": 3, "mode": "standard"}),
    )


async def _resources(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    db = await create_pool(s.database_url, s.db_pool_min, s.db_pool_max, s.store_timeout_seconds or None)
    redis = create_redis(s.redis_url, s.store_timeout_seconds or None, s.redis_pool_max)
    s3 = await asyncio.to_thread(make_s3_client, s)
    deps = Deps(settings=s, db=db, redis=redis, s3=s3)
    app[DEPS] = deps
    await realtime.start(app, deps)
    try:
        yield
    finally:
        await realtime.stop(app)
        await redis.aclose()
        await db.close()


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(FRONTEND / "index.html")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=JSON_BODY_LIMIT,
        middlewares=[http_metrics, request_context, cors_middleware(settings.origins), error_middleware,
                     ip_ban_middleware, refuse_new_sockets, body_guard, proxy_hops_check(settings.trusted_proxy_hops)],
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(moderation.background)
    ops_node.setup(app)
    app.cleanup_ctx.append(payments.lifetime)
    app.cleanup_ctx.append(deletion.background)  # finishes interrupted account deletions
    app.add_routes(ops_routes)
    app.add_routes(account_routes)
    app.add_routes(call_routes)
    app.add_routes(presence_routes)
    app.add_routes(ice_routes)
    app.add_routes(media_routes)
    app.add_routes(referral_routes)
    app.add_routes(payments.routes)
    app.add_routes(moderation_routes)
    app.on_response_prepare.append(moderator_page.security_headers)
    app.router.add_get("/moderator", moderator_page.moderator_page)
    realtime.attach(app, settings)
    app.router.add_get("/", _index)
    app.router.add_get("/payment-success", _index)  # back from Checkout (the original client's route)
    app.router.add_get("/onboarding", _index)  # where invite QR codes point
    app.router.add_static("/static/", FRONTEND, follow_symlinks=False)
    return app
