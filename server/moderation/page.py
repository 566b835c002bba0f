"""The moderator page (frontend-stub/moderator.html) and the security headers of every stub page:
a strict Content-Security-Policy (scripts only from this origin, no inline script), nosniff, and no
framing (PROTOCOL §6 D3; the page shows user-supplied names, reasons and transcripts)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

FRONTEND = Path(__file__).resolve().parent.parent.parent / "frontend-stub"

# Media are presigned S3/CDN URLs on another origin, and the stub uploads to presigned URLs: images,
# media and fetches may go to other origins; scripts, styles, frames and forms may not.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob: http: https:",
    "media-src 'self' data: blob: http: https:",
    "connect-src 'self' ws: wss: http: https:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
STUB_PATHS = ("/", "/moderator", "/payment-success", "/onboarding")


def is_stub(path: str) -> bool:
    return path in STUB_PATHS or path.startswith("/static/")


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every stub response (and nosniff on every response with a body)."""
    if response.status == 101:
        return  # a websocket: no body to sniff, and its headers live as long as the socket (~0.4 KB)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if is_stub(request.path):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"


async def moderator_page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(FRONTEND / "moderator.html", headers={"Cache-Control": "no-store"})
