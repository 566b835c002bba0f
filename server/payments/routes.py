"""HTTP: /payment/* (PROTOCOL §2.7) and the payments domain's lifetime (Stripe client, reconciliation)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from server.accounts.sessions import require_user
from server.deps import DEPS, deps_of
from server.errors import bad_request
from server.httpio import client_ip, read_body, read_json
from server.moderation.authz import require_moderator
from server.payments import codes, qr, reconcile, service, store
from server.payments.stripe_api import StripeApi

routes = web.RouteTableDef()
STRIPE = web.AppKey("stripe", StripeApi)

VALIDATE_SCHEMA = {"type": "object", "properties": {
    "code": {"type": ["string", "null"], "maxLength": 64, "x-error": "Invalid code format"}}}
APPLY_SCHEMA = {"type": "object", "properties": {
    "inviteCode": {"type": ["string", "null"], "maxLength": 64, "x-error": "Invalid invite code"}}}
GENERATE_SCHEMA = {"type": "object", "properties": {
    "label": {"type": ["string", "null"], "maxLength": 100, "x-error": "label must be at most 100 characters"}}}
DEACTIVATE_SCHEMA = {"type": "object", "required": ["code"], "properties": {
    "code": {"type": "string", "minLength": 1, "maxLength": 64, "x-error": "code is required"}}}


async def lifetime(app: web.Application) -> AsyncIterator[None]:
    """After app.py's resources: the Stripe client and the reconciliation task of this node."""
    api = StripeApi(app[DEPS].settings)
    app[STRIPE] = api
    try:
        async with reconcile.running(app[DEPS], api):
            yield
    finally:
        await api.close()


def _ip(request: web.Request) -> str | None:
    return client_ip(request, deps_of(request).settings.trusted_proxy_hops)


@routes.get("/payment/status")
async def payment_status(request: web.Request) -> web.Response:
    principal = await require_user(request)
    return web.json_response(await service.status(deps_of(request), request.app[STRIPE], principal.user_id))


@routes.post("/payment/create-checkout")
async def create_checkout(request: web.Request) -> web.Response:
    principal = await require_user(request)
    await read_json(request, {"type": "object"})  # the original client sends no body at all
    return web.json_response(await service.create_checkout(deps_of(request), request.app[STRIPE], principal.user_id))


@routes.post("/payment/webhook")
async def webhook(request: web.Request) -> web.Response:
    api = request.app[STRIPE]
    payload = await read_body(request)  # the raw bytes Stripe signed (bounded in size and time)
    try:
        event = api.verify_event(payload, request.headers.get("Stripe-Signature"))
    except ValueError:
        raise bad_request("Invalid Stripe signature", code="invalid_signature") from None
    if not isinstance(event.get("id"), str) or not isinstance((event.get("data") or {}).get("object"), dict):
        raise bad_request("Malformed Stripe event", code="invalid_event")
    outcome = await service.handle_event(deps_of(request), api, event)
    return web.json_response({"received": True, "outcome": outcome})


@routes.post("/payment/validate-code")
async def validate_code(request: web.Request) -> web.Response:
    body = await read_json(request, VALIDATE_SCHEMA)
    return web.json_response(await service.validate_code(deps_of(request), _ip(request), body.get("code")))


@routes.post("/payment/apply-code")
async def apply_code(request: web.Request) -> web.Response:
    principal = await require_user(request)
    body = await read_json(request, APPLY_SCHEMA)
    return web.json_response(await service.apply_code(deps_of(request), _ip(request), principal.user_id,
                                                      body.get("inviteCode")))


@routes.get("/payment/qr/{code}")
async def qr_png(request: web.Request) -> web.Response:
    # Public (an <img src> and a download link): plain-text errors, as the original.
    code = request.match_info["code"]
    deps = deps_of(request)
    if not codes.CODE_RE.match(code) or await store.get_code(deps.db, code) is None:
        return web.Response(status=404, text="Code not found", content_type="text/plain")
    image = await qr.png(deps.settings.frontend_url, code)
    return web.Response(body=image, content_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


@routes.post("/payment/admin/generate-code")
async def admin_generate(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    body = await read_json(request, GENERATE_SCHEMA)
    return web.json_response(await service.admin_generate(deps_of(request), mod, body.get("label") or ""))


@routes.get("/payment/admin/codes")
async def admin_codes(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    return web.json_response(await service.admin_list(deps_of(request), mod))


@routes.post("/payment/admin/deactivate-code")
async def admin_deactivate(request: web.Request) -> web.Response:
    mod = await require_moderator(request)
    body = await read_json(request, DEACTIVATE_SCHEMA)
    return web.json_response(await service.admin_deactivate(deps_of(request), mod, body["code"]))

