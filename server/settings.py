"""All configuration, read once from the environment. Defaults are the local stack (`make run`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Fixed loopback ports of the local stack (below the ephemeral range, see ENVIRONMENT.md).
LOCAL_PORTS = {"postgres": 15432, "redis": 16379, "s3": 19000, "turn": 13478, "app": 8080}


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    # Network
    host: str = "127.0.0.1"
    port: int = LOCAL_PORTS["app"]
    public_url: str = f"http://127.0.0.1:{LOCAL_PORTS['app']}"
    frontend_url: str = f"http://127.0.0.1:{LOCAL_PORTS['app']}"
    allowed_origins: tuple[str, ...] = (
        f"http://127.0.0.1:{LOCAL_PORTS['app']}",
        f"http://localhost:{LOCAL_PORTS['app']}",
        "http://localhost:3000",
    )
    trusted_proxy_hops: int = 0

    # Stores
    database_url: str = f"postgresql://postgres@127.0.0.1:{LOCAL_PORTS['postgres']}/napalm"
    db_pool_min: int = 2
    db_pool_max: int = 20
    redis_url: str = f"redis://127.0.0.1:{LOCAL_PORTS['redis']}/0"
    s3_endpoint_url: str = f"http://127.0.0.1:{LOCAL_PORTS['s3']}"
    s3_bucket: str = "napalm-media"
    s3_region: str = "us-east-1"
    s3_access_key: str = "local"
    s3_secret_key: str = "local-secret"
    s3_sse: str = ""  # e.g. "AES256" or "aws:kms" where the store supports it
    media_cdn_base: str = ""  # if set, media URLs are <base>/<key> instead of presigned GETs
    media_url_ttl_seconds: int = 3600

    # TURN (coturn shared-secret REST scheme)
    turn_secret: str = "local-turn-secret-change-me"
    turn_realm: str = "napalm.local"
    turn_urls: tuple[str, ...] = (
        f"turn:127.0.0.1:{LOCAL_PORTS['turn']}?transport=udp",
        f"turn:127.0.0.1:{LOCAL_PORTS['turn']}?transport=tcp",
    )
    stun_urls: tuple[str, ...] = (f"stun:127.0.0.1:{LOCAL_PORTS['turn']}",)
    # TURN over TLS (e.g. "turns:turn.example.com:443?transport=tcp"); empty on the local stack (no TLS).
    turns_urls: tuple[str, ...] = ()
    turn_ttl_seconds: int = 3600
    turn_rate_per_hour: int = 60

    # Stripe
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""
    price_cents: int = 50
    price_currency: str = "usd"
    # Payments and access (issue 8). With no STRIPE_SECRET_KEY, `python -m server run` starts the local
    # Stripe emulator on this port and points the three settings above at it.
    stripe_emulator_port: int = 12111
    stripe_lookup_interval_seconds: float = 2.0  # /payment/status asks Stripe about an open session; 0 = never
    payment_reconcile_interval_seconds: float = 300.0  # 0 = no periodic reconciliation
    payment_reconcile_window_hours: int = 48

    # Accounts
    bcrypt_rounds: int = 12
    guest_session_days: int = 7
    login_session_days: int = 30
    login_max_failures_per_ip: int = 6
    login_max_failures_per_account: int = 10
    login_failure_window_seconds: int = 600
    guest_signups_per_ip_per_hour: int = 30
    code_attempts_per_ip_per_hour: int = 5
    require_payment: bool = True

    # Realtime (PROTOCOL.md §5). Tests shorten the waits; the protocol values are the defaults.
    max_sockets: int = 5000  # per node
    invite_ttl_ms: int = 20_000  # advertised to the callee as ttlMs
    invite_expiry_grace_ms: int = 5_000  # the old callee's own auto-decline lands first
    invite_extension_ms: int = 20_000
    invite_max_extensions: int = 3
    invites_per_minute: int = 20
    disconnect_grace_seconds: float = 15.0
    call_setup_allowance_ms: int = 90_000  # E1: deadline = startedAt + agreed + this
    timer_poll_seconds: float = 0.2
    node_heartbeat_seconds: float = 1.0
    node_dead_after_seconds: float = 6.0
    socket_events_per_second: int = 40  # token bucket per socket (ICE trickle bursts fit)
    socket_event_burst: int = 120
    # Realtime core, crowd (issue 10): the per-node deck snapshot's freshness bounds (presence/deck.py)
    deck_max_age_seconds: float = 2.0  # changes made without a broadcast show within this
    deck_min_rebuild_seconds: float = 0.05  # a broadcast change waits at most this for its rebuild
    deck_max_cards: int = 100  # cards per /room/queue and queue:snapshot; totalAvailable still counts all
    redis_pool_max: int = 64  # connections per node; a burst beyond waits for one (never MaxConnectionsError)
    # Realtime core, faults (issue 11)
    store_timeout_seconds: float = 10.0  # every Postgres statement and Redis command (0 = none)
    reconcile_seconds: float = 30.0  # how often a node drops sids registered for it that it does not hold
    room_keep_seconds: float = 600.0  # a finalised room's Redis record, once its history is written (replays)

    # Referrals and the account lifecycle (issue 13; README "Introductions", "Account lifecycle")
    referral_code_ttl_days: int = 30  # a code lives this long after it was last generated
    referral_generate_per_hour: int = 60  # per user
    referral_lookups_per_minute: int = 30  # per IP for /referral/info, per user for direct-match
    session_refresh_minutes: int = 60  # sliding refresh: an active session is extended at most this often
    session_max_days: int = 90  # login/link sessions end this long after sign-in however active (not guests)
    account_fresh_session_minutes: int = 10  # DELETE /user/me without a password needs a session this young
    account_deletion_retry_seconds: float = 30.0  # how often each node resumes unfinished deletions
    account_deletion_lease_seconds: float = 120.0  # a node that dies mid-deletion delays the retry this long
    export_media_url_ttl_seconds: int = 600  # the export's links to the user's media
    exports_per_hour: int = 10  # per user

    # Moderation (issue 9)
    auto_ban_reports: int = 4  # distinct reporters who shared a room with the user (§5)
    reports_per_ip_per_hour: int = 50
    admin_session_seconds: int = 24 * 3600
    admin_login_max_failures_per_ip: int = 6
    admin_login_max_failures_per_account: int = 10
    admin_login_failure_delay_seconds: float = 1.0  # the original's deliberate delay on a failed login
    require_moderator_totp: bool = False  # true: moderators must enrol TOTP (python -m server user totp-enroll)
    totp_issuer: str = "Napalm Sky"
    ban_sweep_seconds: float = 10.0  # how often a node lifts timed bans that ran out
    ip_ban_cache_seconds: float = 2.0  # how long a node trusts its copy of the IP ban list

    # Abuse limits (issue 12; every one is listed in README "Abuse limits")
    http_keepalive_seconds: float = 75.0  # idle keep-alive, and the bound on a request's headers arriving
    body_read_timeout_seconds: float = 10.0  # a JSON body must arrive whole within this, else 408
    upload_idle_timeout_seconds: float = 30.0  # multipart upload: longest gap between received bytes
    upload_max_seconds: float = 600.0  # multipart upload: the whole body
    uploads_per_user_concurrent: int = 2  # multipart uploads in flight per user (all nodes)
    upload_slots_per_node: int = 16  # multipart uploads streamed at once per process (memory bound)
    upload_slot_wait_seconds: float = 10.0  # wait for one of a node's upload slots, then 503
    link_attempts_per_user_per_hour: int = 10  # /auth/link attempts per account
    link_attempts_per_ip_per_hour: int = 30
    login_attempts_per_ip_per_hour: int = 60  # /auth/login, successful or not
    logins_per_account_per_hour: int = 20  # successful /auth/login per account
    bad_request_logs_per_minute: int = 10  # malformed HTTP requests logged per node; the rest counted
    # Abuse limits, realtime half (issue 12; README "Abuse limits")
    socket_auth_deadline_seconds: float = 10.0  # a socket not authenticated by then is disconnected
    max_sockets_per_address: int = 100  # per node, by httpio.ip_scope (IPv6 by /64); CGNAT shares addresses
    max_sockets_per_user: int = 10  # authenticated sockets of one user per node (tabs, devices)
    session_recheck_seconds: float = 30.0  # a socket's session is re-read at most this stale (expiry, revocation)
    session_cache_seconds: float = 5.0  # a node trusts a session it read this long (HTTP, connect, `auth`; 0 = off)
    bad_frame_logs_per_minute: int = 10  # malformed Engine.IO/Socket.IO input logged per node; the rest counted

    # Ops
    log_format: str = "console"  # "json" in production
    log_level: str = "INFO"
    # Unique per process start (in containers the pid is always 1 and a restarted pod keeps its name).
    node_id: str = field(default_factory=lambda: f"{os.uname().nodename}-{uuid.uuid4().hex[:8]}")

    # Ops (issue 14): metrics and graceful drain
    metrics_port: int = 0  # a separate listener for /metrics (0 = none); never route it publicly
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so the scraper reaches it
    metrics_token: str = ""  # if set, /metrics on the main port too, with Authorization: Bearer <token>
    drain_delay_seconds: float = 3.0  # after SIGTERM: /ready 503, new sockets refused, then hand over
    drain_batch_size: int = 200  # sockets closed per batch (they reconnect to other nodes)
    drain_batch_interval_seconds: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from NAPALM-style upper-case variables (e.g. DATABASE_URL, TURN_URLS)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None:
                continue
            default = getattr(cls, f.name, None) if f.name != "node_id" else ""
            if isinstance(default, bool):
                values[f.name] = _bool(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, tuple):
                values[f.name] = _split(raw)
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)

    @property
    def origins(self) -> tuple[str, ...]:
        """Allowed browser origins: ALLOWED_ORIGINS plus this server's own public origin (the stub it
        serves must always be able to talk to it)."""
        own = "/".join(self.public_url.split("/")[:3])
        return self.allowed_origins if own in self.allowed_origins else (*self.allowed_origins, own)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)
