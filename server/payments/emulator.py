"""A local Stripe for `make run` and the tests: the Checkout Sessions API the official library calls,
a hosted checkout page, and signed webhook deliveries. Stripe's servers are unreachable here and no
maintained emulator covers Checkout (ENVIRONMENT.md), so this is a small faithful one.

Run: `python -m server.payments.emulator --port 12111 --secret-key sk_test_... --webhook-secret
whsec_... --webhook-url http://127.0.0.1:8080/payment/webhook`. The server reaches it only through
the library's API base setting (STRIPE_API_BASE).

Stripe API (form-encoded requests with bracketed nesting, JSON responses, Stripe's error shape,
Bearer secret key, Idempotency-Key replays):
  POST /v1/checkout/sessions · GET /v1/checkout/sessions/{id} · GET /v1/checkout/sessions (limit,
  starting_after, created[gte|gt|lte|lt], payment_intent, status) · POST /v1/checkout/sessions/{id}/expire
Hosted page: GET /c/pay/{id} with Pay / Cancel buttons; Pay redirects to success_url (with
{CHECKOUT_SESSION_ID} filled in), Cancel to cancel_url.
Webhooks: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">`, retried on failure.
Test switches (JSON, under /_emulator/): config {webhook_urls, duplicates, concurrent, delay_ms, drop,
hold, retries, retry_delay_ms}, reset, flush {order: fifo|reverse, concurrent}, events, events/{id}/resend
{times, concurrent}, sessions/{id}/pay {async}, sessions/{id}/settle {succeed},
sessions/{id}/refund {amount}, sessions/{id}/dispute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

API_VERSION = "2026-10-28.endive"
SESSION_TTL_S = 24 * 3600


# ---- Stripe's form encoding: a[b][0][c]=v -> {"a": {"b": [{"c": "v"}]}} ----

def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *re.findall(r"\[([^\]]*)\]", "[" + rest)] if rest else [head]
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # a[]=x appends
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        fixed = {k: _lists(v) for k, v in node.items()}
        if fixed and all(k.isdigit() for k in fixed):
            return [fixed[k] for k in sorted(fixed, key=int)]
        return fixed
    return node


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeError(400, f"Invalid integer: {value}", param=name) from None


class StripeError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> web.Response:
        err: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.param:
            err["param"] = self.param
        if self.code:
            err["code"] = self.code
        return web.json_response({"error": err}, status=self.status)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Behaviour:
    duplicates: int = 0  # extra copies of every delivery
    concurrent: bool = False  # send the copies at the same moment
    delay_ms: int = 0  # before the first attempt
    drop: int = 0  # the next N events are never delivered
    hold: bool = False  # queue events until /_emulator/flush (which may reorder them)
    retries: int = 3  # after a failed attempt (Stripe retries for days; we stop sooner)
    retry_delay_ms: int = 500


@dataclass
class State:
    secret_key: str
    webhook_secret: str
    public_url: str
    webhook_urls: list[str] = field(default_factory=list)
    behaviour: Behaviour = field(default_factory=Behaviour)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)  # by payment intent
    idempotency: dict[str, tuple[str, int, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)
    api_calls: list[str] = field(default_factory=list)  # "GET /v1/...", for tests that count lookups
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    http: aiohttp.ClientSession | None = None


STATE = web.AppKey("state", State)


# ---- webhooks ----

def sign(secret: str, payload: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _event(st: State, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {
             "id": _id("evt"), "object": "event", "api_version": API_VERSION, "created": int(time.time()),
             "type": kind, "livemode": False, "pending_webhooks": len(st.webhook_urls),
             "request": {"id": None, "idempotency_key": None}, "data": {"object": json.loads(json.dumps(obj))}}
    st.events[event["id"]] = event
    return event


async def _attempt(st: State, url: str, event: dict[str, Any], copy: int) -> int:
    payload = json.dumps(event)
    assert st.http is not None
    record: dict[str, Any] = {"event": event["id"], "type": event["type"], "url": url, "copy": copy}
    for attempt in range(st.behaviour.retries + 1):
        record = {**record, "attempt": attempt, "at": time.time()}
        try:
            async with st.http.post(url, data=payload, headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": sign(st.webhook_secret, payload),
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}) as resp:
                record["status"] = resp.status
                record["body"] = (await resp.text())[:300]
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            record["status"] = 0
            record["body"] = repr(exc)[:300]
        record["ms"] = round((time.time() - record["at"]) * 1000, 2)
        st.deliveries.append(record)
        if 200 <= record["status"] < 300:
            return int(record["status"])
        await asyncio.sleep(st.behaviour.retry_delay_ms / 1000 * (2 ** attempt))
    return int(record["status"])


async def _deliver(st: State, event: dict[str, Any], copies: int | None = None, concurrent: bool | None = None,
                   ) -> list[int]:
    b = st.behaviour
    copies = 1 + b.duplicates if copies is None else copies
    concurrent = b.concurrent if concurrent is None else concurrent
    if b.delay_ms:
        await asyncio.sleep(b.delay_ms / 1000)
    results: list[int] = []
    for url in list(st.webhook_urls):
        if concurrent:
            results += await asyncio.gather(*(_attempt(st, url, event, c) for c in range(copies)))
        else:
            for c in range(copies):
                results.append(await _attempt(st, url, event, c))
    return results


def emit(st: State, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Create an event and deliver it in the background according to the switches."""
    event = _event(st, kind, obj)
    if st.behaviour.drop > 0:
        st.behaviour.drop -= 1
        st.deliveries.append({"event": event["id"], "type": kind, "status": "dropped", "at": time.time()})
    elif st.behaviour.hold:
        st.held.append(event)
    else:
        task = asyncio.create_task(_deliver(st, event))
        st.tasks.add(task)
        task.add_done_callback(st.tasks.discard)
    return event


