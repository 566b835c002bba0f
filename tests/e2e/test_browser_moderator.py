"""Chromium on the moderator page (frontend-stub/moderator.html, served at /moderator): a moderator
enrolled for TOTP from the CLI signs in with the code, opens an auto-banned user's report and sees the
evidence (selfie, intro video, transcript, who reported and whether they met), decides "permanent" in
one click and finds the user on the blacklist; a second auto-banned user is vindicated from the review
panel and can call again. Markup planted in a name, a report reason and a chat line stays inert text
under the page's strict Content-Security-Policy. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pyotp
import pytest

from server.settings import Settings
from server.stack import Stack
from tests.conftest import reset_state
from tests.e2e.browser.chromium import open_page, require_chromium
from tests.moderation_kit import met
from tests.multinode.conftest import Cluster, Node
from tests.rt import Peer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

EVIL_NAME = '<img src=x onerror="__pwned=1">M'
EVIL_REASON = '<script>window.__pwned=2</script><b>bold</b> said awful things'
EVIL_CHAT = '<img src=y onerror="window.__pwned=3">hi'
PASSWORD = "moderator pass 1"


@pytest.fixture(scope="module")
def node(stack: Stack, base_settings: Settings) -> Iterator[Node]:
    require_chromium()
    asyncio.run(reset_state(base_settings))
    cluster = Cluster(stack, {"REQUIRE_PAYMENT": "false", "ADMIN_LOGIN_FAILURE_DELAY_SECONDS": "0.1"}, count=1)
    cluster.env["ALLOWED_ORIGINS"] = cluster.nodes[0].url
    cluster.start()
    try:
        yield cluster.nodes[0]
    finally:
        cluster.stop()


async def _guest(http: aiohttp.ClientSession, node: Node, name: str) -> dict[str, Any]:
    async with http.post(f"{node.url}/auth/guest", json={"name": name, "gender": "male"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _report(http: aiohttp.ClientSession, node: Node, reporter: dict[str, Any], target: dict[str, Any],
                  reason: str) -> dict[str, Any]:
    async with http.post(f"{node.url}/report/user", json={"reportedUserId": target["userId"], "reason": reason},
                         headers={"Authorization": f"Bearer {reporter['sessionToken']}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _setup(http: aiohttp.ClientSession, node: Node, db: asyncpg.Connection, stack: Stack) -> dict[str, Any]:
    mod = await _guest(http, node, "Moderator")
    async with http.post(f"{node.url}/auth/link", json={"sessionToken": mod["sessionToken"], "email": "mod@example.com",
                                                         "password": PASSWORD}) as resp:
        assert resp.status == 200
    await db.execute("UPDATE users SET role = 'admin' WHERE id = $1", mod["userId"])
    env = {**os.environ, **stack.env(), "LOG_LEVEL": "WARNING"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "server", "user", "totp-enroll", "mod@example.com"], env=env,
        capture_output=True, text=True, timeout=60, check=True)
    secret = re.search(r"secret: ([A-Z2-7]+)", done.stdout).group(1)

    bad, vindi, friend = (await _guest(http, node, EVIL_NAME), await _guest(http, node, "Vindi"),
                          await _guest(http, node, "Friend"))
    for u in (bad, vindi, friend):
        await db.execute("UPDATE users SET selfie_key = $2, video_key = $3 WHERE id = $1", u["userId"],
                         f"users/{u['userId']}/selfie-1.jpg", f"users/{u['userId']}/intro-1.webm")
    reporters = [await _guest(http, node, f"Reporter{i}") for i in range(4)]
    for i, r in enumerate(reporters):
        chat = [{"from": bad["userId"], "text": EVIL_CHAT, "timestamp": 1, "type": "message"}] if i == 0 else []
        await met(db, bad["userId"], r["userId"], messages=chat)
        await met(db, vindi["userId"], r["userId"])
    results = [await _report(http, node, r, bad, EVIL_REASON if i == 0 else "rude") for i, r in enumerate(reporters)]
    assert results[-1]["autoBanned"] is True
    assert [await _report(http, node, r, vindi, "mistaken") for r in reporters][-1]["autoBanned"] is True
    evil_report = results[0]["reportId"]
    return {"secret": secret, "bad": bad, "vindi": vindi, "friend": friend, "evil_report": evil_report}


async def _inert(page: Any) -> None:
    pwned = await page.evaluate("window.__pwned === undefined")
    assert pwned, "planted markup ran"
    assert await page.locator('img[src="x"], img[src="y"], b').count() == 0


async def test_moderator_works_the_queue_in_chromium(node: Node, base_settings: Settings, stack: Stack,
                                                     artifacts: Path, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    shots = artifacts / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    db = await asyncpg.connect(base_settings.database_url)
    try:
        async with aiohttp.ClientSession() as http:
            s = await _setup(http, node, db, stack)
            async with http.get(f"{node.url}/moderator") as resp:
                csp = resp.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
            async with http.get(f"{node.url}/") as resp:
                assert resp.headers["Content-Security-Policy"] == csp  # the whole stub

            async with async_playwright() as pw, open_page(pw, tmp_path / "mod", "moderator", shots) as (page, log):
                await page.goto(f"{node.url}/moderator")
                await page.wait_for_selector("#mod-login:not([hidden])")
                await page.fill("#mod-username", "mod@example.com")
                await page.fill("#mod-password", PASSWORD)
                await page.fill("#mod-totp", "123456" if pyotp.TOTP(s["secret"]).now() != "123456" else "654321")
                await page.click("#mod-login-submit")
                # (locator waits: wait_for_function would evaluate a string, which this page's CSP forbids)
                await page.locator("#mod-login-error", has_text="Invalid").wait_for()
                assert "Invalid credentials" in await page.text_content("#mod-login-error")
                await page.fill("#mod-totp", pyotp.TOTP(s["secret"]).now())
                await page.click("#mod-login-submit")
                await page.wait_for_selector("#mod-app:not([hidden])")
                assert "admin" in await page.text_content("#mod-whoami")

                # The queue: the planted name and reason are shown as text.
                item = page.locator(f'li[data-report-id="{s["evil_report"]}"]')
                await item.wait_for()
                assert await item.locator(".name").text_content() == EVIL_NAME
                assert await item.locator(".reason").text_content() == EVIL_REASON
                await item.get_by_role("button", name="Open").click()
                await page.wait_for_selector("#report-detail:not([hidden])")
                assert await page.text_content("#detail-name") == EVIL_NAME
                assert await page.text_content("#detail-reason") == EVIL_REASON
                assert (await page.text_content("#detail-met")).startswith("yes")
                assert await page.text_content("#detail-reporter") == "Reporter0"
                assert await page.locator("#detail-transcript li").first.text_content() == f"{EVIL_NAME}: {EVIL_CHAT}"
                assert (await page.get_attribute("#detail-selfie", "src")).startswith("http")
                assert (await page.get_attribute("#detail-video", "src")).startswith("http")
                assert await page.text_content("#detail-ip") == "127.0.0.1"  # an admin sees the reporter's IP
                assert await page.text_content("#detail-ban") == "ban: temporary"
                await _inert(page)
                await page.screenshot(path=str(shots / "moderator_report_evidence.png"), full_page=True)

                await page.click("#act-permanent")
                await page.locator("#mod-status", has_text="done").wait_for()
                await page.locator("#detail-ban", has_text="ban: permanent").wait_for()
                await page.click('[data-tab="blacklist"]')
                entry = page.locator("#blacklist-list li .name")
                await entry.first.wait_for()
                assert await entry.all_text_contents() == [EVIL_NAME]
                await _inert(page)
                await page.screenshot(path=str(shots / "moderator_blacklist.png"), full_page=True)

                # The review panel (the original admin page's): vindicate the second user.
                await page.click('[data-tab="pending"]')
                row = page.locator(f'#pending-list li[data-user-id="{s["vindi"]["userId"]}"]')
                await row.wait_for()
                await page.screenshot(path=str(shots / "moderator_pending.png"), full_page=True)
                await row.locator('[data-decision="vindicated"]').click()
                await row.wait_for(state="detached")
                await page.click('[data-tab="stats"]')
                await page.wait_for_selector('[data-stat="permanentBans"]')
                assert await page.text_content('[data-stat="permanentBans"]') == "1"
                assert await page.text_content('[data-stat="vindicated"]') == "1"
                await page.click('[data-tab="audit"]')
                await page.wait_for_selector("#audit-rows tr")
                actions = await page.locator("#audit-rows tr td:nth-child(3)").all_text_contents()
                assert {"ban_permanent", "unban", "auto_ban", "admin_login"} <= set(actions)
                await page.click('[data-tab="codes"]')
                await page.click("#code-form button")
                await page.wait_for_selector("#code-new:not([hidden])")
                code = await page.text_content("#code-text")
                assert re.fullmatch(r"[A-Z0-9]{16}", code)
                for _ in range(50):
                    if await page.evaluate("document.querySelector('#code-qr').naturalWidth") > 0:
                        break
                    await asyncio.sleep(0.1)
                assert await page.evaluate("document.querySelector('#code-qr').naturalWidth") > 0
                await page.locator(f'#codes-list li[data-code="{code}"] button').click()
                await page.wait_for_selector(f'#codes-list li[data-code="{code}"] >> text=deactivated')
                await _inert(page)
                assert not [line for line in log.lines if "Content Security Policy" in line or "pageerror" in line]

        # The vindicated user can call again; the banned one cannot connect.
        vindi, friend = s["vindi"], s["friend"]
        pf = await Peer(node.url, friend["sessionToken"], friend["userId"], "friend").connect()
        pv = await Peer(node.url, vindi["sessionToken"], vindi["userId"], "vindi").connect()
        try:
            await pf.emit("queue:join")
            await pf.wait("queue:update", where=lambda d: d["userId"] == friend["userId"])
            await pv.emit("call:invite", {"toUserId": friend["userId"], "requestedSeconds": 60})
            notify = await pf.wait("call:notify")
            assert notify["fromUser"]["userId"] == vindi["userId"]
        finally:
            await pv.close()
            await pf.close()
        banned = Peer(node.url, s["bad"]["sessionToken"], s["bad"]["userId"], "bad")
        with pytest.raises(Exception):  # noqa: B017  (connect_error: Account suspended)
            await banned.connect()
        await banned.close()
    finally:
        await db.close()
