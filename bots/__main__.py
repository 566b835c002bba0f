"""Command line: `python -m bots run ...` (one bot, one call) and `python -m bots swarm ...` (N bots).

Progress goes to stderr; the summary (human-readable, or JSON with --json) to stdout. The exit
status is 0 only if every call succeeded: media connected, video frames received, the peer reported
receiving ours, and the call ended as planned (our timer, the agreed duration, the peer's end or the
server's deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

try:
    from bots.client import Bot, BotOptions
except ImportError as exc:  # aiortc and PyAV come with the dev extras
    sys.exit(f"python -m bots: {exc}. The bots need aiortc: `make run` installs it, "
             "or run .venv/bin/pip install -e '.[bots]'")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("size must look like 640x480") from None
    if w % 2 or h % 2 or w < 128 or h < 16:
        raise argparse.ArgumentTypeError("size: even numbers, width >= 128, height >= 16")
    return w, h


def _common(p: argparse.ArgumentParser, size: str, seconds: float | None) -> None:
    p.add_argument("--server", required=True, help="the server's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--seconds", type=float, default=seconds,
                   help="end the call this many seconds after media connected "
                        f"(default: {'the agreed call duration' if seconds is None else seconds})")
    p.add_argument("--duration", type=int, default=60, metavar="S",
                   help="call duration to ask for in the invite/accept (server clamps to 60-1800; default 60)")
    p.add_argument("--relay", action="store_true", help="relay-only ICE (iceTransportPolicy relay): media via TURN")
    p.add_argument("--turn-transport", choices=["udp", "tcp", "tls"], help="prefer this TURN leg")
    p.add_argument("--chat", metavar="TEXT", help="send this chat message once connected")
    p.add_argument("--size", type=_size, default=_size(size), metavar="WxH", help=f"video size (default {size})")
    p.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="how long to wait for an invite, for someone to invite, or for an answer")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                   help="call:start -> media connected limit (default 30)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bots", description="aiortc test bots that make real calls")
    sub = ap.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="one bot, one call")
    _common(run, "640x480", None)
    run.add_argument("--token", help="use this session token instead of signing up a new guest")
    run.add_argument("--name", default="Bot", help="guest name (default Bot)")
    run.add_argument("--gender", default="unspecified", choices=["female", "male", "nonbinary", "unspecified"])
    run.add_argument("--no-upload", action="store_true", help="skip the selfie/video upload (then not in decks)")
    run.add_argument("--calls", type=int, default=1, metavar="N",
                     help="with --wait: take N calls, going back to the queue after each (0 = until stopped)")
    how = run.add_mutually_exclusive_group(required=True)
    how.add_argument("--wait", action="store_true", help="go available and accept the first invite")
    how.add_argument("--invite", metavar="USERID", help="invite this user")
    how.add_argument("--invite-first", action="store_true", help="invite the first user listed by /room/queue")

    swarm = sub.add_parser("swarm", help="N bots in N/2 calls (half wait, half invite), summary table")
    _common(swarm, "320x240", 10.0)
    swarm.add_argument("-n", type=int, required=True, help="number of bots (even)")
    return ap


def _options(args: argparse.Namespace, **extra: Any) -> BotOptions:
    w, h = args.size
    return BotOptions(server=args.server, seconds=args.seconds, requested_seconds=args.duration, relay=args.relay,
                      turn_transport=args.turn_transport, chat=args.chat, width=w, height=h, fps=args.fps,
                      wait_timeout=args.timeout, connect_timeout=args.connect_timeout, quiet=args.quiet, **extra)


def _human(s: dict[str, Any]) -> str:
    pair = s.get("candidatePair")
    pair_text = "-"
    if pair:
        pair_text = (f"{pair['local']['type']} {pair['local']['address']}:{pair['local']['port']}"
                     f"{' via TURN/' + pair['local']['turnTransport'] if pair['local'].get('turnTransport') else ''}"
                     f" <-> {pair['remote']['type']} {pair['remote']['address']}:{pair['remote']['port']}")
    head = f"{'OK' if s.get('ok') else 'FAILED'}: {s.get('role')} {s.get('name')} ({s.get('userId')})"
    if not s.get("roomId"):  # never got into a call
        return f"{head}\n  ended by           {s.get('endedBy')}\n  reason             {s.get('error')}"
    lines = [
        head,
        f"  room               {s.get('roomId')}",
        f"  call:start->media  {s.get('timeToConnectedMs')} ms (accept->media {s.get('acceptToConnectedMs')} ms)",
        f"  video frames       sent {s.get('framesSent')}, received {s.get('framesReceived')} "
        f"(decoded {s.get('framesDecoded', 0)}, lost {s.get('framesLost')}, {s.get('receivedFps', 0)} fps)",
        f"  peer received      {s.get('peerReceivedPackets')} video packets",
        f"  candidate pair     {pair_text}",
        f"  ended by           {s.get('endedBy')}",
    ]
    chat = s.get("chat") or {}
    if chat.get("sent") or chat.get("received"):
        lines.append(f"  chat               sent {chat.get('sent')}, received {[m['text'] for m in chat['received']]}")
    if s.get("error"):
        lines.append(f"  reason             {s['error']}")
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> int:
    mode = "wait" if args.wait else "invite" if args.invite else "invite-first"
    opts = _options(args, token=args.token, name=args.name, gender=args.gender, mode=mode,
                    invite_user=args.invite, upload_media=not args.no_upload, calls=args.calls)

    def show(summary: dict[str, Any]) -> None:
        print(json.dumps(summary) if args.json else _human(summary), flush=True)

    bot = Bot(opts)
    _on_interrupt([bot])
    if opts.mode != "wait" or opts.calls == 1:
        summary = await bot.run()
        show(summary)
        return 130 if bot.stopping else 0 if summary.get("ok") else 1
    # Several calls: one summary per call as it ends; a final failure that is not a call is shown too.
    summary = await bot.run(on_call=show)
    if not any(summary is c for c in bot.calls):
        show(summary)
    finished = bool(bot.calls) and (any(summary is c for c in bot.calls) or summary.get("endedBy") == "no-invite")
    if bot.stopping:
        return 130
    return 0 if finished and all(c.get("ok") for c in bot.calls) else 1


async def _swarm(args: argparse.Namespace) -> int:
    from bots.swarm import run_swarm, table

    if args.n < 2 or args.n % 2:
        print("swarm: -n must be an even number >= 2", file=sys.stderr)
        return 2
    summaries = await run_swarm(_options(args), args.n, on_bot=lambda b: _on_interrupt([b]))
    if args.json:
        print(table(summaries), file=sys.stderr)
        print(json.dumps(summaries), flush=True)
    else:
        print(table(summaries), flush=True)
    return 0 if all(s.get("ok") for s in summaries) else 1


_stoppable: list[Bot] = []


def _on_interrupt(bots: list[Bot]) -> None:
    """First Ctrl-C (or SIGTERM): every bot ends its call properly and reports. Second: exit at once."""
    import signal

    loop = asyncio.get_running_loop()
    if not _stoppable:
        def handler() -> None:
            if any(b.stopping for b in _stoppable):
                print("\ninterrupted again: exiting now", file=sys.stderr, flush=True)
                os._exit(130)
            print("\ninterrupted: ending the call(s); Ctrl-C again to exit at once", file=sys.stderr, flush=True)
            for b in _stoppable:
                b.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, handler)
    _stoppable.extend(bots)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(_run(args) if args.cmd == "run" else _swarm(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
