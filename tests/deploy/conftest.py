"""Offline checks of the deployment files (no container engine or cluster runs on these machines)."""

from __future__ import annotations

from dataclasses import fields

from server.settings import Settings
from server.stack import REPO

DEPLOY = REPO / "deploy"

# Defaults that point at the local stack or are development secrets: a deployment must set them.
_LOCAL_MARKERS = ("127.0.0.1", "localhost", "'local'", "local-", ".local")
_ALWAYS = {"host", "log_format", "metrics_host", "metrics_port", "trusted_proxy_hops", "stripe_secret_key",
           "stripe_webhook_secret"}


def setting_names() -> set[str]:
    """Every environment variable the server reads (server/settings.py)."""
    return {f.name.upper() for f in fields(Settings)}


def required_settings() -> set[str]:
    required = set()
    for f in fields(Settings):
        if f.name == "node_id":
            continue  # unique per start by design: never pinned in a deployment
        default = getattr(Settings, f.name, None)
        if f.name in _ALWAYS or any(m in repr(default) for m in _LOCAL_MARKERS):
            required.add(f.name.upper())
    return required
