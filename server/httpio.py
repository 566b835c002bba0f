"""Request parsing shared by every route: JSON bodies checked against a JSON Schema, client IP.

Schemas may carry an `x-error` message on a property: a missing or invalid property then answers
with that exact text (the original client matches some error strings, PROTOCOL.md §1.3).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from uuid import UUID

from aiohttp import web
from jsonschema import Draft202012Validator

from server.errors import ApiError, bad_request

# The authenticated user of a request, set by the auth function and read by the access log.
USER_ID = web.RequestKey("user_id", UUID)

_validators: dict[int, Draft202012Validator] = {}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    v = _validators.get(id(schema))
    if v is None:
        Draft202012Validator.check_schema(schema)
        v = _validators[id(schema)] = Draft202012Validator(schema)
    return v


def _message(err: Any) -> str:
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else ""
        prop = err.schema.get("properties", {}).get(missing, {})
        return prop.get("x-error") or f"{missing} is required"
    if "x-error" in err.schema:
        return str(err.schema["x-error"])
    where = ".".join(str(p) for p in err.absolute_path) or "body"
    return f"Invalid {where}"


def _storable(value: Any) -> bool:
    """False if any string (key or value) holds NUL or a lone surrogate: valid JSON escapes
    (\\u0000, \\ud800) that Postgres text and UTF-8 cannot hold (they would surface as 500s)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return False
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def validate(data: Any, schema: dict[str, Any]) -> None:
    err = next(iter(sorted(_validator(schema).iter_errors(data), key=lambda e: len(e.absolute_path))), None)
    if err is not None:
        raise bad_request(_message(err), code="validation_failed")


async def read_json(request: web.Request, schema: dict[str, Any]) -> dict[str, Any]:
    """Parse the body as a JSON object (an empty body counts as `{}`, §1.1) and validate it."""
    raw = await request.read()  # bounded by client_max_size -> 413
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("Invalid JSON body", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("JSON body must be an object", code="invalid_json")
    if not _storable(data):
        raise bad_request("Invalid characters in JSON body", code="invalid_json")
    validate(data, schema)
    return data


def client_ip(request: web.Request, trusted_hops: int) -> str | None:
    """The caller's IP. With N trusted proxies in front, it is the Nth X-Forwarded-For entry from
    the right (entries further left are client-controlled and spoofable, §6 D10)."""
    ip = request.remote
    if trusted_hops > 0:
        chain = [p.strip() for p in request.headers.get("X-Forwarded-For", "").split(",") if p.strip()]
        if len(chain) >= trusted_hops:
            ip = chain[-trusted_hops]
    try:
        return str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        return None


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "bearer":  # "Bearer" alone (trailing space stripped in transit) is no token
        header = rest.strip()
    return header or None


__all__ = ["USER_ID", "ApiError", "bearer_token", "client_ip", "read_json", "validate"]
