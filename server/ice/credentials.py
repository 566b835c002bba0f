"""Ephemeral TURN credentials in coturn's shared-secret ("TURN REST API") scheme.

coturn with `use-auth-secret` accepts any username of the form `<expiry-unix>:<anything>` whose
password is base64(HMAC-SHA1(static-auth-secret, username)), as long as the expiry is in the future.
So the server never stores TURN users and coturn never calls the server: both share one secret,
which never leaves either of them (it is not in responses and must never be logged).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from server.settings import Settings

PROVIDER = "coturn"


@dataclass(frozen=True)
class TurnCredential:
    username: str
    credential: str
    expires_at: int  # unix seconds

    @property
    def expires_at_ms(self) -> int:
        return self.expires_at * 1000


def sign(secret: str, username: str) -> str:
    """coturn's password for `username`: standard padded base64 of HMAC-SHA1(secret, username)."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def issue(secret: str, user_id: str, ttl_seconds: int, now: float | None = None) -> TurnCredential:
    """A credential for `user_id` valid until now + ttl. The user id makes coturn's logs and
    quotas (`user-quota`) per user; it is an opaque UUID, so it reveals nothing else."""
    if ":" in user_id:
        raise ValueError("user id must not contain ':' (coturn's expiry separator)")
    expires_at = int(now if now is not None else time.time()) + int(ttl_seconds)
    username = f"{expires_at}:{user_id}"
    return TurnCredential(username=username, credential=sign(secret, username), expires_at=expires_at)


def ice_servers(settings: Settings, cred: TurnCredential | None) -> list[dict[str, Any]]:
    """The RTCIceServer list (PROTOCOL.md §2.8): always a JSON array, STUN first, then one TURN entry
    carrying every TURN URL (UDP, TCP, TLS) with the same credential."""
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    turn_urls = [*settings.turn_urls, *settings.turns_urls]
    if cred is not None and turn_urls:
        servers.append({"urls": turn_urls, "username": cred.username, "credential": cred.credential})
    return servers


def turn_configured(settings: Settings) -> bool:
    return bool(settings.turn_secret) and bool(settings.turn_urls or settings.turns_urls)
