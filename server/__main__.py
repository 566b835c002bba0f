"""Command line: `python -m server serve|migrate|run|stack ...`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from server.settings import Settings

REPO = Path(__file__).resolve().parent.parent
STACK_DIR = REPO / ".stack"


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_serve(settings: Settings, host: str | None, port: int | None) -> None:
    from aiohttp import web

    from server import httplog
    from server.app import create_app
    from server.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    httplog.install(settings.bad_request_logs_per_minute)
    httplog.install_frames(settings.bad_frame_logs_per_minute)
    _install_uvloop()
    settings = settings.with_(host=host or settings.host, port=port or settings.port)
    if "PUBLIC_URL" not in os.environ:  # a second node on another port serves its own origin
        settings = settings.with_(public_url=f"http://{settings.host}:{settings.port}")
    from server.ops import heap
    from server.ops.drain import install_sigterm

    app = create_app(settings)
    app.on_startup.append(install_sigterm)  # SIGTERM drains (SIGINT still stops at once)
    heap.measure_pauses()
    app.on_startup.append(heap.freeze_startup_heap)  # last: everything started is built by then
    web.run_app(app, host=settings.host, port=settings.port, access_log=None,
                print=lambda _msg: print(f"serving on http://{settings.host}:{settings.port}", flush=True),
                shutdown_timeout=5,
                # Also bounds how long a connection may take to send a request's headers (aiohttp
                # closes a connection that is idle or mid-headers this long); bodies: httpio.BodyClock.
                keepalive_timeout=settings.http_keepalive_seconds)


async def _prepare(settings: Settings) -> list[str]:
    from server.db import ensure_database, migrate

    await ensure_database(settings.database_url)
    return await migrate(settings.database_url)


def cmd_migrate(settings: Settings) -> None:
    applied = asyncio.run(_prepare(settings))
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


def ensure_bucket(settings: Settings) -> None:
    from botocore.exceptions import ClientError

    from server.app import make_s3_client

    s3 = make_s3_client(settings)
    try:
        s3.head_bucket(Bucket=settings.s3_bucket)
    except ClientError:
        s3.create_bucket(Bucket=settings.s3_bucket)


def _stack(settings: Settings):  # type: ignore[no-untyped-def]
    from server.stack import Stack

    return Stack(root=STACK_DIR, durable=True, turn_secret=settings.turn_secret, turn_realm=settings.turn_realm)


def _print_stack(stack) -> None:  # type: ignore[no-untyped-def]
    for name, (pid, port) in stack.status().items():
        state = f"pid {pid}" if pid else "stopped"
        print(f"  {name:<9} 127.0.0.1:{port:<6} {state}")


def cmd_stack(settings: Settings, action: str) -> None:
    stack = _stack(settings)
    if action == "up":
        stack.up()
        asyncio.run(_prepare(settings))
        ensure_bucket(settings)
    elif action == "down":
        stack.down()
    _print_stack(stack)


def cmd_run(settings: Settings) -> None:
    """`make run`: start the local stack, prepare it, serve; on Ctrl-C stop what this run started."""
    import socket

    with socket.socket() as probe:
        if probe.connect_ex((settings.host, settings.port)) == 0:
            print(f"error: {settings.host}:{settings.port} is already in use (another `make run`?). "
                  "Stop it, or set PORT=...", file=sys.stderr)
            raise SystemExit(2)
    stack = _stack(settings)
    t0 = time.monotonic()
    started = stack.up()

    def _terminate(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    emulator = None
    try:
        applied = asyncio.run(_prepare(settings))
        ensure_bucket(settings)
        if not settings.stripe_secret_key:  # no Stripe account: the local emulator takes its place
            emulator, settings = _start_stripe_emulator(settings)
        print(f"\nlocal stack ready in {time.monotonic() - t0:.1f}s (data in {STACK_DIR}, logs in {STACK_DIR}/logs)")
        _print_stack(stack)
        print(f"  migrations applied now: {', '.join(applied) or 'none (up to date)'}")
        if emulator is not None:
            print(f"  stripe    {emulator.url}  local emulator: checkout pages, signed webhooks; no money moves")
        print(f"  app       http://127.0.0.1:{settings.port}   (health: /health, readiness: /ready)")
        print("Ctrl-C stops the app and every service this run started.\n", flush=True)
        cmd_serve(settings, None, None)
    except KeyboardInterrupt:
        pass
    finally:
        if emulator is not None:
            emulator.stop()
        stack.down(started)
        print(f"stopped: {', '.join(started) or 'nothing (services were already running before this run)'}")


def _start_stripe_emulator(settings: Settings):  # type: ignore[no-untyped-def]
    from server.payments.emulator import EmulatorProcess

    secret, webhook_secret = "sk_test_local_emulator", "whsec_local_emulator"
    emulator = EmulatorProcess(settings.stripe_emulator_port, secret, webhook_secret,
                               [f"http://127.0.0.1:{settings.port}/payment/webhook"],
                               STACK_DIR / "logs" / "stripe-emulator.log").start()
    return emulator, settings.with_(stripe_secret_key=secret, stripe_webhook_secret=webhook_secret,
                                    stripe_api_base=emulator.url)


def _operator(settings: Settings, work: Any) -> int:
    """Run one operator action `work(conn) -> message` on a fresh connection; exit status 2 on OperatorError."""
    import asyncpg

    from server.accounts import operators
    from server.db import _init_connection

    async def _run() -> str:
        conn = await asyncpg.connect(settings.database_url)
        await _init_connection(conn)
        try:
            return str(await work(conn))
        finally:
            await conn.close()

    try:
        print(asyncio.run(_run()))
    except operators.OperatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_user(settings: Settings, action: str, ref: str, role: str | None) -> int:
    from server.accounts import operators

    async def work(conn: Any) -> str:
        if action in ("totp-enroll", "totp-remove"):
            from server.moderation import cli

            if action == "totp-remove":
                return await cli.totp_remove(conn, ref)
            return await cli.totp_enroll(conn, ref, settings.totp_issuer)
        if action == "grant-access":
            message, changed = await operators.grant_access(conn, ref)
        else:
            message, changed = await operators.set_role(conn, ref, role or "")
        if changed is not None:  # running nodes drop what they cached about the user at once
            warning = await operators.announce(settings, changed, action.replace("-", "_"))
            message = f"{message}\n{warning}" if warning else message
        return message

    return _operator(settings, work)


def cmd_codes(settings: Settings, args: argparse.Namespace) -> int:
    from server.accounts import operators

    async def work(conn: Any) -> str:
        if args.action == "create":
            return await operators.create_code(conn, args.label, args.uses)
        if args.action == "deactivate":
            return await operators.deactivate_code(conn, args.code)
        return await operators.list_codes(conn)

    return _operator(settings, work)


def cmd_ops(settings: Settings, args: argparse.Namespace) -> int:
    """bucket / backup / restore (server/ops)."""
    from server.ops import backup

    try:
        if args.cmd == "bucket":
            from server.app import make_s3_client
            from server.ops.bucket import configure

            for line in configure(make_s3_client(settings), settings.s3_bucket, settings.s3_sse):
                print(line)
        elif args.cmd == "backup":
            size = backup.backup(settings.database_url, Path(args.out))
            print(f"backup written: {args.out} ({size} bytes)")
        else:
            backup.restore(settings.database_url, Path(args.src))
            print(f"restored {args.src} into {settings.database_url.rpartition('@')[2]}; flush Redis before "
                  "starting nodes (it is rebuilt from Postgres)")
    except backup.BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve the app (start it again on another port for a second node)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    sub.add_parser("migrate", help="apply pending schema migrations")
    sub.add_parser("run", help="local stack + migrations + app; Ctrl-C stops everything it started")
    stack = sub.add_parser("stack", help="local services under .stack/")
    stack.add_argument("action", choices=["up", "down", "status"])
    user = sub.add_parser("user", help="operator actions on one account (audit-logged)")
    user_sub = user.add_subparsers(dest="action", required=True)
    grant = user_sub.add_parser("grant-access", help="give access without payment")
    grant.add_argument("ref", metavar="userId|email")
    role = user_sub.add_parser("set-role", help="make a user a moderator or admin (or back)")
    role.add_argument("ref", metavar="userId|email")
    role.add_argument("role", choices=["user", "moderator", "admin"])
    enroll = user_sub.add_parser("totp-enroll", help="a moderator's TOTP second factor: prints the URI and a QR")
    enroll.add_argument("ref", metavar="userId|email")
    unenroll = user_sub.add_parser("totp-remove", help="remove a moderator's second factor (lost device)")
    unenroll.add_argument("ref", metavar="userId|email")
    codes = sub.add_parser("codes", help="invite codes (audit-logged)")
    codes_sub = codes.add_subparsers(dest="action", required=True)
    create = codes_sub.add_parser("create", help="a new code: unlimited (admin), or --uses N")
    create.add_argument("--label", required=True, help="shown as createdBy")
    create.add_argument("--uses", type=int, help="limited number of uses (default: unlimited)")
    codes_sub.add_parser("list", help="every code with its uses")
    deactivate = codes_sub.add_parser("deactivate", help="stop a code from being redeemed")
    deactivate.add_argument("code")
    sub.add_parser("bucket", help="create the media bucket with lifecycle rules, encryption, public access block")
    bk = sub.add_parser("backup", help="consistent Postgres backup (pg_dump custom format)")
    bk.add_argument("--out", required=True, metavar="FILE")
    rs = sub.add_parser("restore", help="restore a backup into an EMPTY database (DATABASE_URL)")
    rs.add_argument("--from", dest="src", required=True, metavar="FILE")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    if args.cmd == "serve":
        cmd_serve(settings, args.host, args.port)
    elif args.cmd == "migrate":
        cmd_migrate(settings)
    elif args.cmd == "run":
        cmd_run(settings)
    elif args.cmd == "stack":
        cmd_stack(settings, args.action)
    elif args.cmd == "codes":
        return cmd_codes(settings, args)
    elif args.cmd == "user":
        return cmd_user(settings, args.action, args.ref, getattr(args, "role", None))
    elif args.cmd in ("bucket", "backup", "restore"):
        return cmd_ops(settings, args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
