"""HTTP: /auth/* and /user/me (PROTOCOL.md §2.1, §2.2, §7 E6)."""

from __future__ import annotations

from aiohttp import web

from server.accounts import deletion, export, profile, service, store
from server.accounts.sessions import authenticate, require_user
from server.calls import enforce
from server.deps import deps_of
from server.errors import bad_request, not_found
from server.httpio import bearer_token, client_ip, read_json

routes = web.RouteTableDef()

GENDERS = ["female", "male", "nonbinary", "unspecified"]
SOCIAL_KEYS = ["instagram", "tiktok", "twitter", "snapchat", "discord"]
EMAIL_PATTERN = r"^\s*[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,63}\s*$"  # trimmed by the routes

GUEST_SCHEMA = {
    "type": "object",
    "required": ["name", "gender"],
    "properties": {
        # Length is checked after trimming (the body limit bounds the raw size).
        "name": {"type": "string", "minLength": 1, "x-error": "Name is required"},
        "gender": {"enum": GENDERS, "x-error": "Invalid gender"},
        "referralCode": {"type": ["string", "null"], "maxLength": 64},
        "inviteCode": {"type": ["string", "null"], "maxLength": 64, "x-error": "Invalid invite code format"},
        "isBot": {"type": ["boolean", "null"], "x-error": "isBot must be a boolean"},  # test bots (bots/)
    },
}
CREDENTIALS = {
    "email": {"type": "string", "maxLength": 254, "pattern": EMAIL_PATTERN,
              "x-error": "A valid email is required"},
    "password": {"type": "string", "minLength": 1, "maxLength": 1024, "x-error": "Password is required"},
}
LINK_SCHEMA = {"type": "object", "required": ["email", "password"],
               "properties": {**CREDENTIALS,
                              "sessionToken": {"type": ["string", "null"], "x-error": "Invalid sessionToken"}}}
LOGIN_SCHEMA = {"type": "object", "required": ["email", "password"], "properties": CREDENTIALS}
SOCIALS_SCHEMA = {
    "type": "object",
    "required": ["socials"],
    "properties": {
        "socials": {
            "type": "object",
            "propertyNames": {"enum": SOCIAL_KEYS},
            "additionalProperties": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{0,30}$"},
            "x-error": "socials must map instagram, tiktok, twitter, snapchat or discord to a handle "
                       "of up to 30 letters, digits, '.', '_' or '-'",
        },
    },
}


def _client(request: web.Request) -> service.Client:
    return service.Client(client_ip(request, deps_of(request).settings.trusted_proxy_hops),
                          request.headers.get("User-Agent"))


@routes.post("/auth/guest")
async def guest(request: web.Request) -> web.Response:
    body = await read_json(request, GUEST_SCHEMA)
    name = body["name"].strip()
    if not name:
        raise bad_request("Name is required", code="validation_failed")
    if len(name) > 40:
        raise bad_request("Name must be 40 characters or fewer", code="validation_failed")
    invite = (body.get("inviteCode") or "").strip() or None
    result = await service.guest_signup(deps_of(request), _client(request), name, body["gender"],
                                        body.get("referralCode") or None, invite, is_bot=bool(body.get("isBot")))
    return web.json_response(result)


@routes.post("/auth/link")
async def link(request: web.Request) -> web.Response:
    body = await read_json(request, LINK_SCHEMA)
    deps = deps_of(request)
    # The original client sends the token in the body; newer clients may use the header (E6).
    token = body.get("sessionToken") or bearer_token(request)
    if not token:
        raise bad_request("sessionToken is required", code="validation_failed")  # §2.1: 400 missing fields
    await service.limit_link_ip(deps, _client(request))
    principal = await authenticate(deps, token)
    email = body["email"].strip().lower()
    if len(email) > 254:  # lowercasing can lengthen some characters ('İ' -> 'i̇')
        raise bad_request("A valid email is required", code="validation_failed")
    result = await service.link(deps, principal, email, body["password"])
    return web.json_response(result)


@routes.post("/auth/login")
async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LOGIN_SCHEMA)
    deps = deps_of(request)
    result, _user_id, revoked = await service.login(
        deps, _client(request), body["email"].strip().lower(), body["password"])
    # The replaced sessions' sockets get session:invalidated, then are disconnected (§6 D12).
    await enforce.invalidate_sessions(deps, [str(s) for s in revoked])
    return web.json_response(result)


@routes.post("/auth/logout")
async def logout(request: web.Request) -> web.Response:
    principal = await require_user(request, allow_banned=True)
    await service.logout(deps_of(request), principal)
    await enforce.disconnect_sessions(deps_of(request), [str(principal.session_id)], delay_s=0)
    return web.json_response({"success": True})


@routes.get("/auth/session")
async def session(request: web.Request) -> web.Response:
    principal = await require_user(request, allow_banned=True)
    return web.json_response({
        "userId": str(principal.user_id),
        "accountType": principal.account_type,
        "expiresAt": profile.ms(principal.expires_at),
        "role": principal.role,
    })


@routes.get("/user/me")
async def get_me(request: web.Request) -> web.Response:
    principal = await require_user(request)
    deps = deps_of(request)
    user = await store.get_user(deps.db, principal.user_id)
    if user is None:
        raise not_found("User not found")
    return web.json_response(await profile.me(deps, user))


@routes.put("/user/me")
async def put_me(request: web.Request) -> web.Response:
    principal = await require_user(request)
    body = await read_json(request, SOCIALS_SCHEMA)
    socials = {k: v for k, v in body["socials"].items() if v}
    row = await store.set_socials(deps_of(request).db, principal.user_id, socials)
    if row is None:
        raise not_found("User not found")
    return web.json_response({"success": True, "user": {"userId": str(row["id"]), "name": row["name"],
                                                        "socials": row["socials"]}})


DELETE_SCHEMA = {"type": "object", "properties": {
    "password": {"type": "string", "minLength": 1, "maxLength": 1024, "x-error": "password must be a string"}}}


@routes.get("/user/me/export")
async def export_me(request: web.Request) -> web.Response:
    principal = await require_user(request, allow_banned=True)
    body = await export.build(deps_of(request), principal)
    return web.json_response(body, headers={
        "Content-Disposition": f'attachment; filename="napalm-export-{principal.user_id}.json"',
        "Cache-Control": "no-store"})


@routes.delete("/user/me")
async def delete_me(request: web.Request) -> web.Response:
    # Banned users may delete too: what a ban must keep is kept (README "Account lifecycle").
    principal = await require_user(request, allow_banned=True)
    body = await read_json(request, DELETE_SCHEMA)
    deps = deps_of(request)
    result = await deletion.delete_account(deps, principal, body.get("password"), _client(request).ip)
    return web.json_response(result)
