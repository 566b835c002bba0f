"""Chromium running the browser stub (frontend-stub/) in real calls, with real media.

Chromium <-> Chromium: each page is served by a different server node (two processes sharing the
session's Postgres and Redis, as in tests/multinode), signs up through the form, invites / accepts
through the UI, and connects with TURN credentials fetched by the page from its node. `?relay=1`
makes both sides relay-only, so media goes through the session's coturn (see
tests/e2e/browser/chromium.py for why that, and not `unshare --net`). Media must flow both ways:
the test reads decoded and sent frame counts from getStats() (window.__stats()), never page text.
A screenshot of each page is saved under test-artifacts/browser/.

Chromium <-> aiortc bot (bots/client.py), browser on one node and bot on the other, both relay-only,
in both roles: the browser invites a waiting bot (the browser offers, the bot answers), and a bot
invites the first user of its deck, a browser that put itself there by recording its selfie and intro
with the stub (real JPEG/WebM uploads). The bot must receive frames from the browser's camera; the
browser must decode the bot's frames, and the frame numbers the bot draws are read back out of the
browser's <video> element (so the pixels shown really are the bot's, in order).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.settings import Settings
from server.stack import Stack
from tests.conftest import reset_state
from tests.e2e.browser.chromium import BrowserLog, brief, open_page, require_chromium, stats
from tests.helpers import auth
from tests.integration.test_media_samples import JPEG_HEAD, WEBM_HEAD, form, sample
from tests.multinode.conftest import Cluster, Node

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

MIN_FRAMES = 30
MEDIA_WITHIN_S = 25.0
# Real invite window (the multinode suite shortens it to 2 s); payment off so guests can go online.
# Protocol reconnect grace (15 s; the multinode suite uses 3) so a page reload always makes it back.
NODE_ENV = {"REQUIRE_PAYMENT": "false", "INVITE_TTL_MS": "20000", "INVITE_EXPIRY_GRACE_MS": "2000",
            "DISCONNECT_GRACE_SECONDS": "15"}


@pytest.fixture(scope="module")
def nodes(stack: Stack, base_settings: Settings) -> Iterator[Cluster]:
    require_chromium()
    asyncio.run(reset_state(base_settings))  # no one left online by earlier tests
    cluster = Cluster(stack, NODE_ENV)
    # Each node serves the stub itself, so its own origin must pass the Socket.IO/CORS allow-list
    # (ports are known only now; the nodes share this environment dict).
    cluster.env["ALLOWED_ORIGINS"] = ",".join(n.url for n in cluster.nodes)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def signup(page: Any, name: str, gender: str) -> str:
    await page.wait_for_selector("#view-signup:not([hidden])")
    await page.fill("#signup-name", name)
    await page.select_option("#signup-gender", gender)
    await page.click("#signup-submit")
    await page.wait_for_selector("#view-lobby:not([hidden])")
    return await page.evaluate("window.__napalm.session.userId")


async def give_profile_media(pages: list[Any]) -> None:
    """The queue lists only users with a selfie and an intro video: each page's user uploads small ones
    through its node's API (what the stub's camera button sends, without the 3 s recording). Keys set
    in Postgres behind the server's back would leave a node's cached card without media for up to 30 s
    (presence/deck.py); an upload drops it on every node and tells the lobbies to refetch."""
    async with aiohttp.ClientSession() as http:
        for page in pages:
            origin = re.match(r"https?://[^/]+", page.url)
            assert origin, page.url
            token = await page.evaluate("window.__napalm.session.sessionToken")
            for kind, data, name, mime in (("selfie", sample(JPEG_HEAD, 2000), "selfie.jpg", "image/jpeg"),
                                           ("video", sample(WEBM_HEAD, 2000), "intro.webm", "video/webm")):
                async with http.post(f"{origin[0]}/media/{kind}", data=form(kind, data, name, mime),
                                     headers=auth(token)) as resp:
                    assert resp.status == 200, await resp.text()


def _video(s: dict[str, Any], direction: str) -> dict[str, Any]:
    return (s.get(direction) or {}).get("video") or {}


async def wait_media(page: Any, log: BrowserLog, within: float,
                     where: Callable[[dict[str, Any]], bool] = lambda s: True) -> dict[str, Any]:
    """Until this page has decoded and sent more than MIN_FRAMES video frames (on a connection `where`
    accepts: the counters restart with each new peer connection)."""
    end = time.monotonic() + within
    while True:
        s = await stats(page)
        if (_video(s, "inbound").get("framesDecoded") or 0) > MIN_FRAMES \
                and (_video(s, "outbound").get("framesSent") or 0) > MIN_FRAMES and where(s):
            return s
        if time.monotonic() > end:
            pytest.fail(f"{log.name}: no media within {within}s: {brief(s)}\n--- console ---\n{log.tail()}")
        await asyncio.sleep(0.2)


async def fps(page: Any, seconds: float = 2.0) -> float:
    a, t0 = await stats(page), time.monotonic()
    await asyncio.sleep(seconds)
    b, t1 = await stats(page), time.monotonic()
    return (_video(b, "inbound")["framesDecoded"] - _video(a, "inbound")["framesDecoded"]) / (t1 - t0)


async def invite_and_accept(base_settings: Settings, pa: Any, pb: Any, names: tuple[str, str],
                            shots: Path | None = None) -> tuple[str, str]:
    """Both pages sign up through the form; the caller (pa) finds the callee (pb) in its online list,
    invites for 60 s, and the callee accepts in the incoming-call dialog. Returns the user ids.
    With `shots`, screenshots of the online list and of the incoming call go there."""
    caller_id, callee_id = await asyncio.gather(signup(pa, names[0], "female"), signup(pb, names[1], "male"))
    await give_profile_media([pa, pb])
    await pa.click("#refresh")
    invite = pa.locator(f'button[data-invite="{callee_id}"]')
    await invite.wait_for(timeout=10_000)
    await pa.fill("#duration", "60")
    if shots is not None:
        await pa.screenshot(path=str(shots / "stub_online_list.png"), full_page=True)
    await invite.click()
    await pb.locator("#incoming").wait_for(state="visible", timeout=10_000)
    if shots is not None:
        await pb.screenshot(path=str(shots / "stub_incoming_call.png"))
    await pb.click("#incoming-accept")
    return caller_id, callee_id


@pytest.mark.parametrize("signalling", ["gathered", "trickle"])
async def test_chromium_to_chromium_across_two_nodes(signalling: str, nodes: Cluster, base_settings: Settings,
                                                     stack: Stack, artifacts: Path, tmp_path: Path) -> None:
    """"gathered": each description goes out once ICE gathering is complete, candidates inside (the
    stub's default); "trickle" (?trickle=1): descriptions at once, every candidate as rtc:ice."""
    from playwright.async_api import async_playwright

    n1, n2 = nodes[0], nodes[1]
    marks = {n.name: n.log_size() for n in nodes.nodes}
    out = artifacts / "browser"
    async with async_playwright() as pw, \
            open_page(pw, tmp_path / "caller", f"chromium_caller_{signalling}", out) as (pa, la), \
            open_page(pw, tmp_path / "callee", f"chromium_callee_{signalling}", out) as (pb, lb):
        query = "?relay=1" + ("&trickle=1" if signalling == "trickle" else "")
        await asyncio.gather(pa.goto(f"{n1.url}/{query}"), pb.goto(f"{n2.url}/{query}"))
        shots = out if signalling == "gathered" else None
        # The caller on node 1 invites the callee on node 2.
        await invite_and_accept(base_settings, pa, pb, ("Alice", "Bob"), shots=shots)
        t_accept = time.monotonic()

        sa, sb = await asyncio.gather(wait_media(pa, la, MEDIA_WITHIN_S), wait_media(pb, lb, MEDIA_WITHIN_S))
        media_s = time.monotonic() - t_accept
        fps_a, fps_b = await asyncio.gather(fps(pa), fps(pb))
        sa, sb = await asyncio.gather(stats(pa), stats(pb))

        low, high = stack.relay_ports
        for s, log in ((sa, la), (sb, lb)):
            assert s["connectionState"] == "connected", (log.name, brief(s))
            assert _video(s, "inbound")["framesDecoded"] > MIN_FRAMES, brief(s)
            assert _video(s, "outbound")["framesSent"] > MIN_FRAMES, brief(s)
            assert _video(s, "inbound")["frameWidth"] > 0, brief(s)
            assert ((s["inbound"].get("audio") or {}).get("packetsReceived") or 0) > 0, brief(s)
            pair = s["pair"]
            assert pair and pair["state"] == "succeeded", brief(s)
            # Relay on both ends, on this session's coturn.
            assert (pair["local"]["type"], pair["remote"]["type"]) == ("relay", "relay"), pair
            for end in (pair["local"], pair["remote"]):
                assert end["address"] == "127.0.0.1" and low <= end["port"] <= high, pair
            assert s["iceProvider"] and s["relayOnly"], s
            if signalling == "trickle":  # the partner's candidates all came as rtc:ice
                assert s["trickle"] and s["trickledIn"] > 0 and s["trickledOut"] > 0, s
            else:  # all inside the SDP
                assert s["trickledIn"] == 0 and s["trickledOut"] == 0, s
        assert fps_a > 5 and fps_b > 5, (fps_a, fps_b)
        # Both pages reported call:connected (E11): the server's deadline, which each page counts down
        # to, shrank from accept + 60 s + 90 s to connected + 60 s + 5 s.
        for p in (pa, pb):
            left = await p.evaluate("(window.__napalm.call.endsAt - (Date.now() + window.__napalm.clockOffset)) / 1000")
            assert 45 < left <= 65.5, left

        # Timings from the pages' own clocks (one machine): accept click -> media connected.
        tl_a, tl_b = sa["timeline"], sb["timeline"]
        accept_ms = tl_b["acceptClicked"]
        report = {
            "acceptToConnectedMs": {"caller": tl_a["connected"] - accept_ms, "callee": tl_b["connected"] - accept_ms},
            "acceptToFirstFrameMs": {"caller": tl_a.get("firstFrame", 0) - accept_ms,
                                     "callee": tl_b.get("firstFrame", 0) - accept_ms},
            "acceptToMoreThan30FramesBothWaysS": round(media_s, 3),
            "decodedFps": {"caller": round(fps_a, 1), "callee": round(fps_b, 1)},
            "caller": sa, "callee": sb, "nodes": {"caller": n1.url, "callee": n2.url},
        }

        # Chat crosses the nodes too (the sender sees its own message only from the server's echo).
        await pa.fill("#chat-input", "hello from Alice")
        await pa.press("#chat-input", "Enter")
        await pb.locator("#chat-log li", has_text="hello from Alice").wait_for(timeout=5_000)
        await pa.locator("#chat-log li", has_text="hello from Alice").wait_for(timeout=5_000)

        await asyncio.gather(pa.screenshot(path=str(out / f"chromium_caller_{signalling}.png"), full_page=True),
                             pb.screenshot(path=str(out / f"chromium_callee_{signalling}.png"), full_page=True))

        # Ending from one side lands both on the end screen (session:finalized).
        await pa.click("#end-call")
        await asyncio.gather(pa.wait_for_selector("#view-ended:not([hidden])", timeout=10_000),
                             pb.wait_for_selector("#view-ended:not([hidden])", timeout=10_000))
        ended = await asyncio.gather(pa.evaluate("window.__napalm.lastEnded"), pb.evaluate("window.__napalm.lastEnded"))
        if shots is not None:
            await pb.screenshot(path=str(shots / "stub_session_ended.png"))
        assert ended[0]["sessionId"] and ended[0]["sessionId"] == ended[1]["sessionId"], ended

    (out / f"chromium_pair_{signalling}.json").write_text(json.dumps(report, indent=2))
    print(f"\nChromium<->Chromium across two nodes ({signalling}):", json.dumps(
        {k: report[k] for k in ("acceptToConnectedMs", "acceptToFirstFrameMs",
                                "acceptToMoreThan30FramesBothWaysS", "decodedFps")}))
    errors = [f"{n.name}: {line}" for n in nodes.nodes for line in n.errors_since(marks[n.name])]
    assert not errors, "server errors during the test:\n" + "\n".join(errors[:20])



async def test_chromium_reload_mid_call_resumes_media(nodes: Cluster, base_settings: Settings, artifacts: Path,
                                                      tmp_path: Path) -> None:
    """The callee reloads its page mid-call (E3): the server puts the new socket back into the room
    (call:resume), the reloaded page offers from a new peer connection, the caller replaces its own,
    and media flows both ways again on the new connections."""
    from playwright.async_api import async_playwright

    n1, n2 = nodes[0], nodes[1]
    marks = {n.name: n.log_size() for n in nodes.nodes}
    out = artifacts / "browser"
    async with async_playwright() as pw, \
            open_page(pw, tmp_path / "caller", "reload_caller", out) as (pa, la), \
            open_page(pw, tmp_path / "callee", "reload_callee", out) as (pb, lb):
        await asyncio.gather(pa.goto(f"{n1.url}/?relay=1"), pb.goto(f"{n2.url}/?relay=1"))
        await invite_and_accept(base_settings, pa, pb, ("Dora", "Eve"))
        before_a, before_b = await asyncio.gather(wait_media(pa, la, MEDIA_WITHIN_S),
                                                  wait_media(pb, lb, MEDIA_WITHIN_S))

        t_reload = time.monotonic()
        await pb.reload()
        after_b, after_a = await asyncio.gather(
            wait_media(pb, lb, MEDIA_WITHIN_S, where=lambda s: s["how"] == "resume"),
            wait_media(pa, la, MEDIA_WITHIN_S, where=lambda s: s["generation"] >= 2))
        resumed_s = time.monotonic() - t_reload
        assert after_a["roomId"] == after_b["roomId"] == before_a["roomId"] == before_b["roomId"]
        for s in (after_a, after_b):
            assert s["connectionState"] == "connected", brief(s)
            assert (s["pair"]["local"]["type"], s["pair"]["remote"]["type"]) == ("relay", "relay"), s["pair"]
        await pb.screenshot(path=str(out / "chromium_after_reload.png"), full_page=True)

        await pb.click("#end-call")
        await asyncio.gather(pa.wait_for_selector("#view-ended:not([hidden])", timeout=10_000),
                             pb.wait_for_selector("#view-ended:not([hidden])", timeout=10_000))

    print(f"\nreload -> media both ways again in {resumed_s:.2f}s")
    (out / "chromium_reload.json").write_text(json.dumps({"reloadToMediaBothWaysS": round(resumed_s, 3),
                                                           "caller": after_a, "callee": after_b}, indent=2))
    errors = [f"{n.name}: {line}" for n in nodes.nodes for line in n.errors_since(marks[n.name])]
    assert not errors, "server errors during the test:\n" + "\n".join(errors[:20])

# ---------------------------------------------------------------------------------- Chromium <-> bot
REMOTE_LUMA_JS = """() => {
  const v = document.getElementById("remote-video");
  const w = v.videoWidth, h = v.videoHeight;
  if (!w || !h) return null;
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const g = c.getContext("2d", { willReadFrequently: true });
  g.drawImage(v, 0, 0, w, h);
  const d = g.getImageData(0, 0, w, h).data;
  const y = new Uint8Array(w * h);  // BT.601 video-range luma, as the bot drew it
  for (let i = 0, j = 0; j < y.length; i += 4, j++) {
    y[j] = Math.round(16 + (65.481 * d[i] + 128.553 * d[i + 1] + 24.966 * d[i + 2]) / 255);
  }
  let s = "";
  for (let k = 0; k < y.length; k += 0x8000) s += String.fromCharCode.apply(null, y.subarray(k, k + 0x8000));
  return { w, h, data: btoa(s) };
}"""


async def shown_frame_number(page: Any) -> int | None:
    """The number the bot drew in the frame the browser's remote <video> shows now."""
    import base64

    from bots import media

    got = await page.evaluate(REMOTE_LUMA_JS)
    if not got:
        return None
    bits = media.read_bits(base64.b64decode(got["data"]), got["w"], got["h"], got["w"])
    return media.decode_bits(bits) if bits is not None else None


async def frame_numbers(page: Any, count: int = 3, gap: float = 0.4) -> list[int | None]:
    out = []
    for _ in range(count):
        out.append(await shown_frame_number(page))
        await asyncio.sleep(gap)
    return out


def make_bot(node: Node, lines: list[str], **opts: Any) -> Any:
    from bots.client import Bot, BotOptions

    return Bot(BotOptions(server=node.url, relay=True, requested_seconds=60, wait_timeout=30,
                          connect_timeout=30, **opts), log=lines.append)


@pytest.mark.parametrize("who_calls", ["browser", "bot"])
async def test_chromium_and_bot_across_two_nodes(who_calls: str, nodes: Cluster, stack: Stack, artifacts: Path,
                                                 tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    n1, n2 = nodes[0], nodes[1]
    marks = {n.name: n.log_size() for n in nodes.nodes}
    out = artifacts / "browser"
    bot_log: list[str] = []
    async with async_playwright() as pw, \
            open_page(pw, tmp_path / "profile", f"chromium_vs_bot_{who_calls}_calls", out) as (page, log):
        await page.goto(f"{n1.url}/?relay=1")
        await signup(page, f"Carol-{who_calls}", "female")
        if who_calls == "browser":
            bot = make_bot(n2, bot_log, name="WaitBot", mode="wait", seconds=10)
            bot_task = asyncio.create_task(bot.run())
            await asyncio.wait_for(bot.available.wait(), 15)
            await page.click("#refresh")
            invite = page.locator(f'button[data-invite="{bot.user_id}"]')
            await invite.wait_for(timeout=10_000)
            await page.fill("#duration", "60")
            await invite.click()
        else:
            # The stub's own profile step: a selfie and a 3 s intro from the (fake) camera, uploaded for
            # real, puts this browser in the bot's deck.
            await page.click("#profile-record")
            await page.locator("#profile-status", has_text="Done").wait_for(timeout=20_000)
            bot = make_bot(n2, bot_log, name="CallBot", mode="invite-first", seconds=10)
            bot_task = asyncio.create_task(bot.run())
            await page.locator("#incoming").wait_for(state="visible", timeout=20_000)
            await page.click("#incoming-accept")

        try:
            s = await wait_media(page, log, MEDIA_WITHIN_S)
            numbers = await frame_numbers(page)
            rate = await fps(page)
            s = await stats(page)
            await page.screenshot(path=str(out / f"chromium_vs_bot_{who_calls}_calls.png"), full_page=True)
            # The bot ends the call after 10 s of media: the browser lands on the end screen.
            summary = await asyncio.wait_for(bot_task, 30)
            await page.wait_for_selector("#view-ended:not([hidden])", timeout=10_000)
        finally:
            if not bot_task.done():
                bot_task.cancel()
            (out / f"bot_{who_calls}_calls.log").write_text("\n".join(bot_log) + "\n")

    assert summary["ok"], (summary, "\n".join(bot_log[-30:]))
    # The bot received the browser's camera...
    assert summary["framesReceived"] > MIN_FRAMES, summary
    # ... and the browser decoded the bot's video: counters, and the bot's frame numbers on screen, in order.
    assert _video(s, "inbound")["framesDecoded"] > MIN_FRAMES, brief(s)
    assert _video(s, "outbound")["framesSent"] > MIN_FRAMES, brief(s)
    readable = [n for n in numbers if n is not None]
    assert len(readable) >= 2 and readable == sorted(readable) and readable[-1] > readable[0], numbers
    low, high = stack.relay_ports
    pair = s["pair"]
    assert (pair["local"]["type"], pair["remote"]["type"]) == ("relay", "relay"), pair
    assert all(low <= end["port"] <= high for end in (pair["local"], pair["remote"])), pair
    bot_pair = summary["candidatePair"]
    assert (bot_pair["local"]["type"], bot_pair["remote"]["type"]) == ("relay", "relay"), bot_pair

    tl = s["timeline"]
    accept_ms = tl.get("acceptClicked")
    report = {
        "whoCalls": who_calls,
        "browser": {"acceptToConnectedMs": tl["connected"] - accept_ms if accept_ms else None,
                    "callStartToConnectedMs": tl["connected"] - tl["callStart"],
                    "decodedFps": round(rate, 1), "frameNumbersShown": numbers, "stats": s},
        "bot": {k: summary.get(k) for k in ("acceptToConnectedMs", "timeToConnectedMs", "timeToFirstFrameMs",
                                           "framesSent", "framesReceived", "receivedFps", "candidatePair",
                                           "endedBy")},
    }
    (out / f"chromium_vs_bot_{who_calls}_calls.json").write_text(json.dumps(report, indent=2))
    print(f"\nChromium<->bot ({who_calls} calls):", json.dumps(
        {"browser": {k: v for k, v in report["browser"].items() if k != "stats"}, "bot": {
            k: report["bot"][k] for k in ("acceptToConnectedMs", "timeToConnectedMs", "framesReceived",
                                          "receivedFps")}}))
    errors = [f"{n.name}: {line}" for n in nodes.nodes for line in n.errors_since(marks[n.name])]
    assert not errors, "server errors during the test:\n" + "\n".join(errors[:20])
