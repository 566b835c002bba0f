"""The one place that talks to Stripe, through the official library's async client (aiohttp transport,
so no call blocks the event loop). STRIPE_API_BASE points it at the local emulator
(server/payments/emulator.py) for `make run` and the tests; nothing is patched."""

from __future__ import annotations

from typing import Any

import stripe

from server.errors import ApiError
from server.settings import Settings

WEBHOOK_TOLERANCE_S = 300  # Stripe's default: older signatures are replays


class StripeApi:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._http = stripe.AIOHTTPClient()
        kwargs: dict[str, Any] = {}
        if settings.stripe_api_base:
            kwargs["base_addresses"] = {"api": settings.stripe_api_base.rstrip("/")}
        self._client = stripe.StripeClient(settings.stripe_secret_key or "sk_unset", http_client=self._http,
                                           max_network_retries=2, **kwargs)

    @property
    def configured(self) -> bool:
        return bool(self.settings.stripe_secret_key)

    def _require(self) -> None:
        if not self.configured:
            raise ApiError(503, "payments_unavailable", "Payments are not configured on this server")

    async def create_checkout(self, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        self._require()
        session = await self._client.v1.checkout.sessions.create_async(
            params, {"idempotency_key": idempotency_key})  # type: ignore[arg-type]
        return session.to_dict()

    async def retrieve_checkout(self, session_id: str) -> dict[str, Any]:
        self._require()
        return (await self._client.v1.checkout.sessions.retrieve_async(session_id)).to_dict()

    async def list_checkouts(self, **params: Any) -> list[dict[str, Any]]:
        """Every session matching `params` (e.g. created={"gte": ts}), following the pages."""
        self._require()
        out: list[dict[str, Any]] = []
        page = await self._client.v1.checkout.sessions.list_async({"limit": 100, **params})  # type: ignore[arg-type]
        while True:
            out.extend(s.to_dict() for s in page.data)
            if not page.has_more or not page.data:
                return out
            page = await self._client.v1.checkout.sessions.list_async(
                {"limit": 100, **params, "starting_after": page.data[-1].id})  # type: ignore[arg-type]

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event, if Stripe signed this exact body recently; raises ValueError otherwise.
        (An HMAC over the body: cheap enough for the event loop.)"""
        if not self.settings.stripe_webhook_secret:
            raise ApiError(503, "payments_unavailable", "Payments are not configured on this server")
        try:
            event = stripe.Webhook.construct_event(payload, signature or "", self.settings.stripe_webhook_secret,
                                                   tolerance=WEBHOOK_TOLERANCE_S)
        except stripe.SignatureVerificationError as exc:
            raise ValueError(f"bad signature: {exc.user_message or exc}") from None
        return event.to_dict()

    async def close(self) -> None:
        await self._http.close_async()
