"""HTTP: /stats/live (PROTOCOL.md §2.10)."""

from __future__ import annotations

import time

from aiohttp import web

from server.deps import deps_of
from server.presence import state

routes = web.RouteTableDef()


@routes.get("/stats/live")
async def live(request: web.Request) -> web.Response:
    count = await state.online_count(deps_of(request).redis)
    return web.json_response({"onlineUsers": count, "timestamp": int(time.time() * 1000)})
