"""The introduction scenario of issue 13 in Chromium, with the browser stub and two browsers.

Browser 1 holds two tabs (the stub keeps its session per tab): Alice on node 1 and Bob on node 2.
Alice introduces a friend to Bob from Bob's card and gets a link. Browser 2 opens the link on node 1
as Cleo: the sign-up page says who introduced her to whom; she signs up through the form and records
her selfie and intro with the fake camera (real uploads). Bob sees the notification popup live
(across nodes) and lists Cleo under "Introduced to you"; he presses "Call now", Cleo accepts, and
media flows both ways (relay-only through the session's coturn). Then Cleo, in her account settings,
downloads her data and deletes her account: her page is signed out, Bob's call ends normally, and
nothing of hers is left in the bucket.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from server.settings import Settings
from tests.e2e.browser.chromium import BrowserLog, open_page
from tests.e2e.test_browser_calls import (  # noqa: F401  (nodes: the two-node cluster fixture)
    MEDIA_WITHIN_S,
    give_profile_media,
    nodes,
    signup,
    wait_media,
)
from tests.multinode.conftest import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _watch(page: Any, log: BrowserLog) -> None:
    page.on("console", lambda m: log.add(f"console.{m.type}", m.text))
    page.on("pageerror", lambda e: log.add("pageerror", str(e)))


async def test_a_introduces_c_to_b_who_sees_it_live_and_calls(nodes: Cluster, base_settings: Settings,  # noqa: F811
                                                               s3: Any, artifacts: Path, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    n1, n2 = nodes[0], nodes[1]
    marks = {n.name: n.log_size() for n in nodes.nodes}
    out = artifacts / "browser"
    async with async_playwright() as pw, \
            open_page(pw, tmp_path / "browser1", "intro_alice", out) as (pa, _la), \
            open_page(pw, tmp_path / "browser2", "intro_cleo", out) as (pc, lc):
        pb = await pa.context.new_page()  # a second tab of browser 1: Bob
        lb = BrowserLog("intro_bob")
        _watch(pb, lb)
        try:
            await asyncio.gather(pa.goto(f"{n1.url}/?relay=1"), pb.goto(f"{n2.url}/?relay=1"))
            _alice_id, bob_id = await asyncio.gather(signup(pa, "Alice", "female"), signup(pb, "Bob", "male"))
            await give_profile_media([pa, pb])

            # Alice introduces a friend to Bob from his card.
            await pa.click("#refresh")
            introduce = pa.locator(f'button[data-introduce="{bob_id}"]')
            await introduce.wait_for(timeout=10_000)
            await introduce.click()
            await pa.locator("#intro-share:not([hidden])").wait_for(timeout=5_000)
            link = await pa.input_value("#intro-link")
            assert re.fullmatch(rf"{re.escape(n1.url)}/onboarding\?ref=[A-Z0-9]{{10}}", link), link
            await pa.screenshot(path=str(out / "intro_link.png"), full_page=True)

            # Cleo opens the link in another browser: the sign-up page says who introduced her to whom.
            await pc.goto(f"{link}&relay=1")
            banner = pc.locator("#intro-banner-text")
            await banner.wait_for(timeout=10_000)
            assert "Alice introduced you to Bob" in await banner.inner_text()
            await pc.screenshot(path=str(out / "intro_onboarding.png"), full_page=True)
            cleo_id = await signup(pc, "Cleo", "nonbinary")
            await pc.click("#profile-record")  # selfie + 3 s intro from the fake camera, uploaded
            await pc.locator("#profile-status", has_text="Done").wait_for(timeout=30_000)

            # Bob, connected all along to the other node, sees the notification live.
            popup = pb.locator("#intro-popup[open]")
            await popup.wait_for(timeout=10_000)
            text = await pb.inner_text("#intro-popup-text")
            assert "Alice introduced Cleo to you" in text, text
            await pb.locator(f'#intro-list li[data-introduced="{cleo_id}"]').wait_for(timeout=5_000)
            await pb.screenshot(path=str(out / "intro_notification.png"), full_page=True)

            # "Call now": Cleo gets the incoming call, accepts, and media flows both ways.
            await pb.click("#intro-call")
            await pc.locator("#incoming").wait_for(state="visible", timeout=10_000)
            assert "Bob" in await pc.inner_text("#incoming-text")
            await pc.click("#incoming-accept")
            await asyncio.gather(wait_media(pb, lb, MEDIA_WITHIN_S), wait_media(pc, lc, MEDIA_WITHIN_S))

            # Cleo's account settings: her data, then deletion (mid-call).
            await pc.click("#account-open")
            await pc.click("#account-export")
            await pc.locator("#account-export-link:not([hidden])").wait_for(timeout=10_000)
            exported = await pc.evaluate("window.__napalmExport")
            assert exported["profile"]["userId"] == cleo_id and exported["profile"]["introducedByName"] == "Alice"
            assert {o["current"] for o in exported["media"]["objects"]} == {"selfie", "video"}
            await pc.click("#account-delete")
            await pc.click("#account-delete-confirm")
            await pc.locator("#view-signup:not([hidden])").wait_for(timeout=10_000)
            assert "deleted" in await pc.inner_text("#signup-error")
            await pb.locator("#view-ended:not([hidden])").wait_for(timeout=10_000)
            await pb.screenshot(path=str(out / "intro_partner_after_deletion.png"), full_page=True)
        finally:
            lb.save(out)

    listed = s3.list_objects_v2(Bucket=base_settings.s3_bucket, Prefix=f"users/{cleo_id}/")
    assert listed.get("KeyCount", 0) == 0, listed.get("Contents")
    conn = await asyncpg.connect(base_settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", cleo_id) == 0
        history = await conn.fetchval("SELECT partner_name FROM call_history WHERE user_id = $1", bob_id)
        assert history in (None, "Deleted user")  # kept only if the call lasted 5 s, and then anonymised
    finally:
        await conn.close()
    errors = [f"{n.name}: {line}" for n in nodes.nodes for line in n.errors_since(marks[n.name])]
    assert not errors, "server errors during the test:\n" + "\n".join(errors[:20])
