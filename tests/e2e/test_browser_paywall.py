"""Chromium on the browser stub with the paywall on (REQUIRE_PAYMENT=true) against a real server process
and the local Stripe emulator: sign up -> paywall -> local checkout (cancel once, then pay) -> back on
/payment-success -> the deck, with the user's own invite code and its QR in the lobby; a second person
gets in with that code on the paywall. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from server.stack import Stack, free_port
from tests.e2e.browser.chromium import open_page, require_chromium
from tests.multinode.conftest import BASE_ENV, Node
from tests.stripe_control import Stripe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def node(stack: Stack, stripe_emulator: Any) -> Iterator[Node]:
    require_chromium()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **stack.env(), **BASE_ENV, "PYTHONUNBUFFERED": "1", "REQUIRE_PAYMENT": "true",
           "STRIPE_SECRET_KEY": stripe_emulator.secret_key, "STRIPE_WEBHOOK_SECRET": stripe_emulator.webhook_secret,
           "STRIPE_API_BASE": stripe_emulator.url, "FRONTEND_URL": url, "PUBLIC_URL": url, "ALLOWED_ORIGINS": url,
           "STRIPE_LOOKUP_INTERVAL_SECONDS": "2"}
    env.pop("PYTEST_CURRENT_TEST", None)
    n = Node("paywall-node", env, port=port).start()
    try:
        yield n
    finally:
        n.stop()


async def signup(page: Any, name: str) -> str:
    await page.wait_for_selector("#view-signup:not([hidden])")
    await page.fill("#signup-name", name)
    await page.click("#signup-submit")
    await page.wait_for_selector("#view-paywall:not([hidden]), #view-lobby:not([hidden])")
    return await page.evaluate("window.__napalm.session.userId")


async def until(page: Any, expression: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll an expression (the stub's CSP forbids the eval behind Playwright's wait_for_function)."""
    end = time.monotonic() + timeout
    while not await page.evaluate(expression):
        assert time.monotonic() < end, f"not true within {timeout}s: {expression}"
        await asyncio.sleep(0.1)


async def test_pay_in_the_local_checkout_then_a_friend_uses_the_code(node: Node, stripe_emulator: Any,
                                                                    base_settings: Any, artifacts: Any,
                                                                    tmp_path: Any) -> None:
    from playwright.async_api import async_playwright

    from tests.conftest import reset_state

    await reset_state(base_settings)
    stripe = Stripe(stripe_emulator.url)
    await stripe.reset(f"{node.url}/payment/webhook")
    out = artifacts / "browser"
    async with async_playwright() as pw:
        async with open_page(pw, tmp_path / "payer", "chromium_paywall_payer", out) as (page, log):
            await page.goto(f"{node.url}/")
            user_id = await signup(page, "Petra")
            await page.wait_for_selector("#view-paywall:not([hidden])")
            await page.screenshot(path=str(out / "stub_paywall.png"), full_page=True)

            # Cancel on the checkout page: back to /onboarding, i.e. the paywall again.
            await page.click("#paywall-pay")
            await page.wait_for_url(f"{stripe_emulator.url}/c/pay/**")
            await page.click("#cancel")
            await page.wait_for_url(f"{node.url}/**")
            await page.wait_for_selector("#view-paywall:not([hidden])")

            await page.click("#paywall-pay")
            await page.wait_for_url(f"{stripe_emulator.url}/c/pay/**")
            assert "0.50 USD" in await page.inner_text("#amount")
            await page.screenshot(path=str(out / "stub_local_checkout.png"), full_page=True)
            await page.click("#pay")
            await page.wait_for_url(f"{node.url}/payment-success?session_id=cs_test_*")
            await page.wait_for_selector("#view-lobby:not([hidden])", timeout=20_000)
            assert page.url == f"{node.url}/", page.url  # the return URL is consumed
            await page.wait_for_selector("#my-code:not([hidden])")
            code = (await page.inner_text("#my-code-text")).strip()
            assert len(code) == 16 and (await page.inner_text("#my-code-uses")).strip() == "4"
            await until(page, "document.getElementById('my-code-qr').naturalWidth > 0")
            await page.screenshot(path=str(out / "stub_paid_lobby_with_code.png"), full_page=True)
            assert "pageerror" not in log.tail(200), log.tail()

        async with open_page(pw, tmp_path / "friend", "chromium_paywall_friend", out) as (page, log):
            await page.goto(f"{node.url}/")
            friend_id = await signup(page, "Fritz")
            await page.wait_for_selector("#view-paywall:not([hidden])")
            await page.fill("#paywall-code", "WRONGWRONGWRONG1")
            await page.click("#paywall-code-submit")
            await page.locator("#paywall-error", has_text="Invalid invite code").wait_for()
            await page.fill("#paywall-code", code.lower())
            await page.click("#paywall-code-submit")
            await page.wait_for_selector("#view-lobby:not([hidden])", timeout=10_000)
            assert "pageerror" not in log.tail(200), log.tail()

    conn = await asyncpg.connect(base_settings.database_url)
    try:
        rows = {str(r["id"]): r["paid_status"] for r in await conn.fetch("SELECT id, paid_status FROM users")}
        assert rows == {user_id: "paid", friend_id: "qr_grace_period"}
        assert await conn.fetchval("SELECT uses_remaining FROM invite_codes WHERE code = $1", code) == 3
        assert await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'completed'") == 1
    finally:
        await conn.close()