# ---- Checkout Sessions ----

def _session(st: State, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("mode") not in ("payment", "subscription", "setup"):
        raise StripeError(400, "Missing required param: mode.", param="mode")
    if not params.get("success_url"):
        raise StripeError(400, "Missing required param: success_url.", param="success_url")
    items = params.get("line_items")
    if not isinstance(items, list) or not items:
        raise StripeError(400, "Missing required param: line_items.", param="line_items")
    total, currency = 0, None
    for i, item in enumerate(items):
        pd = item.get("price_data") if isinstance(item, dict) else None
        if not isinstance(pd, dict) or "unit_amount" not in pd or "currency" not in pd:
            raise StripeError(400, "You must specify either `price` or `price_data`.", param=f"line_items[{i}]")
        unit, qty = _int(pd["unit_amount"], "unit_amount"), _int(item.get("quantity", 1), "quantity")
        total += unit * qty
        currency = str(pd["currency"]).lower()
    if currency == "usd" and total < 50:
        raise StripeError(400, "The Checkout Session's total amount due must add up to at least $0.50 usd",
                          param="line_items")
    now = int(time.time())
    sid = "cs_test_" + secrets.token_urlsafe(36).replace("-", "a").replace("_", "b")
    return {
        "id": sid, "object": "checkout.session", "amount_subtotal": total, "amount_total": total,
        "currency": currency, "client_reference_id": params.get("client_reference_id"), "created": now,
        "expires_at": now + SESSION_TTL_S, "livemode": False, "metadata": params.get("metadata") or {},
        "mode": params["mode"], "payment_intent": None, "payment_method_types": params.get("payment_method_types")
        or ["card"], "payment_status": "unpaid", "status": "open", "success_url": params["success_url"],
        "cancel_url": params.get("cancel_url"), "customer": None, "customer_details": None,
        "url": f"{st.public_url}/c/pay/{sid}",
    }


def _get(st: State, sid: str) -> dict[str, Any]:
    session = st.sessions.get(sid)
    if session is None:
        raise StripeError(404, f"No such checkout.session: '{sid}'", param="id", code="resource_missing")
    return session


def pay(st: State, session: dict[str, Any], async_method: bool = False) -> None:
    """What the hosted page's Pay button does: complete the session (an async method stays unpaid until
    settled) and send checkout.session.completed."""
    if session["status"] != "open":
        raise StripeError(400, f"This Checkout Session is {session['status']}", code="checkout_session_not_open")
    pi = _id("pi")
    session.update(status="complete", payment_intent=pi, payment_status="unpaid" if async_method else "paid",
                   customer_details={"email": "buyer@example.com"})
    st.charges[pi] = {"id": _id("ch"), "object": "charge", "amount": session["amount_total"],
                      "amount_refunded": 0, "currency": session["currency"], "payment_intent": pi,
                      "paid": not async_method, "refunded": False, "status": "pending" if async_method else "succeeded",
                      "created": int(time.time())}
    emit(st, "checkout.session.completed", session)


def settle(st: State, session: dict[str, Any], succeed: bool) -> None:
    if session["status"] != "complete" or session["payment_status"] != "unpaid":
        raise StripeError(400, "Only a completed session with a pending async payment can settle")
    charge = st.charges[session["payment_intent"]]
    if succeed:
        session["payment_status"] = "paid"
        charge.update(paid=True, status="succeeded")
        emit(st, "checkout.session.async_payment_succeeded", session)
    else:
        charge.update(status="failed")
        emit(st, "checkout.session.async_payment_failed", session)


def _charge_of(st: State, session: dict[str, Any]) -> dict[str, Any]:
    charge = st.charges.get(session.get("payment_intent") or "")
    if charge is None or not charge["paid"]:
        raise StripeError(400, "This session has no successful charge")
    return charge


def refund(st: State, session: dict[str, Any], amount: int | None = None) -> None:
    charge = _charge_of(st, session)
    left = charge["amount"] - charge["amount_refunded"]
    amount = left if amount is None else min(amount, left)
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
    emit(st, "charge.refunded", charge)


def dispute(st: State, session: dict[str, Any]) -> None:
    charge = _charge_of(st, session)
    emit(st, "charge.dispute.created", {
        "id": _id("dp"), "object": "dispute", "amount": charge["amount"], "charge": charge["id"],
        "currency": charge["currency"], "payment_intent": charge["payment_intent"], "reason": "fraudulent",
        "status": "needs_response", "created": int(time.time())})


# ---- HTTP: Stripe API ----

@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        if request.path.startswith("/v1/"):
            st = request.app[STATE]
            st.api_calls.append(f"{request.method} {request.path}")
            auth = request.headers.get("Authorization", "")
            if not hmac.compare_digest(auth, f"Bearer {st.secret_key}"):
                raise StripeError(401, "Invalid API Key provided", kind="invalid_request_error")
        return await handler(request)
    except StripeError as exc:
        return exc.response()


async def _params(request: web.Request) -> dict[str, Any]:
    pairs = list(request.query.items())
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        pairs += [(k, str(v)) for k, v in (await request.post()).items()]
    return _nest(pairs)


async def _idempotent(request: web.Request, make: Any) -> web.Response:
    """Stripe replays the first response for a repeated Idempotency-Key (and refuses other params)."""
    st = request.app[STATE]
    key = request.headers.get("Idempotency-Key")
    body = await request.text()
    if key:
        seen = st.idempotency.get(key)
        if seen is not None:
            if seen[0] != f"{request.path}?{body}":
                raise StripeError(400, "Keys for idempotent requests can only be used with the same parameters "
                                       "they were first used with.", kind="idempotency_error")
            return web.json_response(seen[2], status=seen[1], headers={"Idempotent-Replayed": "true"})
    try:
        status, data = 200, await make()
    except StripeError as exc:
        status, data = exc.status, json.loads(exc.response().text or "{}")
    if key:
        st.idempotency[key] = (f"{request.path}?{body}", status, data)
    return web.json_response(data, status=status)


async def create_session(request: web.Request) -> web.Response:
    st = request.app[STATE]
    params = await _params(request)

    async def make() -> dict[str, Any]:
        session = _session(st, params)
        st.sessions[session["id"]] = session
        return session

    return await _idempotent(request, make)


async def retrieve_session(request: web.Request) -> web.Response:
    return web.json_response(_get(request.app[STATE], request.match_info["id"]))


async def list_sessions(request: web.Request) -> web.Response:
    st = request.app[STATE]
    p = await _params(request)
    limit = max(1, min(100, _int(p.get("limit", 10), "limit")))
    rows = sorted(st.sessions.values(), key=lambda s: (s["created"], s["id"]), reverse=True)
    created = p.get("created")
    if isinstance(created, dict):
        ops = {"gte": int.__ge__, "gt": int.__gt__, "lte": int.__le__, "lt": int.__lt__}
        for op, bound in created.items():
            if op not in ops:
                raise StripeError(400, f"Invalid created[{op}]", param="created")
            rows = [s for s in rows if ops[op](s["created"], _int(bound, "created"))]
    elif created is not None:
        rows = [s for s in rows if s["created"] == _int(created, "created")]
    for name in ("payment_intent", "status"):
        if p.get(name):
            rows = [s for s in rows if s.get(name) == p[name]]
    after = p.get("starting_after")
    if after:
        ids = [s["id"] for s in rows]
        if after not in ids:
            raise StripeError(400, f"Invalid starting_after: {after}", param="starting_after")
        rows = rows[ids.index(after) + 1:]
    return web.json_response({"object": "list", "url": "/v1/checkout/sessions", "has_more": len(rows) > limit,
                              "data": rows[:limit]})


async def expire_session(request: web.Request) -> web.Response:
    st = request.app[STATE]

    async def make() -> dict[str, Any]:
        session = _get(st, request.match_info["id"])
        if session["status"] != "open":
            raise StripeError(400, 'Only Checkout Sessions with a status in ["open"] can be expired.')
        session["status"] = "expired"
        emit(st, "checkout.session.expired", session)
        return session

    return await _idempotent(request, make)


# ---- HTTP: hosted checkout page ----

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Checkout (local Stripe emulator)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.6rem 1.2rem;margin-right:.5rem}}</style></head><body>
<h1>Local checkout</h1><p>Stripe emulator: no money moves.</p>
<p id="amount">{amount}</p><p class="muted">{product}</p>{body}</body></html>"""


def _money(session: dict[str, Any]) -> str:
    return f"{session['amount_total'] / 100:.2f} {str(session['currency']).upper()}"


async def hosted_page(request: web.Request) -> web.Response:
    st = request.app[STATE]
    session = st.sessions.get(request.match_info["id"])
    if session is None:
        return web.Response(status=404, text="No such checkout session", content_type="text/plain")
    sid = html.escape(session["id"])
    if session["status"] == "open":
        body = (f'<form method="post" action="/c/pay/{sid}/pay"><button id="pay" type="submit">Pay '
                f'{html.escape(_money(session))}</button></form>'
                f'<form method="post" action="/c/pay/{sid}/cancel"><button id="cancel" type="submit">Cancel'
                '</button></form>')
    else:
        body = f'<p id="closed">This checkout session is {html.escape(session["status"])}.</p>'
    return web.Response(text=PAGE.format(amount=html.escape(_money(session)), product="Napalm Sky access", body=body),
                        content_type="text/html")


def _success_url(session: dict[str, Any]) -> str:
    return str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session["id"])


async def hosted_pay(request: web.Request) -> web.Response:
    st = request.app[STATE]
    session = st.sessions.get(request.match_info["id"])
    if session is None:
        return web.Response(status=404, text="No such checkout session", content_type="text/plain")
    if session["status"] == "open":
        pay(st, session)
    raise web.HTTPSeeOther(_success_url(session))


async def hosted_cancel(request: web.Request) -> web.Response:
    session = request.app[STATE].sessions.get(request.match_info["id"])
    if session is None:
        return web.Response(status=404, text="No such checkout session", content_type="text/plain")
    raise web.HTTPSeeOther(session.get("cancel_url") or "/")


# ---- HTTP: test switches ----

async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    data = json.loads(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise StripeError(400, "JSON object expected")
    return data


async def config(request: web.Request) -> web.Response:
    st = request.app[STATE]
    data = await _json(request)
    if "webhook_urls" in data:
        st.webhook_urls = [str(u) for u in data.pop("webhook_urls")]
    for k, v in data.items():
        if not hasattr(st.behaviour, k):
            raise StripeError(400, f"unknown switch {k}")
        setattr(st.behaviour, k, type(getattr(st.behaviour, k))(v))
    return web.json_response({"webhook_urls": st.webhook_urls, **st.behaviour.__dict__})


async def reset(request: web.Request) -> web.Response:
    st = request.app[STATE]
    for task in list(st.tasks):
        task.cancel()
    st.behaviour = Behaviour()
    st.sessions.clear()
    st.charges.clear()
    st.idempotency.clear()
    st.events.clear()
    st.deliveries.clear()
    st.held.clear()
    st.api_calls.clear()
    return web.json_response({"ok": True})


async def flush(request: web.Request) -> web.Response:
    st = request.app[STATE]
    data = await _json(request)
    events, st.held = st.held, []
    if data.get("order", "fifo") == "reverse":
        events.reverse()
    if data.get("concurrent"):  # every held event at the same moment
        statuses = list(await asyncio.gather(*(_deliver(st, e) for e in events)))
    else:
        statuses = [await _deliver(st, e) for e in events]
    return web.json_response({"delivered": [e["id"] for e in events], "statuses": statuses})


async def list_events(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response({"events": list(st.events.values()), "deliveries": st.deliveries,
                              "held": [e["id"] for e in st.held], "pending_tasks": len(st.tasks),
                              "api_calls": st.api_calls})


async def resend(request: web.Request) -> web.Response:
    st = request.app[STATE]
    event = st.events.get(request.match_info["id"])
    if event is None:
        raise StripeError(404, "No such event", code="resource_missing")
    data = await _json(request)
    statuses = await _deliver(st, event, copies=int(data.get("times", 1)), concurrent=bool(data.get("concurrent")))
    return web.json_response({"statuses": statuses})


async def session_action(request: web.Request) -> web.Response:
    st = request.app[STATE]
    session = _get(st, request.match_info["id"])
    data = await _json(request)
    action = request.match_info["action"]
    if action == "pay":
        pay(st, session, async_method=bool(data.get("async")))
    elif action == "settle":
        settle(st, session, bool(data.get("succeed", True)))
    elif action == "refund":
        refund(st, session, int(data["amount"]) if data.get("amount") is not None else None)
    elif action == "dispute":
        dispute(st, session)
    else:
        raise StripeError(404, f"unknown action {action}")
    return web.json_response(session)


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _lifetime(app: web.Application) -> Any:
    st = app[STATE]
    # No client-side connection cap: Stripe does not queue deliveries behind each other either.
    st.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), connector=aiohttp.TCPConnector(limit=0))
    yield
    for task in list(st.tasks):
        task.cancel()
    await st.http.close()


def create_app(secret_key: str, webhook_secret: str, public_url: str, webhook_urls: list[str] | None = None,
               ) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[STATE] = State(secret_key, webhook_secret, public_url.rstrip("/"), list(webhook_urls or []))
    app.cleanup_ctx.append(_lifetime)
    app.router.add_post("/v1/checkout/sessions", create_session)
    app.router.add_get("/v1/checkout/sessions", list_sessions)
    app.router.add_get("/v1/checkout/sessions/{id}", retrieve_session)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire_session)
    app.router.add_get("/c/pay/{id}", hosted_page)
    app.router.add_post("/c/pay/{id}/pay", hosted_pay)
    app.router.add_post("/c/pay/{id}/cancel", hosted_cancel)
    app.router.add_get("/_emulator/health", health)
    app.router.add_post("/_emulator/config", config)
    app.router.add_post("/_emulator/reset", reset)
    app.router.add_post("/_emulator/flush", flush)
    app.router.add_get("/_emulator/events", list_events)
    app.router.add_post("/_emulator/events/{id}/resend", resend)
    app.router.add_post("/_emulator/sessions/{id}/{action}", session_action)
    return app


# ---- running it as a child process (make run, the test session) ----

class EmulatorProcess:
    """`python -m server.payments.emulator` as a child in its own session, stopped by PID."""

    def __init__(self, port: int, secret_key: str, webhook_secret: str, webhook_urls: list[str],
                 log_path: Path) -> None:
        self.port, self.secret_key, self.webhook_secret = port, secret_key, webhook_secret
        self.webhook_urls, self.log_path = webhook_urls, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmulatorProcess:
        import urllib.request

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "server.payments.emulator", "--port", str(self.port),
                "--secret-key", self.secret_key, "--webhook-secret", self.webhook_secret]
        for url in self.webhook_urls:
            argv += ["--webhook-url", url]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stripe emulator exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/_emulator/health", timeout=1):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"stripe emulator did not start within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server.payments.emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--webhook-secret", required=True)
    parser.add_argument("--webhook-url", action="append", default=[])
    parser.add_argument("--public-url", help="base of hosted page URLs (default http://HOST:PORT)")
    args = parser.parse_args(argv)
    public = args.public_url or f"http://{args.host}:{args.port}"
    web.run_app(create_app(args.secret_key, args.webhook_secret, public, args.webhook_url), host=args.host,
                port=args.port, access_log=None, print=lambda _m: print(f"stripe emulator on {public}", flush=True))


if __name__ == "__main__":
    main()

