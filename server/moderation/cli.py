"""Operator commands for moderator accounts (`python -m server user totp-enroll ...`), audit-logged."""

from __future__ import annotations

import asyncio
import io

import asyncpg
import segno

from server.accounts.operators import OperatorError
from server.ids import user_uuid
from server.moderation import admin, audit, store


async def _moderator(conn: asyncpg.Connection, ref: str) -> asyncpg.Record:
    user_id = user_uuid(ref)
    if user_id is not None:
        row = await store.account_by_id(conn, user_id)
    else:
        row = await store.account_by_email(conn, ref.strip().lower())
    if row is None:
        raise OperatorError(f"no user with id or email {ref!r}")
    if row["role"] not in admin.MODERATOR_ROLES or not row["email"]:
        raise OperatorError("only moderator or admin accounts with an email and password enrol a second factor "
                            "(python -m server user set-role <email> moderator)")
    return row


def _terminal_qr(text: str) -> str:
    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


async def totp_enroll(conn: asyncpg.Connection, ref: str, issuer: str) -> str:
    """A new TOTP secret for the account (replacing any earlier one): prints the provisioning URI and
    a QR code for an authenticator app. From now on /admin/login needs a code for this account."""
    async with conn.transaction():
        user = await _moderator(conn, ref)
        had = await store.totp_secret(conn, user["id"]) is not None
        secret = admin.new_secret()
        await store.enroll_totp(conn, user["id"], secret)
        await audit.record(conn, actor_label="cli", action="totp_enroll", target_user_id=user["id"],
                           details={"replaced": had})
    uri = admin.provisioning_uri(secret, user["email"], issuer)
    qr = await asyncio.to_thread(_terminal_qr, uri)
    return (f"TOTP enrolled for {user['email']} ({user['role']}){' (previous secret replaced)' if had else ''}.\n"
            f"Scan this with an authenticator app, or enter the URI / secret by hand:\n\n{qr}\n{uri}\n"
            f"secret: {secret}\n\nThe original admin page sends only username and password: type the "
            f"password followed directly by the 6-digit code into its password field.")


async def totp_remove(conn: asyncpg.Connection, ref: str) -> str:
    async with conn.transaction():
        user = await _moderator(conn, ref)
        if not await store.remove_totp(conn, user["id"]):
            return f"{user['email']} has no second factor"
        await audit.record(conn, actor_label="cli", action="totp_remove", target_user_id=user["id"])
    return f"second factor removed for {user['email']}"
